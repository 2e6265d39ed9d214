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
from medsynth.eval.gates import copies_gate, dcr_share_confounded, dcr_share_gate, privacy_gates
from medsynth.eval.privacy import attack_report, audit_privacy, closer_share, privacy_metrics, privacy_reference
from tests.fixtures.hippocampus import load_hippocampus

CONDITIONS = ("typical", "small")
RARE = 1
N_LABELS = 2
CFG = Params().evaluate
DCR_GATE = "share closer to training than to unseen patients"


def load_cohort(seed: int = 0) -> dict:
    """All 260 cases in model space, (N, 2, 24, 32, 24): image in [-1, 1] (1st-99th percentile per
    case), label map. Split per condition (seeded, one case per patient): train 55% (the members),
    holdout 20% (the audit's non-members), unseen 12.5% (cases neither the audit nor any "generator"
    trained on: what a fair "generator" returns) and control 12.5% (the attacks' control, as val and
    test are in the pipeline)."""
    x, y = load_hippocampus(CONDITIONS)
    rng = np.random.default_rng(seed)
    split = np.empty(len(y), object)
    for c in range(len(CONDITIONS)):
        idx = rng.permutation(np.flatnonzero(y == c))
        a, b, d = int(0.55 * len(idx)), int(0.75 * len(idx)), int(0.875 * len(idx))
        split[idx[:a]], split[idx[a:b]], split[idx[b:d]], split[idx[d:]] = "train", "holdout", "unseen", "control"
    parts = {s: (x[split == s], y[split == s]) for s in ("train", "holdout", "unseen", "control")}
    cx, cy = parts["control"]
    parts["reference"] = privacy_reference(*parts["train"], *parts["holdout"], features(parts["train"][0]), features(parts["holdout"][0]),
                                           RARE, control_x=cx, control_y=cy, control_features=features(cx))
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
    # blend partners: other training patients; label maps swapped in: patients no generator trained on, so only the image can give it away
    partner = np.concatenate([cohort["unseen"][0], cohort["control"][0]])[:60] if kind == "label_swap" else x[src + 60]
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
    for attack in priv["attacks"].values():  # each attack's control: the control patients look like non-members
        assert attack["all"]["control"]["measured"] and attack["all"]["control"]["control_vs_nonmembers"]["auc"] < CFG.gates.mia_auc_max
    dcr = priv["dcr_share_control"]  # the DCR share's control: both shares' intervals hold 0.5
    assert dcr["measured"] and all(dcr[k]["share_ci"][0] < 0.5 < dcr[k]["share_ci"][1] for k in ("control_vs_nonmembers", "members_vs_control"))
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


def away_from_holdout(cohort: dict) -> tuple[np.ndarray, np.ndarray]:
    """The train and control patients (the 175 that are not the holdout) and their mean image less the holdout's."""
    rest = np.concatenate([cohort["train"][0], cohort["control"][0]])
    return rest, rest[:, 0].mean(0) - cohort["holdout"][0][:, 0].mean(0)


def odd_generator(cohort: dict, push: float, n: int = 32) -> np.ndarray:
    """Structureless "synthetic" cases (the mean image of 175 patients, one label map) pushed away from
    the holdout's mean image: samples that single out no member, placed where, as seen from them, the
    holdout differs from every other patient (as the samples of a generator trained with strong DP noise
    can happen to lie)."""
    rest, away = away_from_holdout(cohort)
    img = np.clip(rest[:, 0].mean(0) + push * away + np.random.default_rng(0).normal(0, 0.02, (n, *away.shape)), -1, 1)
    return np.stack([img, np.repeat(np.median(rest[:, 1], 0)[None], n, 0).round()], 1).astype(np.float32)


def pushed_unseen(cohort: dict, push: float) -> np.ndarray:
    """The 33 unseen patients, each image pushed away from the holdout's mean image as ``odd_generator``'s
    are: distinct cases that single out no member, each placed where the holdout differs from the others."""
    out = cohort["unseen"][0].copy()
    out[:, 0] = np.clip(out[:, 0] + push * away_from_holdout(cohort)[1], -1, 1)
    return out


