"""What a header's attributes say, whichever reader read it (pydicom or the fast reader): the ImageType
words (derived, phase), private elements looked up through their private creator, and the attributes
whose differences split one series into several outputs as dcm2niix's ``isSameSet`` splits them."""

from __future__ import annotations

import math
import re
import struct
from typing import TYPE_CHECKING

from medsynth.io.dicom_fast import PRIVATE as _FAST_PRIVATE
from medsynth.io.dicom_fast import FastHeader

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


def _image_type(ds: Dataset | FastHeader) -> tuple[str, ...]:
    it = ds.get("ImageType")
    if it is None:
        return ()
    if isinstance(it, str):
        return tuple(x.upper() for x in it.split("\\"))
    return tuple(str(x).upper() for x in it)


DERIVED_DIFFUSION = ("ADC", "TRACEW", "TRACE", "FA")


def is_derived(ds: Dataset | FastHeader) -> bool:
    """A derived image (ImageType DERIVED, or an inner ADC / TRACEW / TRACE / FA value): dcm2niix never
    stacks it with the acquired images of its series, and neither does medsynth."""
    joined = "_".join(_image_type(ds))
    return "DERIVED" in joined or any(f"_{t}_" in joined for t in DERIVED_DIFFUSION)


def _is_phase(ds: Dataset | FastHeader) -> bool:
    it = _image_type(ds)
    return "P" in it or "PHASE" in it


def _private_bytes(ds: Dataset | FastHeader, group: int, creator: str, offset: int) -> bytes | tuple | None:
    """A private element found through its private creator (any block): the fast reader's raw bytes, or
    pydicom's value (bytes when read without a VR, else numbers); None when absent."""
    if isinstance(ds, FastHeader):
        name = _FAST_PRIVATE.get((group, creator.encode()), {}).get(offset)
        return None if name is None else ds.private.get(name)
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


def _private_text(ds: Dataset | FastHeader, group: int, creator: str, offset: int) -> str | None:
    """:func:`_private_bytes` of a text element (DS, IS, CS ...) as its text, several values joined by a
    backslash; None when absent."""
    v = _private_bytes(ds, group, creator, offset)
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("latin-1").strip("\x00 ")
    return "\\".join(str(x) for x in v)


def _private_int(ds: Dataset | FastHeader, group: int, creator: str, offset: int) -> int | None:
    """:func:`_private_bytes` of a binary integer element (SS, SL, US, UL; signed as dcm2niix reads them)."""
    v = _private_bytes(ds, group, creator, offset)
    if isinstance(v, bytes):
        return struct.unpack("<h" if len(v) == 2 else "<i", v[:4])[0] if len(v) in (2, 4) else None
    try:
        return int(v[0]) if v else None
    except (TypeError, ValueError):
        return None


def _private_numbers(ds: Dataset | FastHeader, group: int, creator: str, offset: int, fmt: str) -> tuple | None:
    """:func:`_private_bytes` as numbers (``fmt``: the struct code of raw bytes)."""
    v = _private_bytes(ds, group, creator, offset)
    if isinstance(v, bytes):
        size = struct.calcsize(fmt)
        n = len(v) // size
        return struct.unpack(f"<{n}{fmt}", v[:n * size]) if n else None
    return v


_LEADING_NUMBER = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _first(value):
    """The first of several values (a list or pydicom MultiValue), else the value."""
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, (str, bytes))):
        value = next(iter(value), None)
    return value


def atof(value) -> float:
    """A value as C's ``atof`` reads its text (dcm2niix's ``dcmStrFloat``): the leading number, 0.0 without one."""
    value = _first(value)
    if value is None:
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    m = _LEADING_NUMBER.match(str(value))
    return float(m.group()) if m else 0.0


def atoi(value) -> int:
    """A value as C's ``atoi`` reads its text (dcm2niix's ``dcmStrInt``)."""
    value = _first(value)
    if isinstance(value, int):
        return value
    m = re.match(r"\s*[+-]?\d+", "" if value is None else str(value))
    return int(m.group()) if m else 0


FLT_EPSILON = 1.1920929e-07  # C's float epsilon: dcm2niix's tolerance for TR, TE, flip angle and trigger times


