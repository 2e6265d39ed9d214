"""Fidelity: does synthetic data look like real data? Each number comes with its real-vs-real baseline."""

from __future__ import annotations

import numpy as np

from medsynth.eval.features import pairwise_distances
from medsynth.eval.stats import bootstrap_ci, mmd2_unbiased


def _bandwidth(*sets: np.ndarray) -> float:
    z = np.concatenate(sets)
    d = pairwise_distances(z, z)
    return float(np.median(d[np.triu_indices(len(z), 1)])) or 1.0


def fidelity_metrics(syn: np.ndarray, train: np.ndarray, test: np.ndarray, syn_images: np.ndarray, real_images: np.ndarray,
                     syn_masks: np.ndarray, real_masks: np.ndarray, seed: int, n_boot: int = 200) -> dict:
    """MMD (synthetic vs train, baseline test vs train), intensity-histogram and mask-volume distances."""
    bw = _bandwidth(train, test, syn)
    mmd_syn = mmd2_unbiased(syn, train, bw)
    mmd_real = mmd2_unbiased(test, train, bw) if len(test) > 1 else float("nan")

    def boot(r: np.random.Generator) -> float:
        s = syn[r.choice(len(syn), len(syn))]
        t = train[r.choice(len(train), len(train))]
        return mmd2_unbiased(s, t, bw)

    ci = bootstrap_ci(boot, n_boot, seed, point=mmd_syn)
    floor = 0.01 * max(abs(mmd_real) if np.isfinite(mmd_real) else 0.0, 1e-3)
    ratio = max(mmd_syn, 0.0) / max(mmd_real if np.isfinite(mmd_real) else 0.0, floor)
    # nearest-neighbour realism: how far synthetic cases sit from the training data, in units of how
    # far unseen real cases sit from it (1 = as close as real patients; robust at small n)
    from medsynth.eval.features import nearest

    d_syn = float(np.median(nearest(syn, train)[:, 0]))
    d_real = float(np.median(nearest(test, train)[:, 0])) if len(test) else float("nan")
    nn_ratio = d_syn / d_real if d_real > 0 else float("nan")
    hist_syn = np.histogram(syn_images, bins=32, range=(-1, 1))[0].astype(float)
    hist_real = np.histogram(real_images, bins=32, range=(-1, 1))[0].astype(float)
    hist_syn /= hist_syn.sum()
    hist_real /= hist_real.sum()
    # Jensen-Shannon distance of the intensity histograms
    m = 0.5 * (hist_syn + hist_real)
    kl = lambda p, q: float(np.sum(np.where(p > 0, p * np.log((p + 1e-12) / (q + 1e-12)), 0)))  # noqa: E731
    js = float(np.sqrt(0.5 * kl(hist_syn, m) + 0.5 * kl(hist_real, m)))
    vol_syn = (syn_masks > 0).reshape(len(syn_masks), -1).mean(1)
    vol_real = (real_masks > 0).reshape(len(real_masks), -1).mean(1)
    return {
        "mmd2": mmd_syn,
        "mmd2_ci": list(ci),
        "mmd2_real_baseline": mmd_real,
        "mmd_ratio": float(ratio),
        "nn_distance_ratio": nn_ratio,
        "nn_distance_synthetic_to_train": d_syn,
        "nn_distance_test_to_train": d_real,
        "intensity_js_distance": js,
        "mask_volume_fraction": {"synthetic_mean": float(vol_syn.mean()), "real_mean": float(vol_real.mean()),
                                 "synthetic_sd": float(vol_syn.std()), "real_sd": float(vol_real.std())},
        "mask_volume_wasserstein": float(_w1(vol_syn, vol_real)),
        "diversity_synthetic": float(np.mean(pairwise_distances(syn, syn))),
        "diversity_real": float(np.mean(pairwise_distances(train, train))),
        "bandwidth": bw,
    }


def _w1(a: np.ndarray, b: np.ndarray) -> float:
    qs = np.linspace(0, 1, 101)
    return float(np.mean(np.abs(np.quantile(a, qs) - np.quantile(b, qs))))
