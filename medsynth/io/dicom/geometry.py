"""Slice geometry and stacking: the ``Slice`` (one 2D image and where it lies), orientation checks, the
LPS affine and LPS -> RAS, the split of a series into same-geometry groups and the stacking of a group
into a 3D / 4D volume (ordered by position along the slice normal, the volumes at a position in
dcm2niix's file order, :func:`dcm2niix_order`; missing slices, uneven spacing and tilt are SeriesErrors)."""

from __future__ import annotations

import functools
import math
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medsynth.io.dicom.attributes import _private_int, atoi, manufacturer, siemens_xa
from medsynth.io.dicom.pixels import _check_finite
from medsynth.io.dicom_fast import FastHeader
from medsynth.io.quarantine import DEFAULT_MAX_VOXELS, SeriesError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
INT_MAX = 2147483647


def _uid_crc(ds: Dataset | FastHeader) -> int:
    """CRC-32 of the SOPInstanceUID text: dcm2niix's ``instanceUidCrc`` (mz_crc32X, the zlib CRC-32) of
    the file meta's MediaStorageSOPInstanceUID, which a valid file gives the same value."""
    return zlib.crc32(str(ds.get("SOPInstanceUID", "") or "").strip(" \x00").encode("ascii", "replace"))


def _ge_raw_run(ds: Dataset | FastHeader) -> int:
    """The GE raw data run number (0019,10A2) as dcm2niix keys a file by it (readDICOMx: read for a GE file
    only; in the key where above 0), else 0."""
    if isinstance(ds, FastHeader) and "ge_raw_data_run" not in ds.private:  # most files: no vendor test
        return 0
    if manufacturer(ds) != "GE":  # before the private creator's search, which reads every block of other vendors' files
        return 0
    run = _private_int(ds, 0x0019, "GEMS_ACQU_01", 0xA2)
    return run if run is not None and run > 0 else 0


def dcm2niix_order(ds: Dataset | FastHeader) -> tuple[int, int, int]:
    """Where a file comes among the files of one output in dcm2niix's order (nii_dicom_batch.cpp
    ``fillTDCMsort`` / ``compareTDCMsort``): by ``(SeriesNumber << 32) + image number`` as one unsigned
    64-bit number, then, for files that tie, by the GE raw data run number (0019,10A2) where above 0
    (:func:`_ge_raw_run`), then by the CRC-32 of the SOPInstanceUID. The image number is the InstanceNumber
    (0020,0013); without one, that CRC as a positive int (readDICOMx); in an early Siemens XA dynamic
    series (SequenceName with 'fldyn3d1', isXA10A) plus 1000 x AcquisitionNumber (issue 689). Of the
    ``dimensionIndexValues`` dcm2niix gives a classic file, the echo number and series UID CRC after the
    CRC do not differ within an output (:func:`dcm2niix_sort_key` holds them all). Neither
    AcquisitionNumber nor AcquisitionTime orders files otherwise: where they disagree with the instance
    numbers, dcm2niix follows the instance numbers and warns ("Images sorted by instance number ...
    AcquisitionTime suggests a different order")."""
    crc = _uid_crc(ds)
    if "InstanceNumber" in ds:
        image = atoi(ds.get("InstanceNumber"))
    else:
        image = abs(crc - (1 << 32) if crc >= 1 << 31 else crc) % INT_MAX or 1
    if "fldyn3d1" in str(ds.get("SequenceName", "") or "") and siemens_xa(ds)[0]:  # an early XA file is Siemens (vendor)
        image += atoi(ds.get("AcquisitionNumber")) * 1000
    return (((atoi(ds.get("SeriesNumber")) << 32) + image) % (1 << 64), _ge_raw_run(ds), crc)


def _last_dimension_index(ds: Dataset | FastHeader) -> list[int]:
    """The first five dimensionIndexValues readDICOMx leaves an enhanced object: each DimensionIndexValues
    (0020,9157) read, in file order (the shared functional group's, then each frame's), overwrites as many
    values as it holds; zeros for a classic file."""
    values = [0] * 5
    for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in ds.get(seq) or ():
            for content in group.get("FrameContentSequence") or ():
                div = content.get("DimensionIndexValues")
                if div is None:
                    continue
                div = [div] if isinstance(div, int) else list(div)
                values[:min(len(div), 5)] = [int(v) for v in div[:5]]
    return values


