"""What :func:`medsynth.models.training.train_model` needs of a model: the contract a plug-in implements.

A registered model is a class that :class:`ModelFactory` describes: called with the ``train.<name>``
section, the cohort's ``data_info`` and the run's seed and logging cadence, it builds a
``lightning.LightningModule`` that is a :class:`TrainableModule`. A model that is not is refused before
training with :class:`ModelContractError`, naming what it lacks.

Deriving from :class:`medsynth.models.base.GenerativeModule` provides all of this and every optional
capability below. A plug-in that does not derive from it implements what it needs; each capability it
lacks only leaves out what that capability adds:

* :class:`Accelerable`: the GPU speed-ups ``train.compile``, ``train.channels_last`` and ``train.activation_checkpointing``;
* :class:`SignedRun`: a run signature in its checkpoints, so that only a checkpoint of this very run is resumed
  (without it, a checkpoint is resumed whenever its weights fit);
* :class:`TimedTraining`: train.json's ``train_seconds`` summed over resumed runs (without it: this run's wall time);
* :class:`PreparesExport`: a step after training and before :meth:`TrainableModule.export`, whose figures go to train.json;
* :class:`ReportsSummary`: model-specific figures for train.json;
* :class:`DiversityMonitored`: the mode-collapse alarm (:class:`medsynth.models.callbacks.ModeCollapseAlarm`) and
  train.json's ``final_diversity`` and ``diversity_alarms``;
* :class:`DrawsSampleImages`: sample images for a logger that takes images (:class:`ImageLog`, e.g. DVCLive).

The protocols are ``runtime_checkable``: ``isinstance`` tests that the members exist, not their signatures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import lightning as L
import numpy as np
import torch
from torch import nn


class ModelContractError(TypeError):
    """A registered model does not provide what training needs of it."""


class ModelFactory(Protocol):
    """A registered model class (an entry point of the ``medsynth.models`` group, or ``registry.register``)."""

    def __call__(self, config: dict[str, Any], data_info: dict[str, Any], *, seed: int, log_every: int, image_every: int) -> object:
        """``config``: the model's ``train.<name>`` section; ``data_info``: :func:`medsynth.cohort.data_info_from`
        of the cohort; ``log_every``: steps between logged scalars (train.log_every); ``image_every``: steps
        between sample images and diversity checks (train.checkpoint_every)."""
        ...


@runtime_checkable
class TrainableModule(Protocol):
    """What every model provides, besides being a ``lightning.LightningModule`` (whose ``training_step`` and
    ``configure_optimizers`` train it; ``automatic_optimization = False`` when it steps its optimizers itself)."""

    iteration: torch.Tensor  # iterations trained (a buffer, so that checkpoints keep it): train.json's steps

    @property
    def sampler(self) -> nn.Module:
        """The network synthesis draws from (exported); its parameter count goes to train.json."""
        ...

    def attach_bank(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Receive the train split before fitting: x float16 (N, 2, D, H, W) image and label map, y (N,) condition index.
        The model draws its batches from it (the loader only paces the steps)."""
        ...

    def export(self) -> dict[str, Any]:
        """What ``model.pt`` holds: plain tensors and JSON-able values (loaded with ``weights_only=True``)."""
        ...


@runtime_checkable
class Accelerable(Protocol):
    def accelerate(self, compile: bool = False, channels_last: bool = False, checkpointing: bool = False) -> None:
        """Apply GPU speed-ups that leave the maths and the state_dict keys unchanged."""
        ...


@runtime_checkable
class SignedRun(Protocol):
    """A model that writes ``run_signature`` into its checkpoints as ``checkpoint["medsynth_run"]``."""

    run_signature: dict[str, Any] | None  # set by train_model before fitting
    export_settings: tuple[str, ...]  # settings only export reads: changing one refits at export, not a new run


@runtime_checkable
class TimedTraining(Protocol):
    def train_seconds(self) -> float:
        """Training time of this run plus that of the runs it resumed."""
        ...


@runtime_checkable
class PreparesExport(Protocol):
    def prepare_export(self) -> dict[str, Any]:
        """Called once after training, before ``export`` (e.g. fitting a latent prior); returns figures for train.json."""
        ...


@runtime_checkable
class ReportsSummary(Protocol):
    def summary_extras(self) -> dict[str, Any]:
        """Model-specific figures for train.json."""
        ...


@runtime_checkable
class DiversityMonitored(Protocol):
    """A model whose samples' diversity is watched for mode collapse."""

    name: str  # named in the alarm's warnings
    diversity_alarms: list[dict[str, Any]]  # the alarms raised (a resumed run keeps those of its checkpoint)

    @property
    def step_index(self) -> int:
        """Iterations trained so far, readable without a device sync."""
        ...

    def diversity(self) -> float:
        """Within-condition diversity of samples relative to real cases: 1 = as varied as real patients, near 0 = collapse."""
        ...

    def export_sampling(self) -> dict[str, Any]:
        """How synthesis samples when that differs from training-time monitoring (recorded with an alarm at export)."""
        ...


@runtime_checkable
class DrawsSampleImages(Protocol):
    @property
    def step_index(self) -> int: ...

    def sample_image(self) -> np.ndarray | None:
        """A uint8 picture of fixed-noise samples (one 2D tile per condition side by side), or None for none."""
        ...


@runtime_checkable
class ImageLog(Protocol):
    """A logger's experiment that takes images (DVCLive's ``Live``)."""

    def log_image(self, name: str, val: Any) -> Any: ...


@runtime_checkable
class CheckpointableBlocks(Protocol):
    """A sub-network that recomputes its blocks' activations in backward when ``checkpoint_blocks`` is set."""

    checkpoint_blocks: bool


if TYPE_CHECKING:
    class TrainableLightningModule(L.LightningModule, TrainableModule):
        """A LightningModule that is a TrainableModule, for the type checker (Python has no intersection
        type): :func:`require_trainable` checks both at run time and returns the module as this."""


def protocol_members(protocol: type) -> list[str]:
    """The attribute and method names a protocol declares."""
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {k for k, v in vars(protocol).items() if not k.startswith("_") and (callable(v) or isinstance(v, property))}
    return sorted(names)


def missing_members(obj: object, protocol: type) -> list[str]:
    return [m for m in protocol_members(protocol) if not hasattr(obj, m)]


def require_trainable(module: object, name: str) -> TrainableLightningModule:
    """``module`` (built by model ``name``'s class) as a trainable LightningModule, or ModelContractError
    naming what it lacks."""
    what = f"model {name!r} ({type(module).__module__}.{type(module).__qualname__})"
    if not isinstance(module, L.LightningModule):
        raise ModelContractError(f"{what} is not a lightning.LightningModule; a registered model class must build one "
                                 "(derive from medsynth.models.base.GenerativeModule for all medsynth needs)")
    if not isinstance(module, TrainableModule):
        raise ModelContractError(f"{what} lacks {', '.join(missing_members(module, TrainableModule))} of "
                                 "medsynth.models.contract.TrainableModule (what training needs of every model; "
                                 "medsynth.models.base.GenerativeModule provides it)")
    return cast("TrainableLightningModule", module)  # both checked above
