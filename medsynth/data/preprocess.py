"""Preprocess stage: ingested NIfTI cases -> split manifest + cached model-space tensors + stats.

Outputs (under ``out_dir``):

* ``tensors/<case_id>.npy``: float16 array (2, D, H, W) -- channel 0 the image in [-1, 1],
  channel 1 the label map (0 background, 1..K labels);
* ``manifest.csv``: the ingest manifest with each case's patient-level ``split``;
* ``preprocess.json``: counts per condition and split, transform settings and their hash (the cache
  key the data module checks), label count, and the reference affine used to write synthetic cases
  back in physical space.
"""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medsynth.config import PreprocessConfig
from medsynth.data.splits import SPLITS, assign_splits
from medsynth.data.transforms import build_transforms, transform_hash, transform_settings
from medsynth.io.ingest import MANIFEST_FIELDS
from medsynth.io.writers import atomic_path, write_csv_atomic, write_json_atomic


class PreprocessError(RuntimeError):
    pass


def read_manifest(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise PreprocessError(f"{path}: manifest not found (run the ingest stage first)")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def save_npy_atomic(dest: Path, arr: np.ndarray) -> None:
    with atomic_path(dest, suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)


def preprocess_cohort(
    ingest_dir: Path,
    out_dir: Path,
    cfg: PreprocessConfig,
    seed: int,
    rare_condition: str,
    progress: Callable[[str], None] | None = None,
) -> dict:
    ingest_dir, out_dir = Path(ingest_dir), Path(out_dir)
    cases = read_manifest(ingest_dir / "manifest.csv")
    if not cases:
        raise PreprocessError(f"{ingest_dir / 'manifest.csv'}: no cases")
    modalities = sorted({c["modality"] for c in cases})
    if len(modalities) != 1:
        raise PreprocessError(
            f"the cohort mixes modalities {modalities}: train one model per modality (set data.modality: CT or MR)"
        )
    modality = modalities[0]
    if all(c.get("split") for c in cases):
        split_of = {c["patient"]: c["split"] for c in cases}  # official splits (npz)
    else:
        split_of = assign_splits(cases, cfg.splits, seed, rare_condition, cfg.min_cases_per_split)
    tensors = out_dir / "tensors"
    tensors.mkdir(parents=True, exist_ok=True)
    for stale in tensors.glob("*.npy"):
        stale.unlink()
    has_masks = all(int(c["has_mask"]) for c in cases)
    chain = build_transforms(cfg, modality, with_mask=has_masks)
    n_labels = 0
    affine = None
    fg_fraction = []
    for c in cases:
        c["split"] = split_of[c["patient"]]
        item = {"image": str(ingest_dir / "images" / f"{c['case_id']}.nii.gz")}
        if has_masks:
            item["mask"] = str(ingest_dir / "masks" / f"{c['case_id']}.nii.gz")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = chain(item)
        img = out["image"].numpy()[0]
        mask = out["mask"].numpy()[0] if has_masks else np.zeros_like(img)
        mask = np.rint(mask).astype(np.int16)
        n_labels = max(n_labels, int(mask.max()))
        if affine is None:
            affine = np.asarray(out["image"].affine, dtype=np.float64)
        fg_fraction.append(float((img > -0.98).mean()))
        save_npy_atomic(tensors / f"{c['case_id']}.npy", np.stack([img, mask]).astype(np.float16))
        if progress:
            progress(c["case_id"])
    # a reference affine for writing synthetic cases: target spacing, RAS, centred at the origin
    ref = np.diag([*cfg.spacing, 1.0])
    ref[:3, 3] = -(np.array(cfg.roi_size) - 1) / 2 * np.array(cfg.spacing)
    write_csv_atomic(out_dir / "manifest.csv", cases, MANIFEST_FIELDS)
    counts = {s: dict(sorted(Counter(c["condition"] for c in cases if c["split"] == s).items())) for s in SPLITS}
    stats = {
        "cases": len(cases),
        "patients": len(split_of),
        "modality": modality,
        "conditions": sorted({c["condition"] for c in cases}),
        "rare_condition": rare_condition,
        "counts": counts,
        "by_condition": dict(sorted(Counter(c["condition"] for c in cases).items())),
        "n_mask_labels": n_labels,
        "has_masks": has_masks,
        "roi_size": list(cfg.roi_size),
        "spacing": list(cfg.spacing),
        "reference_affine": ref.tolist(),
        "foreground_fraction_mean": float(np.mean(fg_fraction)),
        "transform_hash": transform_hash(cfg, modality),
        "transform_settings": transform_settings(cfg, modality),
    }
    write_json_atomic(out_dir / "preprocess.json", stats)
    return stats
