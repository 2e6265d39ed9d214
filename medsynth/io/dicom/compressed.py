"""The pixel data of a compressed or big-endian single-frame grey-level image, decoded without pydicom.

pydicom's import costs about 0.4 s and its parse of each file more than the fast reader's. For the
files the fast reader reads the header of (``FastHeader.header_only``) the encapsulated fragments are
read here and handed to the same codec plugin pydicom 3 would use (pylibjpeg-rle, pylibjpeg-libjpeg for
JPEG and JPEG-LS, pylibjpeg-openjpeg for JPEG 2000 and HTJ2K), and the decoded values are given pydicom's
container size and sign and unused-bit corrections, so the array equals ``Dataset.pixel_array``
(tests/io/test_compressed_pixels.py). Anything else (multi-frame, colour, another transfer syntax, a
missing plugin) is left to pydicom (:func:`natively_decodable` is False), and so is a file whose
fragments or codestream fail here: pydicom names what is wrong.
"""

from __future__ import annotations

import importlib.util
import struct
from functools import cache
from typing import TYPE_CHECKING

from medsynth.io.dicom_fast import EXPLICIT_BE

if TYPE_CHECKING:
    import numpy as np

    from medsynth.io.dicom_fast import FastHeader

RLE = "1.2.840.10008.1.2.5"
JPEG = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"})
JPEG_LS = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
JPEG_2000 = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                       "1.2.840.10008.1.2.4.203"})
PLUGIN = {RLE: "rle", **dict.fromkeys(JPEG | JPEG_LS, "libjpeg"), **dict.fromkeys(JPEG_2000, "openjpeg")}
_ITEM, _SEQUENCE_END = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"
_SOF = frozenset(b"\xff" + bytes([m]) for m in (*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7))


