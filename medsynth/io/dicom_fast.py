"""A fast header reader for the common DICOM image file, without pydicom.

Most files a scanner exports are uncompressed, little endian, with the 128-byte preamble. pydicom
parses every element of such a file in Python (several hundred per MR file, most of them in private
groups conversion never reads), and importing pydicom costs half a second: together most of
``medsynth convert``'s time. :func:`read_image_header` walks the elements with ``struct`` and keeps the
raw values of the attributes conversion reads (:data:`TAGS`, the file meta's :data:`META`, and the vendor private elements of
:data:`PRIVATE`: Siemens mosaic and CSA, GE diffusion, image type and raw data run number, Philips scaling, diffusion and
trigger) and where the pixel data lie.
An enhanced multi-frame object (explicit VR) keeps its shared and per-frame functional groups whole,
as :class:`FastItem` trees that answer the way pydicom's items do.
A compressed or explicit big-endian file (:func:`read_fast_header`) has its header read here too; its
pixel data are decoded without pydicom when it is a single-frame grey-level image
(:mod:`medsynth.io.dicom.compressed`), else by pydicom (``header_only``).
Every other file gives None (deflated transfer syntax, no preamble, UIH grid, colour, SEG, a character
set other than the default, Latin-1 or UTF-8, truncated, a layout it cannot walk); those are read by
pydicom, which also names what is wrong with a broken file.
Values are decoded as pydicom decodes them (tests/io/test_dicom_fast.py).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
MAX_FAST_FILE_BYTES = 64 << 20  # larger files are read by pydicom


def is_encapsulated_syntax(ts: str) -> bool:
    """A compressed transfer syntax: explicit VR little-endian data set, encapsulated pixel data (JPEG
    family, JPEG-LS, JPEG 2000, HTJ2K, MPEG, JPEG XL under 1.2.840.10008.1.2.4, and RLE)."""
    return ts.startswith("1.2.840.10008.1.2.4.") or ts == "1.2.840.10008.1.2.5"


# keyword -> (tag, VR) of every top-level attribute the converter reads
TAGS: dict[str, tuple[int, str]] = {
    "SpecificCharacterSet": (0x00080005, "CS"),
    "ImageType": (0x00080008, "CS"),
    "ComplexImageComponent": (0x00089208, "CS"),
    "SOPClassUID": (0x00080016, "UI"),
    "SOPInstanceUID": (0x00080018, "UI"),
    "StudyDate": (0x00080020, "DA"),
    "StudyTime": (0x00080030, "TM"),
    "SeriesTime": (0x00080031, "TM"),
    "AcquisitionTime": (0x00080032, "TM"),
    "Modality": (0x00080060, "CS"),
    "Manufacturer": (0x00080070, "LO"),
    "SeriesDescription": (0x0008103E, "LO"),
    "PatientID": (0x00100020, "LO"),
    "SequenceName": (0x00180024, "SH"),
    "RepetitionTime": (0x00180080, "DS"),
    "EchoTime": (0x00180081, "DS"),
    "EchoNumbers": (0x00180086, "IS"),
    "ProtocolName": (0x00181030, "LO"),
    "TriggerTime": (0x00181060, "DS"),
    "Exposure": (0x00181152, "IS"),
    "FlipAngle": (0x00181314, "DS"),
    "SoftwareVersions": (0x00181020, "LO"),
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
    "ImagesInAcquisition": (0x00201002, "IS"),
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
# keyword -> (tag, VR) of the file meta attributes the converter reads (FastHeader.meta; pydicom keeps
# them apart from the data set, in file_meta)
META: dict[str, tuple[int, str]] = {
    "ImplementationVersionName": (0x00020013, "SH"),
}
_META_TAGS = frozenset(tag for tag, _vr in META.values())
_TAG_VR = {tag: vr for tag, vr in (*TAGS.values(), *META.values())}
_KEYWORD = {tag: kw for kw, (tag, _vr) in TAGS.items()}
# the functional groups of an enhanced multi-frame object, kept whole (as FastItem trees)
FRAME_SEQUENCES = {"SharedFunctionalGroupsSequence": 0x52009229, "PerFrameFunctionalGroupsSequence": 0x52009230}
FRAME_GROUPS = frozenset(FRAME_SEQUENCES.values())
# keyword -> tag of what conversion reads inside the functional groups (a FastItem is asked by keyword
# for these only; every value is decoded by the VR the file gives, as pydicom does for explicit VR)
ITEM_TAGS: dict[str, int] = {
    "PlanePositionSequence": 0x00209113,
    "PlaneOrientationSequence": 0x00209116,
    "PixelMeasuresSequence": 0x00289110,
    "PixelValueTransformationSequence": 0x00289145,
    "FrameContentSequence": 0x00209111,
    "MREchoSequence": 0x00189114,
    "MRImageFrameTypeSequence": 0x00189226,
    "CTImageFrameTypeSequence": 0x00189329,
    "ImagePositionPatient": 0x00200032,
    "ImageOrientationPatient": 0x00200037,
    "PixelSpacing": 0x00280030,
    "SliceThickness": 0x00180050,
    "SpacingBetweenSlices": 0x00180088,
    "RescaleSlope": 0x00281053,
    "RescaleIntercept": 0x00281052,
    "StackID": 0x00209056,
    "InStackPositionNumber": 0x00209057,
    "TemporalPositionIndex": 0x00209128,
    "FrameAcquisitionDateTime": 0x00189074,
    "DimensionIndexValues": 0x00209157,
    "EffectiveEchoTime": 0x00189082,
    "FrameType": 0x00089007,
    "ComplexImageComponent": 0x00089208,
    "CardiacSynchronizationSequence": 0x00189118,
    "NominalCardiacTriggerDelayTime": 0x00209153,
    "TriggerTime": 0x00181060,
}
PHILIPS_GROUP, GE_GROUP = 0x2005, 0x0043
# private elements conversion reads: (group, private creator) -> {element low byte: name in FastHeader.private}
PRIVATE = {
    (0x0019, b"SIEMENS MR HEADER"): {0x0A: "mosaic_images", 0x29: "mosaic_slice_times"},
    (0x0019, b"GEMS_ACQU_01"): {0xBB: "ge_gradient_x", 0xBC: "ge_gradient_y", 0xBD: "ge_gradient_z", 0xE0: "ge_diffusion_directions",
                                 0x9C: "ge_pulse_sequence", 0x9E: "ge_internal_pulse_sequence", 0xA2: "ge_raw_data_run"},
    (0x0021, b"GEMS_RELA_01"): {0x4F: "ge_locations_in_acquisition", 0x5A: "ge_series_diffusion_type"},
    (0x0021, b"SIEMENS MR SDI 02"): {0x8E: "siemens_ice_dims_long"},
    (0x0029, b"SIEMENS CSA HEADER"): {0x10: "csa_image"},
    (GE_GROUP, b"GEMS_PARM_01"): {0x2F: "ge_image_type", 0x30: "ge_diffusion_type", 0x39: "ge_b_value"},
    (0x2001, b"PHILIPS IMAGING DD 001"): {0x03: "philips_b_value", 0x08: "philips_phase_number"},
    (PHILIPS_GROUP, b"PHILIPS MR IMAGING DD 001"): {0x0E: "philips_scale_slope", 0xA0: "philips_dynamic_scan_begin",
                                                    0xB0: "philips_gradient_x", 0xB1: "philips_gradient_y", 0xB2: "philips_gradient_z"},
    (PHILIPS_GROUP, b"PHILIPS MR IMAGING DD 005"): {0x29: "philips_label_type"},
}
PRIVATE_GROUPS = frozenset(group for group, _creator in PRIVATE)
UIH_GROUP, UIH_SLICES_IN_GRID = 0x0065, 0x1050
PIXEL_DATA = 0x7FE00010
TRANSFER_SYNTAX = 0x00020010
_RARE_GROUPS = frozenset({UIH_GROUP, 0x5200, 0x7FE0})  # groups with an element the walk stops or branches at
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL",
                       b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_HEAD_BYTES = {**{vr: 12 for vr in LONG_VRS}, **{vr: 8 for vr in SHORT_VRS}}  # explicit VR element header sizes
NUMERIC_TEXT = frozenset({"DS", "IS"})
TEXT_VRS = frozenset({"LO", "SH", "UC", "PN"})  # decoded in the file's character set, several values
SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT"})  # one value, backslashes included

EXPLICIT_BE = "1.2.840.10008.1.2.2"
_head16 = struct.Struct("<HH2sH").unpack_from
_head32 = struct.Struct("<HHI").unpack_from
_u32 = struct.Struct("<I").unpack_from
_BIG_ENDIAN = (struct.Struct(">HH2sH").unpack_from, struct.Struct(">HHI").unpack_from, struct.Struct(">I").unpack_from)


class _NotFast(Exception):
    """The file needs pydicom's reader."""


