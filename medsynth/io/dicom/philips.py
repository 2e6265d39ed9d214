"""Philips: the private MR scale slope and the "floating point" values dcm2niix writes with it, the
diffusion b value and direction, the isotropic (trace / ADC) volumes of a DWI (Philips, and GE
non-DTI diffusion) set apart as dcm2niix sets them apart, and the volumes of an enhanced object that
dcm2niix writes apart by their trigger delay time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medsynth.io.dicom.attributes import FLT_EPSILON, _float32, _private_numbers, _private_text, atof, manufacturer
from medsynth.io.dicom.geometry import Slice
from medsynth.io.dicom_fast import FastHeader

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


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


def philips_diffusion(ds: Dataset | FastHeader) -> tuple[float, tuple[float, ...]] | None:
    """A Philips image's b value and gradient direction: the private (2001,xx03) and (2005,xxB0-B2),
    else DiffusionBValue and DiffusionGradientOrientation; None when the image has no b value."""
    b = _private_numbers(ds, 0x2001, "PHILIPS IMAGING DD 001", 0x03, "f")
    b_value = float(b[0]) if b else ds.get("DiffusionBValue")
    if b_value is None:
        return None
    parts = [_private_numbers(ds, 0x2005, "PHILIPS MR IMAGING DD 001", off, "f") for off in (0xB0, 0xB1, 0xB2)]
    present = [p for p in parts if p]
    if len(present) == len(parts):
        vector = tuple(float(p[0]) for p in present)
    else:
        public = ds.get("DiffusionGradientOrientation")
        vector = tuple(float(v) for v in public) if public is not None and len(public) == 3 else (0.0, 0.0, 0.0)
    return float(b_value), vector


MIN_B_VALUE = 6.0  # dcm2niix's minBvalThreshold (Philips, GE): series whose b values are all this or less are not DWI


def isotropic_split(data: np.ndarray, firsts: list[Slice]) -> tuple[np.ndarray, np.ndarray, str] | None:
    """dcm2niix's handling (nii_saveDTI) of the isotropic (trace / ADC) volumes a Philips DWI series, or a
    GE non-DTI diffusion series (the Slices' ``diffusion`` is set only for those), holds among its
    acquisitions (b > 0, no gradient direction): (the acquired volumes without them, all volumes with
    them last, a note); None when there are none, when every volume has the same b value of at most
    :data:`MIN_B_VALUE` and the first no direction (no DWI), or when removing them would leave fewer
    than two volumes or leave a b=0 + trace pair."""
    diffusion = [f.diffusion for f in firsts if f.diffusion is not None]
    if data.ndim != 4 or len(diffusion) != len(firsts):
        return None
    b_values = {b for b, _vector in diffusion}
    if len(b_values) == 1 and max(b_values) <= MIN_B_VALUE and all(abs(v) < 1e-6 for v in diffusion[0][1]):
        return None
    iso = [t for t, (b, vector) in enumerate(diffusion) if b != 0 and all(abs(v) < 1e-6 for v in vector)]
    rest = [t for t in range(len(firsts)) if t not in iso]
    if not iso or len(rest) < 2 or (len(iso) == 1 and len(rest) == 1):
        return None
    note = f"{len(iso)} isotropic (trace / ADC) volume(s) of {len(firsts)} set apart, as dcm2niix does (b > 0 without a gradient direction)"
    return data[..., rest], data[..., rest + iso], note


SAME_TRIGGER = 1e-4  # dcm2niix's isSameFloatGE


def philips_trigger_times(ds: Dataset | FastHeader) -> list[float] | None:
    """The trigger delay time (ms) dcm2niix keeps for each frame of a Philips enhanced object, in frame
    order; None for another object, or when a frame is an ASL label or control image (2005,xx29 'L' / 'C'
    in the 'DD 005' block: dcm2niix never splits those by trigger).

    dcm2niix (nii_dicom.cpp, ``readDICOMx``) reads the elements in file order into one running value,
    which a frame keeps when it ends: the top-level TriggerTime (0018,1060), then in the shared and then
    each frame's functional groups NominalCardiacTriggerDelayTime (0020,9153) of the Cardiac
    Synchronization Sequence (0018,9118) and the TriggerTime of the Philips private per-frame item
    (2005,140F); a frame whose value equals its MR Image Dynamic Scan Begin Time (2005,xxA0, s) is
    given 0 (issue 395)."""
    if manufacturer(ds) != "PHILIPS":
        return None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        return None
    shared = ds.get("SharedFunctionalGroupsSequence")
    state = {"trigger": atof(ds.get("TriggerTime")), "begin": 0.0, "asl": False}
    _read_trigger(ds, state)

    def read_group(group) -> None:
        for cardiac in group.get("CardiacSynchronizationSequence") or []:
            value = cardiac.get("NominalCardiacTriggerDelayTime")
            if value is not None:
                state["trigger"] = float(value)
        private = getattr(group.get((0x2005, 0x140F)), "value", None)
        items = list(private) if isinstance(private, Sequence) and not isinstance(private, (str, bytes)) else []  # an SQ, not raw bytes
        for item in items:
            if "TriggerTime" in item:
                state["trigger"] = atof(item.get("TriggerTime"))
            _read_trigger(item, state)

    for group in shared or []:
        read_group(group)
    times = []
    for group in per_frame:
        read_group(group)
        trigger = _float32(state["trigger"])
        times.append(0.0 if abs(_float32(state["begin"] * 1000.0) - trigger) <= FLT_EPSILON else trigger)
    return None if state["asl"] else times


def _read_trigger(item, state: dict) -> None:
    """The Philips private elements of ``item`` (a data set or a private per-frame item) that the running
    trigger value of :func:`philips_trigger_times` depends on: the dynamic scan begin time and the ASL label."""
    begin = _private_numbers(item, 0x2005, "PHILIPS MR IMAGING DD 001", 0xA0, "f")
    if begin:
        state["begin"] = float(begin[0])
    label = _private_text(item, 0x2005, "PHILIPS MR IMAGING DD 005", 0x29)
    if label and len(label) >= 2 and label[0].upper() in ("L", "C"):
        state["asl"] = True


def trigger_volumes(firsts: list[Slice], times: dict[tuple[Path, int | None], float]) -> list[list[int]] | None:
    """The volumes of a 4D stack (``firsts``: each volume's first slice) that dcm2niix writes apart when
    their trigger delay times (``times`` by (path, frame), :func:`philips_trigger_times`) differ: groups
    of volume indices with the same trigger time (within 1e-4 ms), rescale slope and intercept, in the
    order of their first volume (nii_dicom_batch.cpp, ``saveDcm2Nii``: ``gradDynVol``); None when the
    volumes share one trigger time or a volume has none."""
    values = [times.get((s.path, s.frame)) for s in firsts]
    if len(firsts) < 2 or any(v is None for v in values):
        return None
    known = [float(v) for v in values if v is not None]
    if all(abs(v - known[0]) <= SAME_TRIGGER for v in known):
        return None
    groups: list[list[int]] = []
    for t, (value, s) in enumerate(zip(known, firsts, strict=True)):
        for group in groups:
            first = firsts[group[0]]
            if abs(known[group[0]] - value) <= SAME_TRIGGER and (first.slope, first.intercept) == (s.slope, s.intercept):
                group.append(t)
                break
        else:
            groups.append([t])
    return groups if len(groups) > 1 else None
