"""Pixel data: decoding (uncompressed little endian straight from the bytes, a compressed or big-endian
grey-level image through its codec plugin (:mod:`medsynth.io.dicom.compressed`), anything else through
pydicom), frames of a multi-frame object decoded once, and the checks on rescaling (finite slope and
intercept, no NaN / Inf in a volume)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medsynth.io.dicom_fast import FastHeader, stored_values
from medsynth.io.quarantine import SeriesError, error_text

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


class _FrameCache:
    """Decode a multi-frame object's pixel data once and hand out frames."""

    def __init__(self, path: Path, ds: Dataset | FastHeader | None = None):
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


def decode_pixels(path: Path, ds: Dataset | FastHeader | None = None) -> np.ndarray:
    """Decode a file's pixel data (from ``ds`` when it was read with its pixels already, or through the
    fast reader's header); any failure becomes a SeriesError with the reason."""
    if isinstance(ds, FastHeader):
        if ds.transfer_syntax in _RAW_LITTLE_ENDIAN:
            try:
                return ds.pixel_array()
            except (OSError, ValueError) as exc:
                raise SeriesError(f"pixel data cannot be read: {error_text(exc)}") from None
        try:
            return ds.pixel_array()  # compressed or big endian, decoded without pydicom
        except Exception:  # noqa: BLE001 -- pydicom reads the file again and names what is wrong
            ds = None
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


def _check_rescale(slope: float, intercept: float, where: str = "") -> None:
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise SeriesError(f"{where}RescaleSlope {slope:g} / RescaleIntercept {intercept:g}: not finite")


def _check_finite(data: np.ndarray) -> None:
    """A SeriesError when the volume holds NaN or Inf (a float64 sum of float32 data cannot overflow)."""
    if not math.isfinite(float(data.sum(dtype=np.float64))):
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        raise SeriesError(f"{bad} NaN/Inf voxel(s) after RescaleSlope / RescaleIntercept (overflow or non-finite pixel values)")