class FastElement:
    """One element of a :class:`FastItem` as pydicom's DataElement shows it: ``VR`` and ``value``."""

    __slots__ = ("VR", "value")

    def __init__(self, vr: str, value):
        self.VR = vr
        self.value = value


class FastItem:
    """One item of a functional-group sequence: every element it holds, raw, with the VR the file gives.

    ``get(keyword, default)`` (keywords of :data:`ITEM_TAGS`) answers with the value as pydicom does (a
    list of FastItems for a sequence); ``get((group, element))`` with a :class:`FastElement`, as
    ``Dataset.get`` of a tag does. A keyword outside ITEM_TAGS raises KeyError."""

    __slots__ = ("elements", "charset")

    def __init__(self, elements: dict[int, tuple[str, object]], charset: str = "latin-1"):
        self.elements = elements  # tag -> (VR, raw bytes, or a list of FastItems for SQ)
        self.charset = charset

    @staticmethod
    def _tag(key) -> int:
        if isinstance(key, str):
            tag = ITEM_TAGS.get(key)
            if tag is None:  # loud: a silent default would convert differently from the pydicom path
                raise KeyError(f"the fast reader does not know {key} in a functional group: add it to dicom_fast.ITEM_TAGS")
            return tag
        return (key[0] << 16) | key[1] if isinstance(key, tuple) else int(key)

    def _value(self, tag: int):
        vr, raw = self.elements[tag]
        if vr == "SQ":
            return [FastItem(e, self.charset) for e in raw]  # type: ignore[attr-defined]
        return _decode(raw, vr, self.charset)  # type: ignore[arg-type]

    def get(self, key, default=None):
        tag = self._tag(key)
        if tag not in self.elements:
            return default
        if isinstance(key, str):
            value = self._value(tag)
            return default if value is None else value
        return FastElement(self.elements[tag][0], self._value(tag))

    def __contains__(self, key) -> bool:
        return self._tag(key) in self.elements

    def __getitem__(self, key) -> FastElement:
        tag = self._tag(key)
        return FastElement(self.elements[tag][0], self._value(tag))

    def __getattr__(self, keyword: str):
        if keyword.startswith("_") or keyword not in ITEM_TAGS:
            raise AttributeError(keyword)
        value = self.get(keyword)
        if value is None:
            raise AttributeError(keyword)
        return value


