"""The input fingerprint (pipelines/fingerprint.py) that makes `dvc repro` notice a changed export folder,
labels CSV or site key."""

import hashlib
import importlib.util
import json
import os

import pytest

from medsynth.config import DataConfig
from tests.conftest import ROOT


def _load_stage():
    """pipelines/fingerprint.py as a module of its own name (the stage scripts are not a package)."""
    spec = importlib.util.spec_from_file_location("medsynth_stage_fingerprint", ROOT / "pipelines" / "fingerprint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stage = _load_stage()
InputError, input_fingerprint, key_id = stage.InputError, stage.input_fingerprint, stage.key_id


def _export(root):
    (root / "KHAN_JANE_MRN4711000" / "CT_ABD").mkdir(parents=True)
    for i in range(3):
        (root / "KHAN_JANE_MRN4711000" / "CT_ABD" / f"IM{i:04d}").write_bytes(b"x" * (100 + i))
    labels = root.parent / "labels.csv"
    labels.write_text("case,condition\nKHAN_JANE_MRN4711000/CT_ABD,normal\n")
    return DataConfig(input=str(root), labels=str(labels))


def test_fingerprint_changes_with_the_export_the_labels_and_the_key_and_names_nothing(tmp_path):
    raw = tmp_path / "export"
    data = _export(raw)
    key = b"k" * 32
    first = input_fingerprint(data, key)
    assert first == input_fingerprint(data, key)  # stable while nothing changes
    assert first["input"]["files"] == 3 and first["input"]["bytes"] == 303
    text = json.dumps(first)
    assert not any(s in text for s in ("KHAN", "MRN4711", "CT_ABD", "IM0000", str(tmp_path)))
    # a new file in the export
    (raw / "KHAN_JANE_MRN4711000" / "CT_ABD" / "IM0003").write_bytes(b"y")
    added = input_fingerprint(data, key)
    assert added["input"]["sha256"] != first["input"]["sha256"] and added["input"]["files"] == 4
    # a file rewritten in place (same name, new time and size)
    f = raw / "KHAN_JANE_MRN4711000" / "CT_ABD" / "IM0000"
    f.write_bytes(b"z" * 100)
    os.utime(f, ns=(1, 1))
    assert input_fingerprint(data, key)["input"]["sha256"] != added["input"]["sha256"]
    # an edited label
    (tmp_path / "labels.csv").write_text("case,condition\nKHAN_JANE_MRN4711000/CT_ABD,lesion\n")
    relabelled = input_fingerprint(data, key)
    assert relabelled["labels"] != first["labels"] and relabelled["input"] == input_fingerprint(data, key)["input"]
    # another site key: another id, and the key itself is nowhere in it
    other = input_fingerprint(data, b"m" * 32)
    assert other["key_id"] != relabelled["key_id"] == key_id(key) and "kkkk" not in json.dumps(relabelled)


def test_fingerprint_names_a_missing_input_and_the_demo_needs_no_folder(tmp_path):
    with pytest.raises(InputError, match=r"data.input: .*nowhere: no such folder"):
        input_fingerprint(DataConfig(input=str(tmp_path / "nowhere")))
    with pytest.raises(InputError, match=r"data.labels: .*labels.csv: no such file"):
        input_fingerprint(DataConfig(input=str(tmp_path), labels=str(tmp_path / "labels.csv")))
    with pytest.raises(InputError, match=r"no such .npz file"):
        input_fingerprint(DataConfig(input=str(tmp_path / "cohort.npz")))
    assert input_fingerprint(DataConfig(input="demo"))["input"] == {"kind": "demo"}


def test_weights_fingerprint_sees_a_swapped_file_and_writes_no_path(tmp_path):
    weights_fingerprint = stage.weights_fingerprint
    w = tmp_path / "medicalnet10.pt"
    w.write_bytes(b"a" * 10)
    paths = {"evaluate.encoder.weights": str(w), "train.vaegan.perceptual_network": None, "train.x.perceptual_network": str(tmp_path / "later.pt")}
    first = weights_fingerprint(paths)
    assert set(first) == {"evaluate.encoder.weights", "train.x.perceptual_network"} and first["train.x.perceptual_network"] == {"missing": True}
    assert first == weights_fingerprint(paths) and "medicalnet" not in json.dumps(first) and str(tmp_path) not in json.dumps(first)
    w.write_bytes(b"b" * 11)  # another network at the same path
    assert weights_fingerprint(paths)["evaluate.encoder.weights"] != first["evaluate.encoder.weights"]


def test_fingerprint_stage_tracks_a_stable_key_but_not_a_throw_away_one(tmp_path, monkeypatch):
    import yaml

    data = _export(tmp_path / "export")
    params = {"data": {"input": data.input, "labels": data.labels}, "deid": {"ephemeral_key": True},
              "synthesize": {"per_condition": {"normal": 1}}}  # the one condition the labels name
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDSYNTH_DEID_KEY", raising=False)
    out = tmp_path / "data" / "fingerprints" / "input.json"
    assert stage.main() == 0
    first = out.read_text()
    assert stage.main() == 0 and out.read_text() == first and "key_id" not in first  # a new throw-away key each run
    (tmp_path / "site.key").write_text("s" * 64)
    params["deid"] = {"key_file": str(tmp_path / "site.key")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert stage.main() == 0 and json.loads(out.read_text())["key_id"] == key_id(b"s" * 64)
    assert {p.name for p in out.parent.iterdir()} == {"input.json", "encoder_weights.json", "perceptual_network.json"}


def _lock(tmp_path, md5):
    """A dvc.lock whose ingest stage ran on an input.json of this MD5 (the shape DVC 3 writes)."""
    import yaml

    lock = {"schema": "2.0", "stages": {"ingest": {"cmd": "python pipelines/ingest.py", "deps": [
        {"path": "pipelines/ingest.py", "hash": "md5", "md5": "0" * 32, "size": 1},
        {"path": "data/fingerprints/input.json", "hash": "md5", "md5": md5, "size": 10}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))


def test_fingerprint_stage_says_changed_only_when_ingest_ran_on_another_input(tmp_path, monkeypatch, capsys):
    """DVC deletes the stage's outputs before running it: the message compares with dvc.lock's record of
    the input.json the last ingest read, not with a previous file that is never there."""
    import yaml

    data = _export(tmp_path / "export")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"input": data.input, "labels": data.labels}, "deid": {"ephemeral_key": True},
                                                          "synthesize": {"per_condition": {"normal": 1}}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDSYNTH_DEID_KEY", raising=False)
    out = tmp_path / "data" / "fingerprints" / "input.json"

    def said() -> str:
        assert stage.main() == 0
        return " ".join(capsys.readouterr().err.split())

    assert said().endswith("; no earlier ingest recorded in dvc.lock")
    _lock(tmp_path, hashlib.md5(out.read_bytes()).hexdigest())  # ingest ran on this very input
    out.unlink()  # as DVC does before it runs the stage
    message = said()
    assert "input 3 file(s), 303 bytes; unchanged since the last ingest" in message and "out of date" not in message
    (tmp_path / "labels.csv").write_text("case,condition\nKHAN_JANE_MRN4711000/CT_ABD,lesion\n")
    assert said().endswith("; changed since the last ingest (dvc.lock): ingest is out of date")
