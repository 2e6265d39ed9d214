"""The evaluate stage's steps one at a time (medsynth.eval.evaluate) and the condition-fidelity gate's checks
(medsynth.eval.conditional): the real reference of the preprocessed demo cohort, its train cases scored as a
"synthetic" set of exact copies, the counterfactual-vs-generator utility comparison, and the volume and
presence checks of the rare condition's labels."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.cohort import read_manifest
from medsynth.config import GatesConfig, Params
from medsynth.eval.conditional import _presence_check, _volume_check
from medsynth.eval.evaluate import (
    EvalJob,
    SyntheticSet,
    compare_counterfactual_utility,
    conditional_reference,
    load_real_reference,
    measure_fidelity,
)


@pytest.fixture(scope="module")
def job(preprocessed, tmp_path_factory) -> EvalJob:
    p = Params()
    cfg = p.evaluate.model_copy(update={"bootstrap": 10, "conditional": p.evaluate.conditional.model_copy(update={"classifier": False})})
    out = tmp_path_factory.mktemp("eval")
    return EvalJob(preprocess_dir=preprocessed, synth_root=out / "synth", models_root=out / "models", models=[],
                   preprocess=p.preprocess.model_copy(update={"roi_size": (16, 16, 16), "spacing": (8.0, 8.0, 8.0)}), cfg=cfg, seed=3,
                   out_dir=out / "eval", encoder_path=out / "no-encoder.pt", cache_dir=out / "features")


def test_train_copies_sit_on_the_training_data_and_the_real_reference_is_built_once(job):
    ref = load_real_reference(job)
    train = ref.banks["train"]
    assert ref.train_images.shape == (len(train.y), 16, 16, 16)
    assert ref.rare_index == len(ref.conditions) - 1  # no rare condition named: the last one
    assert ref.learned is None  # no encoder file
    copies = SyntheticSet("copies", job.synth_root, [], False, None, ref.train_images, ref.train_masks, [ref.conditions[i] for i in train.y],
                          train.y.numpy(), ref.features["train"], None)
    fid = measure_fidelity(job, ref, copies, seed=0)
    assert fid["nn_distance_synthetic_to_train"] < 1e-6  # each copy's nearest training case is itself
    assert fid["nn_distance_test_to_train"] > 1e-3  # unseen real patients are not
    assert fid["nn_distance_ratio"] < 1e-3
    assert fid["mask_volume_fraction"]["synthetic_mean"] == pytest.approx(fid["mask_volume_fraction"]["real_mean"])
    counts = np.bincount(train.y.numpy(), minlength=len(ref.conditions))
    assert set(fid["per_condition"]) == {c for i, c in enumerate(ref.conditions) if counts[i] >= 2}
    assert fid["learned"]["measured"] is False and "no encoder" in fid["learned"]["reason"]

    real = conditional_reference(job, ref)
    assert conditional_reference(job, ref) is real  # built once, kept on the reference
    rows = [r for r in read_manifest(job.preprocess_dir / "manifest.csv") if r["split"] in ("train", "val", "test", "holdout")]
    assert len(real["y"]) == len(rows) and int(real["is_train"].sum()) == len(train.y)
    assert real["x"].shape[1:] == (2, 16, 16, 16) and real["net"] is None  # evaluate.conditional.classifier is false


def _utility(kind: str | None, dice: list[float]) -> dict:
    out = {"measured": True, "task": "segmentation", "arms": {"real+synthetic_rare": {"per_case_dice": [dice, dice]}},
           "test_is_rare": [False, True, False, True], "differences": {}}
    return out if kind is None else {**out, "synthetic_kind": kind}


def test_a_counterfactual_set_is_compared_with_each_whole_volume_generator():
    utility = {"counterfactual": _utility("counterfactual", [0.8, 0.6, 0.9, 0.7]), "cgan": _utility("synthetic", [0.7, 0.5, 0.9, 0.5]),
               "cvae": {"measured": False, "reason": "evaluate.utility.enabled is false"}}
    compare_counterfactual_utility(list(utility), utility, seed=0)
    diffs = utility["counterfactual"]["differences"]
    assert list(diffs) == ["real+synthetic_rare - cgan's real+synthetic_rare"]  # cvae: not measured, nothing to compare with
    d = diffs["real+synthetic_rare - cgan's real+synthetic_rare"]
    assert d["overall"]["mean"] == pytest.approx(0.1) and d["overall"]["cases"] == 4
    assert d["rare"]["mean"] == pytest.approx(0.15) and d["rare"]["cases"] == 2
    assert utility["cgan"]["differences"] == {}  # a generator is not compared with the counterfactual set


def _label(synthetic_share: float, real_share: float, ratio: float | None) -> dict:
    return {"name": "lesion", "presence": {"synthetic_share": synthetic_share, "real_share": real_share, "synthetic": round(10 * synthetic_share),
                                           "real": round(8 * real_share)},
            "volume": {"median_ratio": ratio, "real": {"n": 8, "median": 100.0}, "synthetic": {"n": 10, "median": 100.0 * (ratio or 0)},
                       "median_ratio_real_range": None}}


def test_a_volume_defining_label_is_held_to_half_way_to_the_other_conditions():
    cfg = GatesConfig()
    lab = _label(1.0, 1.0, 0.6)
    plain = _volume_check("2", lab, None, "rare", cfg)
    assert plain is not None and plain["state"] == "pass" and plain["threshold"] == [0.5, 2.0]
    # the rare condition's lesions are half the others' volume: the allowed range narrows to sqrt(0.5)..sqrt(2)
    defining = {"label": "2", "name": "lesion", "defined_by": "volume", "volume_ratio": 0.5}
    narrowed = _volume_check("2", lab, defining, "rare", cfg)
    assert narrowed is not None and narrowed["state"] == "fail" and narrowed["threshold"] == [0.707, 1.414]
    assert "drawn too small for a condition defined by its smaller volume" in narrowed["text"]
    assert _volume_check("2", _label(1.0, 1.0, None), defining, "rare", cfg) is None  # no ratio: no volume check


def test_a_label_drawn_where_the_condition_is_defined_by_its_absence_fails():
    cfg = GatesConfig()
    absence = {"label": "2", "name": "lesion", "defined_by": "absence", "volume_ratio": 1.0}
    check = _presence_check("2", _label(0.9, 0.1, 1.0), absence, "rare", 10, 8, cfg)
    assert check["state"] == "fail" and check["value"] == 0.9 and check["threshold"] == [0.0, 0.6]
    assert check["text"] == "9 of 10 contain lesion, real rare cases 1 of 8; drawn where real rare cases lack it, and the condition is defined by its absence"
    near = _presence_check("2", _label(0.58, 0.1, 1.0), None, "rare", 10, 8, cfg)  # a gap of 0.48: within 0.5 but inside the warn margin
    assert near["state"] == "warn" and near["text"].endswith("drawn more often than in real rare cases")


def test_a_cohort_without_val_cases_takes_its_control_from_the_test_split(job, tmp_path):
    """The val split is optional (the utility arms then hold back train cases): the real reference still
    builds, and the membership attacks' control is the test split alone, all of it in the density ratio's
    reference population."""
    import csv
    import shutil

    pre = tmp_path / "preprocess"
    shutil.copytree(job.preprocess_dir, pre)
    rows = list(csv.DictReader((pre / "manifest.csv").open()))
    n_val = sum(r["split"] == "val" for r in rows)
    assert n_val > 0
    for r in rows:
        r["split"] = "train" if r["split"] == "val" else r["split"]
    with (pre / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ref = load_real_reference(EvalJob(**{**job.__dict__, "preprocess_dir": pre, "cache_dir": tmp_path / "features"}))
    n_test = sum(r["split"] == "test" for r in rows)
    assert "val" not in ref.banks and ref.control is not None
    assert len(ref.control.y) == n_test and ref.control.in_density_reference.all()
    assert ref.privacy.control_features is not None and len(ref.privacy.control_features) == n_test
