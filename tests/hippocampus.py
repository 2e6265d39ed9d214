"""The real hippocampus cohort (../shared/data/hippocampus) in a small model space, loaded the same way
by the tests that need real cases with expert labels: (N, 2, 24, 32, 24) at 2 mm, image in [-1, 1]
(1st-99th percentile per case), label map, and the condition index per case."""

from __future__ import annotations

import csv

import numpy as np

from tests.conftest import shared

SIZE = (24, 32, 24)  # every case's hippocampus at 2 mm fits in this box


def centre_fit(a: np.ndarray, fill: float) -> np.ndarray:
    """Centre-pad / crop to SIZE."""
    out = np.full(SIZE, fill, a.dtype)
    src, dst = [], []
    for n, s in zip(a.shape, SIZE, strict=False):
        lo = abs(n - s) // 2
        src.append(slice(lo, lo + s) if n >= s else slice(0, n))
        dst.append(slice(0, s) if n >= s else slice(lo, lo + n))
    out[tuple(dst)] = a[tuple(src)]
    return out


def load_hippocampus(conditions) -> tuple[np.ndarray, np.ndarray]:
    """All 260 cases -> (x, y): x (N, 2, 24, 32, 24) float32, y the index of each case's condition in ``conditions``."""
    import nibabel as nib
    from scipy import ndimage

    root = shared("hippocampus")
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    x = np.empty((len(rows), 2, *SIZE), np.float32)
    for i, r in enumerate(rows):
        img = np.asarray(nib.load(str(root / r["case"])).dataobj).astype(np.float32)
        lab = np.asarray(nib.load(str(root / r["mask"])).dataobj).astype(np.int16)
        lo, hi = np.percentile(img, [1, 99])
        x[i, 0] = centre_fit(ndimage.zoom(np.clip((img - lo) / (hi - lo + 1e-6), 0, 1) * 2 - 1, 0.5, order=1), -1.0)
        x[i, 1] = centre_fit(ndimage.zoom(lab, 0.5, order=0), 0)
    return x, np.array([list(conditions).index(r["condition"]) for r in rows])