def dcm2niix_sort_key(ds: Dataset | FastHeader) -> tuple:
    """dcm2niix's whole sort key of a file (``fillTDCMsort``): ``(SeriesNumber << 32) + image number``
    (:func:`dcm2niix_order`), then the dimensionIndexValues readDICOMx leaves it (nii_dicom.cpp, the end of
    readDICOMx): an enhanced object's last DimensionIndexValues (:func:`_last_dimension_index`; a vendor whose
    objects dcm2niix writes on their own keeps more of them, but such an object is never stacked with another
    file), the GE raw data run number in the fifth where above 0, the SOPInstanceUID CRC in the sixth and the
    SeriesInstanceUID (its CRC in dcm2niix, which only breaks ties of otherwise equal keys) in the eighth. The
    echo number in the seventh is left out: files of different echo numbers are never in one output. Two files
    of one output with equal keys are duplicates: dcm2niix keeps one (``removeDuplicates``)."""
    image, run, crc = dcm2niix_order(ds)
    dims = _last_dimension_index(ds) if "PerFrameFunctionalGroupsSequence" in ds else [0] * 5
    if run > 0:
        dims[4] = run
    return (image, *dims, crc, str(ds.get("SeriesInstanceUID", "") or "").strip(" \x00"))


@dataclass
class Slice:
    """One 2D image with its geometry: a classic single-frame file or one frame of a multi-frame file."""

    path: Path
    frame: int | None
    iop: np.ndarray  # 6 direction cosines (row, column) in LPS
    ipp: np.ndarray  # 3 position of the first voxel in LPS (mm)
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    rows: int
    cols: int
    slope: float
    intercept: float
    split_key: tuple = ()
    time_key: tuple = ()  # the file order of a series (:func:`dcm2niix_order` for a classic file)
    file_key: tuple = ()  # dcm2niix's sort key of the file (:func:`dcm2niix_sort_key`): equal in two files of one output, duplicates
    volume_number: int = -1  # TemporalPositionIdentifier (0020,0100) of a classic file, -1 without one
    loader: Callable[[], np.ndarray] | None = None
    diffusion: tuple[float, tuple[float, ...]] | None = None  # (b value, gradient direction), Philips

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.iop[:3], self.iop[3:])

    def pixels(self) -> np.ndarray:
        assert self.loader is not None
        arr = self.loader()
        if arr.shape != (self.rows, self.cols):
            raise SeriesError(f"{self.path.name}: pixel array {arr.shape} != Rows x Columns {(self.rows, self.cols)}")
        return arr.astype(np.float64) * self.slope + self.intercept


def _floats(value, n: int, what: str, path: Path) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise SeriesError(f"{what} is missing or not numeric") from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise SeriesError(f"{what} must have {n} finite values, got {value!r}")
    return arr


def _norm_iop(iop: np.ndarray) -> np.ndarray:
    """Unit row and column cosines (read-only; the same orientation is computed once per process)."""
    return _norm_iop_of(tuple(float(v) for v in iop))


@functools.lru_cache(maxsize=1024)
def _norm_iop_of(values: tuple[float, ...]) -> np.ndarray:
    iop = np.array(values)
    r, c = iop[:3], iop[3:]
    if np.linalg.norm(r) < 1e-3 or np.linalg.norm(c) < 1e-3:
        raise SeriesError("ImageOrientationPatient has a zero direction vector")
    r = r / np.linalg.norm(r)
    c = c / np.linalg.norm(c)
    if abs(float(np.dot(r, c))) > 1e-2:
        raise SeriesError("ImageOrientationPatient row and column directions are not orthogonal")
    out = np.concatenate([r, c])
    out.flags.writeable = False
    return out


