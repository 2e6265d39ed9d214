"""DVC stage `preprocess`: MONAI transforms to the ROI grid, patient-level splits, cached tensors."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from medsynth.config import ConfigError, load_params
from medsynth.data.preprocess import PreprocessError, preprocess_cohort
from medsynth.data.splits import SplitError

OUT = Path("data/preprocess")


def main() -> int:
    console = Console(stderr=True)
    try:
        params = load_params("params.yaml")
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("preprocessing", total=None)
            stats = preprocess_cohort(Path("data/ingest"), OUT, params.preprocess, params.seed, params.data.rare_condition,
                                      progress=lambda _: progress.advance(task))
    except (ConfigError, PreprocessError, SplitError) as exc:
        console.print(f"[red]preprocess failed:[/red] {escape(str(exc))}")
        return 1
    for w in stats["warnings"]:
        console.print(f"[yellow]preprocess warning:[/yellow] {w}")
    console.print(f"preprocess: wrote {stats['cases']} cached tensors {stats['roi_size']} to {OUT / 'tensors'}; splits {stats['counts']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