@dataclass
class FastHeader:
    """The attributes of one image file, decoded on use.

    ``get(keyword, default)`` answers as a pydicom Dataset does for the keywords in :data:`TAGS`
    (numbers for IS/DS/US/FD, a list for several values, stripped text otherwise) and for the two
    functional-group sequences of an enhanced object (lists of :class:`FastItem`), and raises KeyError
    for any other keyword. ``pixel_array()`` reads uncompressed little-endian pixel data here and a
    compressed or big-endian single-frame grey-level image through :mod:`medsynth.io.dicom.compressed`
    (binary values of a big-endian file are kept little endian all the same). ``header_only``: the pixel
    data are pydicom's to decode."""

    path: Path
    raw: dict[int, bytes]
    pixel_offset: int
    pixel_length: int
    private: dict[str, bytes] = field(default_factory=dict)  # the PRIVATE elements found, raw
    frame_groups: dict[int, list[dict]] = field(default_factory=dict)  # FRAME_GROUPS tag -> items' elements
    header_only: bool = False
    transfer_syntax: str = ""
    _decoded: dict = field(default_factory=dict, repr=False, compare=False)

    def get(self, keyword: str, default=None):
        decoded = self._decoded
        if keyword in decoded:
            value = decoded[keyword]
        else:
            tag = TAGS.get(keyword)
            if tag is not None:
                value = None if tag[0] not in self.raw else _decode(self.raw[tag[0]], tag[1], self._charset())
            elif keyword in FRAME_SEQUENCES:
                items = self.frame_groups.get(FRAME_SEQUENCES[keyword])
                value = None if items is None else [FastItem(e, self._charset()) for e in items]
            else:  # loud: a silent default would convert differently from the pydicom path
                raise KeyError(f"the fast reader does not keep {keyword}: add it to dicom_fast.TAGS")
            decoded[keyword] = value
        return default if value is None else value

    def meta(self, keyword: str) -> str:
        """A file meta attribute of :data:`META` as text, '' when absent."""
        value = self.raw.get(META[keyword][0])
        return "" if value is None else value.decode("latin-1").strip("\x00 ")

    def character_set(self) -> str:
        """SpecificCharacterSet as written (several values joined by a backslash)."""
        return self.raw.get(0x00080005, b"").decode("latin-1").strip("\x00 ")

    def _charset(self) -> str:
        charset = self._decoded.get(_CHARSET_KEY)
        if charset is None:
            charset = self._decoded[_CHARSET_KEY] = TEXT_CHARSETS.get(self.character_set(), "latin-1")
        return charset

    def __contains__(self, keyword: str) -> bool:
        if keyword in FRAME_SEQUENCES:
            return FRAME_SEQUENCES[keyword] in self.frame_groups
        tag = TAGS.get(keyword)
        return tag is not None and tag[0] in self.raw

    def __getattr__(self, keyword: str):
        if keyword.startswith("_") or (keyword not in TAGS and keyword not in FRAME_SEQUENCES):
            raise AttributeError(keyword)
        value = self.get(keyword)
        if value is None:
            raise AttributeError(keyword)
        return value

    def frames(self) -> int:
        return int(self.get("NumberOfFrames", 1) or 1)

    def pixel_array(self) -> np.ndarray:
        """The stored values (Rows x Columns, or frames x Rows x Columns), bits above BitsStored masked or
        sign-extended."""
        if self.header_only:
            raise ValueError(f"{self.path}: pixel data only pydicom decodes: the fast reader read the header only")
        if self.transfer_syntax not in (IMPLICIT_LE, EXPLICIT_LE):
            from medsynth.io.dicom.compressed import decode

            return decode(self)
        with open(self.path, "rb") as fh:
            fh.seek(self.pixel_offset)
            raw = fh.read(self.pixel_length)
        return stored_values(raw, int(self.get("Rows")), int(self.get("Columns")), self.frames(), int(self.get("BitsAllocated")),
                             int(self.get("BitsStored", self.get("BitsAllocated"))), int(self.get("PixelRepresentation", 0)) == 1)


