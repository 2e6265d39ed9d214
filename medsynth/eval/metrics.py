"""Feature-space fidelity metrics, each with a bootstrap interval and a real-vs-real baseline.

* FID: Fréchet distance between Gaussians fitted to the two feature sets (Heusel et al. 2017). With a
  few dozen cases the covariance is singular, so a small ridge (1e-6 x mean variance) is added; FID is
  strongly biased upwards at small n — compare it with the baseline, never with published values.
* KID: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et al.
  2018), averaged over random subsets of at most ``subset`` cases.
* Precision / recall / density / coverage with k-nearest-neighbour balls (Naeem et al. 2020).
* alpha-precision / beta-recall (Alaa et al. 2022), in the simple form: features are standardised on
  the real set; the real support at level alpha is the ball around the real centre holding a share
  alpha of the real cases; alpha-precision(alpha) is the share of synthetic cases inside it (ideal:
  alpha); the reported number is 1 - mean |alpha-precision(alpha) - alpha| over alpha in (0, 1),
  and likewise beta-recall with the roles swapped (1 = ideal).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import linalg

from medsynth.eval.features import nearest, pairwise_distances
from medsynth.eval.stats import bootstrap_ci


def fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ca, cb = np.atleast_2d(ca), np.atleast_2d(cb)
    ridge = 1e-6 * float(np.mean(np.diag(ca)) + np.mean(np.diag(cb)) + 1e-12)
    eye = np.eye(len(ca))
    covmean = linalg.sqrtm((ca + ridge * eye) @ (cb + ridge * eye))
    covmean = np.real(covmean)
    return float(max(np.sum((mu_a - mu_b) ** 2) + np.trace(ca + cb - 2 * covmean), 0.0))


def kid(a: np.ndarray, b: np.ndarray, subset: int = 100, n_subsets: int = 10, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    d = a.shape[1]
    m = min(subset, len(a), len(b))
    if m < 2:
        return float("nan")
    vals = []
    for _ in range(n_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        vals.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
    return float(np.mean(vals))


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row to its k-th nearest other row (self, at distance 0, excluded)."""
    return nearest(x, x, k=k + 1)[:, k]


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, real_radii: np.ndarray | None = None) -> dict[str, float]:
    """``real_radii``: :func:`knn_radii` of ``real`` for this k, when already computed (bootstrap)."""
    k = max(1, min(k, len(real) - 1, len(fake) - 1))
    r_rad = real_radii if real_radii is not None else knn_radii(real, k)
    f_rad = knn_radii(fake, k)
    d = pairwise_distances(fake, real)  # (fake, real)
    inside = d < r_rad[None, :]
    precision = float(inside.any(1).mean())
    density = float(inside.sum(1).mean() / k)
    recall = float((pairwise_distances(real, fake) < f_rad[None, :]).any(1).mean())
    coverage = float((d.min(0) < r_rad).mean())
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def _support_curve(reference: np.ndarray, other: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    mu, sd = reference.mean(0), reference.std(0) + 1e-8
    r = np.linalg.norm((reference - mu) / sd, axis=1)
    o = np.linalg.norm((other - mu) / sd, axis=1)
    radii = np.quantile(r, alphas)
    return np.array([(o <= rad).mean() for rad in radii])


def alpha_precision_beta_recall(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    alphas = np.linspace(0.05, 0.95, 19)
    ap = _support_curve(real, fake, alphas)
    br = _support_curve(fake, real, alphas)
    return {"alpha_precision": float(1 - np.mean(np.abs(ap - alphas))), "beta_recall": float(1 - np.mean(np.abs(br - alphas)))}


def with_ci(fn: Callable[[np.ndarray, np.ndarray], float], a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> dict:
    """fn(a, b) with a bootstrap 95% interval (both sets resampled)."""
    value = fn(a, b)

    def boot(r: np.random.Generator) -> float:
        return fn(a[r.choice(len(a), len(a))], b[r.choice(len(b), len(b))])

    lo, hi = bootstrap_ci(boot, n_boot, seed, point=value)
    return {"value": float(value), "ci": [float(lo), float(hi)]}


def feature_fidelity(syn: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int, n_boot: int = 50) -> dict:
    """FID, KID, PRDC, alpha-precision/beta-recall of synthetic vs train, each with the test-vs-train baseline."""
    out: dict = {}
    for name, fn in (("fid", fid), ("kid", lambda x, y: kid(x, y, seed=seed))):
        out[name] = with_ci(fn, syn, train, n_boot, seed)
        out[name]["real_baseline"] = float(fn(test, train)) if len(test) > 2 else None
    p = prdc(train, syn)
    base = prdc(train, test) if len(test) > 2 else {}
    k = max(1, min(5, len(train) - 1, len(syn) - 1))
    radii = knn_radii(train, k)
    for key, val in p.items():
        def resampled(r: np.random.Generator, key: str = key) -> float:
            return prdc(train, syn[r.choice(len(syn), len(syn))], k, radii)[key]

        ci = bootstrap_ci(resampled, max(10, n_boot // 2), seed, point=val)
        out[key] = {"value": val, "ci": [float(ci[0]), float(ci[1])], "real_baseline": base.get(key)}
    ab = alpha_precision_beta_recall(train, syn)
    ab_base = alpha_precision_beta_recall(train, test) if len(test) > 2 else {}
    for key, val in ab.items():
        out[key] = {"value": val, "real_baseline": ab_base.get(key)}
    return out


def ms_ssim_diversity(volumes: np.ndarray, pairs: int = 32, seed: int = 0) -> float | None:
    """Mean MS-SSIM between random pairs of volumes in [-1, 1] (lower = more diverse). Kernel 3 and as
    many scales as the volume size allows (2 at 16^3, 3 at 32^3, 4 at 64^3), so it works at the cohort's
    size; None when fewer than 2 volumes."""
    import torch
    from monai.metrics.regression import compute_ms_ssim

    n = len(volumes)
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    idx = [tuple(rng.choice(n, 2, replace=False)) for _ in range(pairs)]
    x = torch.from_numpy(np.stack([volumes[i] for i, _ in idx]).astype(np.float32))[:, None]
    y = torch.from_numpy(np.stack([volumes[j] for _, j in idx]).astype(np.float32))[:, None]
    size = min(volumes.shape[1:])
    scales = max(1, min(4, int(np.log2(size / 4))))
    weights = tuple([1.0 / scales] * scales)
    val = compute_ms_ssim((x + 1) / 2, (y + 1) / 2, spatial_dims=3, data_range=1.0, kernel_size=3, weights=weights)
    return float(val.mean())
