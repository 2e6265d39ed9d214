"""DVC stage `ingest`: raw DICOM/NIfTI (or the demo, or an npz) -> de-identified RAS NIfTI cases.

Reads params `seed`, `data`, `deid`; writes data/ingest/{images,masks,dicom}/, manifest.csv,
quarantine.csv, deid_log.csv and ingest.json. The raw input is only read, never modified.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from medsynth.config import ConfigError, load_params
from medsynth.io.deid import DeidKeyError, load_key
from medsynth.io.ingest import IngestError, ingest, ingest_npz, with_demo_input

OUT = Path("data/ingest")


def main() -> int:
    console = Console(stderr=True)
    try:
        params = load_params("params.yaml")
        if params.data.is_npz:
            res = ingest_npz(Path(params.data.input), OUT, params.data, params.seed)
        else:
            key = load_key(params.deid, demo=params.data.is_demo)
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("ingesting", total=None)
                tick = lambda _=None: progress.advance(task)  # noqa: E731
                if params.data.is_demo:
                    with with_demo_input(params.data, params.seed) as (raw, labels):
                        res = ingest(raw, OUT, params.data, params.deid, key, labels_path=labels, progress=tick)
                else:
                    labels = Path(params.data.labels) if params.data.labels else None
                    res = ingest(Path(params.data.input), OUT, params.data, params.deid, key, labels_path=labels, progress=tick)
    except (ConfigError, DeidKeyError, IngestError) as exc:
        console.print(f"[red]ingest failed:[/red] {escape(str(exc))}")
        return 1
    (OUT / "dicom").mkdir(parents=True, exist_ok=True)  # declared in dvc.yaml; empty for an npz input
    s = res.summary
    for warning in s.get("warnings", []):
        console.print(f"[yellow]ingest warning:[/yellow] {warning}")
    console.print(f"ingest: wrote {s['cases']} cases ({s['by_condition']}) from {s['patients']} patients to {OUT}; "
                  f"{s['quarantined']} item(s) quarantined (see {OUT / 'quarantine.csv'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
