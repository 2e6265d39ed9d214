"""Train one registered model on the preprocessed cohort with Lightning.

* The train split is read once through a MONAI CacheDataset and kept as one tensor bank (on the GPU
  when training there), so the step never waits for data.
* Checkpoints every ``checkpoint_every`` steps and at the end (``checkpoints/last.ckpt``); a rerun
  resumes from ``last.ckpt`` and reaches the same weights as an uninterrupted run.
* The final sampler (EMA generator / decoder) is exported to ``model.pt`` as plain tensors plus a
  JSON-able config, loadable with ``torch.load(weights_only=True)``.
* Metrics go to the Lightning logger the caller's factory makes (the DVC pipeline's logs with
  DVCLive); this module imports nothing of DVC.

:func:`train_model` runs the steps below in order; what it needs of a model is in :mod:`medsynth.models.contract`.

1. :func:`load_training_data`: preprocess.json and the train split (:class:`TrainingData`);
2. :func:`build_module`: the registered model, checked against the contract, GPU speed-ups applied;
3. :func:`sign_run` and :func:`plan_resume`: the run signature, and which checkpoint to resume (:class:`ResumePlan`);
4. :func:`make_callbacks` and :func:`make_trainer`: checkpointing, sample images, the mode-collapse alarm, the Trainer;
5. :func:`fit`: training (:class:`FitResult`);
6. :func:`export_model` and :func:`summarize`: ``model.pt`` and ``train.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from medsynth.cohort import PreprocessInfo, TensorBank, data_info_from, load_bank, read_preprocess_info
from medsynth.config import TrainConfig
from medsynth.io.writers import save_torch_atomic, write_json_atomic
from medsynth.models import registry
from medsynth.models.callbacks import ModeCollapseAlarm, SampleImages
from medsynth.models.contract import (
    Accelerable,
    DiversityMonitored,
    DrawsSampleImages,
    ModelFactory,
    PreparesExport,
    ReportsSummary,
    SignedRun,
    TimedTraining,
    require_trainable,
)

if TYPE_CHECKING:
    from medsynth.models.contract import TrainableLightningModule

Precision = Literal["32-true", "bf16-mixed", "16-mixed"]


class _StepIndex(Dataset[int]):
    """The loader only paces the loop; batches come from the model's step-seeded bank."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def resolve_precision(cfg: TrainConfig) -> Precision:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16-mixed" if uses_gpu(cfg) else "32-true"


def uses_gpu(cfg: TrainConfig) -> bool:
    return cfg.accelerator == "gpu" or (cfg.accelerator == "auto" and torch.cuda.is_available())


# ---------------------------------------------------------------------- 1. data
@dataclass(frozen=True)
class TrainingData:
    """What training reads of the preprocess stage: its record, the train split and what a model keeps of the record."""

    info: PreprocessInfo
    bank: TensorBank  # the train split
    data_info: dict[str, Any]  # data_info_from(info): what the model is built with and exports


def load_training_data(preprocess_dir: Path, expected_hash: str | None = None) -> TrainingData:
    """preprocess.json (a StaleCacheError if its transform hash is not ``expected_hash``) and the train split."""
    info = read_preprocess_info(preprocess_dir, expected_hash)
    return TrainingData(info, load_bank(preprocess_dir, ("train",), info), data_info_from(info))


# ---------------------------------------------------------------------- 2. the model
def build_module(name: str, model_cfg: dict[str, Any], data_info: dict[str, Any], seed: int, train_cfg: TrainConfig) -> TrainableLightningModule:
    """Model ``name`` built by its registered class; ModelContractError when it is not trainable; the GPU
    speed-ups train_cfg asks for applied when the model offers them."""
    factory: ModelFactory = registry.get(name)
    module = require_trainable(
        factory(model_cfg, data_info, seed=seed, log_every=train_cfg.log_every, image_every=train_cfg.checkpoint_every), name)
    if isinstance(module, Accelerable):
        gpu = uses_gpu(train_cfg)
        module.accelerate(
            compile=train_cfg.compile == "on" or (train_cfg.compile == "auto" and gpu),
            channels_last=train_cfg.channels_last == "on" or (train_cfg.channels_last == "auto" and gpu),
            checkpointing=train_cfg.activation_checkpointing,
        )
    return module


