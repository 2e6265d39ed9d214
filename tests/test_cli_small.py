"""Small command-line behaviours: flags that mean their names, keygen, where messages go, reused output folders."""

import shutil
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medsynth.cli import app
from medsynth.config import DeidConfig
from medsynth.io.deid import load_key
from tests.conftest import ROOT, shared


def _run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_deid_cleans_descriptors_by_default_and_removes_them_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSYNTH_DEID_KEY", "cli-test-key-0123456789abcdef")
    (tmp_path / "in").mkdir()
    shutil.copy(next(shared("dicom", "dcm_qa_12bit", "In").glob("*.dcm")), tmp_path / "in" / "a.dcm")
    descriptions = {}
    for mode in ("default", "--clean-descriptors", "--remove-descriptors"):
        out = tmp_path / mode.strip("-")
        res = _run("deid", tmp_path / "in", out, *([] if mode == "default" else [mode]))
        assert res.exit_code == 0, res.output
        ds = pydicom.dcmread(next(p for p in out.rglob("*") if p.is_file() and p.suffix not in {".csv"}))
        descriptions[mode] = ds.get("SeriesDescription")
    assert descriptions["default"] and descriptions["default"] == descriptions["--clean-descriptors"]
    assert descriptions["--remove-descriptors"] is None
    assert _run("deid", tmp_path / "in", tmp_path / "k", "--keep-descriptors").exit_code == 2  # no flag that says keep and removes


def test_keygen_writes_a_private_key_that_load_key_reads_and_never_overwrites_it(tmp_path):
    key = tmp_path / "home" / ".medsynth" / "site.key"  # parent folders do not exist yet
    res = _run("keygen", key)
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    text = key.read_text()
    assert len(text.strip()) == 64 and int(text, 16)
    loaded = load_key(DeidConfig(), key_file=str(key))
    assert loaded.stable and loaded.secret == text.strip().encode()

    res = _run("keygen", key)
    assert res.exit_code == 2 and "already there" in res.output and "--force" in res.output
    assert key.read_text() == text

    res = _run("keygen", key, "--force")
    assert res.exit_code == 0, res.output
    assert key.read_text() != text and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert [p.name for p in key.parent.iterdir()] == ["site.key"]  # no temporary file left


def test_check_params_prints_valid_to_stdout_and_errors_to_stderr(tmp_path):
    res = _run("check-params", ROOT / "params.yaml")
    assert res.exit_code == 0 and "valid" in res.stdout and not res.stderr
    bad = tmp_path / "params.yaml"
    bad.write_text("data:\n  demo:\n    patients: 3\n")
    res = _run("check-params", bad)
    assert res.exit_code == 2 and not res.stdout and "data.demo.patients" in res.stderr


def test_error_messages_keep_square_brackets(tmp_path):
    # rich reads [..] as markup: an error naming a list or a path with brackets must print it whole
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  models: [cgan, nosuchmodel]\n")
    res = _run("check-params", bad)
    assert res.exit_code == 2 and "nosuchmodel" in res.stderr
    res = _run("synth", tmp_path / "run[old]", tmp_path / "out", "-c", "lesion")
    assert res.exit_code == 2 and "run[old]" in "".join(res.stderr.split())


def test_demo_names_the_option_value_and_minimum_instead_of_a_traceback(tmp_path):
    res = _run("demo", tmp_path / "d", "--patients", "3")
    assert res.exit_code == 2
    msg = " ".join(res.output.split())
    assert "--patients: 3 is not allowed" in msg and "greater than or equal to 8" in msg and "Traceback" not in msg
    assert not (tmp_path / "d").exists()


def _nifti_inputs(folder: Path, n: int, value: int = 0) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(n):
        nib.save(nib.Nifti1Image(np.full((4, 5, 6), value + i, dtype=np.int16), np.eye(4)), folder / f"case{i}.nii.gz")


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_reused_convert_folder_holds_exactly_this_runs_outputs_and_the_users_files(tmp_path):
    from medsynth.io.convert import convert_folder

    out = tmp_path / "out"
    _nifti_inputs(tmp_path / "in", 3)
    convert_folder(tmp_path / "in", out, workers=1)
    assert _files(out) == {"series_0001.nii.gz", "series_0002.nii.gz", "series_0003.nii.gz", "series.csv", "quarantine.csv"}
    (out / "notes.txt").write_text("mine")
    (out / "series_0099.nii.gz").write_bytes(b"not written by convert")  # not in series.csv: not convert's

    _nifti_inputs(tmp_path / "in", 1)
    res = _run("convert", tmp_path / "in", out, "--workers", "1")
    assert res.exit_code == 0, res.output
    assert _files(out) == {"series_0001.nii.gz", "series.csv", "quarantine.csv", "notes.txt", "series_0099.nii.gz"}
    assert [r.split(",")[0] for r in (out / "series.csv").read_text().splitlines()[1:]] == ["series_0001.nii.gz"]


def test_a_failed_convert_leaves_the_previous_outputs_as_they_were(tmp_path, monkeypatch):
    import medsynth.io.convert as convert

    out = tmp_path / "out"
    _nifti_inputs(tmp_path / "in", 2)
    convert.convert_folder(tmp_path / "in", out, workers=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _nifti_inputs(tmp_path / "in", 2, value=7)  # other voxels: a half-done rerun would show
    real = convert.iter_volumes

    def fails_after_one(*a, **kw):
        it = real(*a, **kw)
        yield next(it)
        raise RuntimeError("disk full")

    monkeypatch.setattr(convert, "iter_volumes", fails_after_one)
    with pytest.raises(RuntimeError):
        convert.convert_folder(tmp_path / "in", out, workers=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nor a temporary folder left


def test_the_command_knows_no_stage_layout():
    """The report is the pipeline's (dvc repro report / pipelines/report.py); no option of the command
    defaults to a folder or file of the stage layout."""
    import typer.main

    group = typer.main.get_command(app)
    assert "report" not in group.commands and {"deid", "convert", "synth", "check-params"} <= set(group.commands)
    assert _run("report").exit_code == 2
    stage_paths = ("data/", "models", "reports", "dvclive")
    defaults = {f"{name} {p.name}": str(p.default) for name, cmd in group.commands.items() for p in cmd.params
                if isinstance(p.default, (str, Path))}
    assert defaults, "no path or text default found: the check looks at nothing"
    assert [k for k, v in defaults.items() if v.startswith(stage_paths)] == []