def test_an_attack_its_control_explains_is_inconclusive_and_a_leak_beside_it_is_not(cohort):
    """The odd samples put the holdout far away: the feature-distance attack scores above the threshold,
    but tells the control patients (never seen by anyone) from the holdout as well, and the members from
    the control patients no better than chance. That is a group difference, so the gate is inconclusive
    (never a pass). The same samples with 40 members copied beside them: members now stand out from
    the control patients too, and the copies fail."""
    thr = CFG.gates.mia_auc_max
    priv, gates = audit(cohort, odd_generator(cohort, 6.0), np.zeros(32, int))
    attack = priv["attacks"]["distance_features"]["all"]
    ctrl = attack["control"]
    assert attack["auc"] > thr and ctrl["measured"] and ctrl["n_control"] == len(cohort["control"][1])
    assert ctrl["control_vs_nonmembers"]["auc"] > thr and ctrl["members_vs_control"]["auc"] < 0.5
    assert gates["membership inference AUC, all cases"] == "inconclusive"
    gate = next(g for g in privacy_gates("m", priv, CFG.gates) if g["gate"] == "m: membership inference AUC, all cases")
    assert gate["attack"] == "distance_features" and "never saw" in gate["sentence"] and gate["value"] == attack["auc"]

    x, y = cohort["train"]
    copies = disguise("noise", 0.05, x[:40], x[:40], np.random.default_rng(1))
    priv, gates = audit(cohort, np.concatenate([odd_generator(cohort, 6.0), copies]), np.r_[np.zeros(32, int), y[:40]])
    assert gates["near-copies of training patients"] == "fail"
    assert priv["attacks"]["distance_aligned"]["all"]["control"]["members_vs_control"]["auc"] > thr
    assert gates["membership inference AUC, all cases"] != "inconclusive"


def test_confounded_needs_both_halves_of_the_control():
    from medsynth.eval.gates import confounded

    def report(auc, c_vs_n_ci, m_vs_c_ci):
        return {"auc": auc, "control": {"measured": True, "n_control": 30, "control_vs_nonmembers": {"auc": sum(c_vs_n_ci) / 2, "auc_ci": c_vs_n_ci},
                                        "members_vs_control": {"auc": sum(m_vs_c_ci) / 2, "auc_ci": m_vs_c_ci}}}
    assert confounded(report(0.61, [0.48, 0.69], [0.46, 0.62]))  # the DP cGAN at epsilon 10 on the hippocampus cohort
    assert not confounded(report(0.61, [0.48, 0.69], [0.52, 0.70]))  # members stand out from the control patients too
    assert not confounded(report(0.68, [0.40, 0.60], [0.46, 0.62]))  # the attack beats its control: the control looks like non-members
    assert not confounded({"auc": 0.65, "control": {"measured": False, "reason": "none"}})


def test_copied_members_fail_the_dcr_share_gate_and_its_control_says_why(cohort):
    """60 training patients with faint noise: the synthetic cases are closer to training patients than to
    the unseen ones and than to the control patients, while the control patients are no closer to them
    than the unseen ones are: not a group difference, so the DCR share gate fails."""
    x, y = cohort["train"]
    priv, gates = audit(cohort, disguise("noise", 0.05, x[:60], x[:60], np.random.default_rng(1)), y[:60])
    c = priv["dcr_share_control"]
    assert priv["dcr_share"] > CFG.gates.dcr_share_max
    assert c["members_vs_control"]["share_ci"][0] > 0.5  # nearer the members than other patients never seen
    assert c["control_vs_nonmembers"]["share_ci"][1] < priv["dcr_share"]  # the control patients do not explain the share
    assert not dcr_share_confounded(priv) and gates[DCR_GATE] == "fail"


def test_a_dcr_share_its_control_explains_is_inconclusive_and_a_leak_beside_it_is_not(cohort):
    """The 33 unseen patients pushed away from the holdout: their DCR share is above the threshold, but as
    many are closer to a control patient (never seen by anyone) than to a holdout one, and they are no
    closer to training patients than to control patients: the holdout's difference from the others, so
    the gate is inconclusive (never a pass), as is the membership gate. With 40 copied members beside
    them the cases are nearer the members than the control patients, and the gate fails."""
    thr = CFG.gates.dcr_share_max
    priv, gates = audit(cohort, pushed_unseen(cohort, 6.0), cohort["unseen"][1])
    share, c = priv["dcr_share"], priv["dcr_share_control"]
    assert share > thr and c["measured"] and c["n_control"] == len(cohort["control"][1])
    cvn, mvc = c["control_vs_nonmembers"], c["members_vs_control"]
    assert cvn["share"] > thr and cvn["share_ci"][0] <= share <= cvn["share_ci"][1]
    assert abs(mvc["share"] - 0.5) < 0.1 and mvc["share_ci"][0] < 0.5 < mvc["share_ci"][1]
    assert gates[DCR_GATE] == "inconclusive" and gates["membership inference AUC, all cases"] == "inconclusive"
    gate = next(g for g in privacy_gates("m", priv, CFG.gates) if g["gate"] == f"m: {DCR_GATE}")
    assert gate["value"] == share and gate["ci"] == priv["dcr_share_ci"] and gate["control"]["members_vs_control"] == mvc["share"]
    assert f"{cvn['share']:.2f} (95% CI {cvn['share_ci'][0]:.2f}-{cvn['share_ci'][1]:.2f})" in gate["sentence"] and "never saw" in gate["sentence"]

    x, y = cohort["train"]
    copies = disguise("noise", 0.05, x[:40], x[:40], np.random.default_rng(1))
    priv, gates = audit(cohort, np.concatenate([pushed_unseen(cohort, 6.0), copies]), np.r_[cohort["unseen"][1], y[:40]])
    assert priv["dcr_share"] > thr and priv["dcr_share_control"]["members_vs_control"]["share_ci"][0] > 0.5
    assert gates[DCR_GATE] == "fail"


