"""Train one registered model on the preprocessed cohort with Lightning.

* The train split is read once through a MONAI CacheDataset and kept as one tensor bank (on the GPU
  when training there), so the step never waits for data.
* Checkpoints every ``checkpoint_every`` steps and at the end (``checkpoints/last.ckpt``); a rerun
  resumes from ``last.ckpt`` and reaches the same weights as an uninterrupted run.
* The final sampler (EMA generator / decoder) is exported to ``model.pt`` as plain tensors plus a
  JSON-able config, loadable with ``torch.load(weights_only=True)``.
* Metrics go to the Lightning logger the caller's factory makes (the DVC pipeline's logs with
  DVCLive); this module imports nothing of DVC.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from medsynth.cohort import data_info_from, load_bank, read_preprocess_info
from medsynth.config import TrainConfig
from medsynth.io.writers import save_torch_atomic, write_json_atomic
from medsynth.models import registry


class _StepIndex(Dataset):
    """The loader only paces the loop; batches come from the model's step-seeded bank."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def resolve_precision(cfg: TrainConfig) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16-mixed" if uses_gpu(cfg) else "32-true"


def uses_gpu(cfg: TrainConfig) -> bool:
    return cfg.accelerator == "gpu" or (cfg.accelerator == "auto" and torch.cuda.is_available())


def build_module(name: str, model_cfg: dict, data_info: dict, seed: int, train_cfg: TrainConfig):
    cls = registry.get(name)
    module = cls(model_cfg, data_info, seed=seed, log_every=train_cfg.log_every, image_every=train_cfg.checkpoint_every)
    gpu = uses_gpu(train_cfg)
    if not hasattr(module, "accelerate"):  # a plug-in that does not derive from GenerativeModule
        return module
    module.diversity_alarm = train_cfg.diversity_alarm
    module.accelerate(
        compile=train_cfg.compile == "on" or (train_cfg.compile == "auto" and gpu),
        channels_last=train_cfg.channels_last == "on" or (train_cfg.channels_last == "auto" and gpu),
        checkpointing=train_cfg.activation_checkpointing,
    )
    return module


def run_signature(name: str, model_cfg: dict, seed: int, info: dict, rows: list[dict], export_settings: tuple[str, ...] = ()) -> dict:
    """What a checkpoint must share with this run to be resumed: the model, its settings except ``steps``
    (raising steps continues a run) and those only export reads (``export_settings``, e.g. the VAEs'
    prior_shrinkage: changing one refits at export), the seed, the preprocessing and the training cases."""
    cases = hashlib.sha256("\n".join(sorted(str(r.get("case_id", "")) for r in rows)).encode()).hexdigest()[:16]
    skip = {"steps", *export_settings}
    return {"model": name, "config": {k: v for k, v in sorted(model_cfg.items()) if k not in skip}, "seed": int(seed),
            "transform_hash": info.get("transform_hash"), "train_cases": cases}


def discard_foreign_checkpoint(ckpt_dir: Path, module, steps: int | None = None, optimizers: int = 1) -> str | None:
    """Resume only a checkpoint of this very run. A checkpoint written under other settings (a changed
    learning rate, another seed, new training cases), by another version of the network (other weight
    shapes) or further than ``steps`` (the configured steps were lowered: resuming would export the
    longer run under the shorter run's settings) would otherwise be continued silently, or fail deep
    inside Lightning. Such checkpoints are deleted (they are this stage's own outputs) and the reason
    is returned and printed; None: nothing to discard. ``optimizers``: optimizer steps per iteration,
    to count a plug-in's iterations from Lightning's ``global_step`` when it has no ``iteration``."""
    last = ckpt_dir / "last.ckpt"
    if not last.is_file():
        return None
    try:
        blob = torch.load(last, map_location="cpu", weights_only=True)
        saved = blob.get("medsynth_run")
        if saved and isinstance(saved.get("config"), dict):  # signatures written before a setting became export-only
            saved = {**saved, "config": {k: v for k, v in saved["config"].items() if k not in getattr(module, "export_settings", ())}}
        state = blob.get("state_dict", {})
        done = int(state["iteration"]) if "iteration" in state else int(blob.get("global_step", 0)) // max(1, optimizers)
    except Exception as exc:  # noqa: BLE001 -- an unreadable checkpoint is not resumable, whatever the cause
        saved, state, done, reason = None, {}, 0, f"unreadable ({type(exc).__name__})"
    else:
        reason = None
    current = getattr(module, "run_signature", None)
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


