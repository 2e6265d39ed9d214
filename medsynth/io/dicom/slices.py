"""Image files -> ``Slice`` objects: a classic single-frame file (from its top-level attributes, read by
pydicom or the fast reader) and an enhanced multi-frame object (one Slice a frame, from its functional
groups)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeGuard, cast

import numpy as np

from medsynth.io.dicom.attributes import (
    _else_sequence_name,
    _float32,
    _image_type,
    _image_type_text,
    _is_phase,
    _modality,
    _private_text,
    _protocol,
    atof,
    atoi,
    complex_parts,
    component_parts,
    is_derived,
    is_xray,
    manufacturer,
    siemens_xa,
    stack_key,
)
from medsynth.io.dicom.ge import ge_diffusion
from medsynth.io.dicom.geometry import Slice, _floats, _norm_iop, dcm2niix_sort_key
from medsynth.io.dicom.philips import philips_diffusion, philips_float_scaling, philips_scale_slope
from medsynth.io.dicom.pixels import _check_rescale, _FrameCache, decode_pixels
from medsynth.io.dicom_fast import TAGS, FastHeader
from medsynth.io.quarantine import SeriesError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


class _Plane(NamedTuple):
    """Where one 2D image lies: unit row and column cosines, the first voxel's position and the spacing
    (between rows, between columns), each checked numeric and finite, the spacing positive."""

    iop: np.ndarray
    ipp: np.ndarray
    spacing: np.ndarray


def _plane(path: Path, orientation, position, spacing) -> _Plane:
    """The checked ImageOrientationPatient, ImagePositionPatient and PixelSpacing values of one image or frame
    (a zero spacing would give the volume a singular affine)."""
    iop = _norm_iop(_floats(orientation, 6, "ImageOrientationPatient", path))
    ipp = _floats(position, 3, "ImagePositionPatient", path)
    ps = _floats(spacing, 2, "PixelSpacing", path)
    if np.any(ps <= 0):
        raise SeriesError(f"PixelSpacing must be positive, got {[float(v) for v in ps]}")
    return _Plane(iop, ipp, ps)


def _slice(path: Path, ds: Dataset | FastHeader, frame: int | None, plane: _Plane, slope: float, intercept: float, split_key: tuple,
           time_key: tuple, loader: Callable[[], np.ndarray], diffusion: tuple[float, tuple[float, ...]] | None = None) -> Slice:
    """The Slice of one image (``frame`` None) or one frame of a multi-frame object ``ds``: its plane, the
    object's Rows x Columns, the rescale to apply and the keys that split ((name, value) pairs) and order a
    series."""
    return Slice(path=path, frame=frame, iop=plane.iop, ipp=plane.ipp, pixel_spacing=(float(plane.spacing[0]), float(plane.spacing[1])),
                 rows=int(ds.Rows), cols=int(ds.Columns), slope=slope, intercept=intercept, split_key=split_key, time_key=time_key,
                 loader=loader, diffusion=diffusion)


# the attributes in which the images of one series differ: left out of the key that the values computed
# from all the other attributes of a fast-read header are kept under (tests/io/test_dicom_fast.py checks
# that those values never read them)
PER_IMAGE_TAGS = frozenset(TAGS[k][0] for k in ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient"))
PER_IMAGE_PRIVATE = frozenset({"ge_raw_data_run"})  # the private elements of FastHeader.private that differ alike
_SHARED_MAX = 256
_shared_values: dict[tuple, tuple] = {}


def _image_values(ds: Dataset | FastHeader) -> tuple[tuple, float, float, tuple[float, tuple[float, ...]] | None]:
    """(split key, slope, intercept, diffusion) of a single-frame image: the same for the images of a
    series whose headers differ only in PER_IMAGE_TAGS, so a fast-read header's are computed once per
    such group. A SeriesError is raised for every image it concerns (errors are not kept)."""
    key = None
    if isinstance(ds, FastHeader):
        key = (tuple(item for item in ds.raw.items() if item[0] not in PER_IMAGE_TAGS),
               tuple(item for item in ds.private.items() if item[0] not in PER_IMAGE_PRIVATE))
        found = _shared_values.get(key)
        if found is not None:
            return found  # type: ignore[return-value]
    if "VFRAME" in _image_type(ds):
        raise SeriesError("UIH grid image (ImageType VFRAME) without its grid tags (0065,1050) and (0065,1051): removed by "
                          "de-identification? keep them with deid.retain_safe_private: true")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    diffusion = None
    if "PHILIPS" in str(ds.get("Manufacturer", "")).upper():
        slope, intercept = philips_float_scaling(slope, intercept, philips_scale_slope(ds))
        diffusion = philips_diffusion(ds)
    elif manufacturer(ds) == "GE":
        diffusion = ge_diffusion(ds)
    _check_rescale(slope, intercept)
    values = (stack_key(ds), slope, intercept, diffusion)
    if key is not None:
        if len(_shared_values) >= _SHARED_MAX:
            _shared_values.clear()
        _shared_values[key] = values
    return values


def classic_slice(path: Path, ds: Dataset | FastHeader) -> Slice:
    """One single-frame image file -> Slice (geometry from its top-level attributes); ``ds`` is the
    file read by pydicom or by the fast reader (which answer alike)."""
    split_key, slope, intercept, diffusion = _image_values(ds)
    plane = _plane(path, ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient"), ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing"))

    def load() -> np.ndarray:
        arr = ds.pixel_array() if isinstance(ds, FastHeader) else decode_pixels(path, ds)
        if arr.ndim != 2:
            raise SeriesError(f"expected a 2D image, pixel array has shape {arr.shape}")
        return arr

    file_key = dcm2niix_sort_key(ds)
    # the file order (dcm2niix_order): the image key, the GE raw data run number and the SOPInstanceUID CRC of the file's key
    s = _slice(path, ds, None, plane, slope, intercept, split_key, (file_key[0], file_key[5], file_key[6]), load, diffusion)
    s.file_key = file_key
    s.volume_number = atoi(ds.get("TemporalPositionIdentifier")) if "TemporalPositionIdentifier" in ds else -1
    return s


def is_enhanced(ds: Dataset | FastHeader) -> TypeGuard[Dataset]:
    """A multi-frame object (never a file the fast reader read: those are single-frame)."""
    return int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds


def _fg_item(per_frame: Dataset, shared: Dataset | None, seq: str) -> Dataset | None:
    for group in (per_frame, shared):
        if group is not None and seq in group and len(group[seq].value):
            return group[seq].value[0]
    return None


# An enhanced object's attributes as dcm2niix's readDICOMx (nii_dicom.cpp) reads them: every tag wherever it is
# nested, in file order, the last one read winning (ImageType and ComplexImageComponent only ever set the
# derived, real, imaginary and phase flags). Those found below the top level sit in these items of the shared
# and each per-frame functional group (tag order): MR timing (TR, flip angle), MR echo (effective echo time),
# MR image frame type (complex image component), the unassigned converted attributes of a legacy converted
# object, the Siemens per-frame item (ICE dims (0021,1106) and (0021,118E)) and the Philips per-frame item (2005,140F).
_GROUP_ITEMS = (0x00189112, 0x00189114, 0x00189226, 0x00209170, 0x00209171, 0x002111FE, 0x2005140F)
_PHILIPS_ITEM = 0x2005140F
# name -> tag of what is read in those items (their tag order is the order they are read in)
_ITEM_ATTRIBUTES = {"ImageType": 0x00080008, "ComplexImageComponent": 0x00089208, "RepetitionTime": 0x00180080, "EchoTime": 0x00180081,
                    "EchoNumbers": 0x00180086, "ProtocolName": 0x00181030, "FlipAngle": 0x00181314, "EffectiveEchoTime": 0x00189082,
                    "ICE dims": 0x00211106, "ICE dims long": 0x0021118E}
# vendors whose enhanced objects dcm2niix orders by DimensionIndexValues (0020,9157) (readDICOMx): such an
# object of more than one frame is written on its own, never stacked with another file (nii_dicom_batch.cpp,
# "4D dataset ... write this immediately")
_ALONE_VENDORS = frozenset({"PHILIPS", "CANON", "BRUKER", "MEDISO", ""})


class _ImageTypeOnly:
    """An ImageType value as :func:`is_derived` and :func:`complex_parts` read it from a header."""

    def __init__(self, value):
        self.value = value

    def get(self, keyword: str, default=None):
        return self.value if keyword == "ImageType" else default


def _or(a: tuple[bool, bool, bool], b: tuple[bool, bool, bool]) -> tuple[bool, bool, bool]:
    return a[0] or b[0], a[1] or b[1], a[2] or b[2]


class _FileValues:
    """The values dcm2niix's ``isSameSet`` compares, as readDICOMx leaves them after reading one enhanced object.
    The vendor is the Manufacturer's: dcm2niix takes an early XA object without one for Siemens, but reads
    its echo number differently then (the XA10 objects with Manufacturer removed from two: 3 outputs), which
    is not ported."""

    def __init__(self, ds: Dataset | FastHeader):
        self.siemens = manufacturer(ds) == "SIEMENS"
        self.derived = is_derived(ds)
        self.complex = complex_parts(ds)
        self.moco = "_MOCO_" in _image_type_text(ds)
        self.tr = atof(ds.get("RepetitionTime"))
        self.te = atof(ds.get("EchoTime"))
        self.echo = int(atoi(ds.get("EchoNumbers")))
        self.protocol = str(ds.get("ProtocolName", "") or "").strip()
        self.flip = atof(ds.get("FlipAngle"))
        self.ice_frames = 0
        if self.siemens:
            self._ice_frames(_private_text(ds, 0x0021, "SIEMENS MR SDI 02", 0x8E))

    def read(self, group) -> None:
        """Read the attributes of a functional group's items (shared, or one frame's)."""
        for tag in _GROUP_ITEMS:
            elem = group.get(tag)
            if elem is None or elem.VR != "SQ":
                continue
            for item in elem.value or ():
                self._read_item(item, philips=tag == _PHILIPS_ITEM)

    def _read_item(self, item, philips: bool) -> None:
        for name, tag in _ITEM_ATTRIBUTES.items():
            elem = item.get(tag)
            if elem is None:
                continue
            value = elem.value
            if name == "ImageType":
                text = cast(Any, _ImageTypeOnly(value))
                self.derived = self.derived or is_derived(text)
                self.complex = _or(self.complex, complex_parts(text))
                self.moco = self.moco or "_MOCO_" in _image_type_text(text)
            elif name == "ComplexImageComponent" and not philips:  # dcm2niix skips it in the Philips item
                self._complex_component(str(value or ""))
            elif name == "RepetitionTime":
                self.tr = atof(value)
            elif name in ("EchoTime", "EffectiveEchoTime"):
                self.te = atof(value)
            elif name == "EchoNumbers":
                self.echo = int(atoi(value))
            elif name == "ProtocolName":
                self.protocol = str(value or "").strip()
            elif name == "FlipAngle":
                self.flip = atof(value)
            elif name == "ICE dims" and self.siemens and self.echo <= 1:
                self._ice_echo(value)
            elif name == "ICE dims long" and self.siemens:
                self._ice_frames(value)

    def _complex_component(self, text: str) -> None:
        self.complex = _or(self.complex, component_parts(text))

    def _ice_frames(self, value) -> None:
        """The frames a Siemens ICE dims long text (0021,118E) expects: its 21st '_'-separated field (empty
        fields skipped, as strtok skips them), read until one gives a positive number (nii_dicom.cpp,
        kICE_dimsLong); a number below 2 means none (issue 751)."""
        if value is None or self.ice_frames > 0:
            return
        if isinstance(value, bytes):
            text = value.decode("latin-1")
        elif isinstance(value, str):
            text = value
        else:
            text = "\\".join(str(v) for v in value) if hasattr(value, "__iter__") else str(value)
        fields = [f for f in text.split("_") if f]
        if len(fields) > 20:
            self.ice_frames = atoi(fields[20])

    def partial_volume(self, slices: int) -> tuple[int, int] | None:
        """(slices, expected) for a partial volume as dcm2niix detects it (issue 742): more than one slice,
        other than the two or more frames the ICE dims long (0021,118E) expects; None otherwise."""
        expected = self.ice_frames if self.ice_frames >= 2 else 0
        return (slices, expected) if expected and slices > 1 and slices != expected else None

    def _ice_echo(self, value) -> None:
        """A Siemens ICE dims text ('X_1_1_1_1_1_1_4_1_1_1_1_104'): its second number is the echo number,
        read while the echo number is at most 1 (nii_dicom.cpp, kICE_dims)."""
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value or "")
        digits = "".join(c if c.isdigit() else " " for c in text)
        space = digits.find(" ")
        if space >= 0:
            self.echo = atoi(digits[space:])


# vendors whose InStackPositionNumber (0020,9057) dcm2niix reads (readDICOMx: Canon, Hitachi, Philips, Bruker and
# a Manufacturer it does not know)
_IN_STACK_VENDORS = frozenset({"CANON", "HITACHI", "PHILIPS", "BRUKER", ""})


def _volume_slices(vendor: str, per_frame_seq) -> int:
    """The slices of one volume of an enhanced object as dcm2niix's readDICOMx leaves its third dimension: the
    frames, divided by the number of temporal positions (TemporalPositionIndex max - min + 1) where more than
    one divides them, else, for :data:`_IN_STACK_VENDORS`, set to the largest InStackPositionNumber where one
    above 1 divides them. Not ported: the Philips locations in acquisition (2001,1018), segment numbers and
    the issue 839 rewrite (such objects are written on their own, :data:`_ALONE_VENDORS`), nor dcm2niix's
    writing a Siemens object of several temporal positions on its own (the wheel: a 12-frame object of two
    beside two 6-frame XA10 objects gives 2 outputs of 64x64x6x2; medsynth stacks them as 64x64x6x4)."""
    n = len(per_frame_seq)
    contents = [c for pf in per_frame_seq if (c := _fg_item(pf, None, "FrameContentSequence")) is not None]
    temporal = [int(t) for c in contents if (t := c.get("TemporalPositionIndex")) is not None]
    if temporal and max(temporal) > min(temporal) and n > 1 and n % (max(temporal) - min(temporal) + 1) == 0:
        return n // (max(temporal) - min(temporal) + 1)
    stack = [int(k) for c in contents if (k := c.get("InStackPositionNumber")) is not None] if vendor in _IN_STACK_VENDORS else []
    if stack and max(stack) > 1 and n > 1 and n % max(stack) == 0:
        return max(stack)
    return n


# the key's (slices, expected frames) of a Siemens object that dcm2niix takes for a partial volume (issue 742: its
# slices differ from what the ICE dims long (0021,118E) expects), None for any other: dcm2niix marks it derived and
# adds 1000 to its series number, so it is written apart from the series' complete volumes
PARTIAL = "partial volume"


def _enhanced_stack_key(path: Path, ds: Dataset | FastHeader, per_frame_seq, shared) -> tuple[tuple[str, object], ...]:
    """The (name, value) pairs by which dcm2niix (``isSameSet``, default options) writes the enhanced objects
    of one series apart, each object's values read as dcm2niix reads them (:class:`_FileValues`): derived,
    vendor, modality, study date/time (not for an early Siemens XA object: dcm2niix takes one study UID for the
    same time, issue 236), the slices of a volume (:func:`_volume_slices`: isSameSet compares the image
    dimensions, so a truncated last volume is written apart), a Siemens partial volume (:data:`PARTIAL`); and,
    except for X-ray images, real / imaginary / phase, TR, flip angle, echo time and number and the protocol
    name (else the series description; '_MoCo' added for a MOCO ImageType; else a non-Siemens SequenceName).
    An object that dcm2niix writes on its own (:data:`_ALONE_VENDORS`) has its path as a pair."""
    key: list[tuple[str, object]] = []
    vendor = manufacturer(ds)
    n = len(per_frame_seq)
    if vendor in _ALONE_VENDORS and n > 1 and all((c := _fg_item(pf, None, "FrameContentSequence")) is not None
                                                  and c.get("DimensionIndexValues") is not None for pf in per_frame_seq):
        key.append(("enhanced file", str(path)))
    values = _FileValues(ds)
    for group in (shared, *per_frame_seq):
        if group is not None:
            values.read(group)
    early_xa = siemens_xa(ds)[0] and len(str(ds.get("StudyInstanceUID", "") or "")) > 1
    slices = _volume_slices(vendor, per_frame_seq)
    partial = values.partial_volume(slices)
    key += [
        ("derived", values.derived or partial is not None),
        ("vendor", vendor),
        ("modality", _modality(ds)),
        ("study date/time", None if early_xa else atof(ds.get("StudyDate")) * 1e6 + atof(ds.get("StudyTime"))),
        ("slices per volume", slices),
        (PARTIAL, partial),
    ]
    if is_xray(ds):  # as a classic X-ray image: never phase with magnitude
        echo = ds.get("EchoNumbers")
        return (*key, ("x-ray", True), ("echo number", "" if echo is None else str(echo)), ("phase", _is_phase(ds)))
    protocol = _protocol(ds, values.protocol)
    if len(protocol) > 1 and values.moco:
        protocol += "_MoCo"
    protocol = _else_sequence_name(ds, protocol)
    return (*key, ("real/imaginary/phase", values.complex), ("TR", _float32(values.tr)), ("flip angle", _float32(values.flip)),
            ("echo time", _float32(values.te)), ("echo number", values.echo), ("protocol", protocol))


def enhanced_slices(path: Path, ds: Dataset) -> list[Slice]:
    """Enhanced (multi-frame) object -> one Slice per frame, geometry from the functional groups; a frame's split
    key is the object's (:func:`_enhanced_stack_key`) with the frame's echo, frame type and stack."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame_seq = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame_seq is None or len(per_frame_seq) != n:
        raise SeriesError("multi-frame object without per-frame functional groups: geometry unknown")
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    cache = _FrameCache(path, ds)
    is_philips = "PHILIPS" in str(ds.get("Manufacturer", "")).upper()
    file_key = _enhanced_stack_key(path, ds, per_frame_seq, shared)
    sort_key = dcm2niix_sort_key(ds)
    slices = []
    for i, pf in enumerate(per_frame_seq):
        pos = _fg_item(pf, shared, "PlanePositionSequence")
        ori = _fg_item(pf, shared, "PlaneOrientationSequence")
        meas = _fg_item(pf, shared, "PixelMeasuresSequence")
        if pos is None or ori is None or meas is None:
            raise SeriesError(f"frame {i + 1}: plane position, orientation or pixel measures missing")
        plane = _plane(path, ori.get("ImageOrientationPatient"), pos.get("ImagePositionPatient"), meas.get("PixelSpacing"))
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
        split_key = (*file_key, ("echo", echo), ("frame type", ftype), ("stack", stack))
        s = _slice(path, ds, i, plane, slope, inter, split_key, (temporal, t_time, i), partial(cache.frame, i))
        s.file_key = sort_key
        slices.append(s)
    return slices
