"""DVC stage `synthesize@<model>`: sample every condition's count from a trained model, write NIfTI
image + mask pairs marked synthetic, sidecars and synthetic_manifest.csv. A counterfactual generator
instead changes the train split's cases without the rare condition into ``synthesize.per_condition``
[rare condition] counterfactual cases (internal use only).

Usage: python pipelines/synthesize.py MODEL
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from medsynth.cohort import check_per_condition, load_bank, read_preprocess_info
from medsynth.config import ConfigError, load_params
from medsynth.data.transforms import from_model_space
from medsynth.io.writers import staging_dir
from medsynth.synth.counterfactual import is_counterfactual, synthesize_counterfactuals
from medsynth.synth.sampler import load_sampler, needs_masks, synthesize


def main(argv: list[str]) -> int:
    console = Console(stderr=True)
    if len(argv) != 1:
        console.print("usage: python pipelines/synthesize.py MODEL")
        return 2
    name = argv[0]
    try:
        params = load_params("params.yaml")
        info = read_preprocess_info(Path("data/preprocess"))
    except (ConfigError, FileNotFoundError) as exc:
        console.print(f"[red]synthesize failed:[/red] {escape(str(exc))}")
        return 1
    params_hash = hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]
    device = "cuda" if params.train.accelerator in ("gpu", "auto") and torch.cuda.is_available() else "cpu"
    total = sum(params.synthesize.per_condition.values())
    out = Path("data/synth") / name
    model = Path("models") / name / "model.pt"
    try:
        sampler = load_sampler(model, device)
        check_per_condition(params.synthesize.per_condition, sampler.conditions, f"the cohort {model} was trained on")
    except (FileNotFoundError, ConfigError) as exc:
        console.print(f"[red]synthesize failed:[/red] {escape(str(exc))}")
        return 1
    if is_counterfactual(sampler):
        return _counterfactuals(console, name, sampler, params, info, params_hash, device, out)
    masks = None
    if needs_masks(sampler):  # a mask-conditioned generator paints images for the train split's masks
        x, y, _ = load_bank(Path("data/preprocess"), ("train",))
        labels = x[:, 1].round().to(torch.uint8).numpy()
        masks = {c: labels[(y == i).numpy()] for i, c in enumerate(info["conditions"])}
        console.print(f"synthesize {name}: mask-conditioned; painting images for the train split's masks")
    with staging_dir(out) as tmp, Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"sampling {name}", total=total)
        rows = synthesize(
            sampler, tmp, params.synthesize.per_condition, params.seed, params.synthesize.temperature,
            params.synthesize.min_island_voxels, lambda a: from_model_space(a, params.preprocess, info["modality"]),
            params_hash=params_hash, batch_size=params.synthesize.batch_size, device=device, formats=tuple(params.synthesize.formats),
            progress=lambda k: progress.advance(task, k), masks=masks,
        )
    console.print(f"synthesize {name}: wrote {len(rows)} synthetic image + mask pairs to {out}")
    return 0


def _counterfactuals(console, name, sampler, params, info, params_hash, device, out) -> int:
    """The train split's cases without the rare condition, changed to have it."""
    rare = params.data.rare_condition
    n = int(params.synthesize.per_condition.get(rare, 0))
    x, y, rows = load_bank(Path("data/preprocess"), ("train",), info)
    rare_index = info["conditions"].index(rare)
    sources = [(r["case_id"], x[i].float().numpy()) for i, r in enumerate(rows) if int(y[i]) != rare_index]
    with staging_dir(out) as tmp, Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"counterfactuals {name}", total=n)
        written, skipped = synthesize_counterfactuals(
            sampler, tmp, sources, rare, n, params.seed, lambda a: from_model_space(a, params.preprocess, info["modality"]),
            params_hash=params_hash, device=device, progress=lambda k: progress.advance(task, k), formats=tuple(params.synthesize.formats))
    console.print(f"synthesize {name}: wrote {len(written)} counterfactual {rare} cases (from {len(sources)} real train cases without it; "
                  f"{len(skipped)} could not hold the structure) to {out}; internal augmentation only")
    if not written:
        console.print(f"[red]synthesize failed:[/red] no source case could be changed to {rare!r}: see {out}/skipped_sources.json")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
