"""Statistics used by the metrics: MMD, ROC AUC and percentile bootstrap intervals."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medsynth.eval.features import pairwise_distances


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD with a Gaussian kernel (bandwidth: median pairwise distance of x and y)."""
    if bandwidth is None:
        z = np.concatenate([x, y])
        d = pairwise_distances(z, z)
        bandwidth = float(np.median(d[np.triu_indices(len(z), 1)])) or 1.0
    k = lambda a, b: np.exp(-pairwise_distances(a, b) ** 2 / (2 * bandwidth**2))  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def roc_auc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U / (m n))."""
    pos = np.asarray(scores_pos)[:, None]
    neg = np.asarray(scores_neg)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def roc_curve(scores_pos: np.ndarray, scores_neg: np.ndarray) -> tuple[list[float], list[float]]:
    thr = np.unique(np.concatenate([scores_pos, scores_neg]))[::-1]
    tpr = [0.0] + [float((scores_pos >= t).mean()) for t in thr]
    fpr = [0.0] + [float((scores_neg >= t).mean()) for t in thr]
    return fpr, tpr


def bootstrap_ci(fn: Callable[[np.random.Generator], float], n: int, seed: int, alpha: float = 0.05) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    vals = np.array([fn(rng) for _ in range(n)])
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return (float("nan"), float("nan"))
    return float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))
