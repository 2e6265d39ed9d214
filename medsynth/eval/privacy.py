"""Privacy leakage of synthetic data, measured against real patients the generator never saw.

Members are the real train split; non-members the ``holdout`` split. Every synthetic-to-real number
is shown next to its real-to-real baseline. Three parts:

* distance tests in the weight-free feature space: DCR share, NNDR, authenticity (``privacy_metrics``);
* membership attacks, each scored by ROC AUC and TPR at FPR 1% and 0.1% with bootstrap intervals, on
  all cases and on the rare condition alone: nearest distance in the weight-free features, nearest
  similarity in the aligned image space, the density ratio of synthetic over reference cases (DOMIAS,
  van Breugel et al. 2023; the reference: real cases in neither the train nor the holdout split), and
  the model's own score of real cases (white-box);
* copy detection in the aligned image space, where a flipped, shifted, intensity-scaled, noisy or
  blended copy is still next to its source; its threshold is calibrated on real-to-real pairs.

``privacy_reference`` holds the real side (computed once per cohort), ``audit_privacy`` audits one
synthetic set against it; the evaluate stage calls both.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsynth.eval.features import nearest, nearest_index
from medsynth.eval.stats import bootstrap_ci, percentile_interval, roc_auc, roc_curve

LOW_FPRS = (0.01, 0.001)
FLIPS = tuple(itertools.product((False, True), repeat=3))
ALIGNED_MAX_VOXELS = 16384  # per channel, after pooling: a 24x32x24 window stays at full resolution
MIN_SUBSET_CASES = 5  # members and non-members each: fewer give AUCs of 0 or 1 by chance and degenerate intervals


def closer_share(syn: np.ndarray, a: np.ndarray, b: np.ndarray, rng: np.random.Generator, repeats: int = 50) -> float:
    """Share of synthetic cases closer to a case of ``a`` than to a case of ``b`` (ties count half).

    Each repeat draws ``a`` and, when it is the larger, ``b`` down to the smaller set's size, so that
    0.5 is what two sets the synthetic cases are equally near give, whatever their sizes."""
    n = min(len(a), len(b))
    d_b = nearest(syn, b)[:, 0] if len(b) == n else None
    shares = []
    for _ in range(repeats):
        d_a = nearest(syn, a[rng.choice(len(a), size=n, replace=False)])[:, 0]
        d = d_b if d_b is not None else nearest(syn, b[rng.choice(len(b), size=n, replace=False)])[:, 0]
        shares.append(np.mean((d_a < d) + 0.5 * (d_a == d)))
    return float(np.mean(shares))


def dcr_share(syn: np.ndarray, train: np.ndarray, holdout: np.ndarray, rng: np.random.Generator, repeats: int = 50) -> float:
    """Share of synthetic cases closer to a train case than to a holdout case.

    Train is subsampled to the holdout's size each repeat, so 0.5 is what "no leakage" gives
    whatever the split sizes; values near 1 mean synthetic cases hug their training patients."""
    return closer_share(syn, train, holdout, rng, repeats)


def closer_share_with_ci(syn: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int, n_boot: int) -> dict:
    """``closer_share`` with its percentile bootstrap interval: the synthetic cases resampled
    ``max(20, n_boot // 10)`` times, 5 subsampling repeats each."""
    share = closer_share(syn, a, b, np.random.default_rng(seed))
    ci = bootstrap_ci(lambda r: closer_share(syn[r.choice(len(syn), len(syn))], a, b, r, repeats=5), max(20, n_boot // 10), seed + 2, point=share)
    return {"share": share, "share_ci": list(ci)}


def dcr_share_control(syn: np.ndarray, train: np.ndarray, holdout: np.ndarray, control: np.ndarray | None, seed: int, n_boot: int) -> dict:
    """The DCR share's baseline, as ``control_report`` is the attacks'. The control cases are real
    patients the generator never saw and the audit does not use as non-members.
    ``control_vs_nonmembers``: the share with the control cases in train's place (about 0.5 when the
    share measures closeness to members; as high as the share itself when the synthetic cases merely
    lie where the holdout differs from the other patients). ``members_vs_control``: closer to train
    than to the control cases (about 0.5 unless the synthetic cases sit near members)."""
    if control is None or len(control) == 0:
        return {"measured": False, "reason": "no control cases (real cases the generator never saw, other than the non-members)"}
    control = np.asarray(control)
    if len(control) < MIN_SUBSET_CASES:
        return {"measured": False, "n_control": int(len(control)), "reason": f"{len(control)} control cases: at least {MIN_SUBSET_CASES} are needed"}
    return {"measured": True, "n_control": int(len(control)),
            "control_vs_nonmembers": closer_share_with_ci(syn, control, holdout, seed + 20, n_boot),
            "members_vs_control": closer_share_with_ci(syn, train, control, seed + 30, n_boot)}


def privacy_metrics(syn: np.ndarray, train: np.ndarray, holdout: np.ndarray, seed: int, n_boot: int = 200,
                    control: np.ndarray | None = None) -> dict:
    """Distance tests in one feature space (rows are cases): DCR and its share (with its control,
    ``dcr_share_control``, from the ``control`` cases), NNDR, authenticity and the nearest-distance
    membership attack's AUC."""
    d_syn_train = nearest(syn, train, k=2)
    d_hold_train = nearest(holdout, train)[:, 0]
    d_train_train = nearest(train, train, k=1, exclude_self=True)[:, 0]
    # nearest-neighbour distance ratio and authenticity (Alaa et al. 2022)
    nndr = d_syn_train[:, 0] / np.maximum(d_syn_train[:, 1], 1e-12)
    nn_idx = nearest_index(syn, train)
    authentic = d_syn_train[:, 0] > d_train_train[nn_idx]
    # black-box membership inference: a real case near a synthetic one is guessed a member
    s_mem = -nearest(train, syn)[:, 0]
    s_non = -nearest(holdout, syn)[:, 0]
    auc = roc_auc(s_mem, s_non)
    auc_ci = bootstrap_ci(lambda r: roc_auc(r.choice(s_mem, len(s_mem)), r.choice(s_non, len(s_non))), n_boot, seed + 1, point=auc)
    share = closer_share_with_ci(syn, train, holdout, seed, n_boot)
    fpr, tpr = roc_curve(s_mem, s_non)
    return {
        "dcr_share": share["share"],
        "dcr_share_ci": share["share_ci"],
        "dcr_share_control": dcr_share_control(syn, train, holdout, control, seed, n_boot),
        "dcr_synthetic_to_train": {"median": float(np.median(d_syn_train[:, 0])), "p05": float(np.percentile(d_syn_train[:, 0], 5))},
        "dcr_holdout_to_train": {"median": float(np.median(d_hold_train)), "p05": float(np.percentile(d_hold_train, 5))},
        "dcr_values": {"synthetic_to_train": d_syn_train[:, 0].tolist(), "holdout_to_train": d_hold_train.tolist()},
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
    ci = bootstrap_ci(lambda r: roc_auc(r.choice(scores_members, len(scores_members)), r.choice(scores_nonmembers, len(scores_nonmembers))), n_boot, seed,
                      point=auc)
    fpr, tpr = roc_curve(scores_members, scores_nonmembers)
    return {"membership_auc_whitebox": auc, "membership_auc_whitebox_ci": list(ci), "membership_roc_whitebox": {"fpr": fpr, "tpr": tpr}}


# ---- membership attacks: AUC and TPR at low FPR -------------------------------------------------

def _auc(s_mem: np.ndarray, non_sorted: np.ndarray) -> float:
    """Mann-Whitney AUC (ties half): P(member score > non-member score); non-member scores sorted."""
    below = np.searchsorted(non_sorted, s_mem, "left") + np.searchsorted(non_sorted, s_mem, "right")
    return float(below.sum() / (2 * len(s_mem) * len(non_sorted)))


def _tpr_at(s_mem: np.ndarray, non_sorted: np.ndarray, fpr: float) -> float:
    """TPR at the threshold that flags at most ``floor(fpr * n)`` non-members (fpr 0: none)."""
    k = int(np.floor(fpr * len(non_sorted) + 1e-9))
    return float(np.mean(s_mem > non_sorted[len(non_sorted) - 1 - k]))


def attack_report(s_mem: np.ndarray, s_non: np.ndarray, seed: int, n_boot: int) -> dict:
    """ROC AUC, TPR at FPR 1% and 0.1% and TPR with no non-member flagged, each with a percentile
    bootstrap interval (members and non-members resampled separately). TPR at FPR ``a`` is reported
    only with at least ``1/a`` non-members: with fewer, the lowest FPR a threshold can reach is
    ``1/n`` and a value at ``a`` would be an extrapolation."""
    s_mem, s_non = np.asarray(s_mem, float), np.asarray(s_non, float)
    m, n = len(s_mem), len(s_non)
    if m < MIN_SUBSET_CASES or n < MIN_SUBSET_CASES:
        return {"measured": False, "reason": f"{m} members and {n} non-members: at least {MIN_SUBSET_CASES} of each are needed",
                "n_members": m, "n_nonmembers": n}
    fprs = [a for a in LOW_FPRS if n >= round(1 / a)]
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        bm, bn = s_mem[rng.integers(0, m, m)], np.sort(s_non[rng.integers(0, n, n)])
        boot.append([_auc(bm, bn), _tpr_at(bm, bn, 0.0), *(_tpr_at(bm, bn, a) for a in fprs)])
    s_non = np.sort(s_non)
    point = [_auc(s_mem, s_non), _tpr_at(s_mem, s_non, 0.0), *(_tpr_at(s_mem, s_non, a) for a in fprs)]
    # a resampled holdout's highest score is never above the full one's, so TPRs at the lowest FPRs
    # skew upwards under the bootstrap: each interval holds its point estimate (percentile_interval)
    boot_a = np.array(boot)
    ci = [percentile_interval(boot_a[:, j], p) for j, p in enumerate(point)]
    low = []
    for a in LOW_FPRS:
        if a in fprs:
            j = 2 + fprs.index(a)
            low.append({"fpr": a, "tpr": point[j], "ci": ci[j], "reason": None})
        else:
            low.append({"fpr": a, "tpr": None, "ci": None,
                        "reason": f"{n} non-members resolve FPR down to {1 / n:.3g} only; FPR {a:g} needs at least {round(1 / a)}"})
    return {
        "measured": True,
        "auc": point[0], "auc_ci": ci[0],
        "tpr_at_low_fpr": low,
        "tpr_with_no_false_positive": {"tpr": point[1], "ci": ci[1], "fpr_resolution": 1 / n},
        "n_members": m, "n_nonmembers": n,
    }


def _auc_with_ci(a: np.ndarray, b: np.ndarray, seed: int, n_boot: int) -> dict:
    """AUC of ``a`` over ``b`` with its bootstrap interval (both sets resampled)."""
    point = _auc(a, np.sort(b))
    ci = bootstrap_ci(lambda r: _auc(a[r.integers(0, len(a), len(a))], np.sort(b[r.integers(0, len(b), len(b))])), n_boot, seed, point=point)
    return {"auc": point, "auc_ci": list(ci)}


def control_report(s_mem: np.ndarray, s_non: np.ndarray, s_ctrl: np.ndarray | None, seed: int, n_boot: int, reason: str | None = None) -> dict:
    """The attack's own baseline. The control cases are real patients the generator never saw and the
    audit does not use as non-members; scored by the same attack they should look like non-members.
    ``control_vs_nonmembers``: the attack with the control cases in the members' place (about 0.5 when
    the attack measures membership; as high as the attack itself when the holdout merely differs from
    the other patients as seen from these synthetic cases). ``members_vs_control``: members against
    the control cases, both not non-members (about 0.5 unless members stand out)."""
    if s_ctrl is None:
        return {"measured": False, "reason": reason or "no control cases (real cases the generator never saw, other than the non-members)"}
    s_mem, s_non, s_ctrl = (np.asarray(s, float) for s in (s_mem, s_non, s_ctrl))
    if min(len(s_mem), len(s_non), len(s_ctrl)) < MIN_SUBSET_CASES:
        return {"measured": False, "n_control": int(len(s_ctrl)),
                "reason": f"{len(s_ctrl)} control cases: at least {MIN_SUBSET_CASES} are needed"}
    return {"measured": True, "n_control": int(len(s_ctrl)), "control_vs_nonmembers": _auc_with_ci(s_ctrl, s_non, seed, n_boot),
            "members_vs_control": _auc_with_ci(s_mem, s_ctrl, seed + 1, n_boot)}


def membership_attack(kind: str, signal: str, s_mem: np.ndarray, s_non: np.ndarray, rare_mem: np.ndarray, rare_non: np.ndarray,
                      seed: int, n_boot: int, s_ctrl: np.ndarray | None = None, rare_ctrl: np.ndarray | None = None,
                      control_reason: str | None = None) -> dict:
    """One attack (higher score = guessed member) on all cases and on the rare condition's cases alone,
    each with its control (``control_report``) when control scores ``s_ctrl`` are given."""
    out: dict[str, Any] = {"kind": kind, "signal": signal}
    for subset, sel_m, sel_n, sel_c, sd in (("all", slice(None), slice(None), slice(None), seed), ("rare_condition", rare_mem, rare_non, rare_ctrl, seed + 1)):
        report = attack_report(s_mem[sel_m], s_non[sel_n], sd, n_boot)
        if report["measured"]:
            ctrl = None if s_ctrl is None or sel_c is None else np.asarray(s_ctrl)[sel_c]
            report["control"] = control_report(s_mem[sel_m], s_non[sel_n], ctrl, sd + 13, n_boot, control_reason)
        out[subset] = report
    return out


DENSITY_DIMS = 16  # principal components the densities of the density-ratio attack are estimated in
DENSITY_BANDWIDTH = 0.5  # times Scott's: on hippocampus copies of 60 members, AUC 0.62 (0.71 is all 60 found) vs 0.59 at 1


def density_ratio_scores(syn: np.ndarray, reference: np.ndarray, query: np.ndarray, dims: int = DENSITY_DIMS) -> np.ndarray | None:
    """DOMIAS: log p_synthetic(x) - log p_reference(x) for each query case, both densities Gaussian KDEs
    (half Scott's bandwidth) in the first principal components of the standardised synthetic and reference
    features. A generator that memorised its training cases puts density on them beyond what the
    population (the reference) has there: members score high. None when either set is too small."""
    k = min(dims, len(syn) - 2, len(reference) - 2)
    if k < 1:
        return None
    from scipy.stats import gaussian_kde

    both = np.concatenate([syn, reference]).astype(np.float64)
    mu, sd = both.mean(0), both.std(0) + 1e-8
    z = (both - mu) / sd
    centre = z.mean(0)
    _, _, vt = np.linalg.svd(z - centre, full_matrices=False)
    proj = lambda a: (((np.asarray(a, np.float64) - mu) / sd - centre) @ vt[:k].T).T  # noqa: E731
    try:
        kdes = [gaussian_kde(proj(a)) for a in (syn, reference)]
        for kde in kdes:
            kde.set_bandwidth(kde.factor * DENSITY_BANDWIDTH)
        return kdes[0].logpdf(proj(query)) - kdes[1].logpdf(proj(query))
    except np.linalg.LinAlgError:  # a set whose projected cases are (nearly) collinear has no density
        return None


def strongest_attacks(attacks: dict, audience: str) -> dict:
    """The attack with the highest AUC, on all cases and on the rare condition, among those the
    audience allows: black-box only for ``internal``, white-box too for ``share``."""
    allowed = {k: a for k, a in attacks.items() if audience == "share" or a["kind"] == "black-box"}
    out: dict[str, Any] = {}
    for subset in ("all", "rare_condition"):
        measured = {k: a[subset] for k, a in allowed.items() if a[subset].get("measured")}
        if not measured:
            reasons = sorted({a[subset].get("reason", "") for a in allowed.values()})
            out[subset] = {"measured": False, "reason": "; ".join(reasons) or "no attack ran"}
            continue
        name = max(measured, key=lambda k: measured[k]["auc"])
        best = measured[name]
        out[subset] = {"measured": True, "attack": name, "kind": allowed[name]["kind"], "auc": best["auc"], "auc_ci": best["auc_ci"],
                       "tpr_at_low_fpr": best["tpr_at_low_fpr"], "tpr_with_no_false_positive": best["tpr_with_no_false_positive"],
                       "n_members": best["n_members"], "n_nonmembers": best["n_nonmembers"],
                       "control": best.get("control", {"measured": False, "reason": "no control cases"})}
    out["attacks_considered"] = sorted(allowed)
    return out


# ---- aligned image space: copies that a disguise does not hide ------------------------------------

CHANNELS = ("combined", "image", "label map")


def _window(shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """The compared window (the volume less an eighth at each border, so shifted-in borders and
    filled voxels stay outside) and the pooling factor that keeps it within ALIGNED_MAX_VOXELS."""
    w = [n - 2 * max(1, n // 8) for n in shape]
    k = 1
    while np.prod([v // k for v in w]) > ALIGNED_MAX_VOXELS:
        k += 1
    return tuple(v // k * k for v in w), k


def _unit(ch: np.ndarray) -> tuple[np.ndarray, bool]:
    """Zero-mean unit-norm vector of one channel and whether it varies (a constant channel: the
    constant unit vector, equal for all constant channels and orthogonal to the others)."""
    v = ch.ravel() - ch.mean()
    norm = np.linalg.norm(v)
    if norm > 1e-6 * np.sqrt(v.size):
        return v / norm, True
    return np.full(v.size, 1 / np.sqrt(v.size)), False


@dataclass
class Aligned:
    """Per case and flip, unit vectors of the image and the label map in the window centred on the
    label map, and of the image in the window centred on the image: (N, F, 3, L); and whether each
    of the three varies (N, 3)."""

    vectors: np.ndarray
    informative: np.ndarray


def _centre_of_mass(weight: np.ndarray, grids: Sequence[np.ndarray]) -> np.ndarray:
    total = weight.sum()
    return np.array([(g * weight).sum() / total for g in grids]) if total > 0 else (np.array(weight.shape) - 1) / 2


def aligned_vectors(x: np.ndarray, flips: bool) -> Aligned:
    """(N, 2, D, H, W) image + label map -> vectors for F = 8 flips, or 1 (as is).

    Each case (each flip of it) is cut to a window centred on the centre of mass of its label map
    (of the image where the label map is empty), and its image also to a window centred on the
    image's own centre of mass (voxels above the case mean, weighted by the excess), so that an image
    copied under another label map is still aligned. Windows are average-pooled when large and
    standardised (zero mean, unit norm): a dot product is a normalised correlation, blind to shifts,
    affine intensity changes and, with ``flips``, to mirroring."""
    x = np.asarray(x, np.float32)
    shape = np.array(x.shape[2:])
    w, k = _window(tuple(shape))
    pad = [v // 2 + 2 for v in w]
    flip_set = FLIPS if flips else FLIPS[:1]
    vec = np.empty((len(x), len(flip_set), 3, int(np.prod([v // k for v in w]))), np.float32)
    informative = np.zeros((len(x), 3), bool)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    for i, case in enumerate(x):
        z = (case[0] - case[0].mean()) / (case[0].std() + 1e-6)
        com_image = _centre_of_mass(np.clip(z, 0, None), grids)
        com_label = _centre_of_mass((case[1] > 0).astype(np.float64), grids) if (case[1] > 0).any() else com_image
        padded = np.pad(case, [(0, 0)] + [(p, p) for p in pad], mode="edge")
        for j, flip in enumerate(flip_set):
            for slot, (ch, com) in enumerate(((0, com_label), (1, com_label), (0, com_image))):
                view = padded[(ch, *(slice(None, None, -1) if f else slice(None) for f in flip))]
                start = np.rint(np.where(flip, shape - 1 - com, com) - (np.array(w) - 1) / 2).astype(int) + pad
                crop = view[tuple(slice(s, s + v) for s, v in zip(start, w, strict=False))]
                if k > 1:
                    crop = crop.reshape(w[0] // k, k, w[1] // k, k, w[2] // k, k).mean((1, 3, 5))
                vec[i, j, slot], informative[i, slot] = _unit(crop)
    return Aligned(vec, informative)


def aligned_similarity(x: np.ndarray, refs: tuple[Aligned, ...], chunk: int = 64) -> tuple[list[np.ndarray], np.ndarray]:
    """Normalised correlations of every case of ``x`` (N, 2, D, H, W), each the maximum over its 8 flips,
    with every case of each reference set: one (3, N, M) array per set, for CHANNELS (combined: mean of
    image and label map in the label map's window, same flip; image: the better of its two windows;
    label map alone); and whether each of the case's vectors varies (N, 3). Built ``chunk`` cases at a time."""
    out = [np.empty((3, len(x), len(r.vectors)), np.float32) for r in refs]
    informative = np.zeros((len(x), 3), bool)
    for i in range(0, len(x), chunk):
        q = aligned_vectors(x[i : i + chunk], True)
        informative[i : i + chunk] = q.informative
        v = q.vectors
        for o, ref in zip(out, refs, strict=False):
            r = ref.vectors[:, 0]
            per = np.stack([(v[:, :, c].reshape(-1, v.shape[-1]) @ r[:, c].T).reshape(len(v), v.shape[1], len(r)) for c in range(3)])
            o[0, i : i + chunk] = (0.5 * (per[0] + per[1])).max(1)
            o[1, i : i + chunk] = np.maximum(per[0], per[2]).max(1)
            o[2, i : i + chunk] = per[1].max(1)
    return out, informative


def _distance(sim: np.ndarray) -> np.ndarray:
    """L2 distance between unit vectors: 0 for a disguised copy, sqrt(2) for unrelated cases."""
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sim))


@dataclass
class PrivacyReference:
    """The real side of the audit, computed once per cohort and shared by every model."""

    train_features: np.ndarray
    holdout_features: np.ndarray
    train_aligned: Aligned
    holdout_aligned: Aligned
    train_y: np.ndarray
    holdout_y: np.ndarray
    rare_index: int
    real_nn: np.ndarray  # (3, holdout + train): each real case's aligned distance to its nearest other train patient, per CHANNELS
    real_informative: np.ndarray  # (3, holdout + train): the channel varies (a constant label map identifies nobody)
    reference_features: np.ndarray | None = None  # real cases in neither split (the density-ratio attack's population)
    # the attacks' control: real cases the generator never saw, other than the non-members (control_report)
    control_features: np.ndarray | None = None
    control_aligned: Aligned | None = None
    control_y: np.ndarray | None = None
    control_in_density_reference: np.ndarray | None = None  # per control case: also in reference_features (no control of the density ratio)


def privacy_reference(train_x: np.ndarray, train_y: np.ndarray, holdout_x: np.ndarray, holdout_y: np.ndarray,
                      train_features: np.ndarray, holdout_features: np.ndarray, rare_index: int,
                      reference_features: np.ndarray | None = None, control_x: np.ndarray | None = None,
                      control_y: np.ndarray | None = None, control_features: np.ndarray | None = None,
                      control_in_density_reference: np.ndarray | None = None) -> PrivacyReference:
    """Real cases' vectors and the real-to-real baseline of the copy test: each holdout case's and each
    train case's (itself left out) aligned distance to its nearest train patient, flips included.

    ``control_x``/``control_y``/``control_features``: real cases the generator never saw that are neither
    members nor non-members (the pipeline: val and test), the attacks' control; without them every
    attack says its control was not measured."""
    train_al, hold_al = aligned_vectors(train_x, False), aligned_vectors(holdout_x, False)
    (sim_hold,), inf_hold = aligned_similarity(holdout_x, (train_al,))
    (sim_train,), inf_train = aligned_similarity(train_x, (train_al,))
    sim_train[:, np.arange(len(train_x)), np.arange(len(train_x))] = -np.inf  # each train case against the others
    real_nn = _distance(np.concatenate([sim_hold, sim_train], 1).max(2))
    inf = np.concatenate([inf_hold, inf_train])
    real_informative = np.stack([np.ones(len(inf), bool), inf[:, 0], inf[:, 1]])
    control = None
    if control_x is not None and control_y is not None and control_features is not None and len(control_x) > 0:
        in_ref = np.zeros(len(control_x), dtype=np.bool_) if control_in_density_reference is None else np.asarray(control_in_density_reference, np.bool_)
        control = (np.asarray(control_features), aligned_vectors(control_x, False), np.asarray(control_y), in_ref)
    return PrivacyReference(np.asarray(train_features), np.asarray(holdout_features), train_al, hold_al, np.asarray(train_y),
                            np.asarray(holdout_y), int(rare_index), real_nn, real_informative,
                            None if reference_features is None else np.asarray(reference_features),
                            *(control or (None, None, None, None)))


def copy_detection(sim_syn_train: np.ndarray, syn_informative: np.ndarray, ref: PrivacyReference, syn_y: np.ndarray, factor: float) -> dict:
    """Near-copies: synthetic cases whose aligned distance to a training patient, on image and label map
    together or on either alone, is below ``factor`` times the smallest such distance between two
    different real patients. 0.5 keeps an average of two patients (at about 0.7 of that distance)
    from counting as a copy of either."""
    d = _distance(sim_syn_train.max(2))  # (3, N)
    nn = sim_syn_train.argmax(2)
    informative = np.stack([np.ones(d.shape[1], bool), syn_informative[:, 0], syn_informative[:, 1]])
    channels, flagged = {}, np.zeros(d.shape[1], bool)
    for c, name in enumerate(CHANNELS):
        real = ref.real_nn[c][ref.real_informative[c]]
        real_min = float(real.min()) if len(real) else None
        hit = (d[c] < factor * real_min) & informative[c] if real_min is not None else np.zeros(d.shape[1], bool)
        flagged |= hit
        channels[name] = {"threshold": None if real_min is None else factor * real_min, "real_to_real_min": real_min,
                          "real_to_real_median": float(np.median(real)) if len(real) else None, "copies": int(hit.sum()),
                          "synthetic_to_train": d[c].tolist(), "real_to_real": ref.real_nn[c].tolist()}
    copies = np.flatnonzero(flagged)
    # how near each synthetic case comes to being a copy: its smallest distance over the channels,
    # as a fraction of that channel's real-to-real minimum (a copy: below the factor)
    mins = np.array([channels[n]["real_to_real_min"] or np.inf for n in CHANNELS])[:, None]
    ratio = np.where(informative, d / mins, np.inf)
    channel = ratio.argmin(0)
    closeness = ratio[channel, np.arange(d.shape[1])]
    return {
        "space": "aligned image and label map: windows centred on the label map's (and the image's) centre of mass, 8 flips, "
                 "each channel standardised per case; distance = L2 between unit vectors",
        "distance_factor": factor,
        "copies": int(len(copies)),
        "copies_rare_condition": int((syn_y[copies] == ref.rare_index).sum()),
        "copy_pairs": [{"synthetic": int(i), "train": int(nn[channel[i], i]), "channel": CHANNELS[channel[i]]} for i in copies],
        "closest_pairs": [{"synthetic": int(i), "train": int(nn[channel[i], i]), "channel": CHANNELS[channel[i]],
                           "distance": float(d[channel[i], i]), "ratio_to_real_min": float(closeness[i])}
                          for i in np.argsort(closeness)[:8]],
        "channels": channels,
    }


def audit_privacy(ref: PrivacyReference, syn_x: np.ndarray, syn_features: np.ndarray, syn_y: np.ndarray, audience: str,
                  copy_distance_factor: float, seed: int, n_boot: int = 200, whitebox: dict | None = None) -> dict:
    """Every privacy measurement of one synthetic set (``syn_x`` (N, 2, D, H, W) in model space, its
    weight-free features and condition indices) against the real reference.

    ``whitebox``: ``{"signal": str, "members": scores, "nonmembers": scores, "control": scores or None}``,
    the model's own score of the train, holdout and control cases in their order in ``ref`` (higher =
    better explained)."""
    syn_y = np.asarray(syn_y)
    out = privacy_metrics(syn_features, ref.train_features, ref.holdout_features, seed, n_boot, ref.control_features)
    refs = (ref.train_aligned, ref.holdout_aligned) + ((ref.control_aligned,) if ref.control_aligned is not None else ())
    sims, informative = aligned_similarity(syn_x, refs)
    sim_train, sim_hold = sims[0], sims[1]
    det = copy_detection(sim_train, informative, ref, syn_y, copy_distance_factor)
    rare_m, rare_n = ref.train_y == ref.rare_index, ref.holdout_y == ref.rare_index
    ctrl_f = ref.control_features
    ctrl = ctrl_f is not None
    rare_c = np.asarray(ref.control_y == ref.rare_index, bool) if ref.control_y is not None else None
    s_aligned = (sim_train[0].max(0), sim_hold[0].max(0))
    attacks = {
        "distance_features": membership_attack("black-box", "nearest synthetic case, weight-free features",
                                               -nearest(ref.train_features, syn_features)[:, 0],
                                               -nearest(ref.holdout_features, syn_features)[:, 0],
                                               rare_m, rare_n, seed + 3, n_boot,
                                               -nearest(ctrl_f, syn_features)[:, 0] if ctrl_f is not None else None, rare_c),
        "distance_aligned": membership_attack("black-box", "nearest synthetic case, aligned image and label map",
                                              *s_aligned, rare_m, rare_n, seed + 5, n_boot,
                                              sims[2][0].max(0) if len(sims) > 2 else None, rare_c),
    }
    not_run = {}
    density = None
    if ref.reference_features is not None:
        queries = [ref.train_features, ref.holdout_features] + ([ctrl_f] if ctrl_f is not None else [])
        density = density_ratio_scores(syn_features, ref.reference_features, np.concatenate(queries))
    if density is not None:
        n_m, n_n = len(ref.train_features), len(ref.holdout_features)
        d_ctrl, rare_dc, why = None, None, "its control cases are all in the reference density it divides by"
        if ctrl and ref.control_in_density_reference is not None and rare_c is not None:
            own = ~ref.control_in_density_reference  # control cases outside the reference population
            d_ctrl, rare_dc = (density[n_m + n_n:][own], rare_c[own]) if own.any() else (None, None)
        attacks["density_ratio"] = membership_attack("black-box", "synthetic over reference density (DOMIAS), weight-free features",
                                                     density[:n_m], density[n_m:n_m + n_n], rare_m, rare_n, seed + 11, n_boot,
                                                     d_ctrl, rare_dc, why if ctrl else None)
    else:
        not_run["density_ratio"] = ("no reference cases (real cases in neither the train nor the holdout split)" if ref.reference_features is None
                                    else "too few synthetic or reference cases to estimate their densities")
    fpr, tpr = roc_curve(*s_aligned)
    out["membership_roc_aligned"] = {"fpr": fpr, "tpr": tpr}
    if whitebox:
        s_m, s_n = np.asarray(whitebox["members"], float), np.asarray(whitebox["nonmembers"], float)
        s_c = np.asarray(whitebox["control"], float) if whitebox.get("control") is not None and ctrl else None
        attacks["whitebox"] = membership_attack("white-box", whitebox["signal"], s_m, s_n, rare_m, rare_n, seed + 7, n_boot, s_c, rare_c,
                                                None if s_c is not None else "the model's score of the control cases was not computed")
        out.update(whitebox_membership(s_m, s_n, seed + 9, n_boot))
        out["whitebox_signal"] = whitebox["signal"]
    out.update({
        "audience": audience,
        "attacks": attacks,
        "attacks_not_run": {**not_run, **({} if whitebox else {"whitebox": "the model has no white-box score, or its checkpoint was not found"})},
        "strongest": strongest_attacks(attacks, audience),
        "copy_detection": det,
        "copies": det["copies"],
    })
    return out
