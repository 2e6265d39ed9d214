"""What every medsynth generative model shares: the in-memory data bank, step-seeded batches,
EMA, the divergence guard, the diversity measure and sample picture that the training callbacks
(:mod:`medsynth.models.callbacks`) watch, checkpoint contents and the export format. A GenerativeModule
provides everything :mod:`medsynth.models.contract` names.

Batches are chosen from the step counter with a seeded generator, never from a shuffling
DataLoader: training interrupted and resumed from a checkpoint sees exactly the batches and noise an
uninterrupted run would, so it reaches the same weights.
"""

from __future__ import annotations

import copy
import json
import time
from typing import TYPE_CHECKING, TypeVar

import lightning as L
import numpy as np
import torch
from torch import nn

from medsynth.models.blocks import Sampler, one_hot_mask
from medsynth.models.contract import CheckpointableBlocks
from medsynth.models.export_format import EXPORT_FORMAT

if TYPE_CHECKING:
    from pydantic import BaseModel

    from medsynth.models.contract import (
        Accelerable,
        DiversityMonitored,
        DrawsSampleImages,
        PreparesExport,
        ReportsSummary,
        SignedRun,
        TimedTraining,
        TrainableModule,
    )


class DivergenceError(RuntimeError):
    pass


class TrainingDataError(ValueError):
    """The train split cannot teach this model what it needs (e.g. no structure that the rare condition changes)."""


