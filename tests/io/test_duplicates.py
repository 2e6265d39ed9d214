"""Duplicate images within one output, removed as dcm2niix removes them: each case copies or rewrites real
shared files (the GE series, a Siemens mosaic series, the Siemens XA10 enhanced objects, the Philips enhanced
object) and compares our volumes with dcm2niix run on the same files.

dcm2niix (nii_dicom_batch.cpp) sorts the files of one output by ``compareTDCMsort`` and drops each whose key
equals the previous one's (``removeDuplicates``: "N images have identical time, series, acquisition and
instance values. DUPLICATES REMOVED."). The key (``fillTDCMsort``) is ``(SeriesNumber << 32) + image number``,
then the dimensionIndexValues readDICOMx leaves: an enhanced object's last (0020,9157) values, the GE raw data
run number (0019,10A2) where above 0, the SOPInstanceUID's CRC, the echo number and the SeriesInstanceUID's
CRC. Pixel data are never compared: of two files with one key the first of the sort is kept, and the sort
being stable, that is the first the directory listing gives. Files of different outputs are never compared
(the same file rewritten with another TR, a Philips enhanced object, which is written on its own), nor are
non-parallel mosaics, each written on its own (issue 481).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medsynth.io.dicom import load_series, read_image_dataset
from medsynth.io.dicom_fast import read_fast_header
from tests.conftest import shared
from tests.io.test_dcm2niix_splits import _rewritten
from tests.io.test_vendor_formats import _assert_converts_as_dcm2niix, _dcm2niix, _volumes

MOSAICS = ("dicom", "dcm_qa_nih", "In", "20180918Si", "mr_0003")  # two 5-slice axial mosaics (3 x 3 tiles)
XA10 = ("dicom", "dcm_qa_enh", "In", "Siemens", "XA10")  # 4 enhanced objects, one 64 x 64 x 6 volume each
PHILIPS = ("dicom", "dcm_qa_enh", "In", "Philips", "IM_0027_fMAP.dcm")  # 64 frames: 32 magnitude, 32 field map
REMOVED = "duplicate image file(s) removed"


def _ge(dest: Path) -> Path:
    """The first 4 volumes (60 files, 15 slices) of the shared GE series, rewritten as s{slice}_t{volume}.dcm."""
    return _rewritten(dest, lambda ds, t: None)


def _copied(src: list[Path], dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for p in src:
        shutil.copy(p, dest / p.name)
    return dest


def _note(vol, text: str = REMOVED) -> str:
    found = [n for n in vol.notes if text in n]
    assert len(found) == 1, vol.notes
    return found[0]


def _no_note(vols) -> None:
    assert not any("removed" in n for v in vols for n in v.notes), [v.notes for v in vols]


# ----------------------------------------------------------------------------- copies of the same files


def test_a_series_exported_twice_into_one_folder_converts_as_dcm2niix(tmp_path):
    folder = _ge(tmp_path / "in")
    _copied(sorted(folder.glob("*.dcm")), folder / "again")  # every file a second time, under a subfolder
    (vol,), quarantine = _assert_converts_as_dcm2niix(folder, tmp_path / "ref")
    assert not quarantine and vol.shape == (64, 64, 15, 4)
    note = _note(vol)
    assert note.startswith("60 duplicate image file(s) removed") and "(s00_t00.dcm duplicates again/s00_t00.dcm, ...)" in note
    assert vol.n_source_files == 60 and all(f.startswith("again/") for f in vol.source_files)  # the first by path


@pytest.mark.parametrize("copies", [["s05_t01"], ["s00_t00", "s07_t02", "s14_t03"]], ids=["one file", "three files"])
def test_files_copied_under_another_name_are_removed_as_dcm2niix_removes_them(tmp_path, copies):
    folder = _ge(tmp_path / "in")
    for name in copies:
        shutil.copy(folder / f"{name}.dcm", folder / f"{name}_copy.dcm")
    (vol,), quarantine = _assert_converts_as_dcm2niix(folder, tmp_path / "ref")  # not 5 images at some positions
    assert not quarantine and vol.shape == (64, 64, 15, 4)
    note = _note(vol)
    assert note.startswith(f"{len(copies)} duplicate image file(s) removed")
    assert f"{copies[0]}_copy.dcm duplicates {copies[0]}.dcm" in note and "pixel data" not in note


@pytest.mark.parametrize("which", [[0, 1], [1]], ids=["both mosaics", "the second mosaic"])
def test_a_duplicated_mosaic_is_removed_as_dcm2niix_removes_it(tmp_path, which):
    src = sorted(shared(*MOSAICS).glob("*.dcm"))
    folder = _copied(src, tmp_path / "in")
    for i in which:
        shutil.copy(src[i], folder / f"copy_{src[i].name}")
    (vol,), _ = _assert_converts_as_dcm2niix(folder, tmp_path / "ref")
    assert vol.shape == (72, 72, 5, 2)
    assert _note(vol).startswith(f"{len(which)} duplicate image file(s) removed")


@pytest.mark.parametrize("which", [[0, 1, 2, 3], [2]], ids=["every object", "one object"])
def test_a_duplicated_enhanced_object_is_removed_as_dcm2niix_removes_it(tmp_path, which):
    src = sorted(shared(*XA10).glob("*.dcm"))
    folder = _copied(src, tmp_path / "in")
    for i in which:
        shutil.copy(src[i], folder / f"copy_{src[i].name}")
    (vol,), quarantine = _assert_converts_as_dcm2niix(folder, tmp_path / "ref")  # not 5 or 8 volumes
    assert not quarantine and vol.shape == (64, 64, 6, 4)
    assert _note(vol).startswith(f"{len(which)} duplicate image file(s) removed")


def test_a_philips_enhanced_object_copied_is_written_twice_as_dcm2niix_writes_it(tmp_path):
    """dcm2niix writes a Philips enhanced object on its own, so a copy is its own output again (magnitude and
    field map each twice). The magnitudes are compared voxel by voxel; the field maps are not (their
    scaling differs from the wheel's in one copy as much as in two)."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(shared(*PHILIPS), folder / "a.dcm")
    shutil.copy(shared(*PHILIPS), folder / "b.dcm")
    refs = _dcm2niix(folder, tmp_path / "ref")
    vols, quarantine = _volumes(folder)
    assert len(refs) == len(vols) == 4 and not quarantine
    assert sorted(v.shape for v in vols) == sorted(r.shape for r, _aff in refs) == [(64, 64, 32)] * 4
    for want, aff in refs[:1]:  # the magnitude (e1): written once per copy
        assert sum(np.allclose(v.affine, aff, atol=1e-3) and np.allclose(v.data, want, atol=1e-3) for v in vols) == 2
    _no_note(vols)


# ----------------------------------------------------------------------------- what is not a duplicate


def _instance_plus(offset: int) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        ds.InstanceNumber = int(ds.InstanceNumber) + offset
    return change


def _raw_run_plus(ds: pydicom.Dataset) -> None:
    ds[0x0019, 0x10A2].value = int(ds[0x0019, 0x10A2].value) + 7


def _wheel_shapes(folder: Path, out: Path) -> list[tuple[int, ...]]:
    """The shapes of dcm2niix's outputs as written (one may have a singular affine, which nibabel cannot reorient)."""
    import subprocess

    exe = shutil.which("dcm2niix")
    if exe is None:
        pytest.skip("dcm2niix is not installed (pip install -e '.[test]')")
    out.mkdir()
    subprocess.run([exe, "-b", "n", "-z", "n", "-o", str(out), str(folder)], check=False, capture_output=True)  # exit 1: nothing written
    return [tuple(nib.load(p).shape) for p in sorted(out.glob("*.nii"))]


def _changed_copies(folder: Path, names: list[str], change: Callable[[pydicom.Dataset], None], suffix: str = "_copy") -> None:
    for name in names:
        ds = pydicom.dcmread(folder / f"{name}.dcm")
        change(ds)
        ds.save_as(folder / f"{name}{suffix}.dcm", enforce_file_format=True)


def test_the_same_series_again_under_other_instance_numbers_is_stacked_as_dcm2niix_stacks_it(tmp_path):
    """Same SOPInstanceUIDs, other instance numbers: other keys, so dcm2niix keeps every file (8 volumes)."""
    folder = _ge(tmp_path / "in")
    _changed_copies(folder, [p.stem for p in sorted(folder.glob("*.dcm"))], _instance_plus(1000))
    (vol,), _ = _assert_converts_as_dcm2niix(folder, tmp_path / "ref")
    assert vol.shape == (64, 64, 15, 8)
    _no_note([vol])


@pytest.mark.parametrize("change", [_instance_plus(1000), _raw_run_plus], ids=["instance number", "GE raw data run number"])
def test_one_copy_with_another_key_is_kept_as_dcm2niix_keeps_it(tmp_path, change):
    """One file again with its SOPInstanceUID and another instance number or GE raw data run number (0019,10A2):
    not a duplicate for dcm2niix, which keeps it beside the original and writes no volume of 4 (61 images: a
    degenerate 3D output of zero slice step for the instance number, none for the run number); ours quarantines
    the series with the reason."""
    folder = _ge(tmp_path / "in")
    _changed_copies(folder, ["s05_t01"], change)
    assert _wheel_shapes(folder, tmp_path / "ref") == ([] if change is _raw_run_plus else [(64, 64, 61)])
    vols, quarantine = _volumes(folder)
    assert not vols
    assert [q.reason.split(":")[0] for q in quarantine] == ["positions hold different numbers of images ([4, 5])"]


def test_a_copy_in_another_output_is_not_removed(tmp_path):
    """Every file again with another TR (same SOPInstanceUIDs and instance numbers): another output for
    dcm2niix, so nothing is compared across the two and each holds 4 volumes."""
    folder = _ge(tmp_path / "in")

    def tr(ds: pydicom.Dataset) -> None:
        ds.RepetitionTime = float(ds.RepetitionTime) + 500

    _changed_copies(folder, [p.stem for p in sorted(folder.glob("*.dcm"))], tr)
    vols, quarantine = _assert_converts_as_dcm2niix(folder, tmp_path / "ref", n_outputs=2)
    assert not quarantine and [v.shape for v in vols] == [(64, 64, 15, 4)] * 2
    _no_note(vols)


def _rotated(ds: pydicom.Dataset, degrees: float = 1.0) -> None:
    a = np.radians(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*rot @ iop[:3], *rot @ iop[3:])]


