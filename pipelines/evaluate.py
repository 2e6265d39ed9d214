"""DVC stage `evaluate`: fidelity, privacy and gates for every trained model (+ figures)."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from medsynth.config import ConfigError, load_params
from medsynth.eval.evaluate import GateFailure, evaluate_models


def main() -> int:
    console = Console(stderr=True)
    try:
        params = load_params("params.yaml")
        with console.status("evaluating fidelity and privacy"):
            res = evaluate_models(Path("data/preprocess"), Path("data/synth"), Path("models"), params.train.models,
                                  params.preprocess, params.evaluate, params.seed, Path("reports/eval"),
                                  encoder_path=Path("models/encoder/encoder.pt"), rare_condition=params.data.rare_condition,
                                  cache_dir=Path("data/features"))
    except (ConfigError, GateFailure) as exc:
        console.print(f"[red]evaluate failed:[/red] {escape(str(exc))}")
        return 1
    states = ", ".join(f"{g['gate']}={g['state']}" for g in res["gates"])
    console.print(f"evaluate: overall {res['overall'].upper()} -> reports/eval/gates.json ({states})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