def optimizer_steps_per_iteration(module: L.LightningModule) -> int:
    """Lightning's ``global_step`` counts optimizer steps: one per iteration under automatic optimisation,
    one per optimizer for a model that steps its optimizers itself."""
    if module.automatic_optimization:
        return 1
    optimizers = module.configure_optimizers()
    return len(optimizers) if isinstance(optimizers, (list, tuple)) else 1


# ---------------------------------------------------------------------- 3. resume policy
def run_signature(name: str, model_cfg: dict[str, Any], seed: int, info: Mapping[str, object], rows: Sequence[Mapping[str, object]],
                  export_settings: tuple[str, ...] = ()) -> dict[str, Any]:
    """What a checkpoint must share with this run to be resumed: the model, its settings except ``steps``
    (raising steps continues a run) and those only export reads (``export_settings``, e.g. the VAEs'
    prior_shrinkage: changing one refits at export), the seed, the preprocessing and the training cases."""
    cases = hashlib.sha256("\n".join(sorted(str(r.get("case_id", "")) for r in rows)).encode()).hexdigest()[:16]
    skip = {"steps", *export_settings}
    return {"model": name, "config": {k: v for k, v in sorted(model_cfg.items()) if k not in skip}, "seed": int(seed),
            "transform_hash": info.get("transform_hash"), "train_cases": cases}


def sign_run(module: L.LightningModule, name: str, model_cfg: dict[str, Any], seed: int, data: TrainingData) -> None:
    """Give a model that writes a run signature into its checkpoints (:class:`~medsynth.models.contract.SignedRun`) this run's."""
    if isinstance(module, SignedRun):
        module.run_signature = run_signature(name, model_cfg, seed, data.info, data.bank.rows, tuple(module.export_settings))


def discard_foreign_checkpoint(ckpt_dir: Path, module: L.LightningModule, steps: int | None = None, optimizers: int = 1) -> str | None:
    """Resume only a checkpoint of this very run. A checkpoint written under other settings (a changed
    learning rate, another seed, new training cases), by another version of the network (other weight
    shapes) or further than ``steps`` (the configured steps were lowered: resuming would export the
    longer run under the shorter run's settings) would otherwise be continued silently, or fail deep
    inside Lightning. Such checkpoints are deleted (they are this stage's own outputs) and the reason
    is returned and printed; None: nothing to discard. ``optimizers``: optimizer steps per iteration,
    to count a plug-in's iterations from Lightning's ``global_step`` when its state has no ``iteration``.
    A model that is not a :class:`~medsynth.models.contract.SignedRun` is resumed whenever its weights fit."""
    last = ckpt_dir / "last.ckpt"
    if not last.is_file():
        return None
    current, export_settings = (module.run_signature, module.export_settings) if isinstance(module, SignedRun) else (None, ())
    reason: str | None = None
    try:
        blob = torch.load(last, map_location="cpu", weights_only=True)
        saved = blob.get("medsynth_run")
        if saved and isinstance(saved.get("config"), dict):  # signatures written before a setting became export-only
            saved = {**saved, "config": {k: v for k, v in saved["config"].items() if k not in export_settings}}
        state = blob.get("state_dict", {})
        done = int(state["iteration"]) if "iteration" in state else int(blob.get("global_step", 0)) // max(1, optimizers)
    except Exception as exc:  # noqa: BLE001 -- an unreadable checkpoint is not resumable, whatever the cause
        saved, state, done, reason = None, {}, 0, f"unreadable ({type(exc).__name__})"
    if reason is None and current is not None and saved != json.loads(json.dumps(current)):
        if not saved:
            reason = "written without a run signature (an older medsynth)"
        else:
            changed = [k for k in current if k != "config" and saved.get(k) != current[k]]
            cfg_old, cfg_new = saved.get("config", {}), current["config"]
            changed += [f"{k}: {cfg_old.get(k)!r} -> {cfg_new.get(k)!r}" for k in sorted(set(cfg_old) | set(cfg_new)) if cfg_old.get(k) != cfg_new.get(k)]
            reason = "written under other settings (" + "; ".join(changed) + ")"
    if reason is None and steps is not None and done > steps:
        reason = f"at step {done}, beyond steps = {steps} (steps was lowered)"
    if reason is None:
        own = module.state_dict()
        if set(state) != set(own) or any(tuple(state[k].shape) != tuple(own[k].shape) for k in own):
            reason = "written by another version of the network (its weights do not fit)"
    if reason is None:
        return None
    for f in ckpt_dir.glob("*.ckpt"):
        f.unlink(missing_ok=True)
    message = f"{last}: not resumed, {reason}; training starts afresh"
    rank_zero_warn(message)
    return message


