"""The privacy audit catches planted leaks. "Generators" that return real training patients under a
disguise (faint noise, a flip, a 2-voxel shift, an intensity scale, a 70/30 blend with another
patient, the image under another patient's label map, only the rare condition's patients) each fail
a privacy gate; one that returns real patients it never saw passes every privacy gate.

Real data: the hippocampus MR cohort (MSD Task04, 260 cases; rare condition "small") at 2 mm. The audit
is the evaluate stage's own: ``privacy_reference`` once per cohort, ``audit_privacy`` per synthetic set,
``privacy_gates`` (the privacy half of ``evaluate_gates``), with the default params."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.config import Params
from medsynth.eval.features import volume_features
from medsynth.eval.gates import copies_gate, privacy_gates
from medsynth.eval.privacy import attack_report, audit_privacy, privacy_reference
from tests.fixtures.hippocampus import load_hippocampus

CONDITIONS = ("typical", "small")
RARE = 1
N_LABELS = 2
CFG = Params().evaluate


def load_cohort(seed: int = 0) -> dict:
    """All 260 cases in model space, (N, 2, 24, 32, 24): image in [-1, 1] (1st-99th percentile per
    case), label map. Split per condition (seeded, one case per patient): train 55% (the members),
    holdout 20% (the audit's non-members), unseen 25% (cases neither the audit nor any "generator"
    trained on: the control)."""
    x, y = load_hippocampus(CONDITIONS)
    rng = np.random.default_rng(seed)
    split = np.empty(len(y), object)
    for c in range(len(CONDITIONS)):
        idx = rng.permutation(np.flatnonzero(y == c))
        a, b = int(0.55 * len(idx)), int(0.75 * len(idx))
        split[idx[:a]], split[idx[a:b]], split[idx[b:]] = "train", "holdout", "unseen"
    parts = {s: (x[split == s], y[split == s]) for s in ("train", "holdout", "unseen")}
    parts["reference"] = privacy_reference(*parts["train"], *parts["holdout"], features(parts["train"][0]), features(parts["holdout"][0]),
                                           RARE)
    return parts


def features(x: np.ndarray) -> np.ndarray:
    return volume_features(x[:, 0], x[:, 1], N_LABELS)


def disguise(kind: str, strength: float, src: np.ndarray, partner: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Training cases ``src`` (N, 2, D, H, W) returned under a disguise; ``partner``: other cases to blend with."""
    out = src.copy()
    if kind == "noise":  # Gaussian noise of this sigma on the image ([-1, 1] scale)
        out[:, 0] = np.clip(src[:, 0] + rng.normal(0, strength, src[:, 0].shape), -1, 1)
    elif kind == "flip":  # mirrored along this axis
        out = np.ascontiguousarray(np.flip(src, axis=2 + int(strength)))
    elif kind == "shift":  # moved by this many voxels along every axis (+, -, +); vacated voxels are background
        s = int(strength)
        out[:, 0], out[:, 1] = -1.0, 0.0
        cut = lambda d: slice(max(0, -d), None if d <= 0 else -d)  # noqa: E731
        put = lambda d: slice(max(0, d), None if d >= 0 else d)  # noqa: E731
        out[:, :, put(s), put(-s), put(s)] = src[:, :, cut(s), cut(-s), cut(s)]
    elif kind == "scale":  # raw intensity times this factor (background stays), clipped to the range
        out[:, 0] = np.clip((src[:, 0] + 1) * strength - 1, -1, 1)
    elif kind == "blend":  # this share of the case's image, the rest another training patient's; the case's label map
        out[:, 0] = strength * src[:, 0] + (1 - strength) * partner[:, 0]
    elif kind == "label_swap":  # the image under another patient's label map
        out[:, 1] = partner[:, 1]
    else:
        raise ValueError(kind)
    return out.astype(np.float32)


def audit(cohort: dict, syn: np.ndarray, syn_y: np.ndarray, seed: int = 0, whitebox: dict | None = None, audience: str | None = None):
    """The evaluate stage's privacy audit and gates for one synthetic set -> (privacy, {gate: state})."""
    priv = audit_privacy(cohort["reference"], syn, features(syn), syn_y, audience or CFG.audience, CFG.copy_distance_factor,
                         seed, CFG.bootstrap, whitebox)
    return priv, {g["gate"].split(": ", 1)[1]: g["state"] for g in privacy_gates("m", priv, CFG.gates)}