def _float32(value) -> float:
    """A number at single precision: dcm2niix stores TR, TE and flip angle as ``float`` and compares them
    within FLT_EPSILON."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0]) if math.isfinite(value) else value


# dcm2niix's dcmStrManufacturer: the vendor from the first two letters of Manufacturer (0008,0070)
MANUFACTURERS = {"SI": "SIEMENS", "CP": "SIEMENS", "GE": "GE", "HI": "HITACHI", "ME": "MEDISO", "PH": "PHILIPS", "TO": "TOSHIBA",
                 "CA": "CANON", "UI": "UIH", "BR": "BRUKER", "MR": "MRSOLUTIONS", "HY": "HYPERFINE"}
MODALITIES = ("CR", "CT", "MR", "PT", "US")


def manufacturer(ds: Dataset | FastHeader) -> str:
    """The vendor as dcm2niix names it ('' when it does not know the name)."""
    return MANUFACTURERS.get(str(ds.get("Manufacturer", "") or "")[:2].upper(), "")


def _modality(ds: Dataset | FastHeader) -> str:
    """Modality as dcm2niix tells them apart: CR, CT, MR, PT or US (first letter as written), else ''."""
    m = str(ds.get("Modality", "") or "")
    code = m[:1] + m[1:2].upper()
    return code if code in MODALITIES else ""


def _image_type_text(ds: Dataset | FastHeader) -> str:
    """ImageType as dcm2niix matches it: the values joined by '_', case kept."""
    it = ds.get("ImageType")
    if it is None:
        return ""
    return (it if isinstance(it, str) else "\\".join(str(x) for x in it)).replace("\\", "_")


def complex_parts(ds: Dataset | FastHeader) -> tuple[bool, bool, bool]:
    """(real, imaginary, phase) as dcm2niix reads them: ImageType with an inner R / REAL, I / IMAGINARY or
    P value, or PHASE anywhere in it ("PHASE MAP", "PHASE CONTRAST M"); a GE image also by its private
    image type (0043,xx2F: 1 phase, 2 real, 3 imaginary). In a GE B0 field map dcm2niix sets the real flag
    by the image's InstanceNumber instead (:func:`with_instance_rules`)."""
    text = _image_type_text(ds)
    real = "_R_" in text or "_REAL_" in text
    imaginary = "_I_" in text or "_IMAGINARY_" in text
    phase = "_P_" in text or (len(text) > 6 and "PHASE" in text)
    if manufacturer(ds) == "GE":
        ge = _private_int(ds, 0x0043, "GEMS_PARM_01", 0x2F)
        real, imaginary, phase = real or ge == 2, imaginary or ge == 3, phase or ge == 1
    component = component_parts(str(ds.get("ComplexImageComponent", "") or ""))
    return real or component[0], imaginary or component[1], phase or component[2]


def component_parts(text: str) -> tuple[bool, bool, bool]:
    """(real, imaginary, phase) of a ComplexImageComponent (0008,9208) value as dcm2niix reads it: by its
    first two letters, the first as written (REAL, IMAGINARY, PHASE; MAGNITUDE and MIXED set none)."""
    code = text[:1] + text[1:2].upper()
    return code == "RE", code == "IM", code == "PH"


def ge_field_map_volume(ds: Dataset | FastHeader) -> bool | None:
    """For an image of a GE B0 field map series (Pulse Sequence Name (0019,xx9C) with 'b0map', or Internal
    Pulse Sequence Name (0019,xx9E) 'B0map') whose ImagesInAcquisition (0020,1002) differs from its
    Locations in Acquisition (0021,xx4F, times the ZIP factor round(SliceThickness / SpacingBetweenSlices)
    when above 1): whether it belongs to the first volume (InstanceNumber up to those locations), the
    field map in Hz, which dcm2niix marks real and so writes apart from the magnitude volume (nii_dicom.cpp,
    issue 501). None for any other image."""
    name = _private_text(ds, 0x0019, "GEMS_ACQU_01", 0x9C) or ""
    internal = _private_text(ds, 0x0019, "GEMS_ACQU_01", 0x9E) or ""
    if "b0map" not in name and internal != "B0map":
        return None
    images = atoi(ds.get("ImagesInAcquisition"))
    locations = _private_int(ds, 0x0021, "GEMS_RELA_01", 0x4F) or 0
    if images <= 0 or locations <= 0 or images == locations:
        return None
    thickness = atof(ds.get("SliceThickness")) if "SliceThickness" in ds else 1.0  # dcm2niix's default xyzMM[3]
    spacing = atof(ds.get("SpacingBetweenSlices"))
    zip_factor = math.floor(thickness / spacing + 0.5) if spacing > 0 and math.isfinite(thickness / spacing) else 0  # C's roundf
    if zip_factor > 1:
        locations *= zip_factor
    return atoi(ds.get("InstanceNumber")) <= locations


def is_xray(ds: Dataset | FastHeader) -> bool:
    """dcm2niix's X-ray test: an Exposure (0018,1152) without a non-zero EchoTime before it. dcm2niix stacks
    such images (CT) whatever their TR, flip angle, echo, exposure, phase, coil or protocol name."""
    return "Exposure" in ds and atof(ds.get("EchoTime")) == 0.0


