"""``medsynth convert IN OUT`` converts plain DICOM without importing typer, rich, pydicom, nibabel or
pydantic; every other command line goes to the typer app."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medsynth.launcher import _plain_convert
from tests.conftest import shared


@pytest.mark.parametrize(("argv", "want"), [
    (["convert", "in", "out"], (Path("in"), Path("out"), None)),
    (["convert", "in", "out", "--workers", "2"], (Path("in"), Path("out"), 2)),
    (["convert", "--workers=1", "in", "out"], (Path("in"), Path("out"), 1)),
    (["convert", "in", "out", "--help"], None),
    (["convert", "in"], None),
    (["convert", "in", "out", "--workers", "two"], None),
    (["deid", "in", "out"], None),
    ([], None),
])
def test_only_the_plain_convert_command_line_bypasses_typer(argv, want):
    assert _plain_convert(argv) == want


def test_plain_convert_imports_neither_the_cli_framework_nor_pydicom_nor_nibabel(tmp_path):
    series = shared("dicom", "dcm_qa_nih", "In", "20180918GE", "mr_0004")
    shutil.copytree(series, tmp_path / "in")
    code = ("import sys; sys.argv = ['medsynth', 'convert', sys.argv[1], sys.argv[2], '--workers', '1']\n"
            "from medsynth.launcher import main\nmain()\n"
            "print(sorted(m for m in ('typer', 'rich', 'pydicom', 'nibabel', 'pydantic') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "in"), str(tmp_path / "out")], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]", res.stdout + res.stderr
    assert "convert: wrote 1 volume(s)" in res.stderr
    assert (tmp_path / "out" / "series_0001.nii.gz").exists()


def test_plain_convert_fails_as_the_typer_command_does(tmp_path):
    res = subprocess.run([sys.executable, "-m", "medsynth.launcher", "convert", str(tmp_path / "missing"), str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "input does not exist" in res.stderr
    (tmp_path / "empty").mkdir()
    res = subprocess.run([sys.executable, "-m", "medsynth.launcher", "convert", str(tmp_path / "empty"), str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert res.returncode == 3 and "nothing could be converted" in res.stderr