@pytest.fixture(scope="module")
def cohort():
    return load_cohort()


LEAKS = [("noise", 0.05), ("flip", 2), ("shift", 2), ("scale", 1.25), ("blend", 0.7), ("label_swap", 0)]


@pytest.mark.parametrize("kind,strength", LEAKS, ids=[f"{k}-{s}" for k, s in LEAKS])
def test_each_disguised_copy_fails_a_privacy_gate(cohort, kind, strength):
    x, y = cohort["train"]
    rng = np.random.default_rng(1)
    src = np.arange(60)
    # blend partners: other training patients; label maps swapped in: unseen patients', so only the image can give it away
    partner = cohort["unseen"][0][:60] if kind == "label_swap" else x[src + 60]
    syn = disguise(kind, strength, x[src], partner, rng)
    priv, gates = audit(cohort, syn, y[src])
    assert gates["near-copies of training patients"] == "fail"
    det = priv["copy_detection"]
    assert det["copies"] >= 57  # at least 95% of the copies found ...
    assert all(p["train"] == p["synthetic"] for p in det["copy_pairs"])  # ... each matched to its own source patient
    if kind == "label_swap":
        assert det["channels"]["image"]["copies"] == det["copies"] and det["channels"]["label map"]["copies"] == 0
    assert priv["strongest"]["all"]["auc"] > CFG.gates.mia_auc_max  # 60 of 142 members copied: the attacks see it too
    assert gates["membership inference AUC, all cases"] == "fail"


def test_copies_of_only_the_rare_condition_fail_its_own_gates(cohort):
    """Every rare ("small") training case copied with faint noise, the typical ones replaced by unseen
    patients: the overall attacks see little, the rare condition's attack and the copy test see all."""
    x, y = cohort["train"]
    ux, uy = cohort["unseen"]
    rare = np.flatnonzero(y == RARE)
    syn = np.concatenate([disguise("noise", 0.02, x[rare], x[rare], np.random.default_rng(2)), ux[uy != RARE]])
    syn_y = np.r_[y[rare], uy[uy != RARE]]
    priv, gates = audit(cohort, syn, syn_y)
    assert priv["copy_detection"]["copies"] == priv["copy_detection"]["copies_rare_condition"] == len(rare)
    assert gates["near-copies of training patients"] == "fail"
    rare_attack = priv["strongest"]["rare_condition"]
    assert rare_attack["auc"] == 1.0 and rare_attack["auc_ci"][0] > 0.9
    assert gates["membership inference AUC, rare condition"] == "fail"
    assert priv["strongest"]["all"]["auc"] < 0.65  # diluted among all cases: the rare-condition gate is what finds it


def test_unseen_real_patients_pass_every_privacy_gate(cohort):
    """The control: real patients the audit's train split never held (25% of the cohort, both conditions)."""
    ux, uy = cohort["unseen"]
    priv, gates = audit(cohort, ux, uy)
    assert priv["copy_detection"]["copies"] == 0
    assert all(state == "pass" for state in gates.values()), gates
    # the copy threshold keeps its margin: no unseen patient comes near it
    closest = priv["copy_detection"]["closest_pairs"][0]["ratio_to_real_min"]
    assert closest > 1.5 * CFG.copy_distance_factor


def test_share_audience_gates_the_whitebox_attack(cohort):
    """A model that memorised its members (PCA of the train split's images, rank 140 of 142: it reconstructs
    members almost exactly) scored by its own reconstruction error: the white-box attack finds every member. For a
    bundle to share, that fails the membership gate even though its synthetic cases (here: unseen
    patients) leak nothing; for internal use, where only the synthetic cases leave the model, it passes."""
    x, _ = cohort["train"]
    hx, _ = cohort["holdout"]
    ux, uy = cohort["unseen"]
    flat = lambda a: a[:, 0].reshape(len(a), -1)  # noqa: E731
    mean = flat(x).mean(0)
    basis = np.linalg.svd(flat(x) - mean, full_matrices=False)[2][:140]
    error = lambda a: np.linalg.norm((flat(a) - mean) - (flat(a) - mean) @ basis.T @ basis, axis=1)  # noqa: E731
    whitebox = {"signal": "negative reconstruction error", "members": -error(x), "nonmembers": -error(hx)}
    shared_, gates_share = audit(cohort, ux, uy, whitebox=whitebox, audience="share")
    _, gates_internal = audit(cohort, ux, uy, whitebox=whitebox, audience="internal")
    assert shared_["attacks"]["whitebox"]["all"]["auc"] > 0.95
    assert shared_["strongest"]["all"]["attack"] == "whitebox"
    assert gates_share["membership inference AUC, all cases"] == "fail"
    assert gates_internal["membership inference AUC, all cases"] == "pass"
    assert "whitebox" not in shared_["attacks_not_run"]


