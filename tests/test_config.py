import pytest

from medsynth.config import ConfigError, Params, load_params, parse_params
from tests.conftest import ROOT


def test_repo_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.data.input == "demo"
    assert p.train.models == ["cgan", "cvae"]


def test_wrong_literal_names_key_value_and_allowed():
    with pytest.raises(ConfigError) as e:
        parse_params({"train": {"cgan": {"loss": "hingee"}}})
    msg = str(e.value)
    assert "train.cgan.loss" in msg and "'hingee'" in msg and "nonsaturating" in msg


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigError, match=r"preprocess\.roi: unknown key"):
        parse_params({"preprocess": {"roi": [32, 32, 32]}})


def test_roi_and_splits_validation():
    with pytest.raises(ConfigError, match="roi_size"):
        parse_params({"preprocess": {"roi_size": [30, 32, 32]}})
    with pytest.raises(ConfigError, match="sum to 1"):
        parse_params({"preprocess": {"splits": {"train": 0.5, "val": 0.1, "test": 0.1, "holdout": 0.1}}})


def test_defaults_round_trip():
    p = Params()
    assert parse_params(p.model_dump(mode="json")) == p
