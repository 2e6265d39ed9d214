"""Weight-free 3D features: a coarse (8^3) intensity volume, an intensity histogram and label
fractions. No pretrained network and nothing downloaded. Also the nearest-neighbour search and the
feature cache of the evaluate stage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F


def volume_features(images: np.ndarray, masks: np.ndarray, n_mask_labels: int, grid: int = 8, bins: int = 16) -> np.ndarray:
    """(N, D, H, W) images in [-1, 1] and label maps -> (N, F) float64 features."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None]
    coarse = F.adaptive_avg_pool3d(x, grid).flatten(1).numpy()
    hist = np.stack([np.histogram(im, bins=bins, range=(-1, 1))[0] / im.size for im in images])
    fractions = np.stack([[np.mean(m == k) for k in range(1, n_mask_labels + 1)] for m in masks]) if n_mask_labels else np.zeros((len(images), 0))
    return np.concatenate([coarse, 4.0 * hist, 8.0 * fractions], axis=1).astype(np.float64)


def pairwise_distances(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Euclidean distances, computed in chunks so large sets never need a full matrix in float64 twice."""
    out = np.empty((len(a), len(b)), dtype=np.float64)
    bb = (b * b).sum(1)
    for i in range(0, len(a), chunk):
        aa = a[i : i + chunk]
        d2 = (aa * aa).sum(1)[:, None] + bb[None] - 2 * aa @ b.T
        out[i : i + chunk] = np.sqrt(np.maximum(d2, 0))
    return out


def nearest(a: np.ndarray, b: np.ndarray, k: int = 1, exclude_self: bool = False, chunk: int = 4096) -> np.ndarray:
    """Distances from each row of ``a`` to its k nearest rows of ``b`` -> (len(a), k), chunked."""
    out = np.empty((len(a), k))
    bb = (b * b).sum(1)
    for i in range(0, len(a), chunk):
        aa = a[i : i + chunk]
        d = np.sqrt(np.maximum((aa * aa).sum(1)[:, None] + bb[None] - 2 * aa @ b.T, 0))
        if exclude_self:
            d[np.arange(len(aa)), np.arange(i, i + len(aa))] = np.inf
        if k == 1:
            out[i : i + chunk, 0] = d.min(1)
        else:
            out[i : i + chunk] = np.sort(np.partition(d, k - 1, axis=1)[:, :k], axis=1)
    return out


def nearest_index(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Index of the nearest row of ``b`` for each row of ``a`` (chunked)."""
    bb = (b * b).sum(1)
    out = np.empty(len(a), dtype=np.int64)
    for i in range(0, len(a), chunk):
        aa = a[i : i + chunk]
        out[i : i + chunk] = np.argmin((aa * aa).sum(1)[:, None] + bb[None] - 2 * aa @ b.T, axis=1)
    return out


def cached_features(cache_dir: Path | None, name: str, key_parts: list[str], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()`` once per content: the result is kept as ``<cache_dir>/<name>-<key>.npy`` where the key
    hashes ``key_parts`` (e.g. the encoder's checksum, the preprocessing hash and the split's case ids),
    so changed inputs are never served stale. Older entries of ``name`` are removed. No cache_dir: compute."""
    if cache_dir is None:
        return compute()
    key = hashlib.sha256("\x1f".join(key_parts).encode()).hexdigest()[:20]
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{name}-{key}.npy"
    if path.is_file():
        return np.load(path)
    from medsynth.io.writers import atomic_path

    value = np.asarray(compute())
    for old in cache_dir.glob(f"{name}-*.npy"):
        old.unlink()
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, value)
    return value
