"""Label-aware mask losses (medsynth.models.losses) on the real hippocampus label maps."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch

from medsynth.models.losses import label_rarity_weights, label_volume_loss, label_volumes, mask_loss, soft_dice_loss
from tests.conftest import shared


def _hippocampus_labels(n: int = 4) -> torch.Tensor:
    """n real label maps (0 background, 1 anterior, 2 posterior), cropped to 32^3 around their centre."""
    folder = shared("hippocampus", "labels")
    maps = []
    for f in sorted(folder.glob("*.nii.gz"))[:n]:
        lab = np.asarray(nib.load(f).dataobj).astype(np.int64)
        out = np.zeros((32, 32, 32), np.int64)
        src = [slice(max(0, (s - 32) // 2), max(0, (s - 32) // 2) + min(s, 32)) for s in lab.shape]
        dst = [slice(0, min(s, 32)) for s in lab.shape]
        out[tuple(dst)] = lab[tuple(src)]
        maps.append(out)
    return torch.from_numpy(np.stack(maps))


def _logits_for(labels: torch.Tensor, n_labels: int, confidence: float = 30.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, n_labels + 1).movedim(-1, 1).float() * confidence


def test_rarity_weights_follow_voxel_share():
    labels = _hippocampus_labels()
    w = label_rarity_weights(labels, 2)
    share = torch.bincount(labels.flatten(), minlength=3).double() / labels.numel()
    assert w[0] == 1.0
    expected = (share[0] / share[1:]).sqrt().float()
    assert torch.allclose(w[1:], expected, rtol=1e-4), (w, expected)
    assert w[1] > 3  # each hippocampus label is ~1.5% of the voxels
    assert label_rarity_weights(labels, 3)[3] == 50.0  # a label absent from the training masks gets the cap


def test_dice_term_sees_a_missing_label_that_cross_entropy_barely_notices():
    labels = _hippocampus_labels()
    perfect = _logits_for(labels, 2)
    no_posterior = _logits_for(torch.where(labels == 2, 0, labels), 2)
    assert soft_dice_loss(perfect, labels, 2) < 0.01
    # label 2 never drawn: one of two labels lost -> Dice loss about 0.5
    assert 0.45 < float(soft_dice_loss(no_posterior, labels, 2)) < 0.55
    ce = lambda lg: float(mask_loss(lg, labels, 2, None, 0.0))  # noqa: E731
    weighted = float(mask_loss(no_posterior, labels, 2, label_rarity_weights(labels, 2), 0.0))
    # unweighted cross-entropy grows by little in absolute terms; weighting by rarity raises the cost several-fold
    assert weighted > 3 * ce(no_posterior)
    assert float(mask_loss(no_posterior, labels, 2, None, 1.0)) > ce(no_posterior) + 0.45


def test_label_volume_loss_is_zero_for_matching_cases_and_pulls_a_missing_label_in():
    labels = _hippocampus_labels()
    y = torch.tensor([0, 0, 1, 1])
    real_logits = _logits_for(labels, 2)
    assert float(label_volume_loss(real_logits, y, labels, y, 2)) < 0.01
    # generated cases of condition 1 lack label 2 entirely
    fake = real_logits.clone().requires_grad_(True)
    with torch.no_grad():
        fake[2:, 2] = -30.0
    loss = label_volume_loss(fake, y, labels, y, 2)
    assert float(loss.detach()) > 1.0
    loss.backward()
    # descending the gradient raises label 2's logits where condition 1's cases are, and leaves condition 0 alone
    assert float(fake.grad[2:, 2].sum()) < 0
    assert float(fake.grad[:2].abs().sum()) < 1e-3 * float(fake.grad[2:].abs().sum())


def test_label_volumes_counts_voxels():
    labels = _hippocampus_labels(2)
    v = label_volumes(labels, 2)
    assert v.shape == (2, 2)
    assert int(v[0, 0]) == int((labels[0] == 1).sum()) and int(v[1, 1]) == int((labels[1] == 2).sum())
