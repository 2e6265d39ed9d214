import pytest

from medsynth.config import ConfigError, Params, load_params, parse_params
from tests.conftest import ROOT


def test_repo_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.data.input == "demo"
    assert p.train.models == ["cgan", "cvae", "counterfactual"]


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


def test_roi_the_models_cannot_take_is_rejected_at_load():
    with pytest.raises(ConfigError) as e:
        parse_params({"preprocess": {"roi_size": [32, 32, 16]}})  # cgan, cvae: cubic only
    msg = str(e.value)
    assert "preprocess.roi_size: [32, 32, 16]" in msg and "train.models cgan, cvae" in msg and "[32, 32, 32]" in msg
    with pytest.raises(ConfigError, match=r"train.models cvae: .*power of two.*\[32, 32, 32\]"):
        parse_params({"preprocess": {"roi_size": [24, 24, 24]}, "train": {"models": ["cvae"]}})
    with pytest.raises(ConfigError, match=r"train.models vaegan:"):  # the conv backbone is cubic too
        parse_params({"preprocess": {"roi_size": [64, 64, 32]}, "train": {"models": ["vaegan"]}})
    kl = {"models": ["vaegan"], "vaegan": {"backbone": "autoencoderkl"}}
    assert parse_params({"preprocess": {"roi_size": [96, 96, 64]}, "train": kl}).preprocess.roi_size == (96, 96, 64)
    deep = {**kl, "vaegan": {**kl["vaegan"], "kl_channels": [16, 16, 32, 32, 32], "attention_levels": [False] * 5}}
    with pytest.raises(ConfigError, match=r"kl_channels \[16, 16, 32, 32, 32\]: each side must be a multiple of 16"):
        parse_params({"preprocess": {"roi_size": [96, 96, 40]}, "train": deep})
    assert parse_params({"preprocess": {"roi_size": [16, 16, 16]}}).preprocess.roi_size == (16, 16, 16)


def test_defaults_round_trip():
    p = Params()
    assert parse_params(p.model_dump(mode="json")) == p


def test_params_rewritten_by_dvc_exp_run_set_still_load(tmp_path):
    """`dvc exp run -S key=value` rewrites params.yaml in YAML 1.2 and drops the quotes of "off", which
    YAML 1.1 (PyYAML) then reads as a boolean; a bare on / off written by hand does the same."""
    import shutil

    from dvc.utils.serialize import modify_yaml  # what `dvc exp run -S` uses

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    with modify_yaml(tmp_path / "params.yaml") as data:
        data["train"]["cgan"]["steps"] = 8
    assert "channels_last: off " in (tmp_path / "params.yaml").read_text()  # unquoted now
    p = load_params(tmp_path / "params.yaml")
    assert p.train.channels_last == "off" and p.train.cgan.steps == 8
    assert parse_params({"train": {"compile": True, "channels_last": False}}).train.compile == "on"


# params.yaml values that differ from the schema on purpose, and why
DELIBERATE = {
    "evaluate.conditional.label_names": "the demo's label names (the schema names no label)",
}


def test_params_yaml_holds_the_schema_defaults_unless_said_otherwise():
    """One source of defaults: a value in params.yaml that is not the schema's default is listed in DELIBERATE
    with the reason, so the schema, check-params and the shipped file cannot drift apart."""
    from pathlib import Path

    import yaml

    from medsynth.config import Params, parse_params

    shipped = parse_params(yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())).model_dump(mode="json")
    schema = Params().model_dump(mode="json")
    drift = []

    def walk(a, b, path):
        if path in DELIBERATE:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        elif a != b:
            drift.append(f"{path}: schema {a!r}, params.yaml {b!r}")

    walk(schema, shipped, "")
    assert not drift, drift


def test_a_condition_the_cohort_does_not_have_is_rejected_at_load(tmp_path):
    """synthesize.per_condition is checked against the demo's conditions, the npz class names and the real
    hippocampus labels CSV before anything runs; cohorts whose conditions are known only after ingest pass."""
    from tests.conftest import shared

    with pytest.raises(ConfigError, match=r"synthesize.per_condition: 'tumour' is not a condition of this cohort; its conditions are 'lesion', 'normal'"):
        parse_params({"synthesize": {"per_condition": {"normal": 2, "tumour": 2}}})
    hippo = shared("hippocampus")
    data = {"input": str(hippo), "labels": str(hippo / "labels.csv"), "rare_condition": "small", "default_condition": "typical"}
    with pytest.raises(ConfigError, match=r"'lesion', 'normal' is not a condition .* 'small', 'typical' \(data.labels .*labels.csv"):
        parse_params({"data": data})  # the default per_condition names the demo's conditions
    assert parse_params({"data": data, "synthesize": {"per_condition": {"typical": 4, "small": 4}}}).synthesize.per_condition == {"typical": 4, "small": 4}
    npz = {"input": "cohort.npz", "npz_class_names": ["benign", "mass"], "rare_condition": "mass", "default_condition": "benign"}
    with pytest.raises(ConfigError, match=r"'lesion', 'normal' is not a condition .* 'benign', 'mass' \(data.npz_class_names\)"):
        parse_params({"data": npz})
    (tmp_path / "latin1.csv").write_bytes("case,condition\né,normal\n".encode("latin-1"))
    for unknown_yet in ({"input": str(tmp_path)}, {"input": str(tmp_path), "labels": str(tmp_path / "latin1.csv")}):
        assert parse_params({"data": unknown_yet}).synthesize.per_condition == {"normal": 8, "lesion": 8}


def test_the_train_stage_refuses_conditions_the_preprocessed_cohort_lacks_before_training(tmp_path):
    """DICOM/NIfTI input without a labels CSV: the conditions are known only after ingest. The train stage
    checks synthesize.per_condition against preprocess.json before it trains, naming both."""
    import json
    import subprocess
    import sys

    import yaml

    (tmp_path / "export").mkdir()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"input": str(tmp_path / "export")}}))
    (tmp_path / "data" / "preprocess").mkdir(parents=True)
    (tmp_path / "data" / "preprocess" / "preprocess.json").write_text(json.dumps({"conditions": ["normal"], "modality": "CT"}))
    run = subprocess.run([sys.executable, str(ROOT / "pipelines" / "train.py"), "cvae"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    msg = " ".join(run.stderr.split())
    assert "synthesize.per_condition: 'lesion' is not a condition of the preprocessed cohort ('normal')" in msg
    assert not (tmp_path / "models").exists()  # nothing trained