def test_non_parallel_mosaics_are_each_written_duplicates_included_as_dcm2niix_writes_them(tmp_path):
    """The first mosaic twice and the second turned by 1 degree: dcm2niix writes every mosaic of the series
    on its own without comparing keys (issue 481), the copy too: 3 outputs."""
    src = sorted(shared(*MOSAICS).glob("*.dcm"))
    folder = _copied(src[:1], tmp_path / "in")
    shutil.copy(src[0], folder / f"copy_{src[0].name}")
    ds = pydicom.dcmread(src[1])
    _rotated(ds)
    ds.save_as(folder / src[1].name, enforce_file_format=True)
    vols, _ = _assert_converts_as_dcm2niix(folder, tmp_path / "ref", n_outputs=3)
    assert [v.shape for v in vols] == [(72, 72, 5)] * 3
    _no_note(vols)


# ----------------------------------------------------------------------------- identical keys, other pixels


def _brighter(ds: pydicom.Dataset) -> None:
    ds.PixelData = (ds.pixel_array.astype(np.int32) + 100).astype(ds.pixel_array.dtype).tobytes()


def _wheel_volume(folder: Path, out: Path) -> tuple[np.ndarray, np.ndarray]:
    (ref,) = _dcm2niix(folder, out)
    return ref


def test_identical_keys_with_other_pixel_data_keep_one_file_as_dcm2niix_does(tmp_path):
    """s05_t01.dcm and s05_t01_copy.dcm (its pixels + 100) share their key: dcm2niix keeps the one its
    directory listing gives first, whatever the pixels (the file system's order); we keep the first by path
    (s05_t01.dcm) and say in the note that the images removed had identical keys and other pixel data."""
    folder = _ge(tmp_path / "in")
    _changed_copies(folder, ["s05_t01"], _brighter)
    listed_first = min(("s05_t01.dcm", "s05_t01_copy.dcm"), key=os.listdir(folder).index)
    kept_by_path = _copied(sorted(p for p in folder.glob("*.dcm") if not p.stem.endswith("_copy")), tmp_path / "by_path")
    kept_by_wheel = _copied(sorted(p for p in folder.glob("*.dcm") if p.name != "s05_t01.dcm"), tmp_path / "by_listing")
    if listed_first == "s05_t01_copy.dcm":
        (kept_by_wheel / "s05_t01_copy.dcm").rename(kept_by_wheel / "s05_t01.dcm")
    else:
        kept_by_wheel = kept_by_path
    wheel, wheel_aff = _wheel_volume(folder, tmp_path / "ref")
    want, want_aff = _wheel_volume(kept_by_wheel, tmp_path / "ref_listing")
    assert np.array_equal(wheel, want) and np.allclose(wheel_aff, want_aff)  # the wheel: the file listed first
    (vol,), quarantine = _volumes(folder)
    ours, ours_aff = _wheel_volume(kept_by_path, tmp_path / "ref_path")
    assert not quarantine and vol.shape == ours.shape == (64, 64, 15, 4)
    assert np.allclose(vol.data, ours, atol=1e-3) and np.allclose(vol.affine, ours_aff, atol=1e-3)  # ours: the first by path
    assert np.allclose(np.delete(vol.data, 5, axis=2), np.delete(wheel, 5, axis=2), atol=1e-3)  # every other slice as the wheel's
    note = _note(vol, "identical-key image file(s) removed")
    assert note.startswith("1 identical-key image file(s) removed") and "1 of them with other pixel data" in note
    assert "s05_t01_copy.dcm duplicates s05_t01.dcm" in note


