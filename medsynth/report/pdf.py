"""HTML -> PDF with a local headless Chromium (Debian's ``chromium``). Nothing is downloaded.

Chromium's own header and footer are off (they print the file's URL, a local path); page numbers come
from the report's CSS (``@page`` ``@bottom-center`` with ``counter(page)``/``counter(pages)``)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from medsynth.io.writers import write_bytes_atomic

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def html_to_pdf(html: Path, pdf: Path, timeout: int = 120) -> Path | None:
    """Print ``html`` to ``pdf``; returns None (and writes nothing) when no Chromium is installed."""
    exe = find_chromium()
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as profile, tempfile.TemporaryDirectory() as outdir:
        tmp_pdf = Path(outdir) / "report.pdf"
        subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--no-pdf-header-footer",
                        f"--print-to-pdf={tmp_pdf}", Path(html).resolve().as_uri()],
                       check=True, capture_output=True, timeout=timeout)
        write_bytes_atomic(pdf, tmp_pdf.read_bytes())
    return Path(pdf)
