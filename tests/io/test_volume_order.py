"""The order of the volumes of a 4D output, held to the dcm2niix wheel on rewritten shared series.

dcm2niix sorts the files of one output by series number, then instance number (nii_dicom_batch.cpp
``fillTDCMsort`` / ``compareTDCMsort``; ties by the CRC of the SOP instance UID; a file without an
InstanceNumber numbered by that CRC); AcquisitionNumber and AcquisitionTime do not order them (where they
disagree it warns "Images sorted by instance number ... AcquisitionTime suggests a different order").
The first file in that order gives a mosaic series its grid. Single-frame files are taken in that order
as runs of one volume each, unless that order does not run through each volume's slices at one step:
then by volume number (TemporalPositionIdentifier), position and that order
(``ensureSequentialSlicePositions``)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.conftest import shared
from tests.io.test_dcm2niix_splits import _rewritten
from tests.io.test_mosaic_positions import AXIAL, _dcm2niix_log, _normal, _oblique_series
from tests.io.test_vendor_formats import _assert_converts_as_dcm2niix, _volumes

# ----------------------------------------------------------------------------- Siemens mosaics


def _instance_reversed(files: list[pydicom.Dataset]) -> None:
    for i, ds in enumerate(files):
        ds.InstanceNumber = len(files) - i


def _no_instance(files: list[pydicom.Dataset]) -> None:
    for ds in files:
        del ds.InstanceNumber  # dcm2niix numbers each by its SOP instance UID's CRC: the second file's is lower


def _one_instance_number(files: list[pydicom.Dataset]) -> None:
    """Both mosaics instance 1, their SOP instance UIDs swapped: the CRC of the one the second file
    then has (881566881) is below the first file's (4259133258)."""
    uids = [ds.SOPInstanceUID for ds in files]
    for ds, uid in zip(files, reversed(uids), strict=True):
        ds.InstanceNumber = 1
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid


def _axial(dest: Path, change: Callable[[list[pydicom.Dataset]], None]) -> list[Path]:
    """The shared two-volume axial mosaic series (acquisition numbers and times 1, 2 in file order),
    ``change`` applied to its files; each file also alone in a folder of its own."""
    files = [pydicom.dcmread(p) for p in sorted(shared(*AXIAL).glob("*.dcm"))]
    change(files)
    (dest / "series").mkdir(parents=True)
    alone = []
    for i, ds in enumerate(files):
        ds.save_as(dest / "series" / f"{i + 1}.dcm", enforce_file_format=True)
        (dest / f"alone{i + 1}").mkdir()
        shutil.copy(dest / "series" / f"{i + 1}.dcm", dest / f"alone{i + 1}")
        alone.append(dest / f"alone{i + 1}")
    return alone


@pytest.mark.parametrize("change", [_instance_reversed, _no_instance, _one_instance_number],
                         ids=["instance-numbers-reversed", "no-instance-numbers", "one-instance-number"])
def test_mosaic_volumes_come_in_dcm2niix_file_order_not_acquisition_order(tmp_path, change):
    alone = _axial(tmp_path / "in", change)
    (vol,), quarantine = _assert_converts_as_dcm2niix(tmp_path / "in" / "series", tmp_path / "ref")
    assert not quarantine and vol.shape == (72, 72, 5, 2)
    (second,), _ = _volumes(alone[1])
    (first,), _ = _volumes(alone[0])
    assert not np.allclose(first.data, second.data)
    # the second acquired mosaic first: its number (or CRC) is the lower
    np.testing.assert_allclose(vol.data[..., 0], second.data, atol=1e-3)
    np.testing.assert_allclose(vol.data[..., 1], first.data, atol=1e-3)


def test_the_wheel_warns_where_instance_numbers_run_against_acquisition_time(tmp_path):
    _axial(tmp_path / "in", _instance_reversed)
    assert "AcquisitionTime [0008,0032] suggests a different order" in _dcm2niix_log(tmp_path / "in" / "series", tmp_path / "log")


def test_moved_mosaics_numbered_against_acquisition_are_written_on_the_first_numbered_grid(tmp_path):
    """Three oblique mosaics acquired 3 s apart at 2, 5 and 0.5 mm along the slice normal, numbered
    3, 2, 1: the grid is the last acquired one's (instance 1, at 0.5 mm)."""
    src = _oblique_series(tmp_path / "src", [2.0, 5.0, 0.5])
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = 4 - int(ds.AcquisitionNumber)
        ds.save_as(folder / path.name, enforce_file_format=True)
    (vol,), quarantine = _assert_converts_as_dcm2niix(folder, tmp_path / "ref")
    assert not quarantine and vol.shape == (64, 64, 35, 3)
    (plain,), _ = _volumes(_oblique_series(tmp_path / "plain", [0.0]))
    normal = _normal(pydicom.dcmread(next(src.glob("*.dcm")), stop_before_pixels=True))
    np.testing.assert_allclose(vol.affine[:3, 3], plain.affine[:3, 3] + np.diag([-1, -1, 1]) @ normal * 0.5, atol=1e-3)
    (note,) = [n for n in vol.notes if n.startswith("mosaic positions differ")]
    assert "2 of 3 volumes lie off the first volume's grid, up to 4.50 mm (volume 2: +4.50 mm along the slice normal)" in note


