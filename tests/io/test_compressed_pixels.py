"""Compressed and big-endian pixel data decoded without pydicom (medsynth.io.dicom.compressed) give the
array pydicom's ``pixel_array`` gives: values, container size and signedness, for every transfer
syntax and bit layout built here from a real shared MR image with pydicom's own encoders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from medsynth.io.dicom.compressed import fragments, natively_decodable
from medsynth.io.dicom.pixels import decode_pixels
from medsynth.io.dicom_fast import read_fast_header
from medsynth.io.quarantine import SeriesError
from tests.conftest import shared

TS = shared("dicom", "dcm_qa_ts", "In")


def _layout(ds: pydicom.Dataset, layout: str) -> np.ndarray:
    """The shared 12-bit image rewritten to one bit layout; the array to encode."""
    arr = ds.pixel_array.astype(np.int64)  # 0 .. 4095
    if layout == "u12":
        out, bits, stored, signed = arr, 16, 12, 0
    elif layout == "s12":
        out, bits, stored, signed = arr - 2048, 16, 12, 1
    elif layout == "u16":
        out, bits, stored, signed = arr * 16, 16, 16, 0
    elif layout == "s16":
        out, bits, stored, signed = arr * 16 - 32768, 16, 16, 1
    elif layout == "u8":
        out, bits, stored, signed = arr >> 4, 8, 8, 0
    else:
        raise ValueError(layout)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, signed
    return out.astype(f"{'i' if signed else 'u'}{bits // 8}")


CASES = [(RLELossless, "pydicom", layout) for layout in ("u12", "s12", "u16", "s16", "u8")] + \
        [(JPEGLSLossless, "pyjpegls", layout) for layout in ("u12", "s12", "u16", "u8")] + \
        [(JPEG2000Lossless, "pylibjpeg", layout) for layout in ("u12", "s12", "u16", "s16", "u8")]


def _assert_as_pydicom(path: Path) -> np.ndarray:
    header = read_fast_header(path)
    assert header is not None and not header.header_only and natively_decodable(header), path
    ours, theirs = header.pixel_array(), pydicom.dcmread(path).pixel_array
    assert ours.dtype.kind == theirs.dtype.kind and ours.dtype.itemsize == theirs.dtype.itemsize, (ours.dtype, theirs.dtype)
    np.testing.assert_array_equal(ours, theirs)
    return ours


@pytest.mark.parametrize(("syntax", "plugin", "layout"), CASES, ids=lambda v: str(getattr(v, "name", v)))
def test_each_transfer_syntax_and_bit_layout_decodes_as_pydicom_does(tmp_path, syntax, plugin, layout):
    ds = pydicom.dcmread(TS / "1.dcm")
    arr = _layout(ds, layout)
    ds.compress(syntax, arr, encoding_plugin=plugin)
    ds.save_as(tmp_path / "x.dcm")
    ours = _assert_as_pydicom(tmp_path / "x.dcm")
    np.testing.assert_array_equal(ours, arr)  # lossless: the values that were encoded


def test_unused_high_bits_are_masked_as_pydicom_masks_them(tmp_path):
    """RLE of 12-bit values with garbage in the 4 bits above BitsStored: pydicom's unused-bit correction
    (masking) applies to RLE, and the values come back as the 12 stored bits."""
    ds = pydicom.dcmread(TS / "1.dcm")
    arr = _layout(ds, "u12") | np.uint16(0xA000)
    ds.BitsStored, ds.HighBit = 16, 15
    ds.compress(RLELossless, arr, encoding_plugin="pydicom")
    ds.BitsStored, ds.HighBit = 12, 11  # the header says 12 bits; the 4 above hold garbage
    ds.save_as(tmp_path / "x.dcm")
    ours = _assert_as_pydicom(tmp_path / "x.dcm")
    assert int(ours.max()) < 4096 and np.array_equal(ours, arr & 0x0FFF)


def test_a_jpeg_2000_codestream_whose_sign_disagrees_with_the_header_is_corrected_as_pydicom_does(tmp_path):
    ds = pydicom.dcmread(TS / "1.dcm")
    arr = _layout(ds, "u12") + 2048  # 2048 .. 6143 does not fit 12 bits: 13-bit unsigned codestream
    ds.BitsStored, ds.HighBit = 13, 12
    ds.compress(JPEG2000Lossless, arr, encoding_plugin="pylibjpeg")
    ds.PixelRepresentation = 1  # the header now says signed; the codestream says unsigned
    ds.save_as(tmp_path / "x.dcm")
    ours = _assert_as_pydicom(tmp_path / "x.dcm")
    assert ours.dtype == np.int16 and int(ours.min()) < 0  # corrected: values at or above 4096 became negative


@pytest.mark.parametrize("name", [f"{i}.dcm" for i in range(3, 10)])
def test_the_shared_compressed_and_big_endian_files_decode_as_pydicom_does(name):
    _assert_as_pydicom(TS / name)


def test_pixel_data_cut_short_fall_back_to_pydicom_and_quarantine_with_the_reason(tmp_path):
    src = TS / "5.dcm"  # JPEG lossless
    header = read_fast_header(src)
    assert header is not None
    data = src.read_bytes()
    with pytest.raises(ValueError, match="past the end"):
        fragments(data[header.pixel_offset:header.pixel_offset + 1000])
    (tmp_path / "x.dcm").write_bytes(data[:header.pixel_offset + 1000])  # the file ends inside its fragment
    cut = read_fast_header(tmp_path / "x.dcm")
    assert cut is not None and natively_decodable(cut)  # the header alone says nothing is wrong
    with pytest.raises(SeriesError, match="pixel data"):
        decode_pixels(tmp_path / "x.dcm", cut)


def test_multi_frame_or_colour_compressed_files_stay_with_pydicom(tmp_path):
    ds = pydicom.dcmread(TS / "1.dcm")
    arr = ds.pixel_array
    ds.NumberOfFrames = 2
    ds.compress(RLELossless, np.stack([arr, arr]), encoding_plugin="pydicom")
    ds.save_as(tmp_path / "frames.dcm")
    colour = pydicom.dcmread(TS / "1.dcm")
    rgb = np.repeat((arr >> 4).astype(np.uint8)[..., None], 3, axis=-1)
    colour.BitsAllocated, colour.BitsStored, colour.HighBit, colour.SamplesPerPixel = 8, 8, 7, 3
    colour.PhotometricInterpretation, colour.PlanarConfiguration = "RGB", 0
    colour.compress(RLELossless, rgb, encoding_plugin="pydicom")
    colour.save_as(tmp_path / "rgb.dcm")
    for name in ("frames.dcm", "rgb.dcm"):
        header = read_fast_header(tmp_path / name)
        assert header is None or (header.header_only and not natively_decodable(header)), name
    shutil.copy(TS / "4.dcm", tmp_path / "single.dcm")  # the same layout, one frame: decoded here
    single = read_fast_header(tmp_path / "single.dcm")
    assert single is not None and not single.header_only
