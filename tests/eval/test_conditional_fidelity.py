"""Conditional fidelity on the real hippocampus cohort (MSD Task04; labels 1 anterior / 2 posterior
hippocampus; condition ``small`` = the lowest 15% of total hippocampus volume): per-label presence and
volume, the rare condition's defining labels, the real-only condition classifier and the
condition-fidelity gate, with real held-out cases standing in for synthetic ones (plus edits of them
that a generator could get wrong)."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.config import ConfigError, Params, parse_params
from medsynth.eval.conditional import (
    classifier_check,
    condition_fidelity_gate,
    conditional_fidelity,
    fit_condition_classifier,
    wilson_interval,
)
from tests.fixtures.hippocampus import load_hippocampus

CONDITIONS = ["small", "typical"]
NAMES = {1: "anterior hippocampus", 2: "posterior hippocampus"}


@pytest.fixture(scope="module")
def cohort():
    """All 260 cases at 2 mm in model space: image in [-1, 1] (1-99th percentile per case), label map.
    Split per condition (seeded): half real train, a quarter real test, a quarter kept aside as stand-in
    "synthetic" cases that neither the real reference nor the classifier sees."""
    x, y = load_hippocampus(CONDITIONS)
    split = np.empty(len(y), object)
    rng = np.random.default_rng(0)
    for c in range(len(CONDITIONS)):
        idx = rng.permutation(np.flatnonzero(y == c))
        a, b = len(idx) // 2, 3 * len(idx) // 4
        split[idx[:a]], split[idx[a:b]], split[idx[b:]] = "train", "test", "aside"
    real = split != "aside"
    return {"x": x[real], "y": y[real], "is_train": split[real] == "train", "aside_x": x[~real], "aside_y": y[~real]}


@pytest.fixture(scope="module")
def cfg():
    # default gates; a 100-step classifier (at 2 mm the best total-volume threshold itself reaches a
    # balanced accuracy of only ~0.83 on small vs typical)
    p = Params()
    cond = p.evaluate.conditional.model_copy(update={"label_names": NAMES, "classifier_steps": 100, "classifier_batch_size": 16})
    return p.evaluate.gates, cond


@pytest.fixture(scope="module")
def classifier(cohort, cfg):
    c = cohort
    return fit_condition_classifier(c["x"], c["y"], c["is_train"], 2, 2, cfg[1], seed=0)


def _evaluate(cohort, cfg, net, syn_x, syn_cond, model="stand-in", real=None):
    gates, ccfg = cfg
    r = real or cohort
    cond = conditional_fidelity(syn_x[:, 1], syn_cond, r["x"][:, 1], r["y"], r["is_train"], CONDITIONS, 0, 2, ccfg, seed=0, n_boot=100)
    clf = classifier_check(net, r["x"], r["y"], r["is_train"], syn_x, syn_cond, CONDITIONS, 2, ccfg.classifier_steps)
    return cond, clf, condition_fidelity_gate(model, cond, clf, gates)


def _aside_small(cohort):
    sel = cohort["aside_y"] == 0
    return cohort["aside_x"][sel].copy(), ["small"] * int(sel.sum())


def test_wilson_interval_values():
    lo, hi = wilson_interval(0, 8)
    assert lo == 0.0 and hi == pytest.approx(0.3244, abs=1e-3)
    lo, hi = wilson_interval(6, 6)
    assert lo == pytest.approx(0.6097, abs=1e-3) and hi == 1.0
    assert wilson_interval(0, 0) is None


def test_small_is_defined_by_volume_not_presence(cohort, cfg):
    x, c = _aside_small(cohort)
    cond, _, _ = _evaluate(cohort, cfg, None, x, c)
    by = {d["label"]: d for d in cond["defining_labels"]}
    # both labels are in every case: the condition is the smaller hippocampus
    assert by["1"]["rare_share"] == by["1"]["other_share"] == 1.0
    for key in ("1", "2", "all"):
        assert by[key]["defined_by"] == "volume", by[key]
        assert by[key]["volume_ratio"] < 0.87 and by[key]["volume_auc"] < 0.25


def test_real_classifier_tells_real_conditions_apart(cohort, classifier):
    c = cohort
    aside_cond = [CONDITIONS[i] for i in c["aside_y"]]
    clf = classifier_check(classifier, c["x"], c["y"], c["is_train"], c["aside_x"], aside_cond, CONDITIONS, 2, 100)
    real = clf["real_heldout"]
    assert real["n"] == {"small": int(((c["y"] == 0) & ~c["is_train"]).sum()), "typical": int(((c["y"] == 1) & ~c["is_train"]).sum())}
    assert real["balanced_accuracy"] > 0.6  # chance: 0.5
    assert real["recall"]["small"] > 0.3 and real["recall"]["typical"] > 0.7
    # unseen real cases of both conditions are told apart about as well
    assert clf["synthetic"]["balanced_accuracy"] > 0.6


def test_real_held_out_small_cases_pass(cohort, cfg, classifier):
    x, c = _aside_small(cohort)
    cond, clf, gate = _evaluate(cohort, cfg, classifier, x, c)
    labels = cond["per_condition"]["small"]["labels"]
    for key in ("1", "2", "all"):
        assert labels[key]["presence"]["synthetic_share"] == labels[key]["presence"]["real_share"] == 1.0
        assert 0.88 < labels[key]["volume"]["median_ratio"] < 1.12, (key, labels[key]["volume"])
        # as far from real train volumes as real held-out ones are (normalised W1)
        assert labels[key]["volume"]["wasserstein"] < 2 * labels[key]["volume"]["wasserstein_real_baseline"] + 0.05
    assert gate["state"] == "pass", gate["sentence"]
    assert gate["sentence"].startswith(f"stand-in's {len(c)} synthetic small cases: ")


def test_small_cases_missing_label_2_fail_and_name_it(cohort, cfg, classifier):
    x, c = _aside_small(cohort)
    x[:, 1][x[:, 1] == 2] = 0
    cond, _, gate = _evaluate(cohort, cfg, classifier, x, c)
    assert cond["per_condition"]["small"]["labels"]["2"]["presence"]["synthetic"] == 0
    assert gate["state"] == "fail"
    n_real = cond["per_condition"]["small"]["n_real"]
    assert f"0 of {len(c)} contain label 2 (posterior hippocampus), real small cases {n_real} of {n_real}" in gate["sentence"]
    assert "missing" in gate["sentence"]


def test_typical_cases_presented_as_small_are_flagged_too_large(cohort, cfg, classifier):
    sel = cohort["aside_y"] == 1
    x, c = cohort["aside_x"][sel][:12], ["small"] * 12
    cond, clf, gate = _evaluate(cohort, cfg, classifier, x, c)
    assert gate["state"] == "fail"
    failed = [k for k in gate["checks"] if k["state"] == "fail"]
    assert any(k["check"] == "volume" and k["label"] == "1" and k["value"] > 1.15 for k in failed), gate["checks"]
    assert "drawn too large for a condition defined by its smaller volume" in gate["sentence"]
    # the real-only classifier sees them as typical
    assert clf["synthetic"]["recall"]["small"] < clf["real_heldout"]["recall"]["small"] - 0.2


def test_demo_like_lesion_label_defines_the_condition(cohort, cfg):
    """Label 2 kept only in small cases (merged into label 1 elsewhere), like the demo's lesion."""
    real = dict(cohort, x=cohort["x"].copy())
    typical = real["y"] == 1
    real["x"][typical, 1] = np.minimum(real["x"][typical, 1], 1)
    x, c = _aside_small(cohort)
    cond, _, gate = _evaluate(cohort, cfg, None, x, c, real=real)
    defining = [d for d in cond["defining_labels"] if d["defined_by"]]
    assert [d["label"] for d in defining if d["defined_by"] == "presence"] == ["2"]
    assert cond["per_condition"]["typical"]["labels"]["2"]["presence"]["real_share"] == 0.0
    x[:, 1][x[:, 1] == 2] = 1  # a generator that draws no lesion
    _, _, gate = _evaluate(cohort, cfg, None, x, c, model="cgan", real=real)
    assert gate["state"] == "fail"
    assert f"cgan's {len(c)} synthetic small cases: 0 of {len(c)} contain label 2 (posterior hippocampus)" in gate["sentence"]
    assert "the condition's defining structure is missing" in gate["sentence"]


