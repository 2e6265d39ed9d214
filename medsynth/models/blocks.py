"""3D building blocks shared by the generative models."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import spectral_norm
from torch.utils.checkpoint import checkpoint


class ConditionalNorm3d(nn.Module):
    """Instance norm whose scale and shift come from the class embedding (conditional normalisation)."""

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.norm = nn.InstanceNorm3d(channels, affine=False)
        self.gamma = nn.Embedding(n_classes, channels)
        self.beta = nn.Embedding(n_classes, channels)
        nn.init.zeros_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g = 1.0 + self.gamma(y)[:, :, None, None, None]
        b = self.beta(y)[:, :, None, None, None]
        return self.norm(x) * g + b


def upsample2(x: torch.Tensor, mode: str) -> torch.Tensor:
    """x2 upsampling: ``nearest`` (voxel copies; with 3^3 convs it left a faint checkerboard speckle in the
    cGAN's background) or ``trilinear`` (smooth)."""
    if mode == "nearest":
        return nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    return nn.functional.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)


class UpBlock(nn.Module):
    """x2 upsampling, 3^3 conv, conditional norm, ReLU."""

    def __init__(self, cin: int, cout: int, n_classes: int, upsample: str = "nearest"):
        super().__init__()
        self.upsample = upsample
        self.conv = nn.Conv3d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1)
        self.n1 = ConditionalNorm3d(cout, n_classes)
        self.n2 = ConditionalNorm3d(cout, n_classes)
        self.skip = nn.Conv3d(cin, cout, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = upsample2(x, self.upsample)
        h = torch.relu(self.n1(self.conv(x), y))
        h = self.n2(self.conv2(h), y)
        return torch.relu(h + self.skip(x))


class SPADENorm3d(nn.Module):
    """Instance norm whose scale and shift vary per voxel with the given mask (SPADE, Park et al. 2019)
    and per class (as :class:`ConditionalNorm3d`): the mask's layout survives every normalisation."""

    def __init__(self, channels: int, n_classes: int, mask_channels: int, hidden: int = 32):
        super().__init__()
        self.norm = nn.InstanceNorm3d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv3d(mask_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv3d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv3d(hidden, channels, 3, padding=1)
        self.class_norm = ConditionalNorm3d(channels, n_classes)
        for conv in (self.gamma, self.beta):  # start as plain class-conditional normalisation
            nn.init.zeros_(conv.weight)
            assert conv.bias is not None  # Conv3d's default bias=True
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = nn.functional.interpolate(mask, size=x.shape[2:], mode="nearest") if mask.shape[2:] != x.shape[2:] else mask
        a = self.shared(m)
        return self.class_norm(x, y) * (1.0 + self.gamma(a)) + self.beta(a)


class SPADEUpBlock(nn.Module):
    """:class:`UpBlock` with SPADE normalisation on the mask."""

    def __init__(self, cin: int, cout: int, n_classes: int, mask_channels: int, upsample: str = "nearest"):
        super().__init__()
        self.upsample = upsample
        self.conv = nn.Conv3d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1)
        self.n1 = SPADENorm3d(cout, n_classes, mask_channels)
        self.n2 = SPADENorm3d(cout, n_classes, mask_channels)
        self.skip = nn.Conv3d(cin, cout, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = upsample2(x, self.upsample)
        h = torch.relu(self.n1(self.conv(x), y, mask))
        h = self.n2(self.conv2(h), y, mask)
        return torch.relu(h + self.skip(x))


class DownBlock(nn.Module):
    """Spectral-normalised strided conv block for discriminators / encoders."""

    def __init__(self, cin: int, cout: int, sn: bool = True, norm: bool = False):
        super().__init__()
        wrap = spectral_norm if sn else (lambda m: m)
        self.conv = wrap(nn.Conv3d(cin, cout, 4, stride=2, padding=1))
        self.conv2 = wrap(nn.Conv3d(cout, cout, 3, padding=1))
        self.norm = nn.GroupNorm(min(8, cout), cout) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.leaky_relu(self.norm(self.conv(x)), 0.2)
        return nn.functional.leaky_relu(self.conv2(h), 0.2)


class Sampler(nn.Module):
    """A model's exported network, what synthesis loads: ``sample(y, z, *masks)`` draws (image, label map)
    for conditions ``y`` from noise ``z`` of ``z_dim`` per case (and, where ``needs_mask``, given label
    maps). Declarations only: each sampler defines them (the counterfactual sampler, ``needs_source``,
    changes given cases instead of sampling noise)."""

    z_dim: int
    sample: Callable[..., tuple[torch.Tensor, torch.Tensor]]


class _DecoderTrunk(Sampler):
    """Latent + class embedding -> 4^3 seed -> residual up-blocks (``block(cin, cout)``) doubling the size
    up to ``size``; the shared trunk of both generators below."""

    def __init__(self, z_dim: int, n_classes: int, n_mask_labels: int, base: int, size: int, block):
        super().__init__()
        self.z_dim = z_dim
        self.n_mask_labels = n_mask_labels
        levels = n_levels(size)
        self.c0 = base * min(2**levels, 8)
        self.embed = nn.Embedding(n_classes, z_dim)
        self.fc = nn.Linear(2 * z_dim, self.c0 * 64)
        self.ups = nn.ModuleList()
        cin = self.c0
        for i in range(levels):
            c = base * min(2 ** (levels - 1 - i), 8)
            self.ups.append(block(cin, c))
            cin = c
        self.out_channels = cin
        self.checkpoint_blocks = False  # activation checkpointing per up-block (train.activation_checkpointing)

    def trunk(self, z: torch.Tensor, y: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(y)], 1)).view(-1, self.c0, 4, 4, 4)
        for up in self.ups:
            if self.checkpoint_blocks and self.training and torch.is_grad_enabled():
                h = checkpoint(up, h, y, *extra, use_reentrant=False)
            else:
                h = up(h, y, *extra)
        return h


