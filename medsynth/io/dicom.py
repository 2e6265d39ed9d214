"""DICOM series -> volume + RAS affine.

Geometry rules (see docs/architecture.md, "DICOM geometry"):

* slices are ordered by ImagePositionPatient projected on the slice normal
  (``cross(row_cosines, column_cosines)``), never by InstanceNumber;
* the affine comes from ImageOrientationPatient, ImagePositionPatient and PixelSpacing, converted
  from DICOM's LPS patient space to RAS;
* RescaleSlope / RescaleIntercept are applied per slice (per frame for enhanced objects);
* enhanced multi-frame objects are read frame by frame from their functional groups;
* Siemens mosaics (with or without the CSA header) and UIH grids are unpacked by dcm2niix's rules;
* one SeriesInstanceUID is split when it holds several orientations, image sizes, echoes or
  magnitude/phase images;
* repeated positions with the same count per position make a 4D (time) series;
* missing slices, uneven spacing, gantry tilt, single 2D images, objects without pixel data, empty
  images, NaN / Inf after rescaling and sizes over ``max_voxels`` (declared sizes, checked before
  decoding or inflating) are reported with a reason and never stop the batch.
"""

from __future__ import annotations

import functools
import math
import struct
import warnings
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medsynth.io.dicom_fast import PRIVATE as _FAST_PRIVATE
from medsynth.io.dicom_fast import FastHeader, is_not_dicom, read_image_header, stored_values
from medsynth.io.pool import process_pool
from medsynth.io.quarantine import DEFAULT_MAX_VOXELS, QuarantineEntry, SeriesError, error_text, max_decoded_bytes

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["DEFAULT_MAX_VOXELS", "QuarantineEntry", "SeriesError", "error_text", "max_decoded_bytes"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
PARALLEL_SCAN_FILES = 64  # fewer files are classified in this process: a pool costs more than it saves
NOT_DICOM = "not a DICOM file (no DICM preamble and no DICOM image attributes)"
NIFTI_SUFFIXES = (".nii", ".nii.gz")


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
    time_key: tuple = ()
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


@dataclass
class DicomVolume:
    """A converted series. ``data`` axes map to RAS mm through ``affine`` (3D or 4D)."""

    data: np.ndarray
    affine: np.ndarray
    header: Dataset  # header (no pixels) of a representative file
    files: list[Path]
    split_suffix: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def modality(self) -> str:
        return str(self.header.get("Modality", "OT"))

    @property
    def series_uid(self) -> str:
        return str(self.header.get("SeriesInstanceUID", ""))

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(x) for x in np.linalg.norm(self.affine[:3, :3], axis=0))


# --------------------------------------------------------------------------- file discovery


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def discover_files(root: Path) -> list[Path]:
    """Every regular file under ``root`` (recursively), sorted, hidden files skipped."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _deflated_size_problem(path: Path, max_voxels: int) -> str | None:
    """For a Deflated Explicit VR Little Endian file (which pydicom inflates whole, header reads too):
    the reason when it inflates past :func:`max_decoded_bytes`, counted in a stream; else None."""
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_preamble

    limit = max_decoded_bytes(max_voxels)
    with open(path, "rb") as fh:
        if pydicom.uid.DeflatedExplicitVRLittleEndian.encode() not in fh.read(4096):
            return None
        fh.seek(0)
        try:
            read_preamble(fh, force=True)
            if _read_file_meta_info(fh).get("TransferSyntaxUID") != pydicom.uid.DeflatedExplicitVRLittleEndian:
                return None
        except Exception:
            return None  # the readers name what is wrong with the header
        z = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        try:
            while chunk := fh.read(1 << 20):
                while chunk:
                    total += len(z.decompress(chunk, 1 << 20))
                    if total > limit:
                        return (f"deflated data set inflates to more than {limit:,} bytes (from {path.stat().st_size:,}): over the "
                                f"limit of {max_voxels:,} voxels (data.max_voxels); not decoded")
                    chunk = z.unconsumed_tail
        except zlib.error as exc:
            return f"deflated data set is corrupt: {error_text(exc)}"
    return None


def _check_file(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> None:
    """A SeriesError with the reason for a file that is unreadable, empty or a deflate bomb."""
    try:
        size = path.stat().st_size
        problem = "empty file (0 bytes)" if size == 0 else _deflated_size_problem(path, max_voxels)
    except OSError as exc:
        raise SeriesError(f"cannot read file: {exc.strerror or type(exc).__name__}") from None
    if problem:
        raise SeriesError(problem)


def read_header(path: Path) -> Dataset:
    """Read a DICOM header without pixels. Raises SeriesError with the reason if it is not usable."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            raise SeriesError("not a DICOM file") from None
        if "SOPClassUID" not in ds or ("Rows" not in ds and "Modality" not in ds):
            raise SeriesError("not a DICOM file (no DICM preamble and no DICOM image attributes)") from None
    except Exception as exc:  # truncated header, bad VR...
        raise SeriesError(f"unreadable DICOM header (truncated or corrupt): {type(exc).__name__}") from None
    return ds


