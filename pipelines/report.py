"""DVC stage `report`: the self-contained HTML synthesis report (and its PDF when Chromium is present),
and each model's training curves as reports/figures/<model>_training_curves.png (which, with the
evaluate figures, `dvc plots show` renders as images, offline).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from medsynth.config import ConfigError, load_params
from medsynth.io.writers import write_bytes_atomic
from medsynth.report.build import build_report, training_curves_png
from medsynth.report.pdf import html_to_pdf

FIGURES = Path("reports/figures")


def params_changed(params: Path = Path("params.yaml")) -> bool | None:
    """Whether ``params`` differs from the git commit HEAD names (True also when HEAD lacks it, as in a
    `dvc exp run -S ...`, which edits it before the run); None without git or without a commit."""
    def git(*args: str) -> int | None:
        try:
            return subprocess.run(["git", *args], capture_output=True, timeout=30).returncode
        except (OSError, subprocess.TimeoutExpired):
            return None

    if git("rev-parse", "--verify", "--quiet", "HEAD") != 0:
        return None
    if git("cat-file", "-e", f"HEAD:./{params.as_posix()}") != 0:
        return True
    return {0: False, 1: True}.get(git("diff", "--quiet", "HEAD", "--", params.as_posix()))


def main() -> int:
    console = Console(stderr=True)
    try:
        params = load_params("params.yaml")
    except ConfigError as exc:
        console.print(f"[red]report failed:[/red] {escape(str(exc))}")
        return 1
    FIGURES.mkdir(parents=True, exist_ok=True)
    for m in params.train.models:
        png = training_curves_png(Path("dvclive") / m, m)
        if png is not None:
            write_bytes_atomic(FIGURES / f"{m}_training_curves.png", png)
    changed = params_changed()
    out = build_report(Path("data/ingest"), Path("data/preprocess"), Path("models"), Path("reports/eval"), Path("reports/report.html"),
                       params.train.models, params.report.title, params.model_dump(mode="json"), repo_root=Path.cwd(),
                       params_changed=changed)
    pdf = html_to_pdf(out, Path("reports/report.pdf"))
    if pdf is None:  # dvc.yaml declares the PDF: an empty file says "not rendered here"
        write_bytes_atomic(Path("reports/report.pdf"), b"")
    console.print(f"report: wrote {out}" + (f" and {pdf}" if pdf else " (no PDF: Chromium not found; install Debian's chromium)")
                  + ("; params.yaml differs from the commit (the report says so)" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