def stored_values(raw: bytes, rows: int, cols: int, frames: int, bits: int, stored: int, signed: bool) -> np.ndarray:
    """Uncompressed little-endian grey levels as an array ((frames,) rows, cols); bits above
    ``stored`` masked (unsigned) or sign-extended (signed), as pydicom does."""
    import numpy as np  # here: the header scan runs before numpy is imported (medsynth.io.dicom.scan)

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


BINARY_VRS = {"FD": "d", "FL": "f", "US": "H", "SS": "h", "UL": "I", "SL": "i"}  # VR -> struct code of one little-endian value
BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "AT"})  # values pydicom leaves as bytes (AT: never asked)


def _decode(raw: bytes, vr: str, charset: str = "latin-1"):
    code = BINARY_VRS.get(vr)
    if code is not None:
        size = struct.calcsize(code)
        n = len(raw) // size
        if n == 0:
            return None
        values = struct.unpack(f"<{n}{code}", raw[:size * n])
        return values[0] if n == 1 else list(values)
    if vr in BYTES_VRS:
        return raw
    # pydicom's text rules: LO, SH, UC in the character set, each value stripped of trailing padding;
    # LT, ST, UT one value; the other string VRs (CS, UI, DA, TM, DT, AS, DS, IS) in the default
    # encoding, the trailing padding of the whole value stripped
    if vr in SINGLE_TEXT_VRS:
        return raw.decode(charset, "replace").rstrip("\x00 ") or None
    if vr in TEXT_VRS:
        parts = [p.rstrip("\x00 ") for p in raw.decode(charset, "replace").split("\\")]
    else:
        parts = raw.decode("latin-1").rstrip(" \x00").split("\\")
    if vr in NUMERIC_TEXT:
        try:
            numbers = [int(p) if vr == "IS" else float(p) for p in parts]
        except ValueError:
            return "\\".join(parts) or None  # not a number: the caller's check names it
        return numbers[0] if len(numbers) == 1 else numbers
    if len(parts) == 1:
        return parts[0] or None
    return parts