# ----------------------------------------------------------------------------- both readers


def test_the_key_reads_the_same_through_both_readers(tmp_path):
    """dcm2niix's sort key of every file read by the fast reader and by pydicom, and the volumes both give."""
    from medsynth.io.dicom.geometry import dcm2niix_sort_key

    folders = {"ge": _ge(tmp_path / "ge"), "xa10": _copied(sorted(shared(*XA10).glob("*.dcm")), tmp_path / "xa10"),
               "mosaic": _copied(sorted(shared(*MOSAICS).glob("*.dcm")), tmp_path / "mosaic")}
    shutil.copy(folders["ge"] / "s05_t01.dcm", folders["ge"] / "s05_t01_copy.dcm")
    _changed_copies(folders["ge"], ["s06_t01"], _brighter)
    shutil.copy(folders["xa10"] / "6_2.dcm", folders["xa10"] / "6_2_copy.dcm")
    shutil.copy(folders["mosaic"] / sorted(os.listdir(folders["mosaic"]))[0], folders["mosaic"] / "copy.dcm")
    for name, folder in folders.items():
        paths = sorted(folder.glob("*.dcm"))
        fast = [(p, h) for p in paths if (h := read_fast_header(p)) is not None]
        slow = [(p, read_image_dataset(p)) for p in paths]
        assert len(fast) == len(paths)
        keys = [dcm2niix_sort_key(h) for _p, h in fast]
        assert keys == [dcm2niix_sort_key(ds) for _p, ds in slow], name
        assert len(set(keys)) == len(keys) - (2 if name == "ge" else 1)
        (a,), _ = load_series(fast)
        (b,), _ = load_series(slow)
        assert np.array_equal(a.data, b.data) and np.allclose(a.affine, b.affine) and a.notes == b.notes, name
        assert any("removed" in n for n in a.notes)
    raw_runs = {k[5] for k in (dcm2niix_sort_key(read_fast_header(p)) for p in sorted(folders["ge"].glob("*.dcm")))}
    assert len(raw_runs) == 15 and min(raw_runs) > 0  # the GE raw data run number, one per slice position