@dataclass(frozen=True)
class ResumePlan:
    checkpoint_dir: Path
    resume_from: Path | None  # last.ckpt when it is a checkpoint of this run; None: training starts afresh
    fresh_start: str | None  # why a checkpoint there was discarded (None: none was)

    @property
    def resumes(self) -> bool:
        return self.resume_from is not None


def plan_resume(module: L.LightningModule, checkpoint_dir: Path, steps: int, optimizers: int) -> ResumePlan:
    """Discard a checkpoint of another run (:func:`discard_foreign_checkpoint`); resume ``last.ckpt`` if one remains."""
    fresh_start = discard_foreign_checkpoint(checkpoint_dir, module, steps, optimizers)
    last = checkpoint_dir / "last.ckpt"
    return ResumePlan(checkpoint_dir, last if last.is_file() else None, fresh_start)


# ---------------------------------------------------------------------- 4. the Trainer
def make_callbacks(module: L.LightningModule, train_cfg: TrainConfig, checkpoint_dir: Path, optimizers: int,
                   alarm: ModeCollapseAlarm, progress: bool) -> list[Callback]:
    """Checkpoints every ``train.checkpoint_every`` iterations and at the end; sample images and the
    mode-collapse ``alarm`` at the same cadence for a model that has what each needs; a progress bar."""
    callbacks: list[Callback] = [ModelCheckpoint(dirpath=checkpoint_dir, filename="step-{step}", every_n_train_steps=train_cfg.checkpoint_every * optimizers,
                                                 save_last=True, save_top_k=1, monitor=None)]
    if isinstance(module, DrawsSampleImages):
        callbacks.append(SampleImages(train_cfg.checkpoint_every))
    if isinstance(module, DiversityMonitored):
        callbacks.append(alarm)
    if progress:
        callbacks.append(RichProgressBar(leave=True))
    return callbacks


def make_trainer(train_cfg: TrainConfig, module: L.LightningModule, callbacks: list[Callback], logger: Logger | Literal[False],
                 max_steps: int, out_dir: Path, progress: bool) -> L.Trainer:
    """The Lightning Trainer for ``max_steps`` optimizer steps on train_cfg's devices and strategy."""
    strategy = train_cfg.strategy
    if strategy == "ddp" and not module.automatic_optimization:
        # adversarial models step D and G separately: each backward leaves the other network's parameters
        # unused, which plain DDP rejects
        strategy = "ddp_find_unused_parameters_true"
    return L.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        accelerator=train_cfg.accelerator,
        devices=train_cfg.devices,
        num_nodes=train_cfg.num_nodes,
        strategy=strategy,
        precision=resolve_precision(train_cfg),
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=1,  # the module logs every train.log_every iterations itself
        deterministic=not uses_gpu(train_cfg),
        benchmark=uses_gpu(train_cfg),  # cuDNN picks the fastest 3D conv algorithms for the fixed shapes
        default_root_dir=str(out_dir),
    )


# ---------------------------------------------------------------------- 5. training
@dataclass(frozen=True)
class FitResult:
    wall_seconds: float  # this run (a resume with nothing left to train: under a second)
    replicas_identical: bool | None  # under DDP: every process ended with the same weights; None: one process
    processes: int
    global_rank: int


def _check_replicas(trainer: L.Trainer, module: L.LightningModule) -> bool | None:
    """Under DDP, whether every process ended with the same weights (they must: gradients are averaged);
    None for a single process. A divergence stops the run rather than exporting one replica silently."""
    if trainer.world_size < 2:
        return None
    digest = torch.stack([p.detach().double().sum() for p in module.parameters()]).to(module.device)
    gathered = trainer.strategy.all_gather(digest)
    if not torch.equal(gathered.min(0).values, gathered.max(0).values):
        raise RuntimeError("DDP replicas ended with different weights: gradient synchronisation failed; nothing exported")
    return True