def _skip_sequence(data: bytes, pos: int, explicit: bool, big: bool = False) -> int:
    """Position after an undefined-length sequence whose first item starts at ``pos``."""
    end = len(data)
    head32 = _BIG_ENDIAN[1] if big else _head32
    while pos + 8 <= end:
        group, elem, length = head32(data, pos)
        tag = (group << 16) | elem
        pos += 8
        if tag == SEQUENCE_END:
            return pos
        if tag != ITEM:
            raise _NotFast
        pos = pos + length if length != UNDEFINED else _walk(data, pos, explicit, big)
    raise _NotFast


def _element(data: bytes, pos: int, explicit: bool, big: bool = False) -> tuple[int, int, bytes, int, int]:
    """(group, element, VR, value length, value position) of the element at ``pos``."""
    head16, _head, u32 = _BIG_ENDIAN if big else (_head16, _head32, _u32)
    group, elem, vr, short_len = head16(data, pos)
    if not explicit or group == 0xFFFE:
        return group, elem, b"", u32(data, pos + 4)[0], pos + 8
    if vr in LONG_VRS:
        return group, elem, vr, u32(data, pos + 8)[0], pos + 12
    if vr[0] > 64 and vr[1] > 64:
        return group, elem, vr, short_len, pos + 8
    raise _NotFast  # an implicit element in an explicit data set


def _walk(data: bytes, pos: int, explicit: bool, big: bool = False) -> int:
    """Walk the elements of one undefined-length item from ``pos``; the position after its delimiter."""
    end = len(data)
    while pos + 8 <= end:
        group, elem, vr, length, pos = _element(data, pos, explicit, big)
        if group == 0xFFFE:
            if elem == 0xE00D:
                return pos
            raise _NotFast
        if length == UNDEFINED:
            pos = _skip_sequence(data, pos, explicit and vr != b"UN", big)  # an undefined-length UN holds implicit-VR items
        else:
            pos += length
    raise _NotFast