def _check_replicas(trainer, module) -> bool | None:
    """Under DDP, whether every process ended with the same weights (they must: gradients are averaged);
    None for a single process. A divergence stops the run rather than exporting one replica silently."""
    if trainer.world_size < 2:
        return None
    digest = torch.stack([p.detach().double().sum() for p in module.parameters()]).to(module.device)
    gathered = trainer.strategy.all_gather(digest)
    if not torch.equal(gathered.min(0).values, gathered.max(0).values):
        raise RuntimeError("DDP replicas ended with different weights: gradient synchronisation failed; nothing exported")
    return True


def train_model(
    name: str,
    model_cfg: dict,
    train_cfg: TrainConfig,
    preprocess_dir: Path,
    out_dir: Path,
    seed: int,
    expected_hash: str | None = None,
    logger: Callable[[bool], Logger] | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Train (or resume) model ``name``; write checkpoints, model.pt and train.json under ``out_dir``.

    ``logger``: a factory of the Lightning logger that receives the metrics, called with whether the
    run resumes a checkpoint (a logger then appends to its curves); None logs nothing."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = read_preprocess_info(preprocess_dir, expected_hash)
    x, y, rows = load_bank(preprocess_dir, ("train",), info)
    data_info = data_info_from(info)
    L.seed_everything(seed, workers=True, verbose=False)
    module = build_module(name, model_cfg, data_info, seed, train_cfg)
    module.attach_bank(x, y)
    steps = int(model_cfg["steps"])
    n_opt = 1 if module.automatic_optimization else len(module.configure_optimizers())
    ckpt_dir = out_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if hasattr(module, "accelerate"):  # a GenerativeModule writes its run signature into its checkpoints
        module.run_signature = run_signature(name, model_cfg, seed, info, rows, tuple(getattr(module, "export_settings", ())))
    fresh_start = discard_foreign_checkpoint(ckpt_dir, module, steps, n_opt)
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, filename="step-{step}", every_n_train_steps=train_cfg.checkpoint_every * n_opt,
                                 save_last=True, save_top_k=1, monitor=None)]
    run_logger = logger(last.is_file()) if logger is not None else False
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=True))
    limit = steps if stop_after is None else min(steps, stop_after)
    strategy = train_cfg.strategy
    if strategy == "ddp" and not module.automatic_optimization:
        # adversarial models step D and G separately: each backward leaves the other network's parameters
        # unused, which plain DDP rejects
        strategy = "ddp_find_unused_parameters_true"
    trainer = L.Trainer(
        max_steps=limit * n_opt,
        max_epochs=-1,
        accelerator=train_cfg.accelerator,
        devices=train_cfg.devices,
        num_nodes=train_cfg.num_nodes,
        strategy=strategy,
        precision=resolve_precision(train_cfg),
        logger=run_logger,
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
    loader = DataLoader(_StepIndex(steps), batch_size=None, shuffle=False, num_workers=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")  # the frozen EMA generator, on purpose
        trainer.fit(module, loader, ckpt_path=str(last) if last.is_file() else None, weights_only=True)
    wall = time.perf_counter() - t0
    replicas = _check_replicas(trainer, module)
    if trainer.global_rank != 0:
        return {}
    if stop_after is not None and stop_after < steps:
        return {"stopped_at": int(module.iteration)}
    prepared = module.prepare_export() if hasattr(module, "prepare_export") else {}  # e.g. the VAEs fit their latent prior
    export = module.export()
    save_torch_atomic(out_dir / "model.pt", export)
    n_params = sum(p.numel() for p in module.parameters())
    summary = {
        "model": name,
        "steps": int(module.iteration),
        "parameters": int(n_params),
        "sampler_parameters": int(sum(p.numel() for p in module.sampler.parameters())),
        "train_cases": len(rows),
        "train_patients": len({r["patient"] for r in rows}),
        "train_by_condition": {c: int((y == i).sum()) for i, c in enumerate(data_info["conditions"])},
        "wall_seconds": round(wall, 2),  # this run (a resume with nothing left to train: under a second)
        "train_seconds": round(module.train_seconds(), 2) if hasattr(module, "train_seconds") else round(wall, 2),  # all runs
        "device": str(module.device),
        "precision": resolve_precision(train_cfg),
        "processes": int(trainer.world_size),
        "config": model_cfg,
    }
    if replicas is not None:
        summary["ddp_replicas_identical"] = replicas
    if fresh_start:
        summary["fresh_start"] = fresh_start
    summary.update(getattr(module, "summary_extras", dict)())
    summary.update(prepared)
    if hasattr(module, "diversity"):
        summary["final_diversity"] = module.final_diversity()  # of what synthesis draws; may raise the alarm
        summary["diversity_alarms"] = list(getattr(module, "diversity_alarms", []))
    write_json_atomic(out_dir / "train.json", summary)
    return summary