def grad_norm(params) -> torch.Tensor:
    """Global gradient norm as a 0-d tensor (no host sync; converted only when logged)."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor -> device without stalling the host: pinned memory + non_blocking on CUDA."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class GenerativeModule(L.LightningModule):
    """Base LightningModule. Subclasses define ``sampler`` (an nn.Module with ``sample(y, z)``)."""

    name = "base"
    config_class: type[BaseModel] | None = None  # a pydantic model validating train.<name> (medsynth.config.ModelSection if None)
    export_settings: tuple[str, ...] = ()  # settings read only by prepare_export: not part of the run signature
    run_signature: dict | None = None  # what a checkpoint must share with this run to be resumed (set by train_model)
    iteration: torch.Tensor  # a buffer: optimizer steps taken (registered in __init__)
    _members: dict[int, list[int]]  # bank indices of each condition (on_fit_start)

    sampler_network = ""  # the attribute holding the network synthesis draws from (a subclass names it, or overrides sampler)

    @property
    def sampler(self) -> Sampler:
        """The network synthesis draws from (exported): the attribute ``sampler_network`` names."""
        return getattr(self, self.sampler_network)

    if TYPE_CHECKING:  # what every subclass defines (declared here for the type checker only)
        @classmethod
        def build_sampler(cls, config: dict, data_info: dict) -> Sampler: ...

    def __init__(self, config: dict, data_info: dict, seed: int = 0, log_every: int = 10, image_every: int = 100):
        super().__init__()
        self.config = dict(config)
        self.data_info = dict(data_info)
        self.seed = int(seed)
        self.log_every = log_every
        self.image_every = image_every  # steps between sample images and diversity checks (train_model gives its callbacks the same)
        self.n_classes = len(data_info["conditions"])
        self.n_mask_labels = int(data_info["n_mask_labels"])
        self.roi = tuple(int(s) for s in data_info["roi_size"])
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self._step = 0  # host mirror of ``iteration``: reading the buffer on a GPU would sync every step
        self._nonfinite: torch.Tensor | None = None  # device flag, checked every log_every steps on GPU
        self._channels_last = False
        self.train_seconds_before = 0.0  # training time of the runs this one resumes (from the checkpoint)
        self._train_t0: float | None = None
        self.bank_x: torch.Tensor | None = None  # (N, 2, D, H, W)
        self.bank_y: torch.Tensor | None = None
        self.diversity_alarms: list[dict] = []  # raised by callbacks.ModeCollapseAlarm; kept in checkpoints

    # ------------------------------------------------------------------ data
    def attach_bank(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.bank_x, self.bank_y = x, y

    @property
    def voxels(self) -> int:
        """Voxels per case: the KL of the VAEs is divided by this, so ``kl_weight`` is the beta of a
        per-voxel ELBO and means the same at 16^3 and 128^3."""
        return int(np.prod(self.roi))

    @property
    def step_index(self) -> int:
        return self._step

    def optimizer_list(self) -> list:
        """The LightningOptimizers of manual optimisation, in configure_optimizers' order (Lightning gives
        one optimizer bare and several as a list)."""
        opts = self.optimizers()
        return opts if isinstance(opts, list) else [opts]

    def step_generator(self, purpose: int = 0) -> torch.Generator:
        """Seeded by (seed, step, purpose, rank): a resumed run draws what the uninterrupted one drew, and
        under DDP every process draws its own batch and noise (rank 0 draws what a single process would)."""
        rank = self._trainer.global_rank if self._trainer is not None else 0
        g = torch.Generator(device="cpu")
        g.manual_seed(self.seed * 1_000_003 + self._step * 7919 + purpose + rank * 104_729)
        return g

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs in the memory format the networks were converted to (channels-last 3D on a GPU)."""
        return x.contiguous(memory_format=torch.channels_last_3d) if self._channels_last and x.dim() == 5 else x

    def joint(self, x: torch.Tensor) -> torch.Tensor:
        """Bank cases (image, label map) -> image + one-hot mask channels, the networks' joint input."""
        return self.layout(torch.cat([x[:, :1], one_hot_mask(x[:, 1:], self.n_mask_labels)], 1))

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.bank_x is not None and self.bank_y is not None, "attach_bank() before training"
        g = self.step_generator(1)
        # class-balanced draws: the rare condition is seen as often as the common one
        cls = torch.randint(0, self.n_classes, (batch_size,), generator=g)
        idx = []
        for c in cls.tolist():
            members = self._members[c]
            idx.append(members[int(torch.randint(0, len(members), (1,), generator=g))])
        idx_t = to_device(torch.tensor(idx), self.bank_x.device)
        x = self.bank_x[idx_t].to(self.device, non_blocking=True).float()
        y = self.bank_y[idx_t].to(self.device, non_blocking=True)
        return self.layout(x), y

    def on_fit_start(self) -> None:
        assert self.bank_x is not None and self.bank_y is not None, "attach_bank() before training"
        ys = self.bank_y.cpu().numpy()
        present = [c for c in range(self.n_classes) if (ys == c).any()]
        self._members = {c: np.flatnonzero(ys == c).tolist() for c in present}
        for c in range(self.n_classes):  # a condition absent from train falls back to all cases
            self._members.setdefault(c, list(range(len(ys))))
        if self.bank_x.device != self.device and self.device.type == "cuda":
            self.bank_x = self.bank_x.to(self.device)
            self.bank_y = self.bank_y.to(self.device)

    def on_train_start(self) -> None:
        self._step = int(self.iteration)  # after a resume the buffer holds the checkpoint's counter
        self._train_t0 = time.perf_counter()

    def train_seconds(self) -> float:
        """Training time of this run plus that of the runs it resumed: what the model cost to train."""
        return self.train_seconds_before + (time.perf_counter() - self._train_t0 if self._train_t0 is not None else 0.0)

    def noise(self, n: int, dim: int, purpose: int = 2) -> torch.Tensor:
        return to_device(torch.randn(n, dim, generator=self.step_generator(purpose)), self.device)

    # ------------------------------------------------------------------ speed
    compile_targets: tuple[str, ...] = ()

    def accelerate(self, compile: bool = False, channels_last: bool = False, checkpointing: bool = False) -> None:
        """GPU speed-ups that leave the maths (and the state_dict keys) unchanged: channels-last 3D
        weights and inputs, ``nn.Module.compile`` of the heavy sub-networks, and activation
        checkpointing (recompute in backward instead of storing: less memory, some extra compute)."""
        if checkpointing:
            self.enable_checkpointing()
        if channels_last:
            self.to(memory_format=torch.channels_last_3d)
            self._channels_last = True
        if compile:  # only modules invoked through __call__ are compiled: name those, not their owners
            for name in self.compile_targets:
                self.get_submodule(name).compile()

    def enable_checkpointing(self) -> None:
        for m in self.modules():
            if isinstance(m, CheckpointableBlocks):
                m.checkpoint_blocks = True

    # ------------------------------------------------------------------ guards and monitors
    def check_finite(self, **losses: torch.Tensor) -> None:
        """Divergence guard. On CPU every loss is checked at once; on a GPU a device-side flag collects
        non-finite values and is read every ``log_every`` steps and before any checkpoint is written,
        so the step never waits on the host and no checkpoint holds a diverged model."""
        if self.device.type == "cuda":
            bad = torch.stack([~torch.isfinite(v.detach()).all() for v in losses.values()])
            flag = bad.any()
            self._nonfinite = flag if self._nonfinite is None else (self._nonfinite | flag)
            if self.logging_step:
                self.raise_if_diverged(", ".join(losses))
            return
        for name, value in losses.items():
            if not torch.isfinite(value).all():
                raise DivergenceError(
                    f"{self.name}: loss {name} became {float(value.detach())} at step {self._step}; training stopped. "
                    "The last good checkpoint is kept; lower the learning rate or raise r1_gamma and rerun."
                )

    def raise_if_diverged(self, names: str = "a loss") -> None:
        if self._nonfinite is not None and bool(self._nonfinite):
            raise DivergenceError(
                f"{self.name}: {names} became NaN/Inf by step {self._step} (checked every {self.log_every} steps on GPU); "
                "training stopped. The last good checkpoint is kept; lower the learning rate or raise r1_gamma and rerun."
            )

    @torch.no_grad()
    def diversity(self, per_class: int = 6) -> float:
        """Within-condition diversity, the mode-collapse signal: mean pairwise L1 distance between samples of
        one condition drawn from different (fixed) noise, over the same for real training cases of that
        condition; the mean over conditions. 1 = as diverse as real patients; near 0 = every noise gives
        the same case. (Across conditions samples differ anyway, so pairs never mix conditions.)"""
        assert self.bank_x is not None, "attach_bank() before training"
        g = torch.Generator().manual_seed(self.seed + 17)
        members = getattr(self, "_members", None) or {}
        ratios = []
        for c in range(self.n_classes):
            real_idx = list(members.get(c, range(len(self.bank_x))))[:per_class]
            if len(real_idx) < 2:
                continue
            y = torch.full((per_class,), c, dtype=torch.long)
            z = torch.randn(per_class, self.sampler.z_dim, generator=g).to(self.device)
            img, _ = self.sampler.sample(y.to(self.device), z, *self.monitoring_masks(y))
            fake = img.flatten(1).float()
            real = self.bank_x[torch.tensor(real_idx, device=self.bank_x.device), :1].flatten(1).float().to(self.device)
            ratios.append(float(_mean_pairwise_l1(fake) / (_mean_pairwise_l1(real) + 1e-8)))
        return float(np.mean(ratios)) if ratios else 1.0

    def export_sampling(self) -> dict:
        """How synthesis samples when it differs from training-time monitoring (e.g. ``{"prior": "fitted"}``)."""
        return {}

    def monitoring_masks(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """For a mask-conditioned sampler: a fixed training mask of each requested class (the first case of
        that class in the bank), so monitoring samples stay comparable across steps; () otherwise."""
        if not getattr(self.sampler, "needs_mask", False):
            return ()
        assert self.bank_x is not None, "attach_bank() before training"
        idx = [self._members[int(c)][0] if self._members.get(int(c)) else 0 for c in y.tolist()]
        return (self.bank_x[torch.tensor(idx, device=self.bank_x.device), 1:].to(self.device).float(),)

    @property
    def logging_step(self) -> bool:
        """True on the steps whose scalars are logged (every ``log_every``)."""
        return self._step % self.log_every == 0

    def log_scalars(self, **values) -> None:
        if self.logging_step:
            self.log_dict({k: float(v) for k, v in values.items()}, on_step=True, prog_bar=False, logger=True)

    @torch.no_grad()
    def sample_image(self) -> np.ndarray | None:
        """The middle axial slice of one fixed-noise sample per condition, side by side, as uint8 (for
        callbacks.SampleImages): the same noise every time, so pictures of successive steps compare."""
        y = torch.arange(self.n_classes, device=self.device)
        z = torch.randn(self.n_classes, self.sampler.z_dim, generator=torch.Generator().manual_seed(self.seed)).to(self.device)
        img, mask = self.sampler.sample(y, z, *self.monitoring_masks(y))
        mid = img.shape[-1] // 2
        tiles = [((img[i, 0, :, :, mid].float().cpu().numpy().T[::-1] + 1) * 127.5).clip(0, 255) for i in range(len(y))]
        return np.concatenate(tiles, axis=1).astype(np.uint8)

    def step(self):
        raise NotImplementedError

    def training_step(self, _batch, _batch_idx):
        """One iteration: the subclass's ``step`` on the step-seeded batch, then the counter advances
        (before any checkpoint callback runs, so a checkpoint's counter matches its optimizer steps)."""
        out = self.step()
        self.iteration += 1
        self._step += 1
        return out

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.raise_if_diverged()
        checkpoint["medsynth_config"] = json.loads(json.dumps(self.config))
        checkpoint["medsynth_run"] = json.loads(json.dumps(self.run_signature))
        checkpoint["medsynth_diversity_alarms"] = list(self.diversity_alarms)
        checkpoint["medsynth_train_seconds"] = float(self.train_seconds())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.diversity_alarms = list(checkpoint.get("medsynth_diversity_alarms", []))
        self.train_seconds_before = float(checkpoint.get("medsynth_train_seconds", 0.0))

    def summary_extras(self) -> dict:
        """Model-specific figures for train.json (e.g. the cGAN's final augmentation probability)."""
        return {}

    # ------------------------------------------------------------------ export
    def prepare_export(self) -> dict:
        """Called once after training, before :meth:`export` (e.g. the VAEs fit their latent prior here);
        returns figures for train.json."""
        return {}

    def export(self) -> dict:
        return {
            "format": EXPORT_FORMAT,
            "kind": self.name,
            "config": self.config,
            "data_info": self.data_info,
            "iteration": int(self.iteration),
            "state_dict": {k: v.detach().cpu() for k, v in self.sampler.state_dict().items()},
        }


if TYPE_CHECKING:  # the type checker verifies that a GenerativeModule provides the whole training contract
    def _provides_contract(m: GenerativeModule) -> tuple[TrainableModule, Accelerable, SignedRun, TimedTraining, PreparesExport, ReportsSummary,
                                                        DiversityMonitored, DrawsSampleImages]:
        return m, m, m, m, m, m, m, m


def _mean_pairwise_l1(x: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance over distinct pairs of rows (the zero diagonal left out)."""
    n = len(x)
    return torch.cdist(x, x, p=1).sum() / max(n * (n - 1), 1)


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source (weights); buffers copied."""
    for t, p in zip(target.parameters(), source.parameters(), strict=False):
        t.lerp_(p.detach(), 1.0 - decay)
    for tb, b in zip(target.buffers(), source.buffers(), strict=False):
        tb.copy_(b)


_M = TypeVar("_M", bound=nn.Module)


def frozen_copy(module: _M) -> _M:
    c = copy.deepcopy(module).eval()
    for p in c.parameters():
        p.requires_grad_(False)
    return c


def noise_sensitivity(fake_a: torch.Tensor, fake_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """How much the samples of one condition move with the noise: mean |G(z_a) - G(z_b)| / mean |z_a - z_b|.
    The mode-seeking term (Mao et al. 2019, MSGAN) adds 1 / this to the generator loss, so a generator that
    ignores its noise -- the collapse a class-conditional GAN falls into on a small cohort -- pays for it."""
    return (fake_a - fake_b).abs().mean() / (z_a - z_b).abs().mean()


def mode_seeking_loss(fake_a: torch.Tensor, fake_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor,
                      weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The MSGAN term ``weight / noise_sensitivity`` (bounded by the 1e-5 floor) and the sensitivity itself,
    for logging. ``fake_a`` and ``fake_b`` are samples of the same conditions from noise ``z_a`` and ``z_b``."""
    sensitivity = noise_sensitivity(fake_a, fake_b, z_a, z_b)
    return weight / (sensitivity + 1e-5), sensitivity


def kl_anneal(step: int, anneal_steps: int) -> float:
    return 1.0 if anneal_steps <= 0 else min(1.0, step / anneal_steps)