class LatentPrior(nn.Module):
    """The distribution a VAE samples its latent from, per condition: z = mean[c] + scale_tril[c] @ e for
    standard normal noise e. The identity (the standard prior N(0, I)) until :meth:`fit` sets each
    condition's mean and covariance to those of the encoder's posterior means of that condition's training
    cases (ex-post density estimation, Ghosh et al. 2020): a VAE's aggregate posterior rarely fills N(0, I)
    -- on AdrenalMNIST3D it is about three times wider -- so standard-prior draws land near its centre and
    decode to near-copies of one typical case. The fitted statistics are aggregates of >= ``min_cases``
    training cases; a condition with fewer (a rare condition of a few patients) gets the distribution fitted
    to the codes of all training cases (the condition enters the decoder through its class embedding), and
    the standard prior only when the whole train split has fewer than ``min_cases``."""

    mean: torch.Tensor  # buffers
    scale_tril: torch.Tensor

    def __init__(self, n_classes: int, z_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_classes, z_dim))
        self.register_buffer("scale_tril", torch.eye(z_dim).repeat(n_classes, 1, 1))

    def forward(self, e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.mean[y] + (self.scale_tril[y] @ e.unsqueeze(-1).to(self.scale_tril.dtype)).squeeze(-1).to(e.dtype)

    @torch.no_grad()
    def fit(self, codes: torch.Tensor, y: torch.Tensor, shrinkage: float, min_cases: int) -> dict:
        """Fit each condition to its rows of ``codes`` (n, z_dim); the covariance is shrunk towards its
        diagonal by ``shrinkage`` (full rank even with fewer cases than latent dimensions). Returns, per
        condition, the cases used and the spread (root mean variance) of the fitted distribution."""
        codes, y = codes.double().to(self.mean.device), y.to(self.mean.device)
        report = {}
        for c in range(len(self.mean)):
            rows = codes[y == c]
            kind = "fitted"
            if len(rows) < max(min_cases, 2):
                if len(codes) < max(min_cases, 2):
                    self.mean[c].zero_()
                    self.scale_tril[c].copy_(torch.eye(codes.shape[1]))
                    report[c] = {"cases": len(rows), "prior": "standard (too few cases to fit)"}
                    continue
                rows, kind = codes, f"pooled (fitted to all {len(codes)} training cases: too few of this condition)"
            cov = torch.cov(rows.T)
            cov = (1.0 - shrinkage) * cov + shrinkage * torch.diag(torch.diag(cov))
            cov = cov + 1e-6 * torch.eye(len(cov), dtype=cov.dtype, device=cov.device) * float(torch.diag(cov).mean())
            self.mean[c].copy_(rows.mean(0))
            self.scale_tril[c].copy_(torch.linalg.cholesky(cov))
            report[c] = {"cases": int((y == c).sum()), "prior": kind, "spread": round(float(torch.diag(cov).mean().sqrt()), 4)}
        return report


class ConditionalDecoder(_DecoderTrunk):
    """Latent + class -> residual up-blocks with class-conditional normalisation -> tanh image and mask
    logits (background + labels). The cGAN generator and the cVAE decoder; ``latent_prior`` (the VAEs)
    adds a :class:`LatentPrior` that :meth:`sample` draws through."""

    def __init__(self, z_dim: int, n_classes: int, n_mask_labels: int, base: int, size: int, upsample: str = "nearest",
                 latent_prior: bool = False):
        super().__init__(z_dim, n_classes, n_mask_labels, base, size, lambda cin, c: UpBlock(cin, c, n_classes, upsample))
        self.out = nn.Conv3d(self.out_channels, 2 + n_mask_labels, 3, padding=1)
        self.prior = LatentPrior(n_classes, z_dim) if latent_prior else None

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return split_output(self.out(self.trunk(z, y)), self.n_mask_labels)

    @torch.no_grad()
    def sample(self, y: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z``: standard normal noise (times the temperature); the latent prior, if any, maps it."""
        img, logits = self(self.prior(z, y) if self.prior is not None else z, y)
        return img, logits.argmax(1, keepdim=True)


class MaskConditionalDecoder(_DecoderTrunk):
    """Noise + class + a given label map -> image (SPADE up-blocks). The mask is an input, not an output:
    the returned "logits" are the given one-hot mask scaled so that softmax/argmax give it back, so the
    discriminator and the samplers treat both generators alike."""

    needs_mask = True

    def __init__(self, z_dim: int, n_classes: int, n_mask_labels: int, base: int, size: int, upsample: str = "nearest"):
        super().__init__(z_dim, n_classes, n_mask_labels, base, size, lambda cin, c: SPADEUpBlock(cin, c, n_classes, n_mask_labels + 1, upsample))
        self.out = nn.Conv3d(self.out_channels, 1, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor, mask_onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tanh(self.out(self.trunk(z, y, mask_onehot))), (mask_onehot * 2.0 - 1.0) * 20.0

    @torch.no_grad()
    def sample(self, y: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``mask``: label maps (B, 1, D, H, W) to synthesise images for (required)."""
        if mask is None:
            raise ValueError("this generator is conditioned on masks (cgan.conditioning: mask): pass the label maps to sample for")
        img, _ = self(z, y, one_hot_mask(mask, self.n_mask_labels))
        return img, mask.long().clamp(0, self.n_mask_labels)


def n_levels(size: int, bottom: int = 4) -> int:
    levels = 0
    while size > bottom:
        if size % 2:
            raise ValueError(f"ROI side {size} must halve evenly down to {bottom}")
        size //= 2
        levels += 1
    return levels


def split_output(out: torch.Tensor, n_mask_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder output -> (image in [-1, 1], mask logits over background + labels)."""
    return torch.tanh(out[:, :1]), out[:, 1 : 2 + n_mask_labels]


def compose_sample(image: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Image + soft one-hot mask, the joint sample a discriminator sees."""
    return torch.cat([image, torch.softmax(mask_logits, dim=1)], dim=1)


def one_hot(labels: torch.Tensor, n: int) -> torch.Tensor:
    """(B, ...) integer labels -> (B, n, ...) float one-hot, by comparison (``F.one_hot`` checks its values,
    which ``torch.func.vmap`` -- per-case gradients for DP-SGD -- cannot trace)."""
    classes = torch.arange(n, device=labels.device).view(1, n, *[1] * (labels.dim() - 1))
    return (labels.long().unsqueeze(1) == classes).float()


def one_hot_mask(mask: torch.Tensor, n_mask_labels: int) -> torch.Tensor:
    return one_hot(mask.long().clamp(0, n_mask_labels)[:, 0], n_mask_labels + 1)


def append_minibatch_std(h: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Minibatch standard deviation (Karras et al. 2018): one extra channel holding how much the cases of
    a small group differ from each other, so the discriminator can tell a batch of near-identical fakes
    from real cases -- a cheap counter to mode collapse."""
    b = h.shape[0]
    g = next(k for k in (group, 2, 1) if b % k == 0)
    v = h.reshape(g, b // g, *h.shape[1:]).float()
    std = (v.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3, 4))  # (b / g,)
    channel = std.to(h.dtype).repeat(g)[:, None, None, None, None].expand(b, 1, *h.shape[2:])
    return torch.cat([h, channel], dim=1)


class ProjectionDiscriminator(nn.Module):
    """3D discriminator with spectral norm and projection conditioning (Miyato & Koyama 2018)."""

    def __init__(self, in_channels: int, n_classes: int, base: int, size: int, patch: bool = False, minibatch_std: bool = False):
        super().__init__()
        levels = n_levels(size)
        chans = [base * min(2**i, 8) for i in range(levels)]
        blocks, cin = [], in_channels
        for c in chans:
            blocks.append(DownBlock(cin, c))
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.patch = patch
        self.minibatch_std = minibatch_std
        extra = 1 if minibatch_std else 0
        self.head = spectral_norm(nn.Conv3d(cin + extra, 1, 3, padding=1)) if patch else spectral_norm(nn.Linear(cin + extra, 1))
        self.embed = spectral_norm(nn.Embedding(n_classes, cin))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.blocks(x)
        hs = append_minibatch_std(h) if self.minibatch_std else h
        if self.patch:  # a score per patch, projection term per patch
            proj = (self.embed(y)[:, :, None, None, None] * h).sum(1, keepdim=True)
            return (self.head(hs) + proj).flatten(1).mean(1)
        pooled = h.sum(dim=(2, 3, 4))
        return self.head(hs.sum(dim=(2, 3, 4)))[:, 0] + (self.embed(y) * pooled).sum(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean(dim=(2, 3, 4))


def random_flip_shift(x: torch.Tensor, g: torch.Generator, move=lambda t: t) -> torch.Tensor:
    """Per-sample flips along each spatial axis, then one roll by up to 1/8 of the size (whole batch).
    Random numbers come from the host generator ``g``; ``move`` puts them on x's device."""
    n = x.shape[0]
    for axis in (2, 3, 4):
        flip = move(torch.rand(n, generator=g) < 0.5)
        x = torch.where(flip[:, None, None, None, None], x.flip(axis), x)
    shifts = [int(torch.randint(-s // 8, s // 8 + 1, (1,), generator=g)) for s in x.shape[2:]]
    return torch.roll(x, shifts=shifts, dims=(2, 3, 4))


def random_cutout(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Zero a cube a quarter of the size at a random place, per sample (all channels)."""
    size = [s // 4 for s in x.shape[2:]]
    keep = torch.ones_like(x[:, :1])
    for i in range(x.shape[0]):
        c = [int(torch.randint(0, s - k + 1, (1,), generator=g)) for s, k in zip(x.shape[2:], size, strict=False)]
        keep[i, :, c[0] : c[0] + size[0], c[1] : c[1] + size[1], c[2] : c[2] + size[2]] = 0
    return x * keep