def _philips_trigger(ds: Dataset | FastHeader) -> float | None:
    """A Philips image's TriggerTime as dcm2niix keeps it to split a series: 0 when the image has a cardiac
    phase number (2001,xx08) or its trigger is the dynamic scan's begin time (2005,xxA0, in s); None for an
    ASL label or control image (2005,xx29 in the 'DD 005' block: L / C), whose trigger times never split."""
    label = _private_text(ds, 0x2005, "PHILIPS MR IMAGING DD 005", 0x29)
    if label and label[:1].upper() in ("L", "C"):
        return None
    trigger = _float32(atof(ds.get("TriggerTime")))
    if atoi(_private_text(ds, 0x2001, "PHILIPS IMAGING DD 001", 0x08)) > 0:
        return 0.0
    begin = _private_numbers(ds, 0x2005, "PHILIPS MR IMAGING DD 001", 0xA0, "f")
    if begin and abs(_float32(float(begin[0]) * 1000.0) - trigger) <= FLT_EPSILON:
        return 0.0
    return trigger


def _text(value) -> str:
    """An attribute's text as dcm2niix reads it: several values joined by a backslash, '' when absent."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, (str, bytes))):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _protocol(ds: Dataset | FastHeader, protocol: str | None = None) -> str:
    """The protocol name as dcm2niix compares it: ProtocolName (or ``protocol``, where the caller read it
    elsewhere), else a SeriesDescription of two or more characters."""
    if protocol is None:
        protocol = str(ds.get("ProtocolName", "") or "").strip()
    if not protocol:
        description = str(ds.get("SeriesDescription", "") or "").strip()
        protocol = description if len(description) > 1 else ""
    return protocol


def _else_sequence_name(ds: Dataset | FastHeader, protocol: str) -> str:
    """``protocol`` (:func:`_protocol`, '_MoCo' added), else, when it is empty, a SequenceName (0018,0024) of two or
    more characters unless the vendor (:func:`vendor`) is Siemens, as dcm2niix's readDICOMx takes it after the
    '_MoCo' rule (so never with '_MoCo'): a Siemens sequence name varies per volume (*ep_b0, *ep_b1000#1 ...)."""
    if protocol:
        return protocol
    sequence = _text(ds.get("SequenceName"))
    return sequence if len(sequence) > 1 and vendor(ds) != "SIEMENS" else protocol


def protocol_name(ds: Dataset | FastHeader) -> str:
    """The protocol name of a classic file as dcm2niix's readDICOMx leaves it (:func:`_protocol`), '_MoCo'
    added when it has two or more characters and ImageType holds an inner MOCO value (a motion-corrected
    series, any vendor: MRIcroGL issue 31), so that a MoCo series is never stacked with its source; else a
    non-Siemens SequenceName (:func:`_else_sequence_name`)."""
    protocol = _protocol(ds)
    if len(protocol) > 1 and "_MOCO_" in _image_type_text(ds):
        protocol += "_MoCo"
    return _else_sequence_name(ds, protocol)


# dcm2niix's isXA10A (SoftwareVersions of an early Siemens XA release) and isSiemensXA (any XA release)
XA10A_RELEASES = ("XA10", "XA11", "XA20", "XA30", "XA31")
XA_RELEASES = (*XA10A_RELEASES, "XA5", "XA6", "XA7")


def _implementation_version(ds: Dataset | FastHeader) -> str:
    """The file meta's ImplementationVersionName (0002,0013), '' when absent."""
    if isinstance(ds, FastHeader):
        return ds.meta("ImplementationVersionName")
    meta = getattr(ds, "file_meta", None)
    return "" if meta is None else _text(meta.get("ImplementationVersionName"))


def siemens_xa(ds: Dataset | FastHeader) -> tuple[bool, bool]:
    """(an early XA release: dcm2niix's ``isXA10A``, any XA release: ``isSiemensXA``), whatever the
    Manufacturer, as dcm2niix's readDICOMx sets them: early from an ImplementationVersionName (0002,0013)
    with 'XA10A' or a SoftwareVersions (0018,1020) of an early release; any XA release from an early one
    with a SoftwareVersions element (even empty: its reading sets the flag) or a SoftwareVersions of a
    later release."""
    text = _text(ds.get("SoftwareVersions"))
    implementation = _implementation_version(ds)
    early = (len(implementation) >= 5 and "XA10A" in implementation) or (len(text) > 4 and any(r in text for r in XA10A_RELEASES))
    return early, (early and "SoftwareVersions" in ds) or (len(text) > 4 and any(r in text for r in XA_RELEASES))


def vendor(ds: Dataset | FastHeader) -> str:
    """The vendor as dcm2niix compares it once a file is read (isSameSet, and the merge rules of
    :func:`merged_series`): Siemens for an early XA file whatever its Manufacturer (readDICOMx: 'XA10A
    mosaics omit Manufacturer'), else :func:`manufacturer`."""
    return "SIEMENS" if siemens_xa(ds)[0] else manufacturer(ds)


def merged_series(ds: Dataset | FastHeader) -> str | None:
    """What dcm2niix (default options: ``-m 2``, ``isForceStackDCE``) stacks a file with instead of its
    SeriesInstanceUID and SeriesNumber, or None for a file it keeps to its series (nii_dicom.cpp, the end
    of ``readDICOMx``; nii_dicom_batch.cpp ``isSameSet``):

    * a Siemens XA classic ("interoperability") image, one frame per file with a SeriesTime (0008,0031):
      the series time (issue 394: these exports give each volume of a series its own SeriesInstanceUID,
      and may give it its own SeriesNumber and StudyInstanceUID);
    * else a Siemens dynamic 3D series (SequenceName with 'fldyn3d1', DCE), not of an early XA release:
      the protocol name (issue 252: one series per dynamic).

    The attributes of :func:`stack_key` still split the merged files (study date/time, TR, echo ...)."""
    if vendor(ds) != "SIEMENS":
        return None
    early, xa = siemens_xa(ds)
    series_time = _text(ds.get("SeriesTime"))
    if xa and len(series_time) > 1 and int(ds.get("NumberOfFrames", 1) or 1) <= 1:
        return f"Siemens XA series time {series_time}"
    if not early and "fldyn3d1" in _text(ds.get("SequenceName")):
        return f"Siemens dynamic series of protocol {protocol_name(ds)}"
    return None


def stack_key(ds: Dataset | FastHeader) -> tuple[tuple[str, object], ...]:
    """The attributes beyond geometry whose differences make dcm2niix (``isSameSet``, default options)
    write one series as several outputs, as (name, value) pairs: derived image, vendor (:func:`vendor`),
    modality, study date and time (None for an early Siemens XA file with a StudyInstanceUID: dcm2niix
    ignores the study time of two such files of one study UID, issue 236; the series resolves it across
    study UIDs); and, except for X-ray images (:func:`is_xray`), real / imaginary / phase, TR, flip
    angle, echo time and number, a Philips trigger time and the protocol name (else the series
    description; '_MoCo' added for a MOCO ImageType; else a non-Siemens SequenceName: :func:`protocol_name`). Receive coil and
    acquisition number do not split (dcm2niix stacks them by default)."""
    early_xa = siemens_xa(ds)[0] and len(str(ds.get("StudyInstanceUID", "") or "")) > 1
    key: list[tuple[str, object]] = [
        ("derived", is_derived(ds)),
        ("vendor", vendor(ds)),
        ("modality", _modality(ds)),
        ("study date/time", None if early_xa else atof(ds.get("StudyDate")) * 1e6 + atof(ds.get("StudyTime"))),
    ]
    if is_xray(ds):  # medsynth splits them by echo number and phase still: never stacks phase with magnitude
        echo = ds.get("EchoNumbers")
        return (*key, ("x-ray", True), ("echo", "" if echo is None else str(echo)), ("phase", _is_phase(ds)))
    protocol = protocol_name(ds)
    key += [
        ("real/imaginary/phase", complex_parts(ds)),
        ("TR", _float32(atof(ds.get("RepetitionTime")))),
        ("flip angle", _float32(atof(ds.get("FlipAngle")))),
        ("echo", (_float32(atof(ds.get("EchoTime"))), atoi(ds.get("EchoNumbers")))),
        ("trigger time", _philips_trigger(ds) if vendor(ds) == "PHILIPS" else None),
        ("protocol", protocol),
    ]
    return tuple(key)


def with_instance_rules(ds: Dataset | FastHeader, key: tuple[tuple[str, object], ...]) -> tuple[tuple[str, object], ...]:
    """``key`` (:func:`stack_key` of ``ds``) with the rule that depends on the image's InstanceNumber, which
    stack_key never reads (its value holds for every image of a series that differs only in SOPInstanceUID,
    InstanceNumber and position): in a GE B0 field map the real flag is whether the image belongs to the
    field map volume (:func:`ge_field_map_volume`), whatever ImageType and (0043,xx2F) say."""
    field_map = ge_field_map_volume(ds) if manufacturer(ds) == "GE" else None
    if field_map is None:
        return key
    return tuple((name, (field_map, *value[1:])) if name == "real/imaginary/phase" and isinstance(value, tuple) else (name, value)
                 for name, value in key)
