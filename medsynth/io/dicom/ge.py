"""GE: the diffusion b value and gradient direction of an image of a non-DTI diffusion series, whose trace
volumes (b > 0 without a direction) dcm2niix sets apart as it sets apart a Philips DWI's isotropic ones."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from medsynth.io.dicom.attributes import _private_int, _private_text, atof, atoi
from medsynth.io.dicom_fast import FastHeader

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

GE_B_VALUE_BIAS = 1_000_000_000  # GE adds it to the b value of some scans ("1000001000\8\0\0" is b = 1000)


def ge_non_dti(ds: Dataset | FastHeader) -> bool:
    """Whether dcm2niix counts a GE diffusion image as non-DTI (its ``numberOfDiffusionDirectionGE == 0``):
    NumberOfDiffusionDirection (0019,xxE0) is 0, or the image-level diffusion type (0043,xx30) is set to a
    value other than 14 or 16 (the DTI and T2 values), or the series-level one (0021,xx5A) to one other
    than 16. Only then is a b > 0 image without a direction a trace; in a DTI series it is a b = 0 image."""
    directions = _private_text(ds, 0x0019, "GEMS_ACQU_01", 0xE0)
    non_dti = directions is not None and round(atof(directions)) == 0
    image_type = _private_int(ds, 0x0043, "GEMS_PARM_01", 0x30)
    if image_type is not None and image_type > 0 and image_type not in (14, 16):
        non_dti = True
    series_type = _private_int(ds, 0x0021, "GEMS_RELA_01", 0x5A)
    if series_type is not None and series_type > 0 and series_type != 16:
        non_dti = True
    return non_dti


def ge_diffusion(ds: Dataset | FastHeader) -> tuple[float, tuple[float, ...]] | None:
    """A GE image's b value (0043,xx39, its first value less GE's bias) and gradient direction
    ((0019,xxBB-BD); (0, 0, 0) unless all three are there and none above 1.5, as dcm2niix reads them)
    when its series is non-DTI (:func:`ge_non_dti`); None otherwise, or without a b value."""
    b_text = _private_text(ds, 0x0043, "GEMS_PARM_01", 0x39)
    if b_text is None or not ge_non_dti(ds):
        return None
    b = math.fmod(atoi(b_text), GE_B_VALUE_BIAS)
    parts = [_private_text(ds, 0x0019, "GEMS_ACQU_01", off) for off in (0xBB, 0xBC, 0xBD)]
    vector = tuple(atof(p) for p in parts) if all(p is not None for p in parts) else (0.0, 0.0, 0.0)
    if any(v > 1.5 for v in vector):
        vector = (0.0, 0.0, 0.0)
    return float(b), vector
