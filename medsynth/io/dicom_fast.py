"""A fast header reader for the common DICOM image file, without pydicom.

Most files a scanner exports are single-frame, uncompressed, little endian, with the 128-byte preamble.
pydicom parses every element of such a file in Python (several hundred per MR file, most of them in
private groups conversion never reads), and importing pydicom costs half a second: together most of
``medsynth convert``'s time. :func:`read_image_header` walks the elements with ``struct`` and keeps the
raw values of the attributes conversion reads (:data:`TAGS`, and the vendor private elements of
:data:`PRIVATE`: Siemens mosaic and CSA, Philips scaling and diffusion) and where the pixel data lie.
It returns None for every other file (compressed, big endian or deflated transfer syntax, no preamble,
multi-frame, UIH grid, colour, SEG, a character set other than the default, Latin-1 or UTF-8, truncated,
a layout it cannot walk); those are read by pydicom, which also names what is wrong with a broken file.
Values are decoded as pydicom decodes them (tests/test_dicom_fast.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
MAX_FAST_FILE_BYTES = 64 << 20  # larger files (multi-frame) are read by pydicom

# keyword -> (tag, VR) of every attribute the converter reads from a single-frame file
TAGS: dict[str, tuple[int, str]] = {
    "SpecificCharacterSet": (0x00080005, "CS"),
    "ImageType": (0x00080008, "CS"),
    "SOPClassUID": (0x00080016, "UI"),
    "SOPInstanceUID": (0x00080018, "UI"),
    "AcquisitionTime": (0x00080032, "TM"),
    "Modality": (0x00080060, "CS"),
    "Manufacturer": (0x00080070, "LO"),
    "SeriesDescription": (0x0008103E, "LO"),
    "PatientID": (0x00100020, "LO"),
    "EchoNumbers": (0x00180086, "IS"),
    "TriggerTime": (0x00181060, "DS"),
    "ImagerPixelSpacing": (0x00181164, "DS"),
    "SliceThickness": (0x00180050, "DS"),
    "SpacingBetweenSlices": (0x00180088, "DS"),
    "NumberOfPhaseEncodingSteps": (0x00180089, "IS"),
    "AcquisitionMatrix": (0x00181310, "US"),
    "DiffusionBValue": (0x00189087, "FD"),
    "DiffusionGradientOrientation": (0x00189089, "FD"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "SeriesNumber": (0x00200011, "IS"),
    "AcquisitionNumber": (0x00200012, "IS"),
    "InstanceNumber": (0x00200013, "IS"),
    "ImagePositionPatient": (0x00200032, "DS"),
    "ImageOrientationPatient": (0x00200037, "DS"),
    "TemporalPositionIdentifier": (0x00200100, "IS"),
    "SamplesPerPixel": (0x00280002, "US"),
    "PhotometricInterpretation": (0x00280004, "CS"),
    "NumberOfFrames": (0x00280008, "IS"),
    "Rows": (0x00280010, "US"),
    "Columns": (0x00280011, "US"),
    "PixelSpacing": (0x00280030, "DS"),
    "BitsAllocated": (0x00280100, "US"),
    "BitsStored": (0x00280101, "US"),
    "PixelRepresentation": (0x00280103, "US"),
    "RescaleIntercept": (0x00281052, "DS"),
    "RescaleSlope": (0x00281053, "DS"),
}
_TAG_VR = {tag: vr for tag, vr in TAGS.values()}
_KEYWORD = {tag: kw for kw, (tag, _vr) in TAGS.items()}
PHILIPS_GROUP = 0x2005
# private elements conversion reads: (group, private creator) -> {element low byte: name in FastHeader.private}
PRIVATE = {
    (0x0019, b"SIEMENS MR HEADER"): {0x0A: "mosaic_images", 0x29: "mosaic_slice_times"},
    (0x0029, b"SIEMENS CSA HEADER"): {0x10: "csa_image"},
    (0x2001, b"PHILIPS IMAGING DD 001"): {0x03: "philips_b_value"},
    (PHILIPS_GROUP, b"PHILIPS MR IMAGING DD 001"): {0x0E: "philips_scale_slope", 0xB0: "philips_gradient_x",
                                                    0xB1: "philips_gradient_y", 0xB2: "philips_gradient_z"},
}
PRIVATE_GROUPS = frozenset(group for group, _creator in PRIVATE)
UIH_GROUP, UIH_SLICES_IN_GRID = 0x0065, 0x1050
PIXEL_DATA = 0x7FE00010
TRANSFER_SYNTAX = 0x00020010
FRAME_GROUPS = frozenset({0x52009229, 0x52009230})  # shared / per-frame functional groups
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
NUMERIC_TEXT = frozenset({"DS", "IS"})

_head16 = struct.Struct("<HH2sH").unpack_from
_head32 = struct.Struct("<HHI").unpack_from
_u32 = struct.Struct("<I").unpack_from


class _NotFast(Exception):
    """The file needs pydicom's reader."""


