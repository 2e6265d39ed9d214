"""Finding and reading DICOM files: discovery under a folder, the checks made before pydicom reads a file
(empty, unreadable, a deflated data set that inflates past the size limit) and the pydicom readers that
turn every failure into a SeriesError with the reason."""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from medsynth.io.quarantine import DEFAULT_MAX_VOXELS, SeriesError, error_text, max_decoded_bytes

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


NIFTI_SUFFIXES = (".nii", ".nii.gz")


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
