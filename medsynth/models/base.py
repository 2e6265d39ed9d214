"""What every medsynth generative model shares: the in-memory data bank, step-seeded batches,
EMA, the divergence guard, diversity alarm, sample images and the export format.

Batches are chosen from the step counter with a seeded generator, never from a shuffling
DataLoader: training interrupted and resumed from a checkpoint sees exactly the batches and noise an
uninterrupted run would, so it reaches the same weights.
"""

from __future__ import annotations

import copy
import json

import lightning as L
import numpy as np
import torch
from torch import nn


class DivergenceError(RuntimeError):
    pass


def grad_norm(params) -> float:
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


class GenerativeModule(L.LightningModule):
    """Base LightningModule. Subclasses define ``sampler`` (an nn.Module with ``sample(y, z)``)."""

    name = "base"

    def __init__(self, config: dict, data_info: dict, seed: int = 0, log_every: int = 10, image_every: int = 100):
        super().__init__()
        self.config = dict(config)
        self.data_info = dict(data_info)
        self.seed = int(seed)
        self.log_every = log_every
        self.image_every = image_every
        self.n_classes = len(data_info["conditions"])
        self.n_mask_labels = int(data_info["n_mask_labels"])
        self.roi = tuple(int(s) for s in data_info["roi_size"])
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.bank_x: torch.Tensor | None = None  # (N, 2, D, H, W)
        self.bank_y: torch.Tensor | None = None

    # ------------------------------------------------------------------ data
    def attach_bank(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.bank_x, self.bank_y = x, y

    def step_generator(self, purpose: int = 0) -> torch.Generator:
        g = torch.Generator(device="cpu")
        g.manual_seed(self.seed * 1_000_003 + int(self.iteration) * 7919 + purpose)
        return g

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.bank_x is not None, "attach_bank() before training"
        g = self.step_generator(1)
        # class-balanced draws: the rare condition is seen as often as the common one
        cls = torch.randint(0, self.n_classes, (batch_size,), generator=g)
        idx = []
        for c in cls.tolist():
            members = self._members[c]
            idx.append(members[int(torch.randint(0, len(members), (1,), generator=g))])
        idx_t = torch.tensor(idx)
        x = self.bank_x[idx_t.to(self.bank_x.device)].to(self.device, non_blocking=True).float()
        y = self.bank_y[idx_t.to(self.bank_y.device)].to(self.device)
        return x, y

    def on_fit_start(self) -> None:
        ys = self.bank_y.cpu().numpy()
        present = [c for c in range(self.n_classes) if (ys == c).any()]
        self._members = {c: np.flatnonzero(ys == c).tolist() for c in present}
        for c in range(self.n_classes):  # a condition absent from train falls back to all cases
            self._members.setdefault(c, list(range(len(ys))))
        if self.bank_x.device != self.device and self.device.type == "cuda":
            self.bank_x = self.bank_x.to(self.device)
            self.bank_y = self.bank_y.to(self.device)

    def noise(self, n: int, dim: int, purpose: int = 2) -> torch.Tensor:
        return torch.randn(n, dim, generator=self.step_generator(purpose)).to(self.device)

    # ------------------------------------------------------------------ guards and monitors
    def check_finite(self, **losses: torch.Tensor) -> None:
        for name, value in losses.items():
            if not torch.isfinite(value).all():
                raise DivergenceError(
                    f"{self.name}: loss {name} became {float(value)} at step {int(self.iteration)}; training stopped. "
                    "The last good checkpoint is kept; lower the learning rate or raise r1_gamma and rerun."
                )

    @torch.no_grad()
    def diversity(self, n: int = 8) -> float:
        """Mean pairwise L1 distance of samples from a fixed noise batch, relative to real pairs (1 = as diverse)."""
        g = torch.Generator().manual_seed(self.seed + 17)
        y = torch.arange(n) % self.n_classes
        z = torch.randn(n, self.sampler.z_dim, generator=g).to(self.device)
        img, _ = self.sampler.sample(y.to(self.device), z)
        fake = img.flatten(1).float()
        real = self.bank_x[: min(n, len(self.bank_x)), :1].flatten(1).float().to(self.device)
        return float(torch.cdist(fake, fake, p=1).mean() / (torch.cdist(real, real, p=1).mean() + 1e-8))

    def log_scalars(self, **values) -> None:
        if int(self.iteration) % self.log_every == 0:
            self.log_dict({k: float(v) for k, v in values.items()}, on_step=True, prog_bar=False, logger=True)

    @torch.no_grad()
    def log_sample_image(self) -> None:
        logger = self.logger
        live = getattr(logger, "experiment", None)
        if live is None or not hasattr(live, "log_image"):
            return
        y = torch.arange(self.n_classes, device=self.device)
        z = torch.randn(self.n_classes, self.sampler.z_dim, generator=torch.Generator().manual_seed(self.seed)).to(self.device)
        img, mask = self.sampler.sample(y, z)
        mid = img.shape[-1] // 2
        tiles = [((img[i, 0, :, :, mid].float().cpu().numpy().T[::-1] + 1) * 127.5).clip(0, 255) for i in range(len(y))]
        live.log_image(f"samples/step_{int(self.iteration):06d}.png", np.concatenate(tiles, axis=1).astype(np.uint8))

    def step(self):
        raise NotImplementedError

    def training_step(self, _batch, _batch_idx):
        """One iteration: the subclass's ``step`` on the step-seeded batch, then the counter advances
        (before any checkpoint callback runs, so a checkpoint's counter matches its optimizer steps)."""
        out = self.step()
        self.iteration += 1
        return out

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if int(self.iteration) % self.image_every == 0:
            self.log_sample_image()
            self.log("diversity", self.diversity(), on_step=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["medsynth_config"] = json.loads(json.dumps(self.config))

    # ------------------------------------------------------------------ export
    def export(self) -> dict:
        return {
            "kind": self.name,
            "config": self.config,
            "data_info": self.data_info,
            "iteration": int(self.iteration),
            "state_dict": {k: v.detach().cpu() for k, v in self.sampler.state_dict().items()},
        }


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source (weights); buffers copied."""
    for t, p in zip(target.parameters(), source.parameters()):
        t.lerp_(p.detach(), 1.0 - decay)
    for t, b in zip(target.buffers(), source.buffers()):
        t.copy_(b)


def frozen_copy(module: nn.Module) -> nn.Module:
    c = copy.deepcopy(module).eval()
    for p in c.parameters():
        p.requires_grad_(False)
    return c


def kl_anneal(step: int, anneal_steps: int) -> float:
    return 1.0 if anneal_steps <= 0 else min(1.0, step / anneal_steps)