def _parse_sequence(data: bytes, pos: int, length: int) -> tuple[list[dict], int]:
    """The items of an explicit-VR sequence whose value starts at ``pos`` (``length`` bytes, or
    undefined up to its delimiter), each as {tag: (VR, raw value or items)}; the position after it."""
    items: list[dict] = []
    end = pos + length if length != UNDEFINED else len(data)
    if end > len(data):
        raise _NotFast
    while pos < end:
        group, elem, item_length = _head32(data, pos)
        tag = (group << 16) | elem
        pos += 8
        if tag == SEQUENCE_END and length == UNDEFINED:
            return items, pos
        if tag != ITEM:
            raise _NotFast
        elements, pos = _parse_item(data, pos, item_length)
        items.append(elements)
    if length == UNDEFINED or pos != end:
        raise _NotFast
    return items, pos


def _parse_item(data: bytes, pos: int, length: int) -> tuple[dict, int]:
    """The elements of one item from ``pos`` (``length`` bytes, or undefined up to its delimiter)."""
    elements: dict[int, tuple[str, object]] = {}
    end = pos + length if length != UNDEFINED else len(data)
    if end > len(data):
        raise _NotFast
    while pos + 8 <= end:
        group, elem, vr, value_length = _head16(data, pos)
        if group == 0xFFFE:
            if elem == 0xE00D and length == UNDEFINED:
                return elements, pos + 8
            raise _NotFast
        size = _HEAD_BYTES.get(vr)
        if size is None:
            raise _NotFast  # an implicit element in an explicit data set
        if size == 12:
            value_length = _u32(data, pos + 8)[0]
        pos += size
        tag = (group << 16) | elem
        if vr == b"SQ":
            items, pos = _parse_sequence(data, pos, value_length)
            elements[tag] = ("SQ", items)
            continue
        if value_length == UNDEFINED or pos + value_length > end:
            raise _NotFast  # an undefined-length UN sequence (pydicom may read it as a known VR) or a value past the item
        elements[tag] = (vr.decode("ascii"), data[pos:pos + value_length])
        pos += value_length
    if length == UNDEFINED or pos != end:
        raise _NotFast
    return elements, pos


