"""Label-aware mask losses: what makes a generator draw a small, rare label at all.

A voxel-wise cross-entropy is dominated by background and the large labels: a lesion of a few dozen
voxels in 32^3 costs less than 0.2% of it, so a decoder that never draws the lesion loses almost
nothing. Two terms give every label its own weight:

* :func:`mask_loss` (paired: the VAEs reconstruct a given mask): cross-entropy with per-label weights
  from the label's rarity, plus a soft Dice per foreground label over the batch (every label counts
  the same whatever its size).
* :func:`label_volume_loss` (unpaired: the GAN's generator draws a mask from noise): the distribution of
  each label's (soft) volume among generated cases of a condition is matched to that among real cases of
  the same condition in the batch (1-D Wasserstein distance of log volumes), so a condition's defining
  structure is drawn, at its size, as often as real cases of that condition have it.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from medsynth.models.blocks import one_hot


def label_rarity_weights(label_maps: torch.Tensor, n_mask_labels: int, max_weight: float = 50.0) -> torch.Tensor:
    """Cross-entropy weight per class (background + labels): 1 / sqrt(voxel share), normalised so background
    has weight 1, capped at ``max_weight``. A label absent from ``label_maps`` gets the cap."""
    counts = torch.bincount(label_maps.long().clamp(0, n_mask_labels).flatten(), minlength=n_mask_labels + 1).double()
    share = counts / counts.sum().clamp(min=1)
    w = share[0].clamp(min=1e-12).sqrt() / share.clamp(min=1e-12).sqrt()
    return w.clamp(max=max_weight).float()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, n_mask_labels: int, eps: float = 1.0) -> torch.Tensor:
    """1 - mean over foreground labels of the batch soft Dice (sums over batch and voxels): a label absent
    from a case is not an empty-set Dice of 0 there, and a label absent from the whole batch is skipped."""
    if n_mask_labels < 1:
        return logits.new_zeros(())
    prob = torch.softmax(logits.float(), dim=1)[:, 1:]
    onehot = one_hot(target.long().clamp(0, n_mask_labels), n_mask_labels + 1)[:, 1:]
    dims = (0, *range(2, prob.dim()))
    inter, denom = (prob * onehot).sum(dims), prob.sum(dims) + onehot.sum(dims)
    present = (onehot.sum(dims) > 0).float()
    dice = (2 * inter + eps) / (denom + eps)
    return ((1 - dice) * present).sum() / present.sum().clamp(min=1)  # 0 when no label is present (no branch: vmap traces it)


def mask_loss(logits: torch.Tensor, target: torch.Tensor, n_mask_labels: int, weights: torch.Tensor | None, dice_weight: float) -> torch.Tensor:
    """Weighted cross-entropy + ``dice_weight`` x soft Dice. ``weights``: :func:`label_rarity_weights` or None
    (unweighted cross-entropy)."""
    target = target.long().clamp(0, n_mask_labels)
    w = weights.to(logits.device) if weights is not None else None
    ce = F.cross_entropy(logits.float(), target, weight=w)
    if dice_weight <= 0:
        return ce
    return ce + dice_weight * soft_dice_loss(logits, target, n_mask_labels)


def soft_label_volumes(logits: torch.Tensor, hard: bool = False) -> torch.Tensor:
    """(B, K) voxel count of each foreground label: expected under the softmax, or (``hard``) that of the argmax
    mask synthesis writes, with the softmax's gradient (straight-through). A label spread thinly over the
    whole volume has a soft volume but no voxel in the argmax: only the hard count sees it missing."""
    prob = torch.softmax(logits.float(), dim=1)
    if hard:
        onehot = F.one_hot(prob.argmax(1), prob.shape[1]).movedim(-1, 1).to(prob.dtype)
        prob = onehot + prob - prob.detach()
    return prob[:, 1:].flatten(2).sum(2)


def label_volumes(label_maps: torch.Tensor, n_mask_labels: int) -> torch.Tensor:
    """(B, K) voxel count of each foreground label of integer label maps (B, 1 or none, ...)."""
    flat = label_maps.long().flatten(1).clamp(0, n_mask_labels)
    return torch.stack([(flat == k).sum(1) for k in range(1, n_mask_labels + 1)], 1).float()


def label_volume_loss(fake_logits: torch.Tensor, fake_y: torch.Tensor, real_labels: torch.Tensor, real_y: torch.Tensor,
                      n_mask_labels: int) -> torch.Tensor:
    """Mean over conditions and labels of the 1-D Wasserstein distance between log(1 + volume) of generated
    cases (the soft volume and the argmax volume with a straight-through gradient) and real cases of the same
    condition (sorted, with the real set resampled to the generated set's size)."""
    if n_mask_labels < 1:
        return fake_logits.new_zeros(())
    v_real = torch.log1p(label_volumes(real_labels, n_mask_labels).to(fake_logits.device))
    terms = []
    # both volumes: the argmax volume is what synthesis writes; the soft one keeps the probabilities outside
    # the structure low (with the argmax alone, a near-uniform background flips to a label at argmax)
    for v_fake in (torch.log1p(soft_label_volumes(fake_logits)), torch.log1p(soft_label_volumes(fake_logits, hard=True))):
        for c in torch.unique(fake_y).tolist():
            f = v_fake[fake_y == c]
            r = v_real[real_y == c]
            if len(r) == 0:
                continue
            f_sorted = f.sort(0).values
            r_sorted = r.sort(0).values
            # quantile-match the real set to the generated set's size
            pos = torch.linspace(0, len(r) - 1, len(f), device=f.device).round().long()
            terms.append((f_sorted - r_sorted[pos]).abs().mean())
    return torch.stack(terms).mean() if terms else fake_logits.new_zeros(())
