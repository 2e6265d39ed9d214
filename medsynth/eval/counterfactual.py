"""What the evaluate stage measures of counterfactual cases (real cases changed to the rare condition)
besides what it measures of every synthetic set (fidelity, conditional fidelity per label, utility).

* **Seam**: the mean gradient magnitude on the border of the edit region (the voxels just inside and
  just outside it) in the counterfactual, over the same voxels of its source case: 1 = no seam; a
  structure pasted with a hard edge raises it, a smeared surround lowers it. Also over real rare cases
  at the border of their own structure's region (the changed labels dilated by the model's margin).
* **Look of the changed structure**: intensity mean and spread inside the changed labels, against real
  rare cases' same labels; the ring around it (edit region less the structure) against the source's.
* **Copy check of the structure itself**: is an inserted structure a copy of a training patient's? Each
  case is cut to its changed structure (the image inside the structure dilated by the margin, the label
  map of the changed labels only, background elsewhere) and compared, in the privacy audit's aligned
  space (flips, shifts, intensity undone), with the training rare cases' structures cut the same way; a
  near-copy lies closer than ``copy_distance_factor`` x the closest two different real patients'
  structures.
* **Sharing**: never. Outside its edit region a counterfactual case is its source patient's scan, so
  the whole-case membership and distance tests would only find what is known (every case is a training
  patient); they are not run, and the model's verdict can at best be internal augmentation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsynth.eval.privacy import aligned_similarity, copy_detection, privacy_reference
from medsynth.io.nifti import voxel_array

INTERNAL_ONLY = ("Counterfactual cases are real patients' scans with a synthetic structure painted in: for internal "
                 "augmentation only, never to share. The membership and distance tests of whole cases do not apply (every "
                 "case is a training patient by design); the inserted structure is checked for copies of training structures.")


def read_counterfactual_set(sdir: Path, rows: list[dict]) -> tuple[np.ndarray, list[str]]:
    """The edit regions (N, D, H, W) and source case ids of a counterfactual set, in manifest order."""
    regions, sources = [], []
    for r in rows:
        regions.append(voxel_array(Path(sdir) / "regions" / f"{r['case_id']}.nii.gz") > 0)
        sources.append(json.loads((Path(sdir) / "sidecars" / f"{r['case_id']}.json").read_text())["source_case_id"])
    return np.stack(regions), sources


def border(region: np.ndarray) -> np.ndarray:
    """Voxels on either side of a region's edge (26-connectivity)."""
    s = np.ones((3, 3, 3), bool)
    return (ndimage.binary_dilation(region, s) & ~region) | (region & ~ndimage.binary_erosion(region, s))


def gradient_magnitude(img: np.ndarray) -> np.ndarray:
    return np.sqrt(sum(g**2 for g in np.gradient(img.astype(np.float64))))


def structure_region(mask: np.ndarray, labels: list[int], margin: int) -> np.ndarray:
    core = np.isin(mask, labels)
    return ndimage.binary_dilation(core, np.ones((3, 3, 3), bool), iterations=margin) if core.any() and margin > 0 else core


def structure_cut(img: np.ndarray, mask: np.ndarray, labels: list[int], margin: int) -> np.ndarray:
    """(2, D, H, W): the image inside the structure's region (background -1 elsewhere), the changed labels only."""
    region = structure_region(mask, labels, margin)
    return np.stack([np.where(region, img, -1.0), np.where(np.isin(mask, labels), mask, 0)]).astype(np.float32)


def _summary(v: np.ndarray | Sequence[float]) -> dict:
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0, "median": None, "iqr": None}
    return {"n": int(len(v)), "median": float(np.median(v)), "iqr": [float(np.quantile(v, 0.25)), float(np.quantile(v, 0.75))]}