def _walk_header(data: bytes, pos: int, explicit: bool, header: FastHeader, header_only: bool = False, big: bool = False) -> None:
    """Keep the wanted top-level values in ``header`` and find the pixel data. Past group 0028 (and the
    vendor groups and functional groups :func:`_last_group_read` names) nothing more is kept: the pixel
    data are looked for at the end of the file first, with the exact length the image needs, and the
    walk goes on only if they are not there. ``header_only`` (a compressed or big-endian transfer syntax):
    the walk ends at the pixel data element, whose value pydicom decodes; the functional groups are skipped. A file that ends before its pixel data
    (truncated, or none) raises struct.error: this loop is the reader's cost, so it checks no bounds."""
    end = len(data)
    keep, private = header.raw, header.private
    tag_vr, private_groups, rare_groups, head_bytes = _TAG_VR, PRIVATE_GROUPS, _RARE_GROUPS, _HEAD_BYTES
    head16, _head, u32 = _BIG_ENDIAN if big else (_head16, _head32, _u32)
    private_tags: dict[int, str] = {}  # tag -> name of the wanted elements of the private blocks found so far
    last_group = 0x0028 if not header_only else 0xFFFD  # past it: the pixel data are looked for at the end (once)
    resolved = header_only
    while True:
        group, elem, vr, length = head16(data, pos)  # inlined _element
        if explicit:
            try:
                size = head_bytes[vr]
            except KeyError:
                raise _NotFast from None  # an item tag, or an implicit element in an explicit data set
            if size == 12:
                length = u32(data, pos + 8)[0]
            pos += size
        else:
            length = u32(data, pos + 4)[0]
            pos += 8
        if group > last_group:
            if group >= 0xFFFE:
                raise _NotFast  # an item or delimiter tag at the top level
            if not resolved:
                resolved = True
                last_group = _last_group_read(keep)
            if group > last_group:
                last_group = 0xFFFD
                if _pixel_data_at_end(data, explicit, header):
                    return
        tag = (group << 16) | elem
        if length == UNDEFINED:
            if tag == PIXEL_DATA and header_only and not big:  # encapsulated (compressed) pixel data: its items start here
                header.header_only = True
                header.pixel_offset, header.pixel_length = pos, -1
                return
            if tag in FRAME_GROUPS and explicit and vr == b"SQ" and not header_only:
                header.frame_groups[tag], pos = _parse_sequence(data, pos, length)
            else:
                pos = _skip_sequence(data, pos, explicit and vr != b"UN", big)  # an undefined-length UN holds implicit-VR items
            continue
        if tag in tag_vr:
            keep[tag] = data[pos:pos + length]
        elif group in private_groups:
            if elem <= 0xFF:
                if elem >= 0x10:  # a private creator: its block's wanted elements are (group, elem << 8 | low)
                    wanted = PRIVATE.get((group, data[pos:pos + length].rstrip(b"\x00 ").upper()))
                    if wanted:
                        block = (group << 16) | (elem << 8)
                        private_tags.update({block | low: name for low, name in wanted.items()})
            else:
                name = private_tags.get(tag)
                if name is not None:
                    private[name] = data[pos:pos + length]
        elif group in rare_groups:
            if tag == PIXEL_DATA:
                if (header_only and not big) or pos + length > end:
                    raise _NotFast  # compressed data of a defined length, or truncated pixel data
                header.header_only = big
                header.pixel_offset, header.pixel_length = pos, length
                return
            if tag in FRAME_GROUPS and not header_only:
                if not explicit or vr != b"SQ":
                    raise _NotFast
                header.frame_groups[tag], pos = _parse_sequence(data, pos, length)
                continue
            if group == UIH_GROUP and elem == UIH_SLICES_IN_GRID:
                raise _NotFast  # a UIH grid: pydicom unpacks it
        pos += length


def _last_group_read(keep: dict[int, bytes]) -> int:
    """The last group whose elements matter: 0028, the functional groups (5200) of a multi-frame object,
    or a vendor's private group (Siemens CSA, GE diffusion, Philips scale slope, UIH grid) after 0028."""
    if 0x00280008 in keep:  # NumberOfFrames: an enhanced object's functional groups follow
        return 0x5200
    name = keep.get(0x00080070, b"").upper().lstrip()
    if b"PHILIPS" in name:
        return PHILIPS_GROUP
    if name.startswith(b"SIEMENS") or name.startswith(b"CPS"):
        return 0x0029  # the CSA headers
    if name.startswith(b"GE"):
        return GE_GROUP  # diffusion b value, image type
    if name.startswith(b"UI"):
        return UIH_GROUP
    return 0x0028


def _pixel_data_at_end(data: bytes, explicit: bool, header: FastHeader) -> bool:
    """Whether the file ends with a pixel data element exactly as long as Rows x Columns x BitsAllocated
    (x NumberOfFrames) needs (even-padded); if so, where its value lies is set in ``header``."""
    raw = header.raw
    try:
        need = _decode(raw[0x00280010], "US") * _decode(raw[0x00280011], "US") * _decode(raw[0x00280100], "US") // 8
        if 0x00280008 in raw:
            need *= int(_decode(raw[0x00280008], "IS"))
    except (KeyError, TypeError, ValueError):
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


def _meta(data: bytes, keep: dict[int, bytes]) -> tuple[str, int]:
    """The transfer syntax and the position after the file meta group; the :data:`META` attributes put in ``keep``."""
    pos, ts = 132, ""
    while pos + 8 <= len(data) and data[pos:pos + 2] == b"\x02\x00":
        group, elem, _vr, length, start = _element(data, pos, explicit=True)  # the file meta group is explicit VR
        if length == UNDEFINED or start + length > len(data):
            raise _NotFast
        tag = (group << 16) | elem
        if tag == TRANSFER_SYNTAX:
            ts = data[start:start + length].decode("latin-1").strip("\x00 ")
        elif tag in _META_TAGS:
            keep[tag] = data[start:start + length]
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


