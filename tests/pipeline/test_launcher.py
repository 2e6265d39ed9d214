"""``medsynth convert IN OUT`` converts plain DICOM without importing typer, rich, pydicom, nibabel,
pydantic or (without a pool) multiprocessing; every other command line goes to the typer app."""

import ast
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


# what a plain conversion never imports: the command-line framework, pydicom and nibabel (half a second
# each), the config layer, entry-point scanning, numpy.ma (np.median's NaN check) and, without a pool,
# multiprocessing and subprocess
NOT_IMPORTED = ("typer", "rich", "pydicom", "nibabel", "pydantic", "medsynth.config", "importlib.metadata", "numpy.ma",
                "multiprocessing", "concurrent.futures.process", "subprocess")


def _convert_and_list_imports(src: Path, dest: Path, workers: int | None) -> subprocess.CompletedProcess:
    option = "" if workers is None else f", '--workers', '{workers}'"
    code = (f"import sys; sys.argv = ['medsynth', 'convert', sys.argv[1], sys.argv[2]{option}]\n"
            "from medsynth.launcher import main\nmain()\n"
            f"print(sorted(m for m in {NOT_IMPORTED!r} if m in sys.modules))")
    return subprocess.run([sys.executable, "-c", code, str(src), str(dest)], capture_output=True, text=True, check=True)


def test_plain_convert_imports_only_what_it_needs(tmp_path):
    series = shared("dicom", "dcm_qa_nih", "In", "20180918GE", "mr_0004")
    shutil.copytree(series, tmp_path / "in")
    res = _convert_and_list_imports(tmp_path / "in", tmp_path / "out", workers=1)
    assert res.stdout.strip() == "[]", res.stdout + res.stderr
    assert "convert: wrote 1 volume(s)" in res.stderr
    assert (tmp_path / "out" / "series_0001.nii.gz").exists()


def test_a_small_folder_converts_in_one_process_by_default(tmp_path):
    """605 image files (4 series), --workers not given: below POOL_MIN_FILES no pool is made."""
    shutil.copytree(shared("dicom", "dcm_qa_nih", "In", "20180918GE"), tmp_path / "in")
    res = _convert_and_list_imports(tmp_path / "in", tmp_path / "out", workers=None)
    assert res.stdout.strip() == "[]", res.stdout + res.stderr  # multiprocessing among them
    assert "convert: wrote 4 volume(s)" in res.stderr


def test_compressed_and_big_endian_series_convert_without_pydicom(tmp_path):
    """Single-frame grey-level RLE, JPEG, JPEG-LS, JPEG 2000 and big-endian files: header by the fast reader,
    pixels by their codec plugin; pydicom is never imported (one process: nothing is hidden in a worker)."""
    shutil.copytree(shared("dicom", "dcm_qa_ts", "In"), tmp_path / "in")  # 2 uncompressed, 6 compressed, 1 big-endian mosaic
    res = _convert_and_list_imports(tmp_path / "in", tmp_path / "out", workers=1)
    imported = ast.literal_eval(res.stdout.strip().splitlines()[-1])
    assert "pydicom" not in imported and "nibabel" not in imported, res.stdout + res.stderr
    assert "convert: wrote 9 volume(s)" in res.stderr and "0 item(s) quarantined" in res.stderr, res.stderr


def test_plain_convert_fails_as_the_typer_command_does(tmp_path):
    res = subprocess.run([sys.executable, "-m", "medsynth.launcher", "convert", str(tmp_path / "missing"), str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "input does not exist" in res.stderr
    (tmp_path / "empty").mkdir()
    res = subprocess.run([sys.executable, "-m", "medsynth.launcher", "convert", str(tmp_path / "empty"), str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert res.returncode == 3 and "nothing could be converted" in res.stderr


def test_the_scan_started_before_the_imports_converts_as_one_process_does(tmp_path):
    """The plain command starts the scan (forked children, numpy-free) before it imports the converter;
    its outputs are byte for byte those of ``--workers 1`` (no child)."""
    shutil.copytree(shared("dicom", "dcm_qa_nih", "In", "20180918GE"), tmp_path / "in")
    for name, option in (("default", []), ("one", ["--workers", "1"])):
        subprocess.run([sys.executable, "-m", "medsynth.launcher", "convert", str(tmp_path / "in"), str(tmp_path / name), *option],
                       capture_output=True, text=True, check=True)
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "default").iterdir()) and len(files) == 6  # 4 volumes, 2 tables
    assert all((tmp_path / "one" / f).read_bytes() == (tmp_path / "default" / f).read_bytes() for f in files)