@dataclass
class FastHeader:
    """The attributes of one single-frame uncompressed little-endian image file, decoded on use.

    ``get(keyword, default)`` answers as a pydicom Dataset does for the keywords in :data:`TAGS`
    (numbers for IS/DS/US/FD, a list for several values, stripped text otherwise) and raises KeyError
    for any other keyword."""

    path: Path
    raw: dict[int, bytes]
    pixel_offset: int
    pixel_length: int
    private: dict[str, bytes] = field(default_factory=dict)  # the PRIVATE elements found, raw
    _decoded: dict = field(default_factory=dict, repr=False, compare=False)

    def get(self, keyword: str, default=None):
        decoded = self._decoded
        if keyword in decoded:
            value = decoded[keyword]
        else:
            tag = TAGS.get(keyword)
            if tag is None:  # loud: a silent default would convert differently from the pydicom path
                raise KeyError(f"the fast reader does not keep {keyword}: add it to dicom_fast.TAGS")
            value = None if tag[0] not in self.raw else _decode(self.raw[tag[0]], tag[1], self._charset())
            decoded[keyword] = value
        return default if value is None else value

    def character_set(self) -> str:
        """SpecificCharacterSet as written (several values joined by a backslash)."""
        return self.raw.get(0x00080005, b"").decode("latin-1").strip("\x00 ")

    def _charset(self) -> str:
        charset = self._decoded.get(_CHARSET_KEY)
        if charset is None:
            charset = self._decoded[_CHARSET_KEY] = TEXT_CHARSETS.get(self.character_set(), "latin-1")
        return charset

    def __contains__(self, keyword: str) -> bool:
        tag = TAGS.get(keyword)
        return tag is not None and tag[0] in self.raw

    def __getattr__(self, keyword: str):
        if keyword.startswith("_") or keyword not in TAGS:
            raise AttributeError(keyword)
        value = self.get(keyword)
        if value is None:
            raise AttributeError(keyword)
        return value

    def pixel_array(self) -> np.ndarray:
        """The stored values (Rows x Columns), bits above BitsStored masked or sign-extended."""
        with open(self.path, "rb") as fh:
            fh.seek(self.pixel_offset)
            raw = fh.read(self.pixel_length)
        return stored_values(raw, int(self.get("Rows")), int(self.get("Columns")), 1, int(self.get("BitsAllocated")),
                             int(self.get("BitsStored", self.get("BitsAllocated"))), int(self.get("PixelRepresentation", 0)) == 1)


def stored_values(raw: bytes, rows: int, cols: int, frames: int, bits: int, stored: int, signed: bool) -> np.ndarray:
    """Uncompressed little-endian grey levels as an array ((frames,) rows, cols); bits above
    ``stored`` masked (unsigned) or sign-extended (signed), as pydicom does."""
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    arr = np.frombuffer(raw, dtype=dtype, count=rows * cols * frames).reshape((frames, rows, cols) if frames > 1 else (rows, cols))
    if stored < bits:
        if signed:
            shift = bits - stored
            arr = (arr << shift) >> shift  # arithmetic shift: sign-extends from bit stored-1
        else:
            arr = arr & np.array((1 << stored) - 1, dtype=dtype)
    return arr.astype(dtype.newbyteorder("="), copy=True)


_CHARSET_KEY = "\x00charset"  # where FastHeader keeps its text encoding among the decoded values
TEXT_CHARSETS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO 2022 IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


BINARY_VRS = {"FD": "d", "US": "H"}  # VR -> struct code of one little-endian value


def _decode(raw: bytes, vr: str, charset: str = "latin-1"):
    code = BINARY_VRS.get(vr)
    if code is not None:
        size = struct.calcsize(code)
        n = len(raw) // size
        if n == 0:
            return None
        values = struct.unpack(f"<{n}{code}", raw[:size * n])
        return values[0] if n == 1 else list(values)
    text = raw.decode(charset, "replace").rstrip("\x00 ").lstrip(" ") if vr != "UI" else raw.decode("latin-1").rstrip("\x00 ")
    if text == "":
        return None
    if vr in NUMERIC_TEXT:
        parts = [p.strip() for p in text.split("\\")]
        try:
            numbers = [int(p) if vr == "IS" else float(p) for p in parts]
        except ValueError:
            return text  # not a number: the caller's check names it
        return numbers[0] if len(numbers) == 1 else numbers
    if vr == "CS" and "\\" in text:
        return [p.strip() for p in text.split("\\")]
    return text