def test_attack_reports_tpr_at_low_fpr_only_where_the_cohort_resolves_it(cohort):
    """52 holdout patients resolve FPR 1/52: TPR at 1% and 0.1% are null with the reason; the TPR with no
    unseen patient flagged is reported instead. With 1500 non-members both are measured."""
    x, y = cohort["train"]
    syn = disguise("noise", 0.05, x[:60], x[:60], np.random.default_rng(3))
    priv, _ = audit(cohort, syn, y[:60])
    rep = priv["attacks"]["distance_aligned"]["all"]
    assert [r["tpr"] for r in rep["tpr_at_low_fpr"]] == [None, None]
    assert "needs at least 100" in rep["tpr_at_low_fpr"][0]["reason"] and "needs at least 1000" in rep["tpr_at_low_fpr"][1]["reason"]
    # the 60 copied members are found with no false positive, the other 82 members not
    assert rep["tpr_with_no_false_positive"]["tpr"] == pytest.approx(60 / 142, abs=0.02)
    assert rep["tpr_with_no_false_positive"]["ci"][0] < 60 / 142 < rep["tpr_with_no_false_positive"]["ci"][1]
    # the same attack score on a large cohort: the 2 leaked members of every 10 stand out, the rest do not
    s_non = np.random.default_rng(4).normal(0, 1, 1500)
    s_mem = np.r_[np.random.default_rng(5).normal(0, 1, 800), np.full(200, 10.0)]
    big = attack_report(s_mem, s_non, 0, 100)
    assert [r["fpr"] for r in big["tpr_at_low_fpr"]] == [0.01, 0.001]
    tpr1, tpr01 = (r["tpr"] for r in big["tpr_at_low_fpr"])
    assert 0.2 <= tpr01 <= tpr1 < 0.25 and all(r["ci"][0] <= r["tpr"] <= r["ci"][1] for r in big["tpr_at_low_fpr"])


def test_the_copy_gate_is_inconclusive_without_a_real_to_real_baseline():
    det = {"copies": 0, "copies_rare_condition": 0, "distance_factor": 0.5,
           "channels": {"combined": {"threshold": None}, "image": {"threshold": None}, "label map": {"threshold": None}}}
    assert copies_gate("m", det, CFG.gates)["state"] == "inconclusive"
    det["channels"]["combined"]["threshold"] = 0.2
    assert copies_gate("m", det, CFG.gates)["state"] == "pass"


def test_the_density_ratio_attack_finds_memorised_members_and_not_unseen_patients(cohort):
    """DOMIAS with a reference population: half of the unseen patients are the reference, the other half
    the control "generator". Copies of 60 training patients (faint noise) put synthetic density on those
    members beyond the population's; the control does not."""
    from medsynth.eval.privacy import PrivacyReference

    ux, uy = cohort["unseen"]
    ref_half, control = np.arange(len(ux)) % 2 == 0, np.arange(len(ux)) % 2 == 1
    base = cohort["reference"]
    with_ref = PrivacyReference(**{**base.__dict__, "reference_features": features(ux[ref_half])})
    x, y = cohort["train"]
    copies = disguise("noise", 0.02, x[:60], x[:60], np.random.default_rng(3))
    leak = audit_privacy(with_ref, copies, features(copies), y[:60], "internal", CFG.copy_distance_factor, 0, CFG.bootstrap)
    attack = leak["attacks"]["density_ratio"]["all"]
    assert attack["measured"] and attack["auc"] > 0.58 and attack["auc_ci"][0] > 0.5, attack  # all 60 found would be 0.71
    clean = audit_privacy(with_ref, ux[control], features(ux[control]), uy[control], "internal", CFG.copy_distance_factor, 0, CFG.bootstrap)
    ctrl = clean["attacks"]["density_ratio"]["all"]
    assert ctrl["auc_ci"][0] < 0.5 < ctrl["auc_ci"][1] and ctrl["auc"] < CFG.gates.mia_auc_max, ctrl
    assert "density_ratio" in audit(cohort, ux[control], uy[control])[0]["attacks_not_run"]  # no reference: not run, and said