def read_fast_header(path: Path) -> FastHeader | None:
    """The header of an image file with the preamble: an uncompressed little-endian grey-level file with
    its pixel data complete (:func:`read_image_header`), or the header of a compressed or explicit
    big-endian one: its pixel data decoded without pydicom where
    :func:`medsynth.io.dicom.compressed.natively_decodable` says so, else ``header_only`` (enough to
    classify it; its pixel data are pydicom's). None for anything else."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 144 or size > MAX_FAST_FILE_BYTES:
                return None
            data = fh.read()
    except OSError:
        return None
    if data[128:132] != b"DICM":
        return None
    header = FastHeader(path, {}, -1, 0)
    try:
        ts, pos = _meta(data, header.raw)
        header.transfer_syntax = ts
        big = ts == EXPLICIT_BE
        header_only = big or is_encapsulated_syntax(ts)
        if ts not in (IMPLICIT_LE, EXPLICIT_LE) and not header_only:
            return None
        _walk_header(data, pos, ts != IMPLICIT_LE, header, header_only, big)
    except (_NotFast, struct.error):
        return None
    if big:
        _to_little_endian(header.raw)
    if header.header_only:
        if not _classifiable(header):
            return None
        from medsynth.io.dicom.compressed import natively_decodable

        header.header_only = not natively_decodable(header)
        return header
    return header if _fast_image(header) else None


def read_image_header(path: Path) -> FastHeader | None:
    """The header of an uncompressed, little-endian, grey-level image file (single frame, or an
    enhanced multi-frame object with its functional groups) with its pixel data complete; None when
    the file is anything else (pydicom reads those)."""
    header = read_fast_header(path)
    return header if header is not None and header.transfer_syntax in (IMPLICIT_LE, EXPLICIT_LE) else None


def _to_little_endian(raw: dict[int, bytes]) -> None:
    """The binary values of a big-endian file's kept attributes, byte-swapped in place."""
    for tag, value in raw.items():
        code = BINARY_VRS.get(_TAG_VR[tag])
        if code is not None:
            size = struct.calcsize(code)
            n = len(value) // size
            raw[tag] = struct.pack(f"<{n}{code}", *struct.unpack(f">{n}{code}", value[:n * size]))


def _classifiable(h: FastHeader) -> bool:
    """Whether a header-only file's header answers what the scan asks (SOP class, image size, series
    key) as pydicom's would: an image, not a SEG, text in a character set the reader decodes."""
    try:
        rows, cols = int(h.get("Rows", 0)), int(h.get("Columns", 0))
        h.frames()
    except (TypeError, ValueError):
        return False
    return (rows > 0 and cols > 0 and h.character_set() in TEXT_CHARSETS and "SOPClassUID" in h
            and h.get("SOPClassUID") != SEG_SOP_CLASS)


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
    if frames != 1 or h.frame_groups:
        # a multi-frame object: an enhanced one, its frames described by one per-frame item each
        per_frame = h.frame_groups.get(FRAME_SEQUENCES["PerFrameFunctionalGroupsSequence"])
        if frames < 1 or per_frame is None or len(per_frame) != frames:
            return False
    image_type = h.get("ImageType", "")
    image_type = image_type if isinstance(image_type, list) else [image_type]
    return (rows > 0 and cols > 0 and bits in (8, 16, 32) and 0 < stored <= bits and samples == 1
            and str(h.get("PhotometricInterpretation", "MONOCHROME2")).startswith("MONOCHROME")
            and h.get("SOPClassUID") != SEG_SOP_CLASS and "SOPClassUID" in h
            and h.pixel_length >= rows * cols * frames * bits // 8)