def read_dataset(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> Dataset:
    """Read a whole file once (header and raw pixel bytes, not decoded).

    The fast path is one ``dcmread``; only when it fails is the file read again to give the precise
    reason (empty, not DICOM, unreadable header, truncated pixel data) as a SeriesError.
    """
    _check_file(path, max_voxels)
    try:
        ds = read_full_dataset(path)
        if "SOPClassUID" in ds and ("Rows" in ds or "Modality" in ds):
            return ds
    except SeriesError:
        pass
    read_header(path)  # raises with the reason when the header itself is the problem
    return read_full_dataset(path)  # a file without preamble (read with force), or truncated pixel data


def read_image_dataset(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> Dataset:
    """:func:`read_dataset`, and a SeriesError with the reason unless the file holds complete pixel data
    of at most ``max_voxels`` voxels (Rows x Columns x NumberOfFrames, checked before anything is decoded)."""
    ds = read_dataset(path, max_voxels)
    problem = dataset_pixel_problem(ds, ds, max_voxels)
    if problem:
        raise SeriesError(problem)
    return ds


def read_full_dataset(path: Path) -> Dataset:
    """Read a whole file, pixel data included; a failure becomes a SeriesError with the reason."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)  # force: PACS exports without the 128-byte preamble
            for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
                if t in ds:
                    ds[t].value  # noqa: B018 -- parse now, so truncation shows here
    except OSError as exc:
        raise SeriesError(f"cannot read file: {exc.strerror or type(exc).__name__}") from None
    except Exception as exc:
        raise SeriesError(f"truncated or corrupt file: {type(exc).__name__}") from None
    return ds


def dataset_pixel_problem(ds: Dataset, header: Dataset, max_voxels: int = DEFAULT_MAX_VOXELS) -> str | None:
    """None when a fully read dataset holds complete pixel data of a declared size (Rows x Columns x
    NumberOfFrames) above zero and within ``max_voxels``, else the reason."""
    elem = next((ds[t] for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if t in ds), None)
    if elem is None:
        kind = getattr(header.get("SOPClassUID"), "name", "") or "unknown SOP class"
        return f"DICOM object without pixel data ({kind})"
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except (TypeError, ValueError):
        return "Rows, Columns, NumberOfFrames or BitsAllocated is not a number"
    if rows <= 0 or cols <= 0:
        return f"Rows x Columns is {rows} x {cols}: no pixels"
    if rows * cols * frames > max_voxels:
        size = rows * cols * frames * int(ds.get("SamplesPerPixel", 1) or 1) * bits // 8
        return (f"declared size {rows} x {cols} x {frames} frame(s) = {rows * cols * frames:,} voxels ({size:,} bytes decoded, "
                f"{bits} bits allocated): over the limit of {max_voxels:,} voxels (data.max_voxels); not decoded")
    value = elem.value
    if value is None or len(value) == 0:
        return "pixel data element is empty (truncated file)"
    from pydicom.uid import ExplicitVRLittleEndian

    if not ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian).is_compressed and elem.tag == 0x7FE00010:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        need = int(ds.get("Rows", 0)) * int(ds.get("Columns", 0)) * frames * int(ds.get("SamplesPerPixel", 1)) * int(ds.get("BitsAllocated", 16)) // 8
        if len(value) < need:
            return f"truncated pixel data: {len(value)} of {need} bytes"
    return None


# --------------------------------------------------------------------------- slices from files


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


def _image_type(ds: Dataset) -> tuple[str, ...]:
    it = ds.get("ImageType")
    if it is None:
        return ()
    if isinstance(it, str):
        return tuple(x.upper() for x in it.split("\\"))
    return tuple(str(x).upper() for x in it)


def philips_scale_slope(item: Dataset | FastHeader | None) -> float | None:
    """Philips 'MR Scale Slope' (2005,xx0E in the 'Philips MR Imaging DD 001' block), or None."""
    if item is None:
        return None
    values = _private_numbers(item, 0x2005, "PHILIPS MR IMAGING DD 001", 0x0E, "f")
    try:
        value = float(values[0]) if values else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) and value != 0 else None


def philips_float_scaling(slope: float, intercept: float, scale_slope: float | None) -> tuple[float, float]:
    """Philips 'floating point' values: FP = (SV * RS + RI) / (RS * SS), as dcm2niix writes them."""
    if scale_slope is None or slope == 0:
        return slope, intercept
    return 1.0 / scale_slope, intercept / (slope * scale_slope)


DERIVED_DIFFUSION = ("ADC", "TRACEW", "TRACE", "FA")


def is_derived(ds: Dataset | FastHeader) -> bool:
    """A derived image (ImageType DERIVED, or an inner ADC / TRACEW / TRACE / FA value): dcm2niix never
    stacks it with the acquired images of its series, and neither does medsynth."""
    joined = "_".join(_image_type(ds))
    return "DERIVED" in joined or any(f"_{t}_" in joined for t in DERIVED_DIFFUSION)


def _is_phase(ds: Dataset) -> bool:
    it = _image_type(ds)
    return "P" in it or "PHASE" in it


class _FrameCache:
    """Decode a multi-frame object's pixel data once and hand out frames."""

    def __init__(self, path: Path, ds: Dataset | None = None):
        self.path = path
        self.ds = ds
        self._arr: np.ndarray | None = None

    def frame(self, i: int) -> np.ndarray:
        if self._arr is None:
            self._arr = decode_pixels(self.path, self.ds)
            self.ds = None
            if self._arr.ndim == 2:
                self._arr = self._arr[None]
        return self._arr[i]


_RAW_LITTLE_ENDIAN = {
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian (the dataset is inflated on reading)
}


def raw_little_endian_pixels(ds: Dataset) -> np.ndarray | None:
    """Uncompressed little-endian grey-level pixel data as an array, read straight from the bytes (what
    most CT/MR files hold; pydicom's general path spends more time collecting attributes than copying).
    Bits above BitsStored are masked (unsigned) or sign-extended (signed), as pydicom does. None for
    anything else (compressed, colour, big endian, odd bit depths): the caller uses pydicom."""
    ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    if ts not in _RAW_LITTLE_ENDIAN or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return None
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if bits not in (8, 16, 32):
        return None
    rows, cols, frames = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames", 1) or 1)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    raw = ds.PixelData
    if len(raw) < rows * cols * frames * bits // 8:
        return None  # let pydicom name the problem
    return stored_values(raw, rows, cols, frames, bits, int(ds.get("BitsStored", bits) or bits), signed)


def decode_pixels(path: Path, ds: Dataset | None = None) -> np.ndarray:
    """Decode a file's pixel data (from ``ds`` when it was read with its pixels already); any failure
    becomes a SeriesError with the reason."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ds is None or "PixelData" not in ds:
                ds = pydicom.dcmread(path)
            fast = raw_little_endian_pixels(ds)
            return fast if fast is not None else ds.pixel_array
    except Exception as exc:
        msg = error_text(exc)
        if "truncat" in msg.lower() or "buffer" in msg.lower() or "length" in msg.lower() or "expected" in msg.lower():
            raise SeriesError(f"truncated or corrupt pixel data: {msg}") from None
        raise SeriesError(f"pixel data cannot be decoded: {msg}") from None


def classic_slice(path: Path, ds: Dataset | FastHeader) -> Slice:
    """One single-frame image file -> Slice (geometry from its top-level attributes); ``ds`` is the
    file read by pydicom or by the fast reader (which answer alike)."""
    if "VFRAME" in _image_type(ds):
        raise SeriesError("UIH grid image (ImageType VFRAME) without its grid tags (0065,1050) and (0065,1051): removed by "
                          "de-identification? keep them with deid.retain_safe_private: true")
    iop = _norm_iop(_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", path))
    ipp = _floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", path)
    ps = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    ps = _floats(ps, 2, "PixelSpacing", path)
    if np.any(ps <= 0):
        raise SeriesError(f"PixelSpacing must be positive, got {list(ps)}")
    echo = ds.get("EchoNumbers", None)
    time_key = (
        int(ds.get("TemporalPositionIdentifier", 0) or 0),
        int(ds.get("AcquisitionNumber", 0) or 0),
        str(ds.get("AcquisitionTime", "")),
        str(ds.get("TriggerTime", "")),
        int(ds.get("InstanceNumber", 0) or 0),
    )

    def load() -> np.ndarray:
        arr = ds.pixel_array() if isinstance(ds, FastHeader) else decode_pixels(path, ds)
        if arr.ndim != 2:
            raise SeriesError(f"expected a 2D image, pixel array has shape {arr.shape}")
        return arr

    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    diffusion = None
    if "PHILIPS" in str(ds.get("Manufacturer", "")).upper():
        slope, intercept = philips_float_scaling(slope, intercept, philips_scale_slope(ds))
        diffusion = philips_diffusion(ds)
    _check_rescale(slope, intercept)
    return Slice(
        path=path,
        frame=None,
        iop=iop,
        ipp=ipp,
        pixel_spacing=(float(ps[0]), float(ps[1])),
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        slope=slope,
        intercept=intercept,
        split_key=(str(echo) if echo is not None else "", "ph" if _is_phase(ds) else "", "derived" if is_derived(ds) else ""),
        time_key=time_key,
        loader=load,
        diffusion=diffusion,
    )


def _check_rescale(slope: float, intercept: float, where: str = "") -> None:
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise SeriesError(f"{where}RescaleSlope {slope:g} / RescaleIntercept {intercept:g}: not finite")


def _check_finite(data: np.ndarray) -> None:
    """A SeriesError when the volume holds NaN or Inf (a float64 sum of float32 data cannot overflow)."""
    if not math.isfinite(float(data.sum(dtype=np.float64))):
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        raise SeriesError(f"{bad} NaN/Inf voxel(s) after RescaleSlope / RescaleIntercept (overflow or non-finite pixel values)")


def _fg_item(per_frame: Dataset, shared: Dataset | None, seq: str) -> Dataset | None:
    for group in (per_frame, shared):
        if group is not None and seq in group and len(group[seq].value):
            return group[seq].value[0]
    return None


def enhanced_slices(path: Path, ds: Dataset) -> list[Slice]:
    """Enhanced (multi-frame) object -> one Slice per frame, geometry from the functional groups."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame_seq = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame_seq is None or len(per_frame_seq) != n:
        raise SeriesError("multi-frame object without per-frame functional groups: geometry unknown")
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    cache = _FrameCache(path, ds)
    is_philips = "PHILIPS" in str(ds.get("Manufacturer", "")).upper()
    slices = []
    for i, pf in enumerate(per_frame_seq):
        pos = _fg_item(pf, shared, "PlanePositionSequence")
        ori = _fg_item(pf, shared, "PlaneOrientationSequence")
        meas = _fg_item(pf, shared, "PixelMeasuresSequence")
        if pos is None or ori is None or meas is None:
            raise SeriesError(f"frame {i + 1}: plane position, orientation or pixel measures missing")
        iop = _norm_iop(_floats(ori.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", path))
        ipp = _floats(pos.get("ImagePositionPatient"), 3, "ImagePositionPatient", path)
        ps = _floats(meas.get("PixelSpacing"), 2, "PixelSpacing", path)
        pvt = _fg_item(pf, shared, "PixelValueTransformationSequence")
        slope = float(pvt.get("RescaleSlope", 1.0)) if pvt is not None else float(ds.get("RescaleSlope", 1.0) or 1.0)
        inter = float(pvt.get("RescaleIntercept", 0.0)) if pvt is not None else float(ds.get("RescaleIntercept", 0.0) or 0.0)
        if is_philips:
            priv = pf.get((0x2005, 0x140F))
            item = priv.value[0] if priv is not None and priv.VR == "SQ" and len(priv.value) else None
            slope, inter = philips_float_scaling(slope, inter, philips_scale_slope(item))
        _check_rescale(slope, inter, f"frame {i + 1}: ")
        content = _fg_item(pf, None, "FrameContentSequence")
        echo_item = _fg_item(pf, shared, "MREchoSequence")
        echo = f"{float(echo_item.get('EffectiveEchoTime', 0)):.3f}" if echo_item is not None else ""
        ftype_item = _fg_item(pf, shared, "MRImageFrameTypeSequence") or _fg_item(pf, shared, "CTImageFrameTypeSequence")
        ftype = ""
        if ftype_item is not None:
            ftype = "\\".join(str(x) for x in (ftype_item.get("FrameType") or []))
            ftype += "|" + str(ftype_item.get("ComplexImageComponent", ""))
        stack = str(content.get("StackID", "")) if content is not None else ""
        temporal = int(content.get("TemporalPositionIndex", 0) or 0) if content is not None else 0
        t_time = str(content.get("FrameAcquisitionDateTime", "")) if content is not None else ""
        slices.append(
            Slice(
                path=path,
                frame=i,
                iop=iop,
                ipp=ipp,
                pixel_spacing=(float(ps[0]), float(ps[1])),
                rows=int(ds.Rows),
                cols=int(ds.Columns),
                slope=slope,
                intercept=inter,
                split_key=(echo, ftype, stack),
                time_key=(temporal, t_time, i),
                loader=(lambda i=i: cache.frame(i)),
            )
        )
    return slices


def is_enhanced(ds: Dataset) -> bool:
    return int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds


def is_mosaic(ds: Dataset) -> bool:
    return "MOSAIC" in _image_type(ds) or is_uih_grid(ds)


UIH_SLICES_IN_GRID = (0x0065, 0x1050)  # DS "MR Number Of Slice In Volume"
UIH_VFRAME_SEQUENCE = (0x0065, 0x1051)  # one item per slice: ImagePositionPatient, AcquisitionTime ...


def is_uih_grid(ds: Dataset | FastHeader) -> bool:
    """A United Imaging (UIH) grid: one volume's slices tiled in one image ("VFRAME")."""
    if isinstance(ds, FastHeader):
        return False  # the fast reader leaves grids to pydicom
    return str(ds.get("Manufacturer", "")).upper().startswith("UI") and UIH_SLICES_IN_GRID in ds


# --------------------------------------------------------------------------- stacking


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


def lps_affine(iop: np.ndarray, pixel_spacing, slice_step: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Voxel (column, row, slice) -> LPS mm: columns along the row cosines by the column spacing, rows
    along the column cosines by the row spacing, slices by ``slice_step``, voxel 0 at ``origin``."""
    aff = np.eye(4)
    aff[:3, 0] = np.asarray(iop[:3]) * pixel_spacing[1]
    aff[:3, 1] = np.asarray(iop[3:]) * pixel_spacing[0]
    aff[:3, 2] = slice_step
    aff[:3, 3] = origin
    return aff


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
    med = float(np.median(gaps))
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
    # order within each position by acquisition time keys (4D)
    ordered: list[list[Slice]] = []
    for c in clusters:
        group = sorted((slices[i] for i in c), key=lambda s: s.time_key)
        ordered.append(group)
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


def _mosaic_volume(files: list[tuple[Path, Dataset | FastHeader]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The files of one series that each hold a volume's slices tiled in one image (Siemens mosaics,
    UIH grids) -> 3D, or 4D ordered by acquisition, data and RAS affine."""
    vols, affs, keys = [], [], []
    notes: list[str] = []
    for path, ds in files:
        try:
            pixels = ds.pixel_array() if isinstance(ds, FastHeader) else decode_pixels(path, ds)
            arr, aff, note = uih_grid(ds, pixels) if is_uih_grid(ds) else siemens_mosaic(ds, pixels)
        except SeriesError:
            raise
        except Exception as exc:
            raise SeriesError(f"tiled image (mosaic / grid) cannot be unpacked: {str(exc)[:120]}") from None
        if note and note not in notes:
            notes.append(note)
        vols.append(arr)
        affs.append(aff)
        keys.append((int(ds.get("AcquisitionNumber", 0) or 0), str(ds.get("AcquisitionTime", "")), int(ds.get("InstanceNumber", 0) or 0)))
    for a in affs[1:]:
        if not np.allclose(a, affs[0], atol=1e-3):
            raise SeriesError("mosaic volumes in one series have different geometry")
    order = sorted(range(len(vols)), key=lambda i: keys[i])
    data = np.stack([vols[i] for i in order], axis=-1) if len(vols) > 1 else vols[0]
    _check_finite(data)
    kind = "UIH grid" if any(n.startswith("UIH grid") for n in notes) else "Siemens mosaic"
    return data, LPS_TO_RAS @ affs[0], [f"{kind} ({len(vols)} volume(s))", *[n for n in notes if not n.startswith("UIH grid")]]


def _untile(ds: Dataset | FastHeader, pixels: np.ndarray, n: int, n_col: int, n_row: int) -> np.ndarray:
    """The first ``n`` tiles of an ``n_row`` x ``n_col`` grid, read row by row, rescaled, as
    (cols, rows, n) data."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    tile_r, tile_c = rows // n_row, cols // n_col
    if tile_r < 2 or tile_c < 2 or n > n_row * n_col:
        raise SeriesError(f"tiled image: {n} slices in a {n_row} x {n_col} grid of a {rows} x {cols} image leave tiles of "
                          f"{tile_r} x {tile_c} pixels: the slice count is wrong")
    pixels = pixels.astype(np.float64)
    if pixels.shape != (rows, cols):
        raise SeriesError(f"tiled image: pixel array {pixels.shape} != Rows x Columns {(rows, cols)}")
    slope, intercept = float(ds.get("RescaleSlope", 1.0) or 1.0), float(ds.get("RescaleIntercept", 0.0) or 0.0)
    _check_rescale(slope, intercept)
    data = np.empty((tile_c, tile_r, n), dtype=np.float32)
    for k in range(n):
        r0, c0 = (k // n_col) * tile_r, (k % n_col) * tile_c
        data[:, :, k] = (pixels[r0:r0 + tile_r, c0:c0 + tile_c] * slope + intercept).T
    return data


def _slice_spacing(ds: Dataset) -> float:
    return float(ds.get("SpacingBetweenSlices", 0) or 0) or float(ds.get("SliceThickness", 0) or 0)


def uih_grid(ds: Dataset, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """A UIH grid ("VFRAME": n slices tiled ceil(sqrt(n)) wide, ceil(n / cols) high, row by row) ->
    (cols, rows, n) data, LPS affine and a note. The slice positions are the ImagePositionPatient of the
    VFrame sequence's items (0065,1051) when the file has no top-level one; the slice spacing is
    SpacingBetweenSlices (else SliceThickness), its direction the one the first and last positions
    show (dcm2niix's rules)."""
    try:
        n = int(round(float(ds[UIH_SLICES_IN_GRID].value if not isinstance(ds[UIH_SLICES_IN_GRID].value, bytes)
                            else ds[UIH_SLICES_IN_GRID].value.decode("latin-1").strip("\x00 "))))
    except (TypeError, ValueError):
        raise SeriesError("UIH grid: MR Number Of Slice In Volume (0065,1050) is not a number") from None
    if n < 1:
        raise SeriesError(f"UIH grid: MR Number Of Slice In Volume (0065,1050) is {n}")
    n_col = math.ceil(math.sqrt(n))
    n_row = math.ceil(n / n_col)
    positions = _uih_positions(ds)
    if not positions:
        raise SeriesError("UIH grid without any ImagePositionPatient (top level or VFrame sequence 0065,1051): slice positions unknown")
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        items = _uih_items(ds)
        iop = next((it.get("ImageOrientationPatient") for it in items if "ImageOrientationPatient" in it), None)
    iop = _norm_iop(_floats(iop, 6, "ImageOrientationPatient", Path(".")))
    ps = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing", Path("."))
    normal = np.cross(iop[:3], iop[3:])
    dz = _slice_spacing(ds)
    first, last = positions[0], positions[-1]
    along = float(np.dot(last - first, normal))
    if dz <= 0:
        if len(positions) < 2 or abs(along) < 1e-6:
            raise SeriesError("UIH grid: neither SpacingBetweenSlices, SliceThickness nor two slice positions give the slice spacing")
        dz = abs(along) / (len(positions) - 1)
    sign = (1.0 if along > 0 else -1.0) if len(positions) > 1 and abs(along) > 1e-6 else (1.0 if normal.sum() >= 0 else -1.0)
    if len(positions) >= n > 1:
        _check_grid_positions(positions[-n:], normal * sign, dz)
    aff = lps_affine(iop, ps, normal * sign * dz, first)
    return _untile(ds, pixels, n, n_col, n_row), aff, f"UIH grid: {n} slices in {n_row} x {n_col} tiles"


def _check_grid_positions(positions: list[np.ndarray], direction: np.ndarray, dz: float, rtol: float = 0.02) -> None:
    """A SeriesError unless the grid's slice positions step ``dz`` apart along ``direction`` (the
    spacing the affine uses), without shear: the checks a slice-per-file series gets."""
    pos = np.array(positions, dtype=np.float64)
    offsets = pos - pos[0]
    along = offsets @ direction
    gaps = np.diff(along)
    if np.any(np.abs(gaps - dz) > max(rtol * dz, 1e-3)):
        raise SeriesError(f"UIH grid: slice positions step {gaps.min():.3f} to {gaps.max():.3f} mm where SpacingBetweenSlices / "
                          f"SliceThickness says {dz:.3f} mm (missing, uneven or reordered slices)")
    shear = np.linalg.norm(offsets - np.outer(along, direction), axis=1).max()
    if shear > max(0.01 * dz * (len(positions) - 1), 1e-3):
        raise SeriesError(f"UIH grid: slice positions leave the slice normal by up to {shear:.2f} mm (gantry tilt or inconsistent "
                          "positions): tilt correction is not supported")


def _uih_items(ds: Dataset) -> list:
    elem = ds.get(UIH_VFRAME_SEQUENCE)
    if elem is None:
        return []
    value = elem.value
    if isinstance(value, bytes):  # read without a VR (implicit VR, private): parse the items
        from pydicom.values import convert_SQ

        value = convert_SQ(value, True if ds.is_implicit_VR is None else ds.is_implicit_VR, True)
    return list(value)


def _uih_positions(ds: Dataset) -> list[np.ndarray]:
    """The ImagePositionPatient values in file order: the top-level one, then each VFrame item's."""
    found = []
    if "ImagePositionPatient" in ds:
        found.append(_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", Path(".")))
    for item in _uih_items(ds):
        if "ImagePositionPatient" in item:
            found.append(_floats(item.ImagePositionPatient, 3, "ImagePositionPatient", Path(".")))
    return found


def _private_bytes(ds: Dataset | FastHeader, group: int, creator: str, offset: int) -> bytes | tuple | None:
    """A private element found through its private creator (any block): the fast reader's raw bytes, or
    pydicom's value (bytes when read without a VR, else numbers); None when absent."""
    if isinstance(ds, FastHeader):
        for (g, c), wanted in _FAST_PRIVATE.items():
            if g == group and c == creator.encode() and offset in wanted:
                return ds.private.get(wanted[offset])
        return None
    for block in range(0x10, 0x100):
        elem = ds.get((group, block))
        if elem is None or str(elem.value).strip().upper() != creator:
            continue
        value = ds.get((group, (block << 8) | offset))
        if value is None:
            return None
        v = value.value
        if isinstance(v, bytes):
            return v
        return tuple(v) if isinstance(v, (list, tuple)) or hasattr(v, "__iter__") and not isinstance(v, str) else (v,)
    return None


def _private_numbers(ds: Dataset | FastHeader, group: int, creator: str, offset: int, fmt: str) -> tuple | None:
    """:func:`_private_bytes` as numbers (``fmt``: the struct code of raw bytes)."""
    v = _private_bytes(ds, group, creator, offset)
    if isinstance(v, bytes):
        size = struct.calcsize(fmt)
        n = len(v) // size
        return struct.unpack(f"<{n}{fmt}", v[:n * size]) if n else None
    return v


def siemens_csa_image(ds: Dataset | FastHeader) -> dict[str, list[str]] | None:
    """The CSA image header (0029,xx10) of a Siemens file, or None when it is absent or unreadable."""
    from medsynth.io.siemens_csa import CSAError, read_csa

    raw = _private_bytes(ds, 0x0029, "SIEMENS CSA HEADER", 0x10)
    if not isinstance(raw, bytes) or not raw:
        return None
    try:
        return read_csa(raw)
    except CSAError:
        return None


def mosaic_slice_count(ds: Dataset | FastHeader, csa: dict[str, list[str]] | None = None) -> tuple[int, str]:
    """The number of slices in a Siemens mosaic and where it came from, in dcm2niix's order: the CSA
    header's NumberOfImagesInMosaic; without it MosaicRefAcqTimes (0019,1029), NumberOfImagesInMosaic
    (0019,100A), the tiles the AcquisitionMatrix fits (blank tiles included), the phase-encoding steps.
    SeriesError when none is there."""
    from medsynth.io.siemens_csa import csa_number

    in_csa = csa_number(csa, "NumberOfImagesInMosaic") if csa else None
    if in_csa and in_csa > 1:
        return int(in_csa), "the CSA header"
    times = _private_numbers(ds, 0x0019, "SIEMENS MR HEADER", 0x29, "d")
    if times and len(times) > 1:
        return len(times), "slice times (0019,1029)"
    count = _private_numbers(ds, 0x0019, "SIEMENS MR HEADER", 0x0A, "H")
    if count and int(count[0]) > 1:
        return int(count[0]), "NumberOfImagesInMosaic (0019,100A)"
    rows, cols = int(ds.Rows), int(ds.Columns)
    matrix = ds.get("AcquisitionMatrix") or []
    matrix = [int(v) for v in (matrix if isinstance(matrix, (list, tuple)) or hasattr(matrix, "__iter__") else [matrix])]
    if len(matrix) == 4:
        freq = matrix[0] or matrix[1]
        phase = matrix[2] or matrix[3]
        if freq and phase and cols % freq == 0 and cols // freq > 2 and rows % phase == 0 and rows // phase > 2:
            return (cols // freq) * (rows // phase), f"every tile of the {freq} x {phase} AcquisitionMatrix (blank tiles kept)"
    steps = int(ds.get("NumberOfPhaseEncodingSteps", 0) or 0)
    if steps and cols % steps == 0 and rows % steps == 0 and cols // steps > 1:
        return (cols // steps) * (rows // steps), f"every tile of {steps} phase-encoding steps (blank tiles kept)"
    raise SeriesError("Siemens mosaic without a CSA header and without NumberOfImagesInMosaic or an AcquisitionMatrix "
                      "that tiles it: the number of slices is unknown (keep the CSA header: deid.retain_safe_private: true)")


def siemens_mosaic(ds: Dataset | FastHeader, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """A Siemens mosaic -> (cols, rows, slices) data, LPS affine and a note (empty with a CSA header).

    As dcm2niix: ceil(sqrt(n)) tiles a side, read row by row; the first slice's corner is the mosaic's
    ImagePositionPatient moved by half the mosaic less one tile; slices SpacingBetweenSlices (else
    SliceThickness) apart along the slice normal, pointing as the CSA header's SliceNormalVector does
    (without it: foot to head, Siemens' default numbering)."""
    from medsynth.io.siemens_csa import csa_vector

    csa = siemens_csa_image(ds)
    n, source = mosaic_slice_count(ds, csa)
    side = math.ceil(math.sqrt(n))
    rows, cols = int(ds.Rows), int(ds.Columns)
    iop = _norm_iop(_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", Path(".")))
    ipp = _floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", Path("."))
    ps = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing", Path("."))
    dz = _slice_spacing(ds)
    if dz <= 0:
        raise SeriesError("Siemens mosaic: neither SpacingBetweenSlices nor SliceThickness gives the slice spacing")
    data = _untile(ds, pixels, n, side, side)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    slice_normal = csa_vector(csa, "SliceNormalVector", 3) if csa else None
    if np.dot(normal, slice_normal if slice_normal is not None else (0.0, 0.0, 1.0)) < 0:  # dcm2niix: det[row | col | normal] < 0
        normal = -normal
    # the first tile's corner: the mosaic's corner moved by half the mosaic less one tile
    corner = ipp + row_dir * ps[1] * (cols - cols / side) / 2.0 + col_dir * ps[0] * (rows - rows / side) / 2.0
    aff = lps_affine(iop, ps, normal * dz, corner)
    note = "" if csa is not None and source == "the CSA header" else \
        f"CSA header absent: {n} slices from {source}" + ("" if slice_normal is not None else "; slice order assumed foot to head")
    return data, aff, note


# --------------------------------------------------------------------------- series assembly


@dataclass
class DicomScan:
    """Every file under a folder, sorted into image series (by SeriesInstanceUID, SeriesNumber, PatientID
    and StudyInstanceUID), SEG masks, NIfTI files and quarantine."""

    series: dict[str, list[Path]]
    segs: list[Path]
    quarantine: list[QuarantineEntry]
    nifti: list[Path]
    headers: dict[Path, FastHeader] = field(default_factory=dict)  # files the fast reader read whole

    @property
    def needs_pydicom(self) -> bool:
        """Whether a series holds a file the fast reader leaves to pydicom."""
        return bool(self.segs) or any(p not in self.headers for files in self.series.values() for p in files)


def _past_group_0028(tag, vr, length) -> bool:
    return tag.group > 0x0028


def read_scan_header(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> Dataset:
    """The attributes up to group 0028 (SOP class, series, image size) -- not the large private groups
    (Siemens CSA, GE) nor the pixel data that follow. SeriesError with the reason if unusable."""
    from pydicom.filereader import read_partial

    _check_file(path, max_voxels)
    try:
        with warnings.catch_warnings(), open(path, "rb") as fh:
            warnings.simplefilter("ignore")
            ds = read_partial(fh, stop_when=_past_group_0028, force=True)  # force: files without the preamble
    except Exception:
        return read_header(path)  # no preamble, or a broken header: the full reader gives the reason
    return ds


def classify_file(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[str, str]:
    """One file -> (kind, detail): ("nifti", ""), ("seg", ""), ("image", series key) or ("bad", reason)."""
    kind, detail, _header = _classify(path, max_voxels)
    return kind, detail


def _series_key(ds: Dataset | FastHeader, path: Path) -> str:
    uid = str(ds.get("SeriesInstanceUID", "")) or f"no-series-uid:{path}"
    # PACS exports reuse one UID for several series numbers, and anonymisers or broken exports one UID
    # for several patients' series: a series is one UID and number of one patient's study
    return f"{uid}#{ds.get('SeriesNumber', '')}#{ds.get('PatientID', '')}#{ds.get('StudyInstanceUID', '')}"


def _classify(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[str, str, FastHeader | None]:
    """:func:`classify_file`, and the file's fast header when the fast reader could read it (then the
    series needs no second read of its header). Other files: only the attributes up to group 0028 are
    read here; whether their pixel data are complete is checked when the series is assembled."""
    return _classify_without_pydicom(path, max_voxels) or _classify_with_pydicom(path, max_voxels)


def _classify_without_pydicom(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[str, str, FastHeader | None] | None:
    """:func:`_classify` for NIfTI, non-DICOM and the files the fast reader reads; None for the rest."""
    if is_nifti(path):
        return "nifti", "", None
    header = read_image_header(path)
    if header is not None and int(header.Rows) * int(header.Columns) <= max_voxels:
        return "image", _series_key(header, path), header
    if is_not_dicom(path):
        return "bad", NOT_DICOM, None
    return None


def _classify_with_pydicom(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[str, str, FastHeader | None]:
    try:
        ds = read_scan_header(path, max_voxels)
    except SeriesError as exc:
        return "bad", str(exc), None
    if "SOPClassUID" not in ds and "Rows" not in ds and "Modality" not in ds:
        return "bad", NOT_DICOM, None
    sop = ds.get("SOPClassUID")
    if str(sop or "") == SEG_SOP_CLASS:
        return "seg", "", None
    if "Rows" not in ds or "Columns" not in ds:
        return "bad", f"DICOM object without pixel data ({getattr(sop, 'name', '') or 'unknown SOP class'})", None
    return "image", _series_key(ds, path), None


def scan_folder(
    root: Path,
    files: Iterable[Path] | None = None,
    progress: Callable[[Path], None] | None = None,
    workers: int = 1,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    pool: Executor | None = None,
) -> DicomScan:
    """Classify every file under ``root`` (``workers`` processes, or ``pool``'s); group image files into
    series. A deflated file that inflates past the limit for ``max_voxels`` is quarantined without being
    inflated."""
    root = Path(root)
    paths = list(files) if files is not None else discover_files(root)
    chunk = max(8, len(paths) // (workers * 8))
    if pool is not None and len(paths) > PARALLEL_SCAN_FILES:
        # the workers read what needs no pydicom; this process reads the rest, so that pydicom is imported
        # once, here, and workers forked later for the series inherit it
        kinds = list(pool.map(_classify_without_pydicom, paths, [max_voxels] * len(paths), chunksize=chunk))
        kinds = [k if k is not None else _classify_with_pydicom(p, max_voxels) for p, k in zip(paths, kinds, strict=True)]
    elif workers > 1 and len(paths) > PARALLEL_SCAN_FILES:
        with process_pool(workers) as own_pool:
            kinds = list(own_pool.map(_classify, paths, [max_voxels] * len(paths), chunksize=chunk))
    else:
        kinds = [_classify(p, max_voxels) for p in paths]
    series: dict[str, list[Path]] = defaultdict(list)
    segs: list[Path] = []
    quarantine: list[QuarantineEntry] = []
    nifti: list[Path] = []
    headers: dict[Path, FastHeader] = {}
    for path, (kind, detail, header) in zip(paths, kinds, strict=False):
        if header is not None:
            headers[path] = header
        if progress:
            progress(path)
        if kind == "nifti":
            nifti.append(path)
        elif kind == "seg":
            segs.append(path)
        elif kind == "bad":
            quarantine.append(QuarantineEntry(_rel(path, root), detail))
        else:
            series[detail].append(path)
    return DicomScan(dict(series), segs, quarantine, nifti, headers)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def load_series(files: list[tuple[Path, Dataset]], max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[list[DicomVolume], list[QuarantineEntry]]:
    """Convert one series' files into volumes (split where needed) of at most ``max_voxels`` each.

    Returns the volumes and the quarantine entries of sub-series or files that failed.
    """
    volumes: list[DicomVolume] = []
    quarantine: list[QuarantineEntry] = []
    header = files[0][1]
    mosaics = [(p, ds) for p, ds in files if is_mosaic(ds)]
    if mosaics:
        by_echo: dict[str, list[tuple[Path, Dataset | FastHeader]]] = defaultdict(list)
        for p, ds in mosaics:
            by_echo[f"{ds.get('EchoNumbers', '')}|{'ph' if _is_phase(ds) else ''}|{'derived' if is_derived(ds) else ''}"].append((p, ds))
        for i, (_echo, group) in enumerate(sorted(by_echo.items())):
            paths = [p for p, _ds in group]
            try:
                data, aff, notes = _mosaic_volume(group)
                suffix = "" if len(by_echo) == 1 else f"_{i + 1}"
                volumes.append(DicomVolume(data, aff, header, paths, suffix, notes))
            except SeriesError as exc:
                quarantine.append(QuarantineEntry(_common_parent(paths), str(exc)))
        files = [(p, ds) for p, ds in files if not is_mosaic(ds)]
        if not files:
            return volumes, quarantine
    slices: list[Slice] = []
    for path, ds in files:
        try:
            if is_enhanced(ds):
                slices.extend(enhanced_slices(path, ds))
            else:
                slices.append(classic_slice(path, ds))
        except SeriesError as exc:
            quarantine.append(QuarantineEntry(str(path), str(exc)))
    groups = split_slices(slices)
    ordered_keys = sorted(groups, key=lambda k: (str(k[3]), str(k[0]), k[1], k[2]))
    for i, key in enumerate(ordered_keys):
        group = groups[key]
        paths = sorted({s.path for s in group})
        try:
            data, aff, notes, firsts = stack_slices(group, max_voxels=max_voxels)
        except SeriesError as exc:
            where = str(paths[0]) if len(paths) == 1 else _common_parent(paths)
            reason = str(exc)
            if len(groups) > 1:
                reason += f" (sub-series {i + 1} of {len(groups)}: orientation/size/echo/phase/derived split)"
            quarantine.append(QuarantineEntry(where, reason))
            continue
        suffix = "" if len(groups) == 1 else f"_{i + 1}"
        hdr = next(ds for p, ds in files if p == paths[0])
        if len(groups) > 1:
            kind = " (derived image)" if "derived" in key[3] else ""
            notes.append(f"split {i + 1}/{len(groups)} of the series by orientation/size/echo/phase/derived image{kind}")
        split = isotropic_split(data, firsts)
        if split is None:
            volumes.append(DicomVolume(data, aff, hdr, paths, suffix, notes))
            continue
        acquired, with_isotropic, note = split
        volumes.append(DicomVolume(acquired, aff, hdr, paths, suffix, [*notes, note]))
        volumes.append(DicomVolume(with_isotropic, aff, hdr, paths, suffix + "_ADC", [*notes, note + "; this volume: all of them, those last"]))
    return volumes, quarantine


def philips_diffusion(ds: Dataset | FastHeader) -> tuple[float, tuple[float, ...]] | None:
    """A Philips image's b value and gradient direction: the private (2001,xx03) and (2005,xxB0-B2),
    else DiffusionBValue and DiffusionGradientOrientation; None when the image has no b value."""
    b = _private_numbers(ds, 0x2001, "PHILIPS IMAGING DD 001", 0x03, "f")
    b_value = float(b[0]) if b else ds.get("DiffusionBValue")
    if b_value is None:
        return None
    parts = [_private_numbers(ds, 0x2005, "PHILIPS MR IMAGING DD 001", off, "f") for off in (0xB0, 0xB1, 0xB2)]
    if all(parts):
        vector = tuple(float(p[0]) for p in parts)
    else:
        public = ds.get("DiffusionGradientOrientation")
        vector = tuple(float(v) for v in public) if public is not None and len(public) == 3 else (0.0, 0.0, 0.0)
    return float(b_value), vector


def isotropic_split(data: np.ndarray, firsts: list[Slice]) -> tuple[np.ndarray, np.ndarray, str] | None:
    """dcm2niix's handling of the isotropic (trace / ADC) volumes a Philips DWI series holds among its
    acquisitions (b > 0, no gradient direction): (the acquired volumes without them, all volumes with
    them last, a note); None when there are none, or when removing them would leave fewer than two
    volumes or leave a b=0 + trace pair."""
    if data.ndim != 4 or any(f.diffusion is None for f in firsts):
        return None
    iso = [t for t, f in enumerate(firsts) if f.diffusion[0] != 0 and all(abs(v) < 1e-6 for v in f.diffusion[1])]
    rest = [t for t in range(len(firsts)) if t not in iso]
    if not iso or len(rest) < 2 or (len(iso) == 1 and len(rest) == 1):
        return None
    note = f"{len(iso)} isotropic (trace / ADC) volume(s) of {len(firsts)} set apart, as dcm2niix does (b > 0 without a gradient direction)"
    return data[..., rest], data[..., rest + iso], note


def _common_parent(paths: list[Path]) -> str:
    parts = [Path(p).parts for p in paths]
    common = []
    for items in zip(*parts, strict=False):
        if len(set(items)) == 1:
            common.append(items[0])
        else:
            break
    return str(Path(*common)) if common else str(paths[0])
