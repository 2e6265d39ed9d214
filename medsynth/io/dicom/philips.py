"""Philips: the private MR scale slope and the "floating point" values dcm2niix writes with it, the
diffusion b value and direction, and the isotropic (trace / ADC) volumes of a DWI (Philips, and GE
non-DTI diffusion) set apart as dcm2niix sets them apart."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from medsynth.io.dicom.attributes import _private_numbers
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
