"""synthesize.per_condition against a cohort's conditions: one check (medsynth.cohort.check_per_condition)
and one message, from the train stage (tests/test_config.py) and the synthesize stage (here)."""

import sys

import pytest
import yaml

from medsynth.config import ConfigError
from tests.conftest import ROOT


def test_the_message_names_the_key_the_unknown_conditions_and_the_allowed_ones():
    from medsynth.cohort import check_per_condition

    check_per_condition({"normal": 2, "lesion": 1}, ["lesion", "normal"])  # all known: passes
    with pytest.raises(ConfigError, match=r"^synthesize.per_condition: 'cyst', 'tumour' are not conditions of the preprocessed cohort "
                                          r"\('lesion', 'normal'\); set synthesize.per_condition"):
        check_per_condition({"normal": 2, "tumour": 1, "cyst": 1}, ["lesion", "normal"])


def test_the_synthesize_stage_refuses_conditions_the_model_lacks_and_a_missing_preprocess_record(preprocessed, trained_cvae, tmp_path,
                                                                                                 monkeypatch, capsys):
    """Conditions known only after ingest (no labels CSV) pass params.yaml's check; the stage refuses them
    before sampling, and says which file is missing when preprocess.json is."""
    (tmp_path / "export").mkdir()
    params = {"data": {"input": str(tmp_path / "export")}, "synthesize": {"per_condition": {"normal": 1, "tumour": 1}, "formats": ["nifti"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT / "pipelines"))
    sys.modules.pop("synthesize", None)
    import synthesize as stage

    assert stage.main(["cvae"]) == 1
    assert "data/preprocess/preprocess.json: not found (run the preprocess stage first)" in " ".join(capsys.readouterr().err.split())
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "preprocess").symlink_to(preprocessed)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "cvae").symlink_to(trained_cvae)
    assert stage.main(["cvae"]) == 1
    assert ("synthesize.per_condition: 'tumour' is not a condition of the cohort models/cvae/model.pt was trained on ('lesion', 'normal')"
            in " ".join(capsys.readouterr().err.split()))
    assert not (tmp_path / "data" / "synth").exists()  # refused before any sampling
