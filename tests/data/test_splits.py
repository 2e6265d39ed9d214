"""Patient-level, condition-stratified splits."""

import pytest

from medsynth.config import Params
from medsynth.data.splits import SplitError, assign_splits


def test_no_patient_in_two_splits_and_stratified():
    cases = [{"patient": f"P{i // 2}", "condition": "lesion" if i < 12 else "normal"} for i in range(60)]
    split = assign_splits(cases, Params().preprocess.splits, seed=3, rare_condition="lesion")
    assert set(split.values()) == {"train", "val", "test", "holdout"}
    by_case = {(c["patient"], split[c["patient"]]) for c in cases}
    assert len({p for p, _ in by_case}) == len(by_case)  # one split per patient
    rare = {split[c["patient"]] for c in cases if c["condition"] == "lesion"}
    assert rare == {"train", "val", "test", "holdout"}
    assert split == assign_splits(cases, Params().preprocess.splits, seed=3, rare_condition="lesion")


def test_too_few_rare_cases_is_a_clear_error():
    cases = [{"patient": f"P{i}", "condition": "lesion" if i < 3 else "normal"} for i in range(30)]
    with pytest.raises(SplitError, match="condition 'lesion' has 3 patient"):
        assign_splits(cases, Params().preprocess.splits, seed=0, rare_condition="lesion")
