"""Counterfactual cases: real cases without the rare condition, each changed to have it by a
counterfactual generator (:mod:`medsynth.models.counterfactual`), written as their own kind.

A counterfactual case *is* a real patient's scan outside its edit region. It is for internal
augmentation only: never shared, never covered by a sharing verdict; every sidecar says so, and no DICOM
is written for it (a DICOM series is what leaves a hospital).

Per case, under the output folder: ``images/`` and ``masks/`` (NIfTI on the model grid in physical
intensities, like synthetic cases), ``regions/`` (the edit region: every voxel outside it is the source
case's), ``sidecars/`` (source case id, model, checkpoint hash, seed, what was drawn, use), and
``synthetic_manifest.csv`` with ``source`` = ``counterfactual:<model>``.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsynth import __version__
from medsynth.cohort import ManifestRow, generated_row, write_manifest
from medsynth.io.nifti import voxel_array
from medsynth.io.writers import write_json_atomic
from medsynth.synth.sampler import write_synthetic_case

KIND = "counterfactual"
INTERNAL_USE = ("internal augmentation only: outside its edit region this case is the source patient's real scan; "
                "do not share it (no sharing verdict covers it)")
DESCRIP = "COUNTERFACTUAL medsynth (real anatomy)"


def is_counterfactual(sampler) -> bool:
    """True for a generator that changes given real cases (``needs_source``) rather than sampling from noise."""
    return bool(getattr(getattr(sampler, "net", sampler), "needs_source", False))


def is_counterfactual_set(rows: Sequence[Mapping[str, Any]]) -> bool:
    """True when a synthetic manifest's rows are counterfactual cases."""
    return bool(rows) and all(str(r.get("source", "")).startswith(f"{KIND}:") for r in rows)


def counterfactual_arrays(sampler, sources: list[tuple[str, np.ndarray]], condition: str, n: int, seed: int,
                          device: str = "cpu") -> tuple[list[dict], list[dict]]:
    """``n`` counterfactuals of ``condition`` from ``sources`` ((case_id, x (2, D, H, W) model space) of
    cases without it), in a seeded order that uses every source once before any twice. Returns the cases
    (image, mask, region, drawn, source_case_id, seed) and the sources skipped, each with the reason (e.g.
    it lacks the label the structure lies in)."""
    if condition not in sampler.conditions:
        raise ValueError(f"condition {condition!r} unknown to this model; it knows {sampler.conditions}")
    if not sources:
        raise ValueError(f"no source case to change to {condition!r}: the counterfactual generator needs real cases without it")
    c = sampler.conditions.index(condition)
    order = np.random.default_rng(seed).permutation(len(sources))
    cases: list[dict] = []
    skipped: list[dict] = []
    bad: set[int] = set()
    i = 0
    while len(cases) < n and len(bad) < len(sources):
        j = int(order[i % len(sources)])
        i += 1
        if j in bad:
            continue
        case_id, x = sources[j]
        case_seed = seed + i
        try:
            cf = sampler.net.counterfactual(x[0], np.rint(x[1]).astype(np.int64), c, np.random.default_rng(case_seed), device)
        except ValueError as exc:
            bad.add(j)
            skipped.append({"source_case_id": case_id, "reason": str(exc)})
            continue
        cases.append({**cf, "source_case_id": case_id, "seed": case_seed})
    return cases, skipped


def synthesize_counterfactuals(
    sampler, out_dir: Path, sources: list[tuple[str, np.ndarray]], condition: str, n: int, seed: int,
    to_physical: Callable[[np.ndarray], np.ndarray], params_hash: str = "", device: str = "cpu",
    progress: Callable[[int], None] | None = None, formats: tuple[str, ...] = ("nifti",),
) -> tuple[list[ManifestRow], list[dict]]:
    """Write ``n`` counterfactual cases of ``condition`` and synthetic_manifest.csv; return the manifest
    rows and the skipped sources."""
    out_dir = Path(out_dir)
    cases, skipped = counterfactual_arrays(sampler, sources, condition, n, seed, device)
    affine = np.asarray(sampler.data_info["reference_affine"], dtype=np.float64)
    spacing = sampler.data_info["spacing"]
    created = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
    rows: list[ManifestRow] = []
    for i, cf in enumerate(cases):
        case_id = f"CF-{sampler.kind}-{condition}-{i:04d}"
        sidecar = {
            "synthetic": "counterfactual", "kind": KIND, "use": INTERNAL_USE, "model": sampler.kind,
            "checkpoint_sha256": sampler.checkpoint_sha256, "source_case_id": cf["source_case_id"], "seed": int(cf["seed"]),
            "condition": condition, "drawn": cf["drawn"], "edit_region_voxels": int(cf["region"].sum()),
            "params_hash": params_hash, "created": created, "medsynth_version": __version__,
            "mask_rule": "the source case's label map with the drawn structure (the model's structure prior)",
        }
        if "dicom" in formats:
            sidecar["dicom"] = "not written: a counterfactual case is a real patient's anatomy and stays inside (NIfTI only)"
        write_synthetic_case(out_dir, case_id, to_physical(cf["image"]), cf["mask"], affine, sidecar, DESCRIP,
                             {"regions": ("edit region", cf["region"])})
        rows.append(generated_row(case_id, cf["source_case_id"], condition, sampler.data_info["modality"], cf["image"].shape, spacing,
                                  f"{KIND}:{sampler.kind}"))
        if progress:
            progress(1)
    write_manifest(out_dir / "synthetic_manifest.csv", rows)
    write_json_atomic(out_dir / "skipped_sources.json", skipped)
    return rows, skipped


def read_sources(folder: Path, to_model: Callable[[np.ndarray], np.ndarray], roi: tuple[int, ...] | list[int]) -> list[tuple[str, np.ndarray]]:
    """A user's cases to change: ``folder/images/<case>.nii.gz`` with ``folder/masks/<case>.nii.gz``, on
    the model grid (``preprocess.roi_size``), images in physical intensities (as synthesize writes them)
    -> (case_id, x (2, D, H, W) model space). A case without its mask, or of another shape, is an error
    that names the file."""
    folder = Path(folder)
    images = sorted((folder / "images").glob("*.nii*"))
    if not images:
        raise FileNotFoundError(f"{folder / 'images'}: no NIfTI image (expected images/<case>.nii.gz and masks/<case>.nii.gz)")
    out = []
    for f in images:
        case = f.name.removesuffix(".gz").removesuffix(".nii")
        m = next((p for p in (folder / "masks" / f"{case}.nii.gz", folder / "masks" / f"{case}.nii") if p.is_file()), None)
        if m is None:
            raise FileNotFoundError(f"{f}: no label map {folder / 'masks' / (case + '.nii.gz')} beside it (a counterfactual changes a labelled case)")
        img, mask = voxel_array(f, np.float32), voxel_array(m)
        for arr, path in ((img, f), (mask, m)):
            if tuple(arr.shape) != tuple(roi):
                raise ValueError(f"{path}: shape {arr.shape} is not the model grid {tuple(roi)} (preprocess.roi_size)")
        out.append((case, np.stack([to_model(img), np.rint(mask).astype(np.float32)])))
    return out
