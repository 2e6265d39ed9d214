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


def percentile_interval(boots, point: float | None = None, alpha: float = 0.05) -> list[float]:
    """The (1 - alpha) percentile interval of bootstrap values, widened to hold the point estimate where the
    bootstrap distribution lies to one side of it. Resampling with replacement duplicates cases, which
    biases statistics that count neighbours or distances (PRDC, MMD, the DCR share, the highest holdout
    score behind a low-FPR TPR); an interval that excluded its own estimate would contradict it."""
    vals = np.asarray(boots, float)
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return [float("nan"), float("nan")]
    lo, hi = float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))
    if point is not None and np.isfinite(point):
        lo, hi = min(lo, float(point)), max(hi, float(point))
    return [lo, hi]


def bootstrap_ci(fn: Callable[[np.random.Generator], float], n: int, seed: int, alpha: float = 0.05,
                 point: float | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of ``fn`` over ``n`` resamples, holding ``point`` (see percentile_interval)."""
    rng = np.random.default_rng(seed)
    lo, hi = percentile_interval([fn(rng) for _ in range(n)], point, alpha)
    return lo, hi