def test_too_few_real_rare_cases_is_inconclusive(cohort, cfg, classifier):
    keep = (cohort["y"] == 1) | (np.cumsum(cohort["y"] == 0) <= 2) & (cohort["y"] == 0)
    real = {k: cohort[k][keep] for k in ("x", "y", "is_train")}
    x, c = _aside_small(cohort)
    _, _, gate = _evaluate(cohort, cfg, classifier, x, c, real=real)
    assert gate["state"] == "inconclusive"
    assert gate["sentence"].startswith("Only 2 real small case(s)")


def test_classifier_that_cannot_tell_real_conditions_apart_is_inconclusive(cohort, cfg):
    gates, ccfg = cfg
    c = cohort
    weak = fit_condition_classifier(c["x"], c["y"], c["is_train"], 2, 2, ccfg.model_copy(update={"classifier_steps": 1}), seed=0)
    x, sc = _aside_small(cohort)
    _, clf, gate = _evaluate(cohort, cfg, weak, x, sc)
    check = [k for k in gate["checks"] if k["check"] == "classifier"][0]
    assert clf["real_heldout"]["balanced_accuracy"] < gates.condition_classifier_balanced_accuracy_min
    assert check["state"] == "inconclusive" and gate["state"] != "pass"
    assert "cannot judge synthetic cases" in gate["sentence"]