def test_the_dcr_share_control_on_hand_built_features():
    """2-D features: train (100), control (40) and holdout (40) drawn alike, the holdout then moved by
    2 SD. Novel cases drawn like train are closer to train than to the holdout, and as much closer to
    the control: inconclusive. Copies of 50 train cases are closer to train than to the control too:
    fail. Novel cases with the holdout unmoved: pass. With under 5 control cases there is no control
    and the novel cases fail, as without one."""
    rng = np.random.default_rng(0)
    train, control, holdout = rng.normal(0, 1, (100, 2)), rng.normal(0, 1, (40, 2)), rng.normal(0, 1, (40, 2))
    novel, copies = rng.normal(0, 1, (50, 2)), train[:50] + rng.normal(0, 0.01, (50, 2))
    moved = holdout + [2.0, 0.0]

    def gate(syn, hold, ctrl=control):
        p = privacy_metrics(syn, train, hold, 0, 200, ctrl)
        return p, dcr_share_gate("m", p, CFG.gates)

    p, g = gate(novel, moved)
    c = p["dcr_share_control"]
    assert p["dcr_share"] > 0.7 and c["control_vs_nonmembers"]["share"] > 0.7 and c["members_vs_control"]["share_ci"][0] < 0.5
    assert g["state"] == "inconclusive"
    p, g = gate(copies, moved)
    assert p["dcr_share_control"]["members_vs_control"]["share_ci"][0] > 0.6 and g["state"] == "fail"
    assert gate(novel, holdout)[1]["state"] == "pass"
    p, g = gate(novel, moved, control[:4])
    assert p["dcr_share_control"] == {"measured": False, "n_control": 4, "reason": "4 control cases: at least 5 are needed"}
    assert g["state"] == "fail" and "control" not in g
    assert privacy_metrics(novel, train, moved, 0, 200)["dcr_share_control"]["measured"] is False


def test_closer_share_brings_both_sets_to_a_common_size():
    """Two sets drawn alike, of 30 and 300 cases: 0.5 either way round (the larger subsampled to 30 each
    repeat); nearest of all 300 against nearest of 30 would give about 30 / 330."""
    r = np.random.default_rng(0)
    syn, a, b = r.normal(0, 1, (200, 2)), r.normal(0, 1, (30, 2)), r.normal(0, 1, (300, 2))
    assert abs(closer_share(syn, a, b, r) - 0.5) < 0.05 and abs(closer_share(syn, b, a, r) - 0.5) < 0.05


def test_dcr_share_confounded_needs_both_halves_of_the_control():
    def priv(share, cvn_ci, mvc_ci):
        return {"dcr_share": share, "dcr_share_ci": [share - 0.1, share + 0.1],
                "dcr_share_control": {"measured": True, "n_control": 33, "control_vs_nonmembers": {"share": sum(cvn_ci) / 2, "share_ci": cvn_ci},
                                      "members_vs_control": {"share": sum(mvc_ci) / 2, "share_ci": mvc_ci}}}
    assert dcr_share_confounded(priv(0.75, [0.64, 0.87], [0.31, 0.63]))
    assert dcr_share_confounded(priv(0.87, [0.64, 0.87], [0.50, 0.63]))  # at the edge of both intervals
    assert not dcr_share_confounded(priv(0.88, [0.64, 0.87], [0.31, 0.63]))  # nearer members than the control explains
    assert not dcr_share_confounded(priv(0.75, [0.64, 0.87], [0.51, 0.63]))  # nearer the members than the control patients
    assert not dcr_share_confounded({"dcr_share": 0.75, "dcr_share_control": {"measured": False, "reason": "none"}})
    assert not dcr_share_confounded({"dcr_share": None, "dcr_share_control": priv(0.75, [0.64, 0.87], [0.31, 0.63])["dcr_share_control"]})
    gate = dcr_share_gate("m", priv(0.75, [0.64, 0.87], [0.31, 0.63]), CFG.gates)
    assert gate["state"] == "inconclusive" and "0.75 (95% CI 0.65-0.85)" in gate["sentence"] and "0.47 (95% CI 0.31-0.63)" in gate["sentence"]
    assert dcr_share_gate("m", priv(0.5, [0.64, 0.87], [0.31, 0.63]), CFG.gates)["state"] == "pass"  # below the threshold: as without a control
