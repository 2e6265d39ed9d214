"""DVC stage `report`: the self-contained HTML synthesis report (and its PDF when Chromium is present)."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from medsynth.config import ConfigError, load_params
from medsynth.io.writers import write_bytes_atomic
from medsynth.report.build import build_report
from medsynth.report.pdf import html_to_pdf


def main() -> int:
    console = Console(stderr=True)
    try:
        params = load_params("params.yaml")
    except ConfigError as exc:
        console.print(f"[red]report failed:[/red] {escape(str(exc))}")
        return 1
    out = build_report(Path("data/ingest"), Path("data/preprocess"), Path("models"), Path("reports/eval"), Path("reports/report.html"),
                       params.train.models, params.report.title, params.model_dump(mode="json"), repo_root=Path.cwd())
    pdf = html_to_pdf(out, Path("reports/report.pdf"))
    if pdf is None:  # dvc.yaml declares the PDF: an empty file says "not rendered here"
        write_bytes_atomic(Path("reports/report.pdf"), b"")
    console.print(f"report: wrote {out}" + (f" and {pdf}" if pdf else " (no PDF: Chromium not found; install Debian's chromium)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