def lps_affine(iop: np.ndarray, pixel_spacing, slice_step: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Voxel (column, row, slice) -> LPS mm: columns along the row cosines by the column spacing, rows
    along the column cosines by the row spacing, slices by ``slice_step``, voxel 0 at ``origin``."""
    aff = np.eye(4)
    aff[:3, 0] = np.asarray(iop[:3]) * pixel_spacing[1]
    aff[:3, 1] = np.asarray(iop[3:]) * pixel_spacing[0]
    aff[:3, 2] = slice_step
    aff[:3, 3] = origin
    return aff


def _orientation_key(iop: np.ndarray) -> tuple:
    return tuple(np.round(iop, 3))


def split_slices(slices: list[Slice]) -> dict[tuple, list[Slice]]:
    """Split one series into groups that can form one volume each."""
    groups: dict[tuple, list[Slice]] = defaultdict(list)
    for s in slices:
        groups[(_orientation_key(s.iop), s.rows, s.cols, s.split_key)].append(s)
    return dict(groups)


def _cluster_positions(d: np.ndarray, tol: float) -> list[np.ndarray]:
    order = np.argsort(d, kind="stable")
    clusters: list[list[int]] = []
    last = None
    for idx in order:
        if last is None or d[idx] - last > tol:
            clusters.append([idx])
        else:
            clusters[-1].append(idx)
        last = d[idx]
    return [np.array(c) for c in clusters]


def _median(values: np.ndarray) -> float:
    """``np.median`` of finite values, without the import of numpy.ma that np.median makes (its NaN check)."""
    ordered = np.sort(values)
    mid = len(ordered) // 2
    return float(ordered[mid]) if len(ordered) % 2 else float((ordered[mid - 1] + ordered[mid]) / 2)


SLICE_TOLERANCE_MM = 0.2  # dcm2niix's kSliceTolerance


def _volume_key(slices: list[Slice], d: np.ndarray, n_pos: int) -> Callable[[int], tuple]:
    """The key ordering the images at one position into the volumes of a 4D series as dcm2niix does: the
    order of the files (``time_key``; dcm2niix takes consecutive runs of ``n_pos`` files as the volumes).
    Where that order does not run through each volume's slices at one step (``ensureSequentialSlicePositions``:
    the step between the first two slices of each run repeated within ``SLICE_TOLERANCE_MM``; only for runs
    of 3 slices or more, the first two files at different positions), dcm2niix re-sorts by volume number,
    then position, then file order; here the volume number is the TemporalPositionIdentifier, and the
    re-sort applies where it varies (dcm2niix keeps the file order where its volume number does not)."""
    order = sorted(range(len(slices)), key=lambda i: slices[i].time_key)
    rank = {i: r for r, i in enumerate(order)}
    along = d[order]
    n_t = len(slices) // n_pos
    resort = n_pos >= 3 and n_t > 1 and abs(along[1] - along[0]) > 1e-6 and len({s.volume_number for s in slices}) > 1
    if resort:
        runs = along.reshape(n_t, n_pos)
        steps = np.diff(runs, axis=1)
        resort = bool(np.any(np.abs(steps - steps[:, :1]) > SLICE_TOLERANCE_MM))
    if resort:
        return lambda i: (slices[i].volume_number, rank[i])
    return lambda i: (rank[i],)


def stack_slices(slices: list[Slice], *, spacing_rtol: float = 0.02, max_voxels: int = DEFAULT_MAX_VOXELS
                 ) -> tuple[np.ndarray, np.ndarray, list[str], list[Slice]]:
    """Stack same-geometry slices into (cols, rows, z[, t]) data and an RAS affine, with the notes and
    each volume's first slice; a SeriesError for a volume over ``max_voxels`` (before anything is
    decoded) or one holding NaN / Inf."""
    notes: list[str] = []
    ref = slices[0]
    normal = ref.normal
    d = np.array([float(np.dot(s.ipp, normal)) for s in slices])
    clusters = _cluster_positions(d, tol=1e-3 * max(1.0, min(ref.pixel_spacing)))
    n_pos = len(clusters)
    if n_pos < 2:
        if len(slices) == 1:
            raise SeriesError("single 2D image (one slice): not a volume")
        raise SeriesError(f"{len(slices)} images all at the same position: not a volume")
    counts = {len(c) for c in clusters}
    if len(counts) != 1:
        raise SeriesError(
            f"positions hold different numbers of images ({sorted(counts)}): incomplete time series or mixed series"
        )
    n_t = counts.pop()
    pos = np.array([d[c[0]] for c in clusters])
    gaps = np.diff(pos)
    med = _median(gaps)
    if np.any(gaps > 1.5 * med):
        k = int(np.argmax(gaps))
        missing = int(round(gaps[k] / med)) - 1
        raise SeriesError(
            f"missing slice(s): gap of {gaps[k]:.2f} mm after slice {k + 1} where {med:.2f} mm is expected "
            f"(about {missing} slice(s) missing)"
        )
    if np.max(np.abs(gaps - med)) > max(spacing_rtol * med, 1e-3):
        raise SeriesError(
            f"uneven slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm (tolerance {spacing_rtol:.0%})"
        )
    first = [slices[i] for i in clusters[0]]
    last = [slices[i] for i in clusters[-1]]
    step = (last[0].ipp - first[0].ipp) / (n_pos - 1)
    cosang = float(np.dot(step, normal) / (np.linalg.norm(step) + 1e-12))
    if cosang < 0.9999:
        angle = math.degrees(math.acos(min(1.0, cosang)))
        raise SeriesError(
            f"slices are sheared by {angle:.2f} degrees (gantry tilt or inconsistent positions): "
            "tilt correction is not supported; reconstruct without tilt or resample with dcm2niix"
        )
    volume_key = _volume_key(slices, d, n_pos)
    ordered = [[slices[i] for i in sorted(c, key=volume_key)] for c in clusters]
    rows, cols = ref.rows, ref.cols
    if cols * rows * n_pos * n_t > max_voxels:
        raise SeriesError(f"{cols} x {rows} x {n_pos} x {n_t} = {cols * rows * n_pos * n_t:,} voxels: over the limit of "
                          f"{max_voxels:,} voxels (data.max_voxels); not decoded")
    data = np.empty((cols, rows, n_pos, n_t), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is found and named just below
        for k, group in enumerate(ordered):
            for t, s in enumerate(group):
                data[:, :, k, t] = s.pixels().T
    _check_finite(data)
    aff = lps_affine(ref.iop, ref.pixel_spacing, step, first[0].ipp)
    if n_t == 1:
        data = data[..., 0]
    else:
        notes.append(f"4D series: {n_t} volumes")
    return data, LPS_TO_RAS @ aff, notes, ordered[0]
