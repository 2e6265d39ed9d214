"""Siemens mosaics of one series that are parallel but not at one place (a slab moved between volumes).
dcm2niix's ``isSameSet`` compares their orientation, not their position, so it stacks them in 4D and
``saveDcm2Nii`` writes every volume on the grid of the first one it sorted (its header, dcmSort[0]),
without a warning; it reads neither the CSA header's SlicePosition_PCS nor ImaRelTablePosition for the
geometry. These tests move the mosaics of shared Siemens series (ImagePositionPatient, with the CSA
SlicePosition_PCS and SliceLocation moved alike) and hold medsynth to the dcm2niix wheel on the same files."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medsynth.io.siemens_csa import read_csa
from tests.conftest import shared
from tests.io.test_mosaic_slice_order import CSA_IMAGE, _rewrite_csa
from tests.io.test_vendor_formats import _assert_converts_as_dcm2niix, _volumes

AXIAL = ("dicom", "dcm_qa_nih", "In", "20180918Si", "mr_0003")  # two 5-slice axial mosaics (3 x 3 tiles), 12 mm apart slices
OBLIQUE = ("dicom", "dcm_qa_ts", "In", "1.dcm")  # one 35-slice oblique mosaic (6 x 6 tiles)


def _move(ds: pydicom.Dataset, offset: np.ndarray) -> None:
    """``ds`` moved by ``offset`` (LPS mm): ImagePositionPatient, SliceLocation and the CSA SlicePosition_PCS."""
    ds.ImagePositionPatient = [round(float(x), 6) for x in np.array(ds.ImagePositionPatient, float) + offset]
    iop = np.array(ds.ImageOrientationPatient, float)
    if "SliceLocation" in ds:
        ds.SliceLocation = round(float(ds.SliceLocation) + float(offset @ np.cross(iop[:3], iop[3:])), 6)
    def moved(items: list[bytes]) -> list[bytes]:
        assert len(items) >= 3  # x, y, z, then the empty items the header reserves
        return [b"%.8f\x00" % (float(v.split(b"\x00")[0]) + d) for v, d in zip(items[:3], offset, strict=True)] + items[3:]

    ds[CSA_IMAGE].value = _rewrite_csa(ds[CSA_IMAGE].value, "SlicePosition_PCS", moved)


def _normal(ds: pydicom.Dataset) -> np.ndarray:
    iop = np.array(ds.ImageOrientationPatient, float)
    return np.cross(iop[:3], iop[3:])


def _axial_series(dest: Path, moved: int, normal_mm: float, row_mm: float = 0.0) -> Path:
    """The shared axial series, its mosaic ``moved`` (0: the first acquired) moved ``normal_mm`` along the
    slice normal and ``row_mm`` along the rows."""
    dest.mkdir(parents=True)
    for i, path in enumerate(sorted(shared(*AXIAL).glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        if i == moved:
            _move(ds, _normal(ds) * normal_mm + np.array(ds.ImageOrientationPatient[:3], float) * row_mm)
        ds.save_as(dest / path.name, enforce_file_format=True)
    return dest


def _oblique_series(dest: Path, normal_mm: list[float]) -> Path:
    """The shared oblique mosaic as a series of ``len(normal_mm)`` volumes (acquired 3 s apart), the i-th
    moved ``normal_mm[i]`` along the slice normal; file names run against the acquisition order."""
    dest.mkdir(parents=True)
    src = pydicom.dcmread(shared(*OBLIQUE))
    for i, mm in enumerate(normal_mm):
        ds = copy.deepcopy(src)
        ds.InstanceNumber, ds.AcquisitionNumber = i + 1, i + 1
        ds.AcquisitionTime = f"{float(src.AcquisitionTime) + 3 * i:013.6f}"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if mm:
            _move(ds, _normal(ds) * mm)
        ds.save_as(dest / f"{len(normal_mm) - i:03d}.dcm", enforce_file_format=True)
    return dest


def _dcm2niix_log(folder: Path, out: Path) -> str:
    exe = shutil.which("dcm2niix")
    if exe is None:
        pytest.skip("dcm2niix is not installed (pip install -e '.[test]')")
    out.mkdir()
    return subprocess.run([exe, "-b", "n", "-z", "n", "-o", str(out), str(folder)], check=True, capture_output=True, text=True).stdout


def test_the_move_rewrites_the_csa_slice_position_and_nothing_else():
    src = pydicom.dcmread(shared(*AXIAL, "epi_pe_ap-00001.dcm"))
    ds = copy.deepcopy(src)
    _move(ds, np.array([1.0, -2.0, 7.5]))
    moved, original = read_csa(ds[CSA_IMAGE].value), read_csa(src[CSA_IMAGE].value)
    assert [float(v) for v in moved["SlicePosition_PCS"]] == [float(v) + d for v, d in zip(original["SlicePosition_PCS"], (1.0, -2.0, 7.5), strict=True)]
    assert {k: v for k, v in moved.items() if k != "SlicePosition_PCS"} == {k: v for k, v in original.items() if k != "SlicePosition_PCS"}
    assert list(ds.ImagePositionPatient) == [-323.0, -326.0, 23.5] and float(ds.SliceLocation) == float(src.SliceLocation) + 7.5


@pytest.mark.parametrize(("moved", "normal_mm", "row_mm"), [(1, 7.5, 0.0), (0, 7.5, 0.0), (1, -30.0, 2.0), (1, 0.0, 1.0)],
                         ids=["second-moved-up", "first-moved-up", "second-moved-down-and-aside", "second-moved-aside"])
def test_mosaics_moved_between_volumes_are_stacked_on_the_first_grid_as_dcm2niix(tmp_path, moved, normal_mm, row_mm):
    folder = _axial_series(tmp_path / "in", moved, normal_mm, row_mm)
    assert "arn" not in _dcm2niix_log(folder, tmp_path / "log")  # no Warning / warning from dcm2niix
    (vol,), quarantine = _assert_converts_as_dcm2niix(folder, tmp_path / "ref")
    assert not quarantine and vol.shape == (72, 72, 5, 2)
    # the first acquired volume's grid: 16 mm (RAS z of voxel 0), plus the move when it is the one moved
    assert vol.affine[2, 3] == pytest.approx(16.0 + (normal_mm if moved == 0 else 0.0), abs=1e-3)
    (note,) = [n for n in vol.notes if n.startswith("mosaic positions differ")]
    far = float(np.hypot(normal_mm, row_mm))
    assert f"1 of 2 volumes lie off the first volume's grid, up to {far:.2f} mm" in note
    assert f"{(-normal_mm if moved == 0 else normal_mm):+.2f} mm along the slice normal" in note


def test_oblique_mosaics_at_three_positions_are_stacked_on_the_first_grid_as_dcm2niix(tmp_path):
    folder = _oblique_series(tmp_path / "in", [2.0, 5.0, 0.5])
    (vol,), quarantine = _assert_converts_as_dcm2niix(folder, tmp_path / "ref")
    assert not quarantine and vol.shape == (64, 64, 35, 3)
    src = pydicom.dcmread(shared(*OBLIQUE), stop_before_pixels=True)
    (plain,), _ = _volumes(_oblique_series(tmp_path / "plain", [0.0]))
    np.testing.assert_allclose(vol.affine[:3, 3], plain.affine[:3, 3] + np.diag([-1, -1, 1]) @ _normal(src) * 2.0, atol=1e-3)
    (note,) = [n for n in vol.notes if n.startswith("mosaic positions differ")]
    assert "2 of 3 volumes lie off the first volume's grid, up to 3.00 mm (volume 2: +3.00 mm along the slice normal)" in note


def test_mosaics_at_one_place_get_no_position_note(tmp_path):
    (vol,), _ = _volumes(_oblique_series(tmp_path / "in", [0.0, 0.0]))
    assert vol.shape == (64, 64, 35, 2) and not any("positions differ" in n for n in vol.notes)


def test_mosaics_of_different_voxel_sizes_are_quarantined_with_the_reason(tmp_path):
    """dcm2niix also stacks these on the first grid (it compares neither PixelSpacing nor the slice
    spacing); medsynth keeps them out: the other volumes' voxels would be written at the wrong scale."""
    folder = _axial_series(tmp_path / "in", 1, 0.0)
    ds = pydicom.dcmread(folder / "epi_pe_ap-00002.dcm")
    ds.PixelSpacing = [3.5, 3.5]
    ds.save_as(folder / "epi_pe_ap-00002.dcm", enforce_file_format=True)
    vols, quarantine = _volumes(folder)
    assert not vols
    assert any("different voxel sizes or axes (volume 2: voxel [3.5, 3.5, 12.0] mm, first [3.0, 3.0, 12.0] mm)" in q.reason for q in quarantine), quarantine
