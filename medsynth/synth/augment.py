"""Mix synthetic cases into a real segmentation training set, MONAI style.

The result is a MONAI *datalist* (a list of dicts with ``image`` and ``label`` paths), so it drops into
whatever the user's loop already uses — ``Dataset``, ``CacheDataset``, ``PersistentDataset`` — with
their own transforms::

    from medsynth.synth.augment import mix_synthetic
    train_files = mix_synthetic(real_files, "data/synth/cgan", ratio=0.5, oversample={"lesion": 3.0})
    train_ds = monai.data.CacheDataset(train_files, transform=train_transforms)

Rule: ``round(ratio * len(real))`` synthetic cases are added. They are shared out over the conditions
in proportion to ``oversample[condition] * available[condition]`` (largest remainder, so the counts
sum exactly), then drawn per condition without replacement (cycling through a shuffled pool when more
are asked for than exist), deterministically from ``seed``. Every item, real or synthetic, carries
``synthetic`` (bool), ``condition`` and ``case_id`` so a loop can weight or report them separately --
and so MONAI's collate, which takes a batch's keys from its first item, batches real and synthetic
items together (real items without them get ``condition`` "unknown" and ``case_id`` ""). Synthetic
items carry no other key: drop extra keys of your real items before batching (``DeleteItemsd``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def synthetic_datalist(synth_dir: str | Path) -> list[dict]:
    """The cases of one ``medsynth synth`` / synthesize-stage output folder as a datalist."""
    synth_dir = Path(synth_dir)
    manifest = synth_dir / "synthetic_manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: not found; pass a folder written by `medsynth synth` or the synthesize stage")
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    items = []
    for r in rows:
        image, label = synth_dir / "images" / f"{r['case_id']}.nii.gz", synth_dir / "masks" / f"{r['case_id']}.nii.gz"
        if not image.is_file() or not label.is_file():
            raise FileNotFoundError(f"{synth_dir}: case {r['case_id']} is in the manifest but its image or mask is missing")
        items.append({"image": str(image), "label": str(label), "condition": r["condition"], "synthetic": True, "case_id": r["case_id"]})
    return items


def allocate(n: int, available: dict[str, int], oversample: dict[str, float]) -> dict[str, int]:
    """Share ``n`` draws over conditions in proportion to weight x availability (largest remainder)."""
    weights = {c: float(oversample.get(c, 1.0)) * k for c, k in available.items() if k > 0}
    for c, w in oversample.items():
        if w < 0:
            raise ValueError(f"oversample[{c!r}] = {w}: weights must be >= 0")
    total = sum(weights.values())
    if n <= 0 or total <= 0:
        return {c: 0 for c in available}
    exact = {c: n * w / total for c, w in weights.items()}
    counts = {c: math.floor(v) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: (counts[c] - exact[c], c))[: n - sum(counts.values())]:
        counts[c] += 1
    return {c: counts.get(c, 0) for c in available}


def mix_synthetic(
    real: Sequence[dict],
    synth_dirs: str | Path | Sequence[str | Path],
    ratio: float = 0.5,
    oversample: dict[str, float] | None = None,
    seed: int = 0,
) -> list[dict]:
    """Real datalist + synthetic cases (see the module rule). Real items come first, unchanged but for
    ``synthetic``/``condition``/``case_id`` (added where missing)."""
    if ratio < 0:
        raise ValueError(f"ratio = {ratio}: must be >= 0 (synthetic cases per real case)")
    dirs = [synth_dirs] if isinstance(synth_dirs, (str, Path)) else list(synth_dirs)
    pool: dict[str, list[dict]] = {}
    for d in dirs:
        for item in synthetic_datalist(d):
            pool.setdefault(item["condition"], []).append(item)
    unknown = set(oversample or {}) - set(pool)
    if unknown:
        raise ValueError(f"oversample names condition(s) {sorted(unknown)} with no synthetic case; available: {sorted(pool)}")
    counts = allocate(round(ratio * len(real)), {c: len(v) for c, v in pool.items()}, oversample or {})
    rng = np.random.default_rng(seed)
    chosen: list[dict] = []
    for c in sorted(pool):
        items = pool[c]
        order: list[int] = []
        while len(order) < counts[c]:
            order += rng.permutation(len(items)).tolist()
        chosen += [dict(items[i]) for i in order[: counts[c]]]
    real_items = [{**r, "synthetic": r.get("synthetic", False), "condition": r.get("condition", "unknown"), "case_id": r.get("case_id", "")}
                  for r in real]
    return real_items + chosen
