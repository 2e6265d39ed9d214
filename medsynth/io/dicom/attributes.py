"""What a header's attributes say, whichever reader read it (pydicom or the fast reader): the ImageType
words (derived, phase) and private elements looked up through their private creator."""

from __future__ import annotations

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
        for (g, c), wanted in _FAST_PRIVATE.items():
            if g == group and c == creator.encode() and offset in wanted:
                return ds.private.get(wanted[offset])
        return None
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


def _private_numbers(ds: Dataset | FastHeader, group: int, creator: str, offset: int, fmt: str) -> tuple | None:
    """:func:`_private_bytes` as numbers (``fmt``: the struct code of raw bytes)."""
    v = _private_bytes(ds, group, creator, offset)
    if isinstance(v, bytes):
        size = struct.calcsize(fmt)
        n = len(v) // size
        return struct.unpack(f"<{n}{fmt}", v[:n * size]) if n else None
    return v
