"""Vendor storage formats beyond one image per file, each built from real shared DICOM as the format's
public description says it is stored, and checked against dcm2niix's reference of the original.

* Siemens mosaics whose CSA header an exporter or anonymiser removed (dcm2niix's rules: slice count from
  NumberOfImagesInMosaic / slice times, else every tile the AcquisitionMatrix fits);
* UIH grids ("virtual frames"): a volume's slices tiled in one image, slice positions in the private
  VFrame sequence (0065,1051), no top-level ImagePositionPatient;
* derived diffusion images (TRACEW / ADC) stored in the series of the acquisitions.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medsynth.io.convert import ConvertedVolume, iter_volumes
from medsynth.io.quarantine import QuarantineEntry
from tests.conftest import shared


def _volumes(folder: Path) -> tuple[list[ConvertedVolume], list[QuarantineEntry]]:
    items = list(iter_volumes(folder, workers=1))
    return [v for v in items if isinstance(v, ConvertedVolume)], [q for q in items if isinstance(q, QuarantineEntry)]


def _ras(ref_path: Path) -> tuple[np.ndarray, np.ndarray]:
    ref = nib.as_closest_canonical(nib.load(ref_path))
    return np.asarray(ref.dataobj, dtype=np.float64), ref.affine


def _strip(src: Path, dest: Path, drop) -> Path:
    ds = pydicom.dcmread(src)
    for elem in list(ds):
        if drop(elem.tag):
            del ds[elem.tag]
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    return dest


def _csa(tag) -> bool:
    return tag.group == 0x0029


def _every_private(tag) -> bool:
    return tag.is_private


MOSAICS = [  # (dataset, file, reference, slices the CSA header gives)
    ("dcm_qa_ts", "1.dcm", "1.nii", 35),  # 6 x 6 tiles, oblique
    ("dcm_qa_nih", "20180918Si/mr_0003/epi_pe_ap-00001.dcm", None, 5),  # 3 x 3 tiles
    ("dcm_qa_nih", "20180918Si/mr_0005/epi_pe_rl-00001.dcm", None, 5),  # AcquisitionMatrix [0, 72, 72, 0]
]


def _mosaic_reference(dataset: str, name: str, ref: str | None, tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """dcm2niix's reference, or (a single file of a 4D reference) the file converted with its CSA header."""
    root = shared("dicom", dataset)
    if ref is not None:
        return _ras(root / "Ref" / ref)
    one = tmp_path / "with_csa" / Path(name).name
    one.parent.mkdir(parents=True)
    shutil.copy(root / "In" / name, one)
    (vol,), _ = _volumes(one.parent)
    return vol.data.astype(np.float64), vol.affine


@pytest.mark.parametrize(("dataset", "name", "ref", "n_slices"), MOSAICS)
def test_mosaic_without_csa_keeps_number_of_images_in_mosaic(tmp_path, dataset, name, ref, n_slices):
    want, want_aff = _mosaic_reference(dataset, name, ref, tmp_path)
    assert want.shape[2] == n_slices
    _strip(shared("dicom", dataset, "In", name), tmp_path / "no_csa" / "mosaic.dcm", _csa)
    (vol,), quarantine = _volumes(tmp_path / "no_csa")
    assert not quarantine
    assert vol.shape == want.shape
    np.testing.assert_allclose(vol.affine, want_aff, atol=1e-3)
    np.testing.assert_allclose(vol.data, want, atol=1e-3)
    assert f"CSA header absent: {n_slices} slices from" in " ".join(vol.notes)


@pytest.mark.parametrize(("dataset", "name", "ref", "n_slices"), MOSAICS)
def test_mosaic_without_any_private_tag_uses_every_tile(tmp_path, dataset, name, ref, n_slices):
    """With every private tag gone (what a strict anonymiser leaves), dcm2niix takes every tile the
    AcquisitionMatrix fits: the real slices first, then blank tiles; the geometry stays right."""
    want, want_aff = _mosaic_reference(dataset, name, ref, tmp_path)
    _strip(shared("dicom", dataset, "In", name), tmp_path / "no_private" / "mosaic.dcm", _every_private)
    (vol,), _ = _volumes(tmp_path / "no_private")
    src = pydicom.dcmread(shared("dicom", dataset, "In", name), stop_before_pixels=True)
    matrix = [int(v) for v in src.AcquisitionMatrix]
    tiles = (int(src.Columns) // (matrix[0] or matrix[1])) * (int(src.Rows) // (matrix[2] or matrix[3]))
    assert vol.shape == want.shape[:2] + (tiles,)
    # RAS may run the slices either way: compare in world space through the affines
    idx = np.array([[0, 0, 0, 1], [want.shape[0] - 1, want.shape[1] - 1, 0, 1], [0, 0, n_slices - 1, 1]]).T
    world = want_aff @ idx
    ours = np.rint(np.linalg.inv(vol.affine) @ world).astype(int)[:3]
    np.testing.assert_allclose(vol.affine @ np.vstack([ours, np.ones(3)]), world, atol=1e-3)
    for k_want, k_ours in ((0, ours[2, 0]), (n_slices - 1, ours[2, 2])):
        np.testing.assert_allclose(np.sort(vol.data[:, :, k_ours].ravel()), np.sort(want[:, :, k_want].ravel()), atol=1e-3)
    assert "blank tiles kept" in " ".join(vol.notes)
