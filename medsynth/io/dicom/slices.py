"""Image files -> ``Slice`` objects: a classic single-frame file (from its top-level attributes, read by
pydicom or the fast reader) and an enhanced multi-frame object (one Slice a frame, from its functional
groups)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeGuard

import numpy as np

from medsynth.io.dicom.attributes import _image_type, manufacturer, stack_key
from medsynth.io.dicom.ge import ge_diffusion
from medsynth.io.dicom.geometry import Slice, _floats, _norm_iop
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
_SHARED_MAX = 256
_shared_values: dict[tuple, tuple] = {}


def _image_values(ds: Dataset | FastHeader) -> tuple[tuple, float, float, tuple[float, tuple[float, ...]] | None]:
    """(split key, slope, intercept, diffusion) of a single-frame image: the same for the images of a
    series whose headers differ only in PER_IMAGE_TAGS, so a fast-read header's are computed once per
    such group. A SeriesError is raised for every image it concerns (errors are not kept)."""
    key = None
    if isinstance(ds, FastHeader):
        key = (tuple(item for item in ds.raw.items() if item[0] not in PER_IMAGE_TAGS), tuple(ds.private.items()))
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

    return _slice(path, ds, None, plane, slope, intercept, split_key, time_key, load, diffusion)


def is_enhanced(ds: Dataset | FastHeader) -> TypeGuard[Dataset]:
    """A multi-frame object (never a file the fast reader read: those are single-frame)."""
    return int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds


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
        split_key = (("echo", echo), ("frame type", ftype), ("stack", stack))
        slices.append(_slice(path, ds, i, plane, slope, inter, split_key, (temporal, t_time, i), partial(cache.frame, i)))
    return slices
