"""Optional perceptual loss for the VAE-GAN, from a feature network on a **local** path only.

Nothing is downloaded. The network is either medsynth's own feature encoder (``models/encoder/encoder.pt``
of the encoder stage: image + mask channels) or a TorchScript file mapping (N, 1, D, H, W) images in
[-1, 1] to (N, F) features -- e.g. MedicalNet traced as in docs/user-guide.md; TorchScript is code and is
loaded only when its SHA-256 equals ``train.vaegan.perceptual_sha256``. It is frozen, kept out of
the model's parameters and checkpoints, and compares the features of the reconstruction with those of
the real case (squared distance, scaled by the real features' variance so the weight is comparable
across networks).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class PerceptualLoss3d:
    """Frozen feature network -> loss(fake image, real case). Not an nn.Module on purpose: its weights
    never enter the generator's parameters, optimiser or checkpoints."""

    def __init__(self, path: str | Path, sha256: str | None = None):
        from medsynth.eval.encoder import load_encoder

        path = Path(path)
        net, self.image_only = load_encoder(path, sha256, "train.vaegan.perceptual_network", "train.vaegan.perceptual_sha256")
        for p in net.parameters():
            p.requires_grad_(False)
        self.net: nn.Module = net.eval()
        self.path = str(path)

    def to(self, device: torch.device) -> PerceptualLoss3d:
        self.net = self.net.to(device)
        return self

    def __call__(self, fake_image: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``fake_image`` (N,1,D,H,W); ``real`` bank cases (N,2,D,H,W): image + label map."""
        if self.image_only:
            f_fake, f_real = self.net(fake_image.float()), self.net(real[:, :1].float())
        else:  # medsynth's encoder sees image + mask: the real mask goes with both
            f_fake = self.net(torch.cat([fake_image.float(), real[:, 1:2].float()], 1))
            f_real = self.net(real[:, :2].float())
        f_real = f_real.detach()
        return (f_fake - f_real).pow(2).mean() / (f_real.var() + 1e-6)