# ----------------------------------------------------------------------------- classic single-frame 4D (GE EPI)

PERM = [2, 0, 3, 1]  # the rank the changes below give volume t (in acquisition order) of the shared GE series
BY_PERM = [PERM.index(j) for j in range(4)]  # the acquired volume that comes j-th in that rank


def _slice(ds: pydicom.Dataset) -> int:
    return (int(ds.InstanceNumber) - 1) % 15  # the shared series numbers its 15 slices volume by volume


def _instances_against_time(ds: pydicom.Dataset, t: int) -> None:
    k = _slice(ds)
    ds.InstanceNumber = PERM[t] * 15 + k + 1
    ds.AcquisitionNumber, ds.AcquisitionTime = t + 1, f"{114815 + 2 * t:06d}"


def _time_against_instances(ds: pydicom.Dataset, t: int) -> None:
    ds.AcquisitionTime = f"{114815 + 2 * PERM[t]:06d}"


def _acquisition_number_against_instances(ds: pydicom.Dataset, t: int) -> None:
    ds.AcquisitionNumber = PERM[t] + 1


def _temporal_position_against_instances(ds: pydicom.Dataset, t: int) -> None:
    ds.TemporalPositionIdentifier = PERM[t] + 1


def _instances_by_position(ds: pydicom.Dataset, t: int) -> None:
    """Numbered position by position (every volume's slice 1, then slice 2 ...), acquired last to first."""
    k = _slice(ds)
    ds.InstanceNumber = k * 4 + t + 1
    ds.AcquisitionTime = f"{114815 + 2 * (3 - t):06d}"


def _instances_interleaved_temporal_position(ds: pydicom.Dataset, t: int) -> None:
    """Each volume's slices numbered in interleaved order (positions 1, 3, ..., then 2, 4, ...), its volume number
    (TemporalPositionIdentifier) against the instance numbers, the GE raw data run number removed."""
    k = _slice(ds)
    ds.InstanceNumber = t * 15 + (k // 2 if k % 2 == 0 else 8 + k // 2) + 1
    ds.TemporalPositionIdentifier = PERM[t] + 1
    del ds[0x001910A2]


@pytest.mark.parametrize(("change", "order"), [
    (_instances_against_time, BY_PERM),
    (_time_against_instances, [0, 1, 2, 3]),
    (_acquisition_number_against_instances, [0, 1, 2, 3]),
    (_temporal_position_against_instances, [0, 1, 2, 3]),
    (_instances_by_position, [0, 1, 2, 3]),
    (_instances_interleaved_temporal_position, BY_PERM),
], ids=["instances-against-time", "time-against-instances", "acquisition-number-against-instances",
        "temporal-position-against-instances", "instances-by-position", "interleaved-instances-temporal-position"])
def test_classic_4d_volumes_come_in_dcm2niix_order(tmp_path, change, order):
    folder = _rewritten(tmp_path / "in", change)
    (vol,), quarantine = _assert_converts_as_dcm2niix(folder, tmp_path / "ref")
    assert not quarantine and vol.shape == (64, 64, 15, 4)
    (plain,), _ = _volumes(_rewritten(tmp_path / "plain", lambda ds, t: None))
    for j, t in enumerate(order):
        np.testing.assert_allclose(vol.data[..., j], plain.data[..., t], atol=1e-3, err_msg=f"volume {j} should be acquired volume {t}")
    np.testing.assert_allclose(vol.affine, plain.affine, atol=1e-6)


def test_the_rewrite_keeps_each_volume_at_every_position(tmp_path):
    folder = _rewritten(tmp_path / "in", _instances_interleaved_temporal_position)
    files = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    assert sorted(int(ds.InstanceNumber) for ds in files) == list(range(1, 61))
    by_volume = {v: sorted(float(ds.SliceLocation) for ds in files if int(ds.TemporalPositionIdentifier) == v) for v in range(1, 5)}
    assert all(len(locs) == 15 and locs == by_volume[1] for locs in by_volume.values())
    assert all(0x001910A2 not in ds for ds in files)