def _skip_sequence(data: bytes, pos: int, explicit: bool) -> int:
    """Position after an undefined-length sequence whose first item starts at ``pos``."""
    end = len(data)
    while pos + 8 <= end:
        group, elem, length = _head32(data, pos)
        tag = (group << 16) | elem
        pos += 8
        if tag == SEQUENCE_END:
            return pos
        if tag != ITEM:
            raise _NotFast
        pos = pos + length if length != UNDEFINED else _walk(data, pos, explicit)
    raise _NotFast


def _element(data: bytes, pos: int, explicit: bool) -> tuple[int, int, bytes, int, int]:
    """(group, element, VR, value length, value position) of the element at ``pos``."""
    group, elem, vr, short_len = _head16(data, pos)
    if not explicit or group == 0xFFFE:
        return group, elem, b"", _u32(data, pos + 4)[0], pos + 8
    if vr in LONG_VRS:
        return group, elem, vr, _u32(data, pos + 8)[0], pos + 12
    if vr[0] > 64 and vr[1] > 64:
        return group, elem, vr, short_len, pos + 8
    raise _NotFast  # an implicit element in an explicit data set


def _walk(data: bytes, pos: int, explicit: bool) -> int:
    """Walk the elements of one undefined-length item from ``pos``; the position after its delimiter."""
    end = len(data)
    while pos + 8 <= end:
        group, elem, vr, length, pos = _element(data, pos, explicit)
        if group == 0xFFFE:
            if elem == 0xE00D:
                return pos
            raise _NotFast
        if length == UNDEFINED:
            pos = _skip_sequence(data, pos, explicit and vr != b"UN")  # an undefined-length UN holds implicit-VR items
        else:
            pos += length
    raise _NotFast


def _walk_header(data: bytes, pos: int, explicit: bool, header: FastHeader) -> None:
    """Keep the wanted top-level values in ``header`` and find the pixel data. Past group 0028 (and
    group 2005 for Philips files) nothing more is kept: the pixel data are looked for at the end of the
    file first, with the exact length the image needs, and the walk goes on only if they are not there."""
    end = len(data)
    keep = header.raw
    blocks: dict[int, dict[int, str]] = {}  # (group << 8 | block) -> the wanted elements of that private block
    looked_at_end = False
    while pos + 8 <= end:
        group, elem, vr, length = _head16(data, pos)  # inlined _element: this loop is the reader's cost
        if not explicit or group == 0xFFFE:
            length, pos = _u32(data, pos + 4)[0], pos + 8
            if group == 0xFFFE:
                raise _NotFast
        elif vr in LONG_VRS:
            length, pos = _u32(data, pos + 8)[0], pos + 12
        elif vr[0] > 64 and vr[1] > 64:
            pos += 8
        else:
            raise _NotFast
        if group > 0x0028 and not looked_at_end and group > _last_group_read(keep.get(0x00080070, b"")):
            looked_at_end = True
            if _pixel_data_at_end(data, explicit, header):
                return
        if group == UIH_GROUP and elem == UIH_SLICES_IN_GRID:
            raise _NotFast  # a UIH grid: pydicom unpacks it
        tag = (group << 16) | elem
        if tag == PIXEL_DATA:
            if length == UNDEFINED or pos + length > end:
                raise _NotFast  # encapsulated (compressed) or truncated pixel data
            header.pixel_offset, header.pixel_length = pos, length
            return
        if length == UNDEFINED:
            if tag in FRAME_GROUPS:
                raise _NotFast
            pos = _skip_sequence(data, pos, explicit and vr != b"UN")  # an undefined-length UN holds implicit-VR items
            continue
        if tag in _TAG_VR:
            keep[tag] = data[pos:pos + length]
        elif group in PRIVATE_GROUPS:
            if 0x10 <= elem <= 0xFF:
                wanted = PRIVATE.get((group, data[pos:pos + length].rstrip(b"\x00 ").upper()))
                if wanted:
                    blocks[(group << 8) | elem] = wanted
            else:
                name = blocks.get((group << 8) | (elem >> 8), {}).get(elem & 0xFF)
                if name:
                    header.private[name] = data[pos:pos + length]
        elif tag in FRAME_GROUPS:
            raise _NotFast
        pos += length
        if pos > end:
            raise _NotFast  # truncated: pydicom names it
    raise _NotFast  # no pixel data


