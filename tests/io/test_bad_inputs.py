"""Each kind of bad input gets a specific quarantine reason and never stops the batch."""

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medsynth.io.convert import convert_folder


def _series_dir(demo_cohort: Path) -> Path:
    rows = list(csv.DictReader(open(demo_cohort / "labels.csv")))
    return next(demo_cohort / r["case"] for r in rows if (demo_cohort / r["case"]).is_dir())


def _reasons(out: Path) -> list[str]:
    return [r["reason"] for r in csv.DictReader(open(out / "quarantine.csv"))]


@pytest.fixture
def good_series(demo_cohort, tmp_path) -> Path:
    dst = tmp_path / "in" / "good"
    shutil.copytree(_series_dir(demo_cohort), dst)
    return dst


def _sorted_slices(folder: Path) -> list[Path]:
    files = list(folder.iterdir())
    return sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).SliceLocation))


def _convert(tmp_path) -> tuple[list[dict], list[str]]:
    res = convert_folder(tmp_path / "in", tmp_path / "out", workers=1)
    return res.series_rows, _reasons(tmp_path / "out")


def test_zero_byte_and_non_dicom_files(good_series, tmp_path):
    (tmp_path / "in" / "empty.dcm").write_bytes(b"")
    (tmp_path / "in" / "notes").write_text("not dicom at all")
    rows, reasons = _convert(tmp_path)
    assert len(rows) == 1
    assert "empty file (0 bytes)" in reasons
    assert any(r.startswith("not a DICOM file") for r in reasons)


def test_truncated_file(good_series, tmp_path):
    f = _sorted_slices(good_series)[5]
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    rows, reasons = _convert(tmp_path)
    assert any("truncated pixel data" in r for r in reasons)
    assert any("missing slice" in r for r in reasons)  # the series lost that slice, and says so


def test_dicom_without_pixel_data(good_series, tmp_path):
    ds = pydicom.dcmread(next(good_series.iterdir()))
    del ds.PixelData
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "in" / "sr.dcm")
    rows, reasons = _convert(tmp_path)
    assert len(rows) == 1
    assert any(r.startswith("DICOM object without pixel data (Basic Text SR") for r in reasons)


def test_missing_slice(good_series, tmp_path):
    _sorted_slices(good_series)[10].unlink()
    rows, reasons = _convert(tmp_path)
    assert rows == []
    assert any(r.startswith("missing slice(s): gap of 7.00 mm") for r in reasons), reasons


def test_uneven_spacing(good_series, tmp_path):
    for i, f in enumerate(_sorted_slices(good_series)):
        ds = pydicom.dcmread(f)
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        normal = np.cross([float(v) for v in ds.ImageOrientationPatient[:3]], [float(v) for v in ds.ImageOrientationPatient[3:]])
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp + normal * (0.3 if i % 2 else 0.0)]
        ds.save_as(f)
    rows, reasons = _convert(tmp_path)
    assert any(r.startswith("uneven slice spacing") for r in reasons), reasons


def test_mixed_orientations_are_split(good_series, tmp_path):
    # half of the slices re-labelled with another orientation: the series splits, each half judged alone
    for f in _sorted_slices(good_series)[:20]:
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
        ds.save_as(f)
    rows, reasons = _convert(tmp_path)
    assert any("sub-series" in r for r in reasons) or len(rows) == 2


def test_single_2d_image(good_series, tmp_path):
    f = next(good_series.iterdir())
    ds = pydicom.dcmread(f)
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "in" / "scout.dcm")
    rows, reasons = _convert(tmp_path)
    assert len(rows) == 1
    assert "single 2D image (one slice): not a volume" in reasons


def test_nifti_nan_4d_and_broken_affine(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    ok = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    nan = ok.copy()
    nan[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(ok, np.eye(4)), d / "ok.nii.gz")
    nib.save(nib.Nifti1Image(nan, np.eye(4)), d / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.stack([ok, ok, ok], -1), np.eye(4)), d / "fourd.nii.gz")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(ok.shape)
    hdr.set_data_dtype(np.float32)
    hdr["qform_code"] = 0
    hdr["sform_code"] = 2
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]
    nib.save(nib.Nifti1Image(ok, None, header=hdr), d / "broken.nii.gz")
    rows, reasons = _convert(tmp_path)
    assert len(rows) == 4  # ok + 3 volumes of the 4D file
    assert "1 NaN/Inf voxel(s)" in reasons
    assert any(r.startswith("broken affine: singular") for r in reasons)


def test_gantry_tilt_is_quarantined_with_that_reason(good_series, tmp_path):
    # a CT acquired with a tilted gantry: each slice shifted along the column direction by
    # slice_position * tan(15 deg), so the stack is sheared against the slice normal
    for f in _sorted_slices(good_series):
        ds = pydicom.dcmread(f)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        z = float(np.dot(ipp, np.cross(iop[:3], iop[3:])))
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp + iop[3:] * z * np.tan(np.radians(15))]
        ds.save_as(f)
    rows, reasons = _convert(tmp_path)
    assert rows == []
    assert any(r.startswith("slices are sheared by 15.00 degrees (gantry tilt") for r in reasons), reasons


def test_a_zero_pixel_spacing_is_quarantined_in_a_single_frame_file_and_in_a_frame_of_an_enhanced_one(good_series, tmp_path):
    from tests.conftest import shared

    first = _sorted_slices(good_series)[0]
    ds = pydicom.dcmread(first)
    ds.PixelSpacing = [0, 1]
    ds.save_as(first)
    ds = pydicom.dcmread(shared("dicom", "dcm_qa_enh", "In", "Siemens", "XA10", "6_1.dcm"))  # 6 frames, spacing per frame
    ds.PerFrameFunctionalGroupsSequence[2].PixelMeasuresSequence[0].PixelSpacing = [1, 0]
    (tmp_path / "in" / "enhanced").mkdir()
    ds.save_as(tmp_path / "in" / "enhanced" / "6_1.dcm")
    rows, reasons = _convert(tmp_path)
    assert sorted(r for r in reasons if "PixelSpacing" in r) == ["PixelSpacing must be positive, got [0.0, 1.0]",
                                                                 "PixelSpacing must be positive, got [1.0, 0.0]"]
    assert len(rows) == 1  # the rest of the single-frame series is converted


def test_condition_names_that_differ_only_in_case_are_flagged():
    from medsynth.io.ingest import condition_spelling_warnings

    (w,) = condition_spelling_warnings({"Normal": 1, "lesion": 6, "normal": 33, "lesion ": 2, "rare": 3})[:1]
    assert "'Normal' (1 case(s)) and 'normal' (33 case(s))" in w and "typo in the labels CSV" in w
    assert len(condition_spelling_warnings({"Normal": 1, "normal": 33, "lesion ": 2, "lesion": 6})) == 2
    assert condition_spelling_warnings({"normal": 33, "lesion": 6}) == []
