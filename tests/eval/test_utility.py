"""Downstream utility on the real hippocampus MR cohort (MSD Task04): the real-only arm learns, a
baseline that did not learn makes the gate inconclusive (never pass), paired differences are ~0 for
the same data and clearly negative for cases whose masks were erased, and the result's arms and keys.

The cohort goes through the pipeline's own MONAI chain (MR percentile scaling, 1.5 mm, 32^3), then is
cropped to 24 x 32 x 24 around the labels (every label voxel of the cohort lies inside) so that a test
trains in seconds on a CPU."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from medsynth.config import UtilityConfig
from medsynth.eval.gates import RANK, overall
from medsynth.eval.utility import ARMS, classification_utility, paired_difference, segmentation_utility, shared_part, utility_gate, utility_sentence
from tests.conftest import shared

RARE = 1  # conditions (typical, small): "small" is the rare condition
CFG = UtilityConfig(steps=80, eval_every=20, patience=2, seeds=1, batch_size=4)  # lr 3e-3: the default


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on cores shared with other jobs, two threads that wait on each other are
    several times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def hippocampus_tensors(n_small: int, n_typical: int) -> tuple[np.ndarray, np.ndarray]:
    """The first cases of each condition (labels.csv order) as (x (N,2,24,32,24) model space, y (N,))."""
    from medsynth.config import PreprocessConfig
    from medsynth.data.transforms import build_transforms

    root = shared("hippocampus")
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    pick = [r for r in rows if r["condition"] == "small"][:n_small] + [r for r in rows if r["condition"] == "typical"][:n_typical]
    chain = build_transforms(PreprocessConfig(roi_size=(32, 32, 32), spacing=(1.5, 1.5, 1.5), crop_foreground=False), "MR")
    xs = []
    for r in pick:
        d = chain({"image": str(root / r["case"]), "mask": str(root / r["mask"])})
        xs.append(np.concatenate([d["image"].numpy(), np.rint(d["mask"].numpy())])[:, 4:28, :, 4:28])
    return np.stack(xs).astype(np.float32), np.array([RARE if r["condition"] == "small" else 0 for r in pick])


@pytest.fixture(scope="module")
def hippo():
    """Patient-wise split (one case per patient): train 60 (10 small), val 12 (2), test 24 (6)."""
    x, y = hippocampus_tensors(18, 78)
    small, typical = np.flatnonzero(y == RARE), np.flatnonzero(y != RARE)
    parts = {"train": np.r_[small[:10], typical[:50]], "val": np.r_[small[10:12], typical[50:60]], "test": np.r_[small[12:18], typical[60:78]]}
    return {k: (x[i], y[i]) for k, i in parts.items()}


def _as_synthetic(split: tuple, erase_masks: bool) -> tuple:
    x, y = split
    return x[:, 0], (np.zeros_like(x[:, 1]) if erase_masks else x[:, 1]), y


@pytest.fixture(scope="module")
def erased(hippo):
    """Every arm, with "synthetic" cases that are the real train cases with their masks erased."""
    return segmentation_utility(hippo["train"], hippo["test"], _as_synthetic(hippo["train"], True), 2, RARE, CFG, seed=0, val=hippo["val"])


def test_real_only_arm_learns_and_the_gate_is_conclusive(erased):
    real = erased["arms"]["real"]
    assert real["dice"] > CFG.min_baseline["dice"] + 0.1  # ~0.75 at 80 steps
    assert real["val_dice"] > CFG.min_baseline["dice"]
    assert real["rare_dice"] > CFG.min_baseline["dice"]
    assert all(v > 0.5 for v in real["per_label_dice"].values())  # anterior and posterior hippocampus both learned
    assert erased["arms"]["real+augmentation"]["dice"] > CFG.min_baseline["dice"]
    lo, hi = real["dice_ci95"]
    assert lo < real["dice"] < hi and hi - lo < 0.2
    gate = utility_gate("erased", erased, CFG, 0.05)
    assert gate["state"] != "inconclusive" and gate["state"] in RANK


def test_erased_masks_cost_dice_with_an_interval_below_zero(erased):
    d = erased["differences"]
    mixed = d["real+synthetic - real"]["overall"]
    assert mixed["mean"] < -0.05 and mixed["ci95"][1] < 0  # half the training cases say "no hippocampus here"
    assert d["real+synthetic - real+augmentation"]["overall"]["ci95"][1] < 0
    only = d["synthetic - real"]["overall"]
    assert only["mean"] < -0.5 and only["ci95"][1] < 0  # empty masks only: nothing is segmented
    assert erased["arms"]["synthetic"]["dice"] < 0.05
    gate = utility_gate("erased", erased, CFG, 0.05)
    assert gate["state"] == "fail" and gate["value"] == pytest.approx(mixed["mean"])
    assert "paired over 24 real test cases" in gate["sentence"]
    sentence = utility_sentence("erased", erased, CFG)
    assert sentence.startswith("Adding erased's synthetic cases changed rare-class Dice by -") and "a loss" in sentence


def test_the_same_data_makes_no_difference(hippo, erased):
    """Synthetic cases that are exact copies of the real train cases: the synthetic-only arm is the
    real arm (same data, same initial weights and batch order: difference ~0), and real plus
    the copies (each case twice) changes Dice by ~0 with an interval around 0."""
    same = segmentation_utility(hippo["train"], hippo["test"], _as_synthetic(hippo["train"], False), 2, RARE, CFG, seed=0,
                                shared_arms=shared_part(erased), val=hippo["val"])
    assert same["arms"]["real"] is erased["arms"]["real"]  # the shared baselines are reused, not retrained
    assert same["arms"]["real+augmentation"] is erased["arms"]["real+augmentation"]
    exact = same["differences"]["synthetic - real"]["overall"]  # ~0: float summation order may differ by the input's memory layout
    assert abs(exact["mean"]) < 1e-3 and -1e-3 < exact["ci95"][0] <= exact["ci95"][1] < 1e-3
    twice = same["differences"]["real+synthetic - real"]
    assert abs(twice["overall"]["mean"]) < 0.03 and twice["overall"]["ci95"][0] < 0 < twice["overall"]["ci95"][1]
    assert twice["rare"]["ci95"][0] < 0 < twice["rare"]["ci95"][1]
    assert utility_gate("copies", same, CFG, 0.05)["state"] in ("pass", "warn")
    # an arm against itself, paired: zero; the same numbers unpaired-shuffled are not
    a = np.array(same["arms"]["real"]["per_case_dice"][0])
    assert paired_difference(a, a, 0) == {"mean": 0.0, "ci95": [0.0, 0.0], "cases": 24}
    assert paired_difference(a, np.roll(a, 1), 0)["ci95"][1] - paired_difference(a, np.roll(a, 1), 0)["ci95"][0] > 0.01


def test_a_baseline_that_did_not_learn_is_inconclusive_never_pass(hippo, erased):
    one = UtilityConfig(steps=1, eval_every=1, patience=1, seeds=1, batch_size=4)
    res = segmentation_utility(hippo["train"], hippo["test"], _as_synthetic(hippo["train"], False), 2, RARE, one, seed=0, val=hippo["val"])
    assert res["arms"]["real"]["dice"] < one.min_baseline["dice"]
    gate = utility_gate("untrained", res, one, 0.05)
    assert gate["state"] == "inconclusive"
    assert gate["sentence"].startswith("inconclusive: the real-only model did not learn (Dice 0.")
    assert f"< floor {one.min_baseline['dice']:.2f}" in gate["sentence"]
    assert utility_sentence("untrained", res, one).startswith("inconclusive: the real-only model did not learn")
    # the arms agree (same data) and would pass the drop rule; the baseline's floor overrides that
    assert overall([gate]) == "inconclusive"
    passing = {"gate": "other", "state": "pass"}
    assert overall([passing, gate, {"gate": "w", "state": "warn"}, {"gate": "n", "state": "not measured"}]) == "inconclusive"
    assert overall([gate, {"gate": "f", "state": "fail"}]) == "fail"
    assert overall([passing, {"gate": "n", "state": "not measured"}]) == "warn"
    off = utility_gate("off", {"measured": False, "reason": "evaluate.utility.enabled is false"}, one, 0.05)
    assert off["state"] == "not measured" and overall([passing, off]) == "warn"
    # learned overall but not on the rare cases: the rare-class answer is inconclusive, not "no clear gain"
    no_rare = {**erased, "arms": {**erased["arms"], "real": {**erased["arms"]["real"], "rare_dice": 0.2,
                                                            "rare_per_label_dice": {"1": 0.4, "2": 0.0}}}}
    assert utility_sentence("m", no_rare, CFG).startswith("Rare class inconclusive: the real-only model scores rare-class Dice 0.20 < floor 0.50")
    assert "The rare class is inconclusive: the real-only model scores 0.20 on it" in utility_gate("m", no_rare, CFG, 0.05)["sentence"]
    assert "rare class is inconclusive" not in utility_gate("m", erased, CFG, 0.05)["sentence"]
    # a floor the learned baseline does not reach turns the same result inconclusive too
    strict = CFG.model_copy(update={"min_baseline": {"dice": 0.99, "auc": 0.7}})
    assert utility_gate("erased", erased, strict, 0.05)["state"] == "inconclusive"
    assert overall([utility_gate("erased", erased, strict, 0.05), passing]) == "inconclusive"


def test_result_names_every_arm_difference_and_selection(erased):
    assert erased["measured"] and tuple(erased["arms"]) == ARMS
    assert (erased["test_cases"], erased["rare_test_cases"], erased["val_cases"], erased["val_source"]) == (24, 6, 12, "val split")
    for name, arm in erased["arms"].items():
        for key in ("dice", "dice_ci95", "rare_dice", "rare_dice_ci95", "per_label_dice", "rare_per_label_dice", "dice_per_seed",
                    "val_dice", "best_step_per_seed", "steps_run_per_seed", "train_cases", "per_case_dice"):
            assert key in arm, (name, key)
        assert set(arm["per_label_dice"]) == {"1", "2"}
        assert np.array(arm["per_case_dice"]).shape == (1, 24)
        assert arm["best_step_per_seed"][0] <= arm["steps_run_per_seed"][0] <= CFG.steps
        assert arm["rare_dice"] == pytest.approx(np.mean(np.array(arm["per_case_dice"])[0, :6]), abs=1e-4)  # the test split's first 6 are small
    n = erased["arms"]["real"]["train_cases"]
    assert [erased["arms"][a]["train_cases"] for a in ARMS] == [n, n, 2 * n, n + 10, n]  # 10 rare cases in the train split
    expected = {f"{a} - real" for a in ARMS[1:]} | {f"{a} - real+augmentation" for a in ARMS[2:]}
    assert set(erased["differences"]) == expected
    for d in erased["differences"].values():
        assert set(d) == {"overall", "rare"} and set(d["rare"]) == {"mean", "ci95", "cases"} and d["rare"]["cases"] == 6


def test_without_a_val_split_part_of_train_is_held_back(hippo):
    one = UtilityConfig(steps=1, eval_every=1, patience=1, seeds=1, batch_size=4)
    res = segmentation_utility(hippo["train"], hippo["test"], _as_synthetic(hippo["train"], False), 2, RARE, one, seed=0, val=None)
    assert res["val_cases"] == 12 and "held back from the train split (the val split is empty)" in res["val_source"]
    assert res["arms"]["real"]["train_cases"] == 48


def test_classification_arms_on_the_hippocampus_condition(hippo):
    """Classification (rare 'small' vs typical): AUCs are proper AUCs of the stored scores and the
    paired differences are their differences."""
    from medsynth.eval.stats import roc_auc

    cfg = UtilityConfig(steps=20, eval_every=10, patience=1, seeds=2, batch_size=8, channels=(8, 16))
    res = classification_utility(hippo["train"], hippo["test"], _as_synthetic(hippo["train"], False), 2, RARE, cfg, seed=0, val=hippo["val"])
    assert tuple(res["arms"]) == ARMS and res["score"] == "auc" and res["rare_test_cases"] == 6
    y = hippo["test"][1]
    for arm in res["arms"].values():
        s = np.mean(arm["per_case_score"], 0)
        assert arm["auc"] == pytest.approx(roc_auc(s[y == RARE], s[y != RARE]), abs=1e-4)
        assert arm["auc_ci95"][0] <= arm["auc"] + 1e-9 and arm["auc"] - 1e-9 <= arm["auc_ci95"][1]
    d = res["differences"]["real+synthetic - real"]["overall"]
    assert d["mean"] == pytest.approx(res["arms"]["real+synthetic"]["auc"] - res["arms"]["real"]["auc"], abs=1e-4)
    assert abs(res["differences"]["synthetic - real"]["overall"]["mean"]) < 0.02  # the same cases, seeds and batch order
    assert utility_gate("m", res, cfg, 0.05)["state"] in RANK
