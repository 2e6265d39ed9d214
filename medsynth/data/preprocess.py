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

import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.cohort import ManifestError, read_manifest, write_manifest
from medsynth.config import PreprocessConfig
from medsynth.data.splits import SPLITS, assign_splits
from medsynth.data.transforms import build_transforms, transform_hash, transform_settings
from medsynth.io.writers import atomic_path, write_json_atomic


class PreprocessError(RuntimeError):
    pass


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
    try:
        cases = read_manifest(ingest_dir / "manifest.csv")
    except ManifestError as exc:
        raise PreprocessError(f"{exc} (the ingest stage writes it)") from None
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
    label_counts: dict[str, list[np.ndarray]] = {}
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
        label_counts.setdefault(c["condition"], []).append(np.bincount(mask.clip(0).ravel()))
        if affine is None:
            affine = np.asarray(out["image"].affine, dtype=np.float64)
        fg_fraction.append(float((img > -0.98).mean()))
        save_npy_atomic(tensors / f"{c['case_id']}.npy", np.stack([img, mask]).astype(np.float16))
        if progress:
            progress(c["case_id"])
    # a reference affine for writing synthetic cases: target spacing, RAS, centred at the origin
    ref = np.diag([*cfg.spacing, 1.0])
    ref[:3, 3] = -(np.array(cfg.roi_size) - 1) / 2 * np.array(cfg.spacing)
    write_manifest(out_dir / "manifest.csv", cases)
    counts = {s: dict(sorted(Counter(c["condition"] for c in cases if c["split"] == s).items())) for s in SPLITS}
    stats: dict[str, Any] = {
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
    stats["label_voxels"] = label_voxel_summary(label_counts, n_labels)
    stats["cohort_extent_mm"], stats["spacing_fitting_roi"] = cohort_extent(cases, cfg.roi_size)
    stats["warnings"] = grid_warnings(stats["label_voxels"], rare_condition, cfg, stats["spacing_fitting_roi"])
    write_json_atomic(out_dir / "preprocess.json", stats)
    return stats


MIN_STRUCTURE_VOXELS = 20  # below this median size on the model grid a structure is a few blurred voxels


def label_voxel_summary(counts: dict[str, list[np.ndarray]], n_labels: int) -> dict:
    """Per condition and label on the model grid: share of cases holding the label, median / min / max voxels
    among cases that hold it."""
    out: dict[str, dict] = {}
    for cond, rows in sorted(counts.items()):
        vox = np.array([[int(r[k]) if k < len(r) else 0 for k in range(1, n_labels + 1)] for r in rows]).reshape(len(rows), n_labels)
        out[cond] = {}
        for k in range(n_labels):
            held = vox[:, k][vox[:, k] > 0]
            out[cond][str(k + 1)] = {"present_share": round(float((vox[:, k] > 0).mean()), 4),
                                     "median_voxels": float(np.median(held)) if held.size else 0.0,
                                     "min_voxels": int(held.min()) if held.size else 0, "max_voxels": int(held.max()) if held.size else 0}
    return out


def cohort_extent(cases: Sequence[Mapping[str, Any]], roi: tuple[int, ...]) -> tuple[list[float] | None, list[float] | None]:
    """90th percentile physical extent (mm) of the ingested images per axis and the isotropic spacing at which
    it fits the ROI (from the manifest's shape and spacing)."""
    try:
        ext = np.array([[float(n) * float(s) for n, s in zip(c["shape"].split("x"), c["spacing"].split("x"), strict=False)] for c in cases])
    except (KeyError, ValueError):
        return None, None
    if ext.ndim != 2 or ext.shape[1] != len(roi):
        return None, None
    p90 = np.percentile(ext, 90, axis=0)
    fit = float(np.max(p90 / np.array(roi)))
    return [round(float(v), 1) for v in p90], [round(fit, 2)] * len(roi)


def grid_warnings(label_voxels: dict, rare_condition: str, cfg: PreprocessConfig, fitting: list[float] | None) -> list[str]:
    """What a user should know about the chosen grid before training: a rare-condition structure too small to
    learn, or a spacing far from the one at which the images fit the ROI."""
    warn = []
    for label, s in label_voxels.get(rare_condition, {}).items():
        if s["present_share"] >= 0.5 and s["median_voxels"] < MIN_STRUCTURE_VOXELS:
            warn.append(f"label {label} of condition {rare_condition!r} has a median of {s['median_voxels']:.0f} voxels on the "
                        f"{'x'.join(f'{v:g}' for v in cfg.spacing)} mm grid (< {MIN_STRUCTURE_VOXELS}): too small to learn or to see; "
                        "use a finer preprocess.spacing or a larger roi_size")
    if fitting:
        ratio = max(cfg.spacing) / fitting[0]
        if ratio > 2:
            warn.append(f"preprocess.spacing {list(cfg.spacing)} is {ratio:.1f}x coarser than the {fitting[0]:g} mm at which the "
                        f"cohort's images fit roi_size {list(cfg.roi_size)}: fine structures are lost")
        elif ratio < 0.5:
            warn.append(f"preprocess.spacing {list(cfg.spacing)} is {1 / ratio:.1f}x finer than the {fitting[0]:g} mm at which the "
                        f"cohort's images fit roi_size {list(cfg.roi_size)}: most of each image is cropped away")
    return warn