@cache
def _has_plugin(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def natively_decodable(h: FastHeader) -> bool:
    """Whether :func:`decode` reads this header-only file's pixel data: one frame of one sample,
    MONOCHROME1/2, 8 or 16 bits allocated (16 or 32 when big endian), in a transfer syntax whose plugin
    is installed."""
    ts = h.transfer_syntax
    try:
        bits, stored = int(h.get("BitsAllocated", 0) or 0), int(h.get("BitsStored", 0) or 0)
        single = int(h.get("NumberOfFrames", 1) or 1) == 1 and int(h.get("SamplesPerPixel", 1) or 1) == 1
    except (TypeError, ValueError):
        return False
    if not (single and h.pixel_offset > 0 and 0 < stored <= bits and str(h.get("PhotometricInterpretation", "")).startswith("MONOCHROME")):
        return False
    if ts == EXPLICIT_BE:
        return bits in (16, 32)
    return bits in (8, 16) and ts in PLUGIN and _has_plugin(PLUGIN[ts])


def fragments(data: bytes) -> list[bytes]:
    """The fragments of encapsulated pixel data (``data`` from the first item: the basic offset table),
    the offset table left out. ValueError when the items are not well formed."""
    pos, first = 0, True
    out: list[bytes] = []
    while True:
        tag = data[pos:pos + 4]
        if tag == _SEQUENCE_END:
            return out
        if tag != _ITEM or pos + 8 > len(data):
            raise ValueError("encapsulated pixel data: item or sequence delimiter expected")
        length = struct.unpack_from("<I", data, pos + 4)[0]
        if pos + 8 + length > len(data):
            raise ValueError("encapsulated pixel data: a fragment runs past the end of the file")
        if not first:
            out.append(data[pos + 8:pos + 8 + length])
        first = False
        pos += 8 + length


def _jpeg_precision(src: bytes) -> int | None:
    """The sample precision of a JPEG or JPEG-LS codestream's SOF segment, as pydicom reads it."""
    if src[:2] != b"\xff\xd8":
        return None
    pos = 2
    while src[pos:pos + 2] not in _SOF:
        if pos + 4 > len(src):
            return None
        pos += 2 + struct.unpack_from(">H", src, pos + 2)[0]
    return src[pos + 4]


def _j2k_sign_precision(src: bytes) -> tuple[bool, int] | None:
    """(signed, precision) of a JPEG 2000 codestream's first component (SIZ segment), as pydicom reads it."""
    pos = 0
    if src.startswith(b"\x00\x00\x00\x0c\x6a\x50\x20\x20"):  # a JP2 file: the codestream is in its jp2c box
        pos = 12
        while pos < len(src):
            if src[pos + 4:pos + 8] == b"jp2c":
                pos += 8
                break
            pos += int.from_bytes(src[pos:pos + 4], "big")
    if src[pos:pos + 4] != b"\xff\x4f\xff\x51" or len(src) <= pos + 42:
        return None
    ssiz = src[pos + 42]
    return bool(ssiz & 0x80), (ssiz & 0x7F) + 1


def _container(precision: int) -> int:
    return 8 if precision <= 8 else 16 if precision <= 16 else 32


def decode(h: FastHeader) -> np.ndarray:
    """The stored values (Rows x Columns) of a :func:`natively_decodable` file, as pydicom's
    ``pixel_array`` gives them. ValueError (or the plugin's RuntimeError) when they cannot be decoded."""
    import numpy as np

    rows, cols = int(h.get("Rows")), int(h.get("Columns"))
    bits = int(h.get("BitsAllocated"))
    stored = int(h.get("BitsStored", bits) or bits)
    signed = int(h.get("PixelRepresentation", 0) or 0) == 1
    with open(h.path, "rb") as fh:
        fh.seek(h.pixel_offset)
        data = fh.read() if h.pixel_length < 0 else fh.read(h.pixel_length)
    ts = h.transfer_syntax
    shift = bits - stored  # pydicom's unused-bit correction (native and RLE / JPEG data)
    if ts == EXPLICIT_BE:
        if len(data) < rows * cols * bits // 8:
            raise ValueError("big-endian pixel data shorter than Rows x Columns")
        arr = np.frombuffer(data, f">{'i' if signed else 'u'}{bits // 8}", rows * cols).astype(f"={'i' if signed else 'u'}{bits // 8}")
    else:
        parts = fragments(data)
        if not parts:
            raise ValueError("encapsulated pixel data without a fragment")
        src = parts[0] if ts == RLE else b"".join(parts)
        options = {"rows": rows, "columns": cols, "bits_allocated": bits, "bits_stored": stored, "samples_per_pixel": 1,
                   "pixel_representation": int(signed), "photometric_interpretation": str(h.get("PhotometricInterpretation")),
                   "number_of_frames": 1, "planar_configuration": 0, "transfer_syntax_uid": ts}
        plugin = importlib.import_module(PLUGIN[ts])
        if ts in JPEG_LS or ts in JPEG_2000:
            info = _jpeg_precision(src) if ts in JPEG_LS else _j2k_sign_precision(src)
            precision = (info if isinstance(info, int) else info[1]) if info is not None else stored
            codestream_signed = info[0] if isinstance(info, tuple) else signed
            bits = _container(precision)  # pydicom: the container follows the codestream's precision
            options["bits_allocated"] = bits
            # JPEG-LS keeps no sign: signed values come back unsigned; JPEG 2000 may disagree with the header
            needs_sign = signed if ts in JPEG_LS else codestream_signed != signed
            shift = bits - precision if needs_sign else 0
        raw = plugin.decode_pixel_data(src, version=2, **options)
        dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
        if len(raw) < rows * cols * dtype.itemsize:
            raise ValueError(f"decoded frame holds {len(raw)} bytes, Rows x Columns needs {rows * cols * dtype.itemsize}")
        arr = np.frombuffer(raw, dtype, rows * cols).astype(dtype.newbyteorder("="))
    if shift > 0:
        arr = (arr << shift) >> shift  # arithmetic for signed (sign-extends), logical for unsigned (masks)
    return arr.reshape(rows, cols)
