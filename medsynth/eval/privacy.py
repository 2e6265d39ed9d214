"""Privacy leakage of synthetic data, measured against real patients the generator never saw.

Members are the real train split; non-members the ``holdout`` split. Every synthetic-to-real number
is shown next to its real-to-real baseline.
"""

from __future__ import annotations

import numpy as np

from medsynth.eval.features import nearest, nearest_index
from medsynth.eval.stats import bootstrap_ci, roc_auc, roc_curve


def dcr_share(syn: np.ndarray, train: np.ndarray, holdout: np.ndarray, rng: np.random.Generator, repeats: int = 50) -> float:
    """Share of synthetic cases closer to a train case than to a holdout case.

    Train is subsampled to the holdout's size each repeat, so 0.5 is what "no leakage" gives
    whatever the split sizes; values near 1 mean synthetic cases hug their training patients.
    """
    d_hold = nearest(syn, holdout)[:, 0]
    shares = []
    for _ in range(repeats):
        sub = train[rng.choice(len(train), size=min(len(holdout), len(train)), replace=False)]
        d_train = nearest(syn, sub)[:, 0]
        shares.append(np.mean((d_train < d_hold) + 0.5 * (d_train == d_hold)))
    return float(np.mean(shares))


def privacy_metrics(syn: np.ndarray, train: np.ndarray, holdout: np.ndarray, seed: int, n_boot: int = 200, copy_percentile: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    d_syn_train = nearest(syn, train, k=2)
    d_hold_train = nearest(holdout, train)[:, 0]
    d_train_train = nearest(train, train, k=1, exclude_self=True)[:, 0]
    # copy detection: closer to a training case than (almost) any real patient is to another
    real_nn = np.concatenate([d_hold_train, d_train_train])
    threshold = float(np.percentile(real_nn, copy_percentile))
    copies = np.flatnonzero(d_syn_train[:, 0] < threshold)
    # nearest-neighbour distance ratio and authenticity (Alaa et al. 2022)
    nndr = d_syn_train[:, 0] / np.maximum(d_syn_train[:, 1], 1e-12)
    nn_idx = nearest_index(syn, train)
    authentic = d_syn_train[:, 0] > d_train_train[nn_idx]
    # black-box membership inference: a real case near a synthetic one is guessed a member
    s_mem = -nearest(train, syn)[:, 0]
    s_non = -nearest(holdout, syn)[:, 0]
    auc = roc_auc(s_mem, s_non)
    auc_ci = bootstrap_ci(lambda r: roc_auc(r.choice(s_mem, len(s_mem)), r.choice(s_non, len(s_non))), n_boot, seed + 1)
    share = dcr_share(syn, train, holdout, rng)
    share_ci = bootstrap_ci(lambda r: dcr_share(syn[r.choice(len(syn), len(syn))], train, holdout, r, repeats=5), max(20, n_boot // 10), seed + 2)
    fpr, tpr = roc_curve(s_mem, s_non)
    return {
        "dcr_share": share,
        "dcr_share_ci": list(share_ci),
        "dcr_synthetic_to_train": {"median": float(np.median(d_syn_train[:, 0])), "p05": float(np.percentile(d_syn_train[:, 0], 5))},
        "dcr_holdout_to_train": {"median": float(np.median(d_hold_train)), "p05": float(np.percentile(d_hold_train, 5))},
        "dcr_values": {"synthetic_to_train": d_syn_train[:, 0].tolist(), "holdout_to_train": d_hold_train.tolist()},
        "copy_threshold": threshold,
        "copies": int(len(copies)),
        "copy_indices": copies.tolist(),
        "copy_pairs": [[int(i), int(nn_idx[i])] for i in copies],
        "nndr_mean": float(np.mean(nndr)),
        "authenticity": float(np.mean(authentic)),
        "membership_auc_blackbox": auc,
        "membership_auc_blackbox_ci": list(auc_ci),
        "membership_roc_blackbox": {"fpr": fpr, "tpr": tpr},
        "n_synthetic": int(len(syn)),
        "n_members": int(len(train)),
        "n_nonmembers": int(len(holdout)),
    }


def whitebox_membership(scores_members: np.ndarray, scores_nonmembers: np.ndarray, seed: int, n_boot: int = 200) -> dict:
    """White-box attack: the model's own score of real cases (D score / ELBO), members vs holdout."""
    auc = roc_auc(scores_members, scores_nonmembers)
    ci = bootstrap_ci(lambda r: roc_auc(r.choice(scores_members, len(scores_members)), r.choice(scores_nonmembers, len(scores_nonmembers))), n_boot, seed)
    fpr, tpr = roc_curve(scores_members, scores_nonmembers)
    return {"membership_auc_whitebox": auc, "membership_auc_whitebox_ci": list(ci), "membership_roc_whitebox": {"fpr": fpr, "tpr": tpr}}
