"""Shared helpers of the benchmarks: machine description, timing on CPU or GPU, JSON results."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        info["gpu"] = None
    return info


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Wall clock that synchronises the GPU at start and stop (never inside the timed work)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = device
        self.t0 = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Clock:
        sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self.t0


def reset_peak(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device | str) -> float | None:
    if torch.device(device).type == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return None


def write_results(path: str | Path | None, name: str, rows: list[dict], extra: dict | None = None) -> dict:
    out = {"benchmark": name, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows, **(extra or {})}
    text = json.dumps(out, indent=2)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    print(text)
    return out


def results_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's argument parser with ``--markdown RESULTS``: print a results file's docs table and exit."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--markdown", type=Path, metavar="RESULTS", help="print the table of a results file and exit")
    return ap


def print_markdown(args: argparse.Namespace, markdown: Callable[[dict], str]) -> bool:
    """With ``--markdown``: print that results file's table and return True (the script then exits)."""
    if args.markdown is None:
        return False
    print(markdown(json.loads(args.markdown.read_text())))
    return True