def seam_and_look(cf_img: np.ndarray, cf_mask: np.ndarray, regions: np.ndarray, src_img: np.ndarray, rare_img: np.ndarray,
                  rare_mask: np.ndarray, labels: list[int], margin: int) -> dict:
    """Seam ratios and the changed structure's intensities; arrays (N, D, H, W), rare_*: real rare train cases."""
    seam_src, seam_real_abs, inside, ring_cf, ring_src = [], [], [], [], []
    for img, m, reg, src in zip(cf_img, cf_mask, regions, src_img, strict=False):
        b = border(reg)
        g_cf, g_src = gradient_magnitude(img)[b].mean(), gradient_magnitude(src)[b].mean()
        seam_src.append(g_cf / max(g_src, 1e-8))
        seam_real_abs.append(g_cf)
        s = np.isin(m, labels)
        inside.append((img[s].mean(), img[s].std()) if s.any() else (np.nan, np.nan))
        ring = reg & ~s
        ring_cf.append(img[ring].mean() if ring.any() else np.nan)
        ring_src.append(src[ring].mean() if ring.any() else np.nan)
    real_border, real_inside = [], []
    for img, m in zip(rare_img, rare_mask, strict=False):
        reg = structure_region(m, labels, margin)
        if reg.any():
            real_border.append(gradient_magnitude(img)[border(reg)].mean())
            s = np.isin(m, labels)
            real_inside.append((img[s].mean(), img[s].std()))
    ratio = np.asarray(seam_src)
    real_med = float(np.median(real_border)) if real_border else None
    inside_a, real_inside_a = np.asarray(inside, float).reshape(-1, 2), np.asarray(real_inside, float).reshape(-1, 2)
    return {
        "seam_ratio_to_source": _summary(ratio),
        "seam_ratio_to_source_per_case": [round(float(v), 4) for v in ratio],
        "seam_ratio_to_real_rare": _summary(np.asarray(seam_real_abs) / real_med) if real_med else _summary([]),
        "seam_deviation": float(np.median(np.maximum(ratio, 1 / np.maximum(ratio, 1e-8)))) if len(ratio) else None,
        "structure_mean": {"counterfactual": _summary(inside_a[:, 0]), "real_rare": _summary(real_inside_a[:, 0])},
        "structure_std": {"counterfactual": _summary(inside_a[:, 1]), "real_rare": _summary(real_inside_a[:, 1])},
        "ring_mean": {"counterfactual": _summary(ring_cf), "source": _summary(ring_src)},
        "changed_labels": labels, "margin": margin,
    }


def structure_copy_check(cf_img: np.ndarray, cf_mask: np.ndarray, train_x: np.ndarray, train_y: np.ndarray, holdout_x: np.ndarray,
                         holdout_y: np.ndarray, rare_index: int, labels: list[int], margin: int, factor: float) -> dict:
    """Copy detection of the changed structures against the training rare cases' structures (see the module doc)."""
    def cuts(x, y):
        keep = [i for i in range(len(x)) if y[i] == rare_index and np.isin(x[i, 1], labels).any()]
        return (np.stack([structure_cut(x[i, 0], np.rint(x[i, 1]), labels, margin) for i in keep]) if keep
                else np.zeros((0, 2, *x.shape[2:]), np.float32)), keep

    train_cut, train_keep = cuts(np.asarray(train_x), np.asarray(train_y))
    hold_cut, _ = cuts(np.asarray(holdout_x), np.asarray(holdout_y))
    if len(train_cut) < 2:
        return {"measured": False, "reason": f"{len(train_cut)} training rare cases hold the structure: at least 2 are needed to measure "
                                             "how close two different patients' structures come", "copies": None}
    ref = privacy_reference(train_cut, np.full(len(train_cut), rare_index), hold_cut, np.full(len(hold_cut), rare_index),
                            np.zeros((len(train_cut), 1)), np.zeros((len(hold_cut), 1)), rare_index)
    cf_cut = np.stack([structure_cut(i, m, labels, margin) for i, m in zip(cf_img, cf_mask, strict=False)])
    (sim,), informative = aligned_similarity(cf_cut, (ref.train_aligned,))
    det = copy_detection(sim, informative, ref, np.full(len(cf_cut), rare_index), factor)
    for p in det["copy_pairs"] + det["closest_pairs"]:
        p["train"] = int(train_keep[p["train"]])  # index into the train split
    det.update({"measured": True, "structures": "the changed labels and the image within the model's margin around them",
                "reference_structures": {"train": int(len(train_cut)), "holdout": int(len(hold_cut))}})
    return det