def test_condition_gate_params_are_validated():
    with pytest.raises(ConfigError, match="evaluate.gates.condition_volume_ratio_min"):
        parse_params({"evaluate": {"gates": {"condition_volume_ratio_min": 1.2}}})
    with pytest.raises(ConfigError, match="evaluate.gates.condition_classifier_failure"):
        parse_params({"evaluate": {"gates": {"condition_classifier_failure": "ignore"}}})
    p = parse_params({"evaluate": {"conditional": {"label_names": {1: "organ", 2: "lesion"}}}})
    assert p.evaluate.conditional.label_names == {1: "organ", 2: "lesion"}


def test_figures_are_written(cohort, cfg, tmp_path):
    from medsynth.eval.evaluate import _conditional_overlay_figure, _label_volume_figure

    x, c = _aside_small(cohort)
    cond, _, _ = _evaluate(cohort, cfg, None, x, c)
    ref = {"x": cohort["x"], "y": cohort["y"]}
    _conditional_overlay_figure("stand-in", tmp_path, x[:, 0], x[:, 1], c, ref, CONDITIONS, cond, cfg[1])
    _label_volume_figure("stand-in", tmp_path, x[:, 1], c, ref, CONDITIONS, cond, 2)
    for name in ("stand-in_conditional_overlay.png", "stand-in_label_volumes.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_report_table_puts_the_rare_condition_first(cohort, cfg, classifier):
    from medsynth.report.build import conditional_rows

    x, c = _aside_small(cohort)
    x[:, 1][x[:, 1] == 2] = 0
    cond, clf, _ = _evaluate(cohort, cfg, classifier, x, c)
    table = conditional_rows({**cond, "classifier": clf})
    rows = table["rows"]
    assert [r["condition"] for r in rows] == ["small"] * 3 + ["typical"] * 3
    label2 = rows[1]
    assert label2["label"] == "label 2 (posterior hippocampus)" and label2["defining"] == "volume"
    assert label2["syn_presence"].startswith(f"0 of {len(c)} (0%;") and label2["syn_median"] == "-"
    assert [r["condition"] for r in table["classifier"]] == ["small", "typical", "balanced accuracy"]
