"""Vendor storage formats beyond one image per file, each built from real shared DICOM as the format's
public description says it is stored, and checked against dcm2niix's reference of the original.

* Siemens mosaics whose CSA header an exporter or anonymiser removed (dcm2niix's rules: slice count from
  NumberOfImagesInMosaic / slice times, else every tile the AcquisitionMatrix fits);
* UIH grids ("virtual frames"): a volume's slices tiled in one image, slice positions in the private
  VFrame sequence (0065,1051), no top-level ImagePositionPatient;
* derived diffusion images (TRACEW / ADC) stored in the series of the acquisitions;
* Siemens mosaics of one series that are not parallel (prospective motion correction): one 3D volume each.
"""

from __future__ import annotations

import copy
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


def _dcm2niix(folder: Path, out: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """What dcm2niix (the PyPI wheel's binary) makes of ``folder``: each output's RAS voxels and affine."""
    import subprocess

    exe = shutil.which("dcm2niix")
    if exe is None:
        pytest.skip("dcm2niix is not installed (pip install -e '.[test]')")
    out.mkdir()
    subprocess.run([exe, "-b", "n", "-z", "n", "-o", str(out), str(folder)], check=True, capture_output=True)
    return [_ras(p) for p in sorted(out.glob("*.nii"))]


def _assert_converts_as_dcm2niix(folder: Path, out: Path, n_outputs: int = 1) -> tuple[list[ConvertedVolume], list[QuarantineEntry]]:
    """dcm2niix's ``n_outputs`` outputs of ``folder`` each matched by one of ours (shape, affine, voxels);
    our volumes and quarantine entries, for the caller's further checks."""
    refs = _dcm2niix(folder, out)
    assert len(refs) == n_outputs
    vols, quarantine = _volumes(folder)
    assert len(vols) == n_outputs
    for want, want_aff in refs:
        assert any(v.shape == want.shape and np.allclose(v.affine, want_aff, atol=1e-3) and np.allclose(v.data, want, atol=1e-3)
                   for v in vols), (want.shape, [v.shape for v in vols])
    return vols, quarantine


@pytest.mark.parametrize("drop", ["csa", "private"])
@pytest.mark.parametrize("name", ["dcm_qa_ts/In/1.dcm", "dcm_qa_12bit/In/12bitUnsigned.dcm", "dcm_qa_nih/In/20180918Si/mr_0005/epi_pe_rl-00001.dcm"])
def test_mosaic_without_csa_matches_dcm2niix_on_the_same_files(tmp_path, name, drop):
    _strip(shared("dicom", *name.split("/")), tmp_path / "in" / "mosaic.dcm", _csa if drop == "csa" else _every_private)
    _assert_converts_as_dcm2niix(tmp_path / "in", tmp_path / "ref")


# ----------------------------------------------------------------------------- UIH grids


def _uih_grid_series(src_dir: Path, dest: Path, implicit: bool = False) -> int:
    """Rewrite a real slice-per-file 4D series as UIH grids: one file per volume, its slices tiled
    ceil(sqrt(n)) wide and ceil(n / cols) high, row by row; the slice positions only in the VFrame
    sequence (0065,1051); no top-level ImagePositionPatient (UIH's description, dcm2niix UIH/README.md)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    files = [pydicom.dcmread(p) for p in sorted(src_dir.glob("*.dcm"))]
    normal = np.cross(np.array(files[0].ImageOrientationPatient[:3], float), np.array(files[0].ImageOrientationPatient[3:], float))
    by_pos: dict[float, list] = {}
    for ds in sorted(files, key=lambda d: int(d.InstanceNumber)):
        by_pos.setdefault(round(float(np.dot(np.array(ds.ImagePositionPatient, float), normal)), 3), []).append(ds)
    positions = [by_pos[k] for k in sorted(by_pos)]
    n, n_t = len(positions), len(positions[0])
    n_col = int(np.ceil(np.sqrt(n)))
    n_row = int(np.ceil(n / n_col))
    rows, cols = int(files[0].Rows), int(files[0].Columns)
    dest.mkdir(parents=True)
    for t in range(n_t):
        slices = [positions[k][t] for k in range(n)]
        grid = np.zeros((n_row * rows, n_col * cols), dtype=slices[0].pixel_array.dtype)
        for k, ds in enumerate(slices):
            r, c = divmod(k, n_col)
            grid[r * rows:(r + 1) * rows, c * cols:(c + 1) * cols] = ds.pixel_array
        out = copy.deepcopy(slices[0])
        for tag in ("ImagePositionPatient", "SliceLocation"):
            if tag in out:
                delattr(out, tag)
        out.Manufacturer = "UIH"
        out.ImageType = ["ORIGINAL", "PRIMARY", "M", "VFRAME"]
        out.InstanceNumber = t + 1
        out.Rows, out.Columns = grid.shape
        out.PixelData = grid.tobytes()
        out.add_new((0x0065, 0x0010), "LO", "Image Private Header")
        out.add_new((0x0065, 0x1050), "DS", str(n))
        items = []
        for ds in slices:
            item = Dataset()
            item.AcquisitionTime = ds.get("AcquisitionTime", "")
            item.ImagePositionPatient = ds.ImagePositionPatient
            items.append(item)
        out.add_new((0x0065, 0x1051), "SQ", Sequence(items))
        out.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        out.save_as(dest / f"grid_{t + 1:03d}.dcm", enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return n


@pytest.mark.parametrize("implicit", [False, True])
def test_uih_grid_series_matches_dcm2niix_reference(tmp_path, implicit):
    root = shared("dicom", "dcm_qa_nih")
    n = _uih_grid_series(root / "In" / "20180918GE" / "mr_0004", tmp_path / "uih", implicit=implicit)
    want, want_aff = _ras(root / "Ref" / "DCM2NIIX_regression_test_4.nii")
    (vol,), quarantine = _volumes(tmp_path / "uih")
    assert not quarantine
    assert n == 15 and vol.shape == want.shape == (64, 64, 15, 10)
    np.testing.assert_allclose(vol.affine, want_aff, atol=1e-3)
    np.testing.assert_allclose(vol.data, want, atol=1e-3)
    assert any("UIH grid (10 volume(s))" in note for note in vol.notes)


def test_uih_grid_matches_dcm2niix_on_the_same_files(tmp_path):
    _uih_grid_series(shared("dicom", "dcm_qa_nih", "In", "20180918GE", "mr_0004"), tmp_path / "uih")
    _assert_converts_as_dcm2niix(tmp_path / "uih", tmp_path / "ref")


def test_uih_grid_without_any_position_is_quarantined_with_the_reason(tmp_path):
    _uih_grid_series(shared("dicom", "dcm_qa_nih", "In", "20180918GE", "mr_0004"), tmp_path / "uih")
    for p in (tmp_path / "uih").glob("*.dcm"):
        ds = pydicom.dcmread(p)
        del ds[0x00651051]
        ds.save_as(p)
    vols, quarantine = _volumes(tmp_path / "uih")
    assert not vols
    assert any("UIH grid without any ImagePositionPatient" in q.reason for q in quarantine)


# ----------------------------------------------------------------------------- derived diffusion images


def _with_derived_trace(src_dir: Path, dest: Path) -> None:
    """A real 4D series plus, in the same series, one derived TRACEW image per slice position (as
    scanners store trace / ADC maps beside the acquisitions)."""
    from pydicom.uid import generate_uid

    shutil.copytree(src_dir, dest)
    files = sorted(dest.glob("*.dcm"))
    first = [pydicom.dcmread(p) for p in files]
    normal = np.cross(np.array(first[0].ImageOrientationPatient[:3], float), np.array(first[0].ImageOrientationPatient[3:], float))
    seen: dict[float, pydicom.Dataset] = {}
    for ds in sorted(first, key=lambda d: int(d.InstanceNumber)):
        seen.setdefault(round(float(np.dot(np.array(ds.ImagePositionPatient, float), normal)), 3), ds)
    for i, ds in enumerate(seen.values()):
        trace = copy.deepcopy(ds)
        trace.ImageType = ["DERIVED", "PRIMARY", "DIFFUSION", "TRACEW", "ND"]
        trace.SOPInstanceUID = generate_uid()
        trace.InstanceNumber = 10_000 + i
        trace.PixelData = (ds.pixel_array // 2).astype(ds.pixel_array.dtype).tobytes()
        trace.save_as(dest / f"trace_{i:03d}.dcm", enforce_file_format=True)


def test_derived_trace_images_in_the_series_become_their_own_volume(tmp_path):
    root = shared("dicom", "dcm_qa_nih")
    _with_derived_trace(root / "In" / "20180918GE" / "mr_0004", tmp_path / "dwi")
    vols, quarantine = _volumes(tmp_path / "dwi")
    assert not [q for q in quarantine if q.path.endswith(".dcm") or q.path == "."], quarantine
    want, want_aff = _ras(root / "Ref" / "DCM2NIIX_regression_test_4.nii")
    acquired = [v for v in vols if v.shape == want.shape]
    derived = [v for v in vols if v.shape == want.shape[:3]]
    assert len(acquired) == 1 and len(derived) == 1
    np.testing.assert_allclose(acquired[0].data, want, atol=1e-3)
    np.testing.assert_allclose(derived[0].affine, want_aff, atol=1e-3)
    np.testing.assert_allclose(derived[0].data, np.floor(want[..., 0] / 2), atol=1e-3)
    assert any("derived image" in n for n in derived[0].notes)


def test_derived_trace_images_match_dcm2niix_on_the_same_files(tmp_path):
    _with_derived_trace(shared("dicom", "dcm_qa_nih", "In", "20180918GE", "mr_0004"), tmp_path / "dwi")
    _assert_converts_as_dcm2niix(tmp_path / "dwi", tmp_path / "ref", n_outputs=2)


# ----------------------------------------------------------------------------- after de-identification


def _deidentified(src: Path, dest: Path, retain_safe_private: bool) -> None:
    from medsynth.config import DeidConfig
    from medsynth.io.deid import Deidentifier, DeidKey

    deid = Deidentifier(DeidConfig(retain_safe_private=retain_safe_private), DeidKey(b"vendor-format-test-key-0123", "file", True))
    dest.mkdir(parents=True)
    for p in sorted(src.glob("*.dcm")):
        deid.deidentify(pydicom.dcmread(p)).dataset.save_as(dest / p.name, enforce_file_format=True)


def test_uih_grid_survives_deidentification_with_retain_safe_private(tmp_path):
    root = shared("dicom", "dcm_qa_nih")
    _uih_grid_series(root / "In" / "20180918GE" / "mr_0004", tmp_path / "uih")
    _deidentified(tmp_path / "uih", tmp_path / "deid", retain_safe_private=True)
    sample = pydicom.dcmread(next((tmp_path / "deid").glob("*.dcm")))
    items = sample[0x00651051].value
    assert len(items) == 15 and all("AcquisitionTime" not in it or it.AcquisitionTime != "" for it in items)
    want, want_aff = _ras(root / "Ref" / "DCM2NIIX_regression_test_4.nii")
    (vol,), _ = _volumes(tmp_path / "deid")
    np.testing.assert_allclose(vol.affine, want_aff, atol=1e-3)
    np.testing.assert_allclose(vol.data, want, atol=1e-3)


def test_uih_grid_without_its_private_tags_is_quarantined_naming_the_option(tmp_path):
    _uih_grid_series(shared("dicom", "dcm_qa_nih", "In", "20180918GE", "mr_0004"), tmp_path / "uih")
    _deidentified(tmp_path / "uih", tmp_path / "deid", retain_safe_private=False)
    vols, quarantine = _volumes(tmp_path / "deid")
    assert not vols
    assert quarantine and all("deid.retain_safe_private: true" in q.reason for q in quarantine), quarantine


def test_mosaic_converts_after_default_deidentification(tmp_path):
    """The default profile drops every private tag (CSA included): the mosaic still converts, from the
    AcquisitionMatrix, as dcm2niix converts the same de-identified file."""
    src = shared("dicom", "dcm_qa_ts", "In", "1.dcm")
    (tmp_path / "raw").mkdir()
    shutil.copy(src, tmp_path / "raw" / "1.dcm")
    _deidentified(tmp_path / "raw", tmp_path / "deid", retain_safe_private=False)
    assert not [e for e in pydicom.dcmread(tmp_path / "deid" / "1.dcm") if e.tag.is_private]
    (vol,), _ = _volumes(tmp_path / "deid")
    assert vol.shape == (64, 64, 36)
    assert "blank tiles kept" in " ".join(vol.notes)


def test_uih_grid_with_uneven_slice_positions_is_quarantined(tmp_path):
    _uih_grid_series(shared("dicom", "dcm_qa_nih", "In", "20180918GE", "mr_0004"), tmp_path / "uih")
    for p in (tmp_path / "uih").glob("*.dcm"):
        ds = pydicom.dcmread(p)
        items = ds[0x00651051].value
        items[7].ImagePositionPatient = [float(v) + (2.5 if i == 2 else 0.0) for i, v in enumerate(items[7].ImagePositionPatient)]
        ds.save_as(p)
    vols, quarantine = _volumes(tmp_path / "uih")
    assert not vols
    assert any("UIH grid: slice positions step" in q.reason for q in quarantine), quarantine


# ----------------------------------------------------------------------------- Philips DWI with an isotropic volume


def _philips_dwi(src_dir: Path, dest: Path, isotropic_last: bool = True) -> None:
    """A real 4D series rewritten as a Philips DWI: b=0 first, then b=1000 with a gradient direction per
    volume (the private Philips b value (2001,1003) and direction (2005,10B0-B2)); with ``isotropic_last``
    the last volume is the isotropic (trace) image scanners append: b=1000 without a direction."""
    files = [pydicom.dcmread(p) for p in sorted(src_dir.glob("*.dcm"))]
    normal = np.cross(np.array(files[0].ImageOrientationPatient[:3], float), np.array(files[0].ImageOrientationPatient[3:], float))
    by_pos: dict[float, list] = {}
    for ds in sorted(files, key=lambda d: int(d.InstanceNumber)):
        by_pos.setdefault(round(float(np.dot(np.array(ds.ImagePositionPatient, float), normal)), 3), []).append(ds)
    dest.mkdir(parents=True)
    rng = np.random.default_rng(3)
    n_t = len(next(iter(by_pos.values())))
    directions = [v / np.linalg.norm(v) for v in rng.normal(size=(n_t, 3))]
    for k, key in enumerate(sorted(by_pos)):
        for t, ds in enumerate(by_pos[key]):
            out = copy.deepcopy(ds)
            for elem in list(out):
                if elem.tag.is_private:
                    del out[elem.tag]
            out.Manufacturer = "Philips Medical Systems"
            out.ImageType = ["ORIGINAL", "PRIMARY", "DWI", "NONE"]
            isotropic = isotropic_last and t == n_t - 1
            vector = [0.0, 0.0, 0.0] if t == 0 or isotropic else [float(round(v, 4)) for v in directions[t]]
            out.add_new((0x2001, 0x0010), "LO", "Philips Imaging DD 001")
            out.add_new((0x2001, 0x1003), "FL", 0.0 if t == 0 else 1000.0)
            out.add_new((0x2005, 0x0010), "LO", "Philips MR Imaging DD 001")
            for off, v in zip((0x10B0, 0x10B1, 0x10B2), vector, strict=True):
                out.add_new((0x2005, off), "FL", v)
            out.save_as(dest / f"s{k:02d}_t{t:02d}.dcm", enforce_file_format=True)


def test_philips_isotropic_volume_is_set_apart_as_dcm2niix_does(tmp_path):
    _philips_dwi(shared("dicom", "dcm_qa_nih", "In", "20180918GE", "mr_0004"), tmp_path / "dwi")
    vols, _ = _volumes(tmp_path / "dwi")
    assert sorted(v.shape[3] for v in vols) == [9, 10]
    assert any("1 isotropic (trace / ADC) volume(s) of 10 set apart" in n for v in vols for n in v.notes)
    _assert_converts_as_dcm2niix(tmp_path / "dwi", tmp_path / "ref", n_outputs=2)


def test_philips_dwi_without_an_isotropic_volume_stays_one_series(tmp_path):
    _philips_dwi(shared("dicom", "dcm_qa_nih", "In", "20180918GE", "mr_0004"), tmp_path / "dwi", isotropic_last=False)
    _assert_converts_as_dcm2niix(tmp_path / "dwi", tmp_path / "ref", n_outputs=1)


def test_a_mosaic_claiming_more_slices_than_its_image_holds_is_quarantined(tmp_path):
    src = shared("dicom", "dcm_qa_ts", "In", "1.dcm")
    ds = pydicom.dcmread(src)
    for elem in list(ds):
        if elem.tag.group == 0x0029:
            del ds[elem.tag]
    block = next(b for b in range(0x10, 0x100) if (0x0019, b) in ds and str(ds[0x0019, b].value).upper() == "SIEMENS MR HEADER")
    for off in (0x0A, 0x29):
        if (0x0019, (block << 8) | off) in ds:
            del ds[0x0019, (block << 8) | off]
    ds.add_new((0x0019, (block << 8) | 0x0A), "US", 60000)
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "mosaic.dcm", enforce_file_format=True)
    vols, quarantine = _volumes(tmp_path / "in")
    assert not vols
    assert any("the slice count is wrong" in q.reason for q in quarantine), quarantine


# ----------------------------------------------------------------------------- mosaics that are not parallel


def _rotate(v: np.ndarray, axis: np.ndarray, degrees: float) -> np.ndarray:
    """``v`` rotated ``degrees`` about the unit ``axis`` (Rodrigues)."""
    a = np.radians(degrees)
    return v * np.cos(a) + np.cross(axis, v) * np.sin(a) + axis * np.dot(axis, v) * (1 - np.cos(a))


def _rotated_mosaics(dest: Path, degrees: float) -> Path:
    """The two mosaics of a shared Siemens series (CSA header kept), the second rotated ``degrees`` about the
    slice normal (ImageOrientationPatient, as prospective motion correction rewrites it). Parallel mosaics
    at different positions: tests/io/test_mosaic_positions.py."""
    dest.mkdir(parents=True)
    for i, path in enumerate(sorted(shared("dicom", "dcm_qa_nih", "In", "20180918Si", "mr_0003").glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        if i == 1:
            iop = np.array(ds.ImageOrientationPatient, float)
            normal = np.cross(iop[:3], iop[3:])
            rotated = np.concatenate([_rotate(iop[:3], normal, degrees), _rotate(iop[3:], normal, degrees)])
            ds.ImageOrientationPatient = [round(float(x), 8) for x in rotated]
        ds.save_as(dest / path.name, enforce_file_format=True)
    return dest


@pytest.mark.parametrize(("degrees", "n_outputs"), [(2.0, 2), (0.01, 2), (0.0, 1)])
def test_mosaics_that_are_not_parallel_become_3d_volumes_as_dcm2niix_writes_them(tmp_path, degrees, n_outputs):
    """dcm2niix writes each mosaic of a series whose mosaics differ in orientation (an ImageOrientationPatient
    value more than 1e-4 apart) as its own 3D volume (issue 481); parallel ones stack in 4D."""
    folder = _rotated_mosaics(tmp_path / "in", degrees)
    vols, quarantine = _assert_converts_as_dcm2niix(folder, tmp_path / "ref", n_outputs=n_outputs)
    assert not quarantine
    assert [v.shape for v in vols] == ([(72, 72, 5)] * 2 if n_outputs == 2 else [(72, 72, 5, 2)])
    if n_outputs == 2:
        assert all(any("the mosaics of the series are not parallel" in n for n in v.notes) for v in vols)