def _last_group_read(manufacturer: bytes) -> int:
    """The last group whose elements matter: 0028, or a vendor's private group (Philips scale slope,
    UIH grid) that comes after it."""
    name = manufacturer.upper().lstrip()
    if b"PHILIPS" in name:
        return PHILIPS_GROUP
    if name.startswith(b"SIEMENS") or name.startswith(b"CPS"):
        return 0x0029  # the CSA headers
    if name.startswith(b"UI"):
        return UIH_GROUP
    return 0x0028


def _pixel_data_at_end(data: bytes, explicit: bool, header: FastHeader) -> bool:
    """Whether the file ends with a pixel data element exactly as long as Rows x Columns x BitsAllocated
    needs (even-padded); if so, where its value lies is set in ``header``."""
    raw = header.raw
    try:
        need = _decode(raw[0x00280010], "US") * _decode(raw[0x00280011], "US") * _decode(raw[0x00280100], "US") // 8
    except (KeyError, TypeError):
        return False
    need += need & 1
    size = struct.pack("<I", need)
    if explicit:
        start = len(data) - need - 12
        ok = start > 0 and data[start:start + 4] == b"\xe0\x7f\x10\x00" and data[start + 4:start + 6] in (b"OW", b"OB") \
            and data[start + 6:start + 12] == b"\x00\x00" + size
        offset = start + 12
    else:
        start = len(data) - need - 8
        ok = start > 0 and data[start:start + 8] == b"\xe0\x7f\x10\x00" + size
        offset = start + 8
    if ok:
        header.pixel_offset, header.pixel_length = offset, need
    return ok


def _meta(data: bytes) -> tuple[str, int]:
    """The transfer syntax and the position after the file meta group."""
    pos, ts = 132, ""
    while pos + 8 <= len(data) and data[pos:pos + 2] == b"\x02\x00":
        group, elem, _vr, length, start = _element(data, pos, explicit=True)  # the file meta group is explicit VR
        if length == UNDEFINED or start + length > len(data):
            raise _NotFast
        if (group << 16) | elem == TRANSFER_SYNTAX:
            ts = data[start:start + length].decode("latin-1").strip("\x00 ")
        pos = start + length
    return ts, pos


# a data set without preamble starts with a file meta, identifying, patient, acquisition, relationship or
# image group element (little or big endian)
_FIRST_GROUPS = frozenset(g for group in (0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028) for g in (group, ((group & 0xFF) << 8) | (group >> 8)))


def is_not_dicom(path: Path) -> bool:
    """True for a file that cannot be DICOM: no preamble, and its first bytes are not a file meta or
    identifying group element (text, images, archives ...)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False  # the reader names why it cannot be read
    if len(head) < 8:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return False
    return struct.unpack_from("<H", head, 0)[0] not in _FIRST_GROUPS


def read_image_header(path: Path) -> FastHeader | None:
    """The header of a single-frame, uncompressed, little-endian, grey-level image file with its pixel
    data complete; None when the file is anything else (pydicom reads those)."""
    try:
        size = path.stat().st_size
        if size < 144 or size > MAX_FAST_FILE_BYTES:
            return None
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if data[128:132] != b"DICM":
        return None
    header = FastHeader(path, {}, -1, 0)
    try:
        ts, pos = _meta(data)
        if ts not in (IMPLICIT_LE, EXPLICIT_LE):
            return None
        _walk_header(data, pos, ts == EXPLICIT_LE, header)
    except (_NotFast, struct.error):
        return None
    return header if _fast_image(header) else None


def _fast_image(h: FastHeader) -> bool:
    """Whether the fast path converts this file exactly as the pydicom path would."""
    try:
        rows, cols, bits = int(h.get("Rows", 0)), int(h.get("Columns", 0)), int(h.get("BitsAllocated", 0))
        frames = int(h.get("NumberOfFrames", 1) or 1)
        samples = int(h.get("SamplesPerPixel", 1) or 1)
        stored = int(h.get("BitsStored", bits) or bits)
        int(h.get("PixelRepresentation", 0) or 0)
    except (TypeError, ValueError):
        return False
    if h.character_set() not in TEXT_CHARSETS:
        return False  # other character sets (ISO 2022 escapes, GB18030 ...): pydicom decodes the text
    image_type = h.get("ImageType", "")
    image_type = image_type if isinstance(image_type, list) else [image_type]
    return (rows > 0 and cols > 0 and bits in (8, 16, 32) and 0 < stored <= bits and frames == 1 and samples == 1
            and str(h.get("PhotometricInterpretation", "MONOCHROME2")).startswith("MONOCHROME")
            and h.get("SOPClassUID") != SEG_SOP_CLASS and "SOPClassUID" in h
            and h.pixel_length >= rows * cols * bits // 8)
