"""A 3D feature encoder trained inside the pipeline, on the real train split only, self-supervised.

No pretrained network is downloaded. The encoder learns by contrast (SimCLR's NT-Xent loss): two
random augmentations of the same case (flips, shift, intensity scale and offset, noise, cutout) must
map close together and away from the other cases of the batch. What it learns is what distinguishes
one training case from another, which is what FID / KID / PRDC need from a feature space.

Optionally a user's own encoder (e.g. MedicalNet converted to TorchScript) is loaded from a local path:
a TorchScript module taking (N, 1, D, H, W) images in [-1, 1] and returning (N, F) features. TorchScript
is code (its methods run on load and on every forward), so such a file is loaded only when its SHA-256
equals the digest the user wrote in params.yaml (``evaluate.encoder.sha256``).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medsynth.config import ConfigError
from medsynth.io.writers import save_torch_atomic
from medsynth.models.blocks import random_cutout, random_flip_shift


class Encoder3d(nn.Module):
    def __init__(self, in_channels: int = 2, width: int = 16, dim: int = 64):
        super().__init__()
        layers, c = [], in_channels
        for w in (width, width * 2, width * 4):
            layers += [nn.Conv3d(c, w, 3, stride=2, padding=1), nn.GroupNorm(min(8, w), w), nn.LeakyReLU(0.2),
                       nn.Conv3d(w, w, 3, padding=1), nn.GroupNorm(min(8, w), w), nn.LeakyReLU(0.2)]
            c = w
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(c, dim)
        # projection head, training only; its batch norm keeps the features from collapsing to a constant
        # (seen without it on the near-identical demo phantoms: NT-Xent stuck at chance)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x).mean(dim=(2, 3, 4)))


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random views of (N, 2, D, H, W): image channel 0 in [-1, 1], mask channel 1."""
    n = len(x)
    x = random_flip_shift(x, g)
    scale = 1 + (torch.rand(n, 1, 1, 1, 1, generator=g) - 0.5) * 0.4
    offset = (torch.rand(n, 1, 1, 1, 1, generator=g) - 0.5) * 0.3
    img = (x[:, :1] * scale + offset + 0.05 * torch.randn(x[:, :1].shape, generator=g)).clamp(-1, 1)
    return random_cutout(torch.cat([img, x[:, 1:]], 1), g)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    n = len(z1)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def train_encoder(x: torch.Tensor, steps: int = 200, batch_size: int = 16, dim: int = 64, width: int = 16, seed: int = 0,
                  lr: float = 1e-3) -> tuple[Encoder3d, list[float]]:
    """Train on the real train split ``x`` (N, 2, D, H, W); returns the encoder and the loss curve."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    enc = Encoder3d(x.shape[1], width, dim)
    opt = torch.optim.Adam(enc.parameters(), lr=lr)
    x = x.float()
    losses = []
    b = max(2, min(batch_size, len(x)))
    for _ in range(steps):
        idx = torch.randperm(len(x), generator=g)[:b]
        batch = x[idx]
        loss = nt_xent(enc.head(enc(augment(batch, g))), enc.head(enc(augment(batch, g))))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return enc.eval(), losses


@torch.no_grad()
def embed(encoder: nn.Module, x: np.ndarray | torch.Tensor, batch: int = 32, image_only: bool = False) -> np.ndarray:
    """(N, 2, D, H, W) cases -> (N, F) float64 features."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if image_only:
        x = x[:, :1]
    out = [encoder(x[i : i + batch]).float() for i in range(0, len(x), batch)]
    return torch.cat(out).numpy().astype(np.float64)


def standardiser(reference: np.ndarray):
    """z-scoring with the reference set's mean and SD per dimension, so distances and FID are in units of
    the real training data's spread, whatever the encoder's output scale."""
    mu, sd = reference.mean(0), reference.std(0) + 1e-8
    return lambda v: (v - mu) / sd


def standardise(features: dict[str, np.ndarray], reference: str = "train") -> dict[str, np.ndarray]:
    """Every feature set z-scored with the ``reference`` set's statistics (see :func:`standardiser`)."""
    scale = standardiser(features[reference])
    return {k: scale(v) for k, v in features.items()}


def save_encoder(enc: Encoder3d, path: Path, meta: dict) -> None:
    save_torch_atomic(Path(path), {"state_dict": enc.state_dict(), "in_channels": enc.body[0].in_channels, "width": enc.body[0].out_channels,
                                   "dim": enc.out.out_features, "meta": meta})


def is_torchscript(file: Path | io.BytesIO) -> bool:
    """Whether ``file`` is a TorchScript archive, by content: a traced MedicalNet is often saved as
    ``.pt`` like a state dict. TorchScript zips hold ``constants.pkl`` and ``code/``; torch.save's do not."""
    import zipfile

    if not zipfile.is_zipfile(file):
        return False
    with zipfile.ZipFile(file) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def load_encoder(path: Path, sha256: str | None = None, key: str = "evaluate.encoder.weights",
                 sha256_key: str = "evaluate.encoder.sha256") -> tuple[nn.Module, bool]:
    """medsynth's own encoder.pt, or a user's TorchScript file (image channel only) -> (module, image_only).

    The file is read once; its bytes are checked against ``sha256`` when that is given, and TorchScript
    is loaded only then (a state dict is loaded with ``weights_only=True`` either way). Errors name the
    params keys (``key``: the path, ``sha256_key``: the digest), the file and the digest found."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}: {path} not found (a local encoder.pt or TorchScript file)")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and digest != sha256.lower():
        raise ConfigError(f"{key}: {path} has SHA-256 {digest}, not the {sha256_key} {sha256.lower()} written in params.yaml: "
                          "the file changed since you pinned it, or the pin is wrong; nothing was loaded")
    if is_torchscript(io.BytesIO(data)):
        if not sha256:
            raise ConfigError(f"{key}: {path} is TorchScript, which is code that runs when it is loaded and used; refused. "
                              f"If you trust where it comes from, pin it: {sha256_key}: {digest} in params.yaml")
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval(), True
    blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    enc = Encoder3d(blob["in_channels"], blob["width"], blob["dim"])
    enc.load_state_dict(blob["state_dict"])
    return enc.eval(), False
