"""Lightning callbacks that watch a model while it trains; :func:`medsynth.models.training.train_model`
attaches them to a model that has the capability each needs (:mod:`medsynth.models.contract`).

* :class:`SampleImages`: every ``every`` steps, the model's fixed-noise sample picture goes to the logger
  (``samples/step_<step>.png``), when the logger takes images.
* :class:`ModeCollapseAlarm`: every ``every`` steps, the model's within-condition diversity is logged as
  ``diversity`` and an alarm is raised below ``train.diversity_alarm``; :meth:`ModeCollapseAlarm.check_export`
  judges what synthesis will draw once more after training.

Both run before Lightning's checkpoint callback at the same step, so a checkpoint holds the alarms up to its step.
"""

from __future__ import annotations

from typing import Any, cast

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from medsynth.models.contract import DiversityMonitored, DrawsSampleImages, ImageLog, ModelContractError, missing_members


def _due_step(pl_module: L.LightningModule, capability: type, every: int, callback: str) -> int | None:
    """The model's step when ``every`` divides it, else None; a model without ``capability`` is refused."""
    if not isinstance(pl_module, capability):
        raise ModelContractError(f"{callback}: the model lacks {', '.join(missing_members(pl_module, capability))}")
    step = int(cast(Any, pl_module).step_index)  # every capability that asks for a due step declares it
    return step if step % every == 0 else None


class SampleImages(Callback):
    """Log the model's :meth:`~medsynth.models.contract.DrawsSampleImages.sample_image` every ``every`` steps."""

    def __init__(self, every: int):
        self.every = int(every)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = _due_step(pl_module, DrawsSampleImages, self.every, "SampleImages")
        if step is None or not isinstance(pl_module, DrawsSampleImages):
            return
        live = getattr(trainer.logger, "experiment", None)  # Lightning's Logger declares no experiment; each logger has its own
        if not isinstance(live, ImageLog):
            return
        image = pl_module.sample_image()
        if image is not None:
            live.log_image(f"samples/step_{step:06d}.png", image)


class ModeCollapseAlarm(Callback):
    """The mode-collapse alarm. Every ``every`` steps the model's diversity (its samples' within-condition
    variety over that of real cases) is logged as ``diversity``; below ``threshold`` (train.diversity_alarm)
    a warning names the step and ``{"step", "diversity"}`` is appended to the model's ``diversity_alarms``,
    which its checkpoints keep and train.json lists."""

    def __init__(self, threshold: float, every: int):
        self.threshold = float(threshold)
        self.every = int(every)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = _due_step(pl_module, DiversityMonitored, self.every, "ModeCollapseAlarm")
        if step is None or not isinstance(pl_module, DiversityMonitored):
            return
        d = pl_module.diversity()
        pl_module.log("diversity", d, on_step=True)
        if d < self.threshold:  # samples of a fixed noise batch barely differ from each other
            pl_module.diversity_alarms.append({"step": int(step), "diversity": round(float(d), 4)})
            rank_zero_warn(
                f"{pl_module.name}: possible mode collapse at step {step}: samples are {d:.2f}x as diverse as real "
                f"pairs (alarm below train.diversity_alarm = {self.threshold}); see the sample images in dvclive"
            )

    def check_export(self, module: DiversityMonitored) -> float:
        """The diversity of what synthesis will draw (after the model's ``prepare_export``), judged by the same
        threshold. An alarm raised here is recorded with ``"at": "export"`` (and how synthesis samples, where
        that differs from monitoring) unless training already raised it at this step for the same sampler."""
        d = round(module.diversity(), 4)
        sampling = module.export_sampling()
        step = module.step_index
        last = module.diversity_alarms[-1] if module.diversity_alarms else None
        if d < self.threshold and not (last and last["step"] == step and not sampling):
            module.diversity_alarms.append({"step": int(step), "diversity": d, "at": "export", **sampling})
            rank_zero_warn(f"{module.name}: what synthesis draws is {d:.2f}x as diverse as real pairs (alarm below "
                           f"train.diversity_alarm = {self.threshold}); train longer or with another seed")
        return d