def fit(trainer: L.Trainer, module: L.LightningModule, steps: int, resume_from: Path | None) -> FitResult:
    """Train ``module`` (from ``resume_from`` when given), then check that DDP replicas agree."""
    loader = DataLoader(_StepIndex(steps), batch_size=None, shuffle=False, num_workers=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")  # the frozen EMA generator, on purpose
        trainer.fit(module, loader, ckpt_path=str(resume_from) if resume_from is not None else None, weights_only=True)
    wall = time.perf_counter() - t0
    return FitResult(wall, _check_replicas(trainer, module), int(trainer.world_size), int(trainer.global_rank))


# ---------------------------------------------------------------------- 6. export
def export_model(module: TrainableLightningModule, out_dir: Path) -> dict[str, Any]:
    """Write ``model.pt`` (after the model's ``prepare_export``, e.g. the VAEs fit their latent prior);
    returns the figures ``prepare_export`` gave for train.json."""
    prepared = module.prepare_export() if isinstance(module, PreparesExport) else {}
    save_torch_atomic(out_dir / "model.pt", module.export())
    return prepared


def summarize(name: str, model_cfg: dict[str, Any], train_cfg: TrainConfig, module: TrainableLightningModule, data: TrainingData,
              result: FitResult, plan: ResumePlan, prepared: dict[str, Any], alarm: ModeCollapseAlarm) -> dict[str, Any]:
    """train.json: the run's figures, the model's own (``summary_extras``, ``prepare_export``) and, for a
    model under the mode-collapse alarm, the diversity of what synthesis draws (which may raise the alarm)."""
    rows, y = data.bank.rows, data.bank.y
    summary: dict[str, Any] = {
        "model": name,
        "steps": int(module.iteration),
        "parameters": int(sum(p.numel() for p in module.parameters())),
        "sampler_parameters": int(sum(p.numel() for p in module.sampler.parameters())),
        "train_cases": len(rows),
        "train_patients": len({r["patient"] for r in rows}),
        "train_by_condition": {c: int((y == i).sum()) for i, c in enumerate(data.data_info["conditions"])},
        "wall_seconds": round(result.wall_seconds, 2),  # this run
        "train_seconds": round(module.train_seconds() if isinstance(module, TimedTraining) else result.wall_seconds, 2),  # all runs
        "device": str(module.device),
        "precision": resolve_precision(train_cfg),
        "processes": result.processes,
        "config": model_cfg,
    }
    if result.replicas_identical is not None:
        summary["ddp_replicas_identical"] = result.replicas_identical
    if plan.fresh_start:
        summary["fresh_start"] = plan.fresh_start
    summary.update(module.summary_extras() if isinstance(module, ReportsSummary) else {})
    summary.update(prepared)
    if isinstance(module, DiversityMonitored):
        summary["final_diversity"] = alarm.check_export(module)
        summary["diversity_alarms"] = list(module.diversity_alarms)
    return summary


def train_model(
    name: str,
    model_cfg: dict[str, Any],
    train_cfg: TrainConfig,
    preprocess_dir: Path,
    out_dir: Path,
    seed: int,
    expected_hash: str | None = None,
    logger: Callable[[bool], Logger] | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) model ``name``; write checkpoints, model.pt and train.json under ``out_dir``.

    ``logger``: a factory of the Lightning logger that receives the metrics, called with whether the
    run resumes a checkpoint (a logger then appends to its curves); None logs nothing. ``stop_after``:
    stop after that many iterations, keeping the checkpoint and exporting nothing (returns ``{"stopped_at": ...}``).
    Processes other than DDP's rank 0 return {}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_training_data(preprocess_dir, expected_hash)
    L.seed_everything(seed, workers=True, verbose=False)
    module = build_module(name, model_cfg, data.data_info, seed, train_cfg)
    module.attach_bank(data.bank.x, data.bank.y)
    steps = int(model_cfg["steps"])
    optimizers = optimizer_steps_per_iteration(module)
    sign_run(module, name, model_cfg, seed, data)
    plan = plan_resume(module, out_dir / "checkpoints", steps, optimizers)
    alarm = ModeCollapseAlarm(train_cfg.diversity_alarm, train_cfg.checkpoint_every)
    callbacks = make_callbacks(module, train_cfg, plan.checkpoint_dir, optimizers, alarm, progress)
    run_logger: Logger | Literal[False] = logger(plan.resumes) if logger is not None else False
    limit = steps if stop_after is None else min(steps, stop_after)
    trainer = make_trainer(train_cfg, module, callbacks, run_logger, limit * optimizers, out_dir, progress)
    result = fit(trainer, module, steps, plan.resume_from)
    if result.global_rank != 0:
        return {}
    if stop_after is not None and stop_after < steps:
        return {"stopped_at": int(module.iteration)}
    prepared = export_model(module, out_dir)
    summary = summarize(name, model_cfg, train_cfg, module, data, result, plan, prepared, alarm)
    write_json_atomic(out_dir / "train.json", summary)
    return summary
