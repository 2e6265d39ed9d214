"""DVC stage `train@<model>`: train one registered model with Lightning, logging to DVCLive
(dvclive/<model>); resumes from last.ckpt when it is a checkpoint of the same run, not past the configured steps.

Usage: python pipelines/train.py MODEL   (MODEL is a name in train.models, e.g. cgan or cvae)
"""

from __future__ import annotations

import sys
from pathlib import Path

from dvclive_logger import dvclive_logger
from rich.console import Console
from rich.markup import escape

from medsynth.cohort import StaleCacheError, check_per_condition, read_preprocess_info
from medsynth.config import ConfigError, load_params
from medsynth.data.transforms import transform_hash
from medsynth.models.base import DivergenceError, TrainingDataError
from medsynth.models.contract import ModelContractError
from medsynth.models.registry import UnknownModelError
from medsynth.models.training import train_model


def main(argv: list[str]) -> int:
    console = Console(stderr=True)
    if len(argv) != 1:
        console.print("usage: python pipelines/train.py MODEL")
        return 2
    name = argv[0]
    try:
        params = load_params("params.yaml")
        model_cfg = params.train.section(name)
        if model_cfg is None:
            raise ConfigError(f"train.{name}: no such model section; allowed: cgan, cvae, vaegan (or a plug-in's own section)")
        info = read_preprocess_info(Path("data/preprocess"))
        # before training, for cohorts whose conditions are known only after ingest: synthesis would fail after it
        check_per_condition(params.synthesize.per_condition, info["conditions"])
        summary = train_model(
            name, model_cfg.model_dump(), params.train, Path("data/preprocess"), Path("models") / name, params.seed,
            expected_hash=transform_hash(params.preprocess, info["modality"]),
            logger=lambda resume: dvclive_logger(Path("dvclive") / name, resume=resume),
        )
    except (ConfigError, StaleCacheError, UnknownModelError, ModelContractError, DivergenceError, TrainingDataError, FileNotFoundError) as exc:
        console.print(f"[red]train {name} failed:[/red] {escape(str(exc))}")
        return 1
    if summary.get("fresh_start"):
        console.print(f"train {name}: {escape(summary['fresh_start'])}")
    console.print(f"train {name}: {summary['steps']} steps in {summary['wall_seconds']} s on {summary['device']}; "
                  f"wrote models/{name}/model.pt and models/{name}/checkpoints/last.ckpt")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
