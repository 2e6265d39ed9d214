"""Siemens CSA headers: the private (0029,xx10) "CSA image header info" element, read without nibabel.

The layout (SPM's and nibabel's readers describe it): an optional "SV10" + 4 bytes (CSA2), the number
of tags and a check word, then per tag a 64-byte name, VM, a 4-byte VR, syngo data type, the number of
items and a check word; per item four int32 (the second is the item's length in CSA2, the first less
the first tag's item count in CSA1) and the value, padded to four bytes. Values are text.
"""

from __future__ import annotations

import struct

MAX_CSA_ITEMS = 1000


class CSAError(ValueError):
    """The bytes are not a CSA header that can be read."""


def _text(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("latin-1").strip()


def read_csa(raw: bytes) -> dict[str, list[str]]:
    """Tag name -> its items (text, empty items dropped)."""
    csa2 = raw[:4] == b"SV10"
    pos = 8 if csa2 else 0
    try:
        n_tags, _check = struct.unpack_from("<2I", raw, pos)
    except struct.error:
        raise CSAError("CSA header shorter than its preamble") from None
    if not 0 < n_tags <= MAX_CSA_ITEMS:
        raise CSAError(f"CSA header declares {n_tags} tags")
    pos += 8
    tags: dict[str, list[str]] = {}
    first_tag_items = 0
    try:
        for tag_no in range(n_tags):
            name, vm, _vr, _syngodt, n_items, _check = struct.unpack_from("<64si4s3i", raw, pos)
            pos += 84
            if n_items > MAX_CSA_ITEMS or n_items < 0:
                raise CSAError(f"CSA tag {_text(name)!r} declares {n_items} items")
            if tag_no == 1:
                first_tag_items = n_items
            n_values = vm if vm > 0 else n_items
            items = []
            for item_no in range(n_items):
                x0, x1, _x2, _x3 = struct.unpack_from("<4i", raw, pos)
                pos += 16
                length = x1 if csa2 else x0 - first_tag_items
                if length < 0 or pos + length > len(raw):
                    if csa2:
                        raise CSAError("CSA item runs past the header's end")
                    break
                if item_no < n_values and length:
                    items.append(_text(raw[pos:pos + length]))
                pos += length + (-length % 4)
            tags[_text(name)] = [v for v in items if v != ""]
    except struct.error:
        raise CSAError("CSA header truncated") from None
    return tags


def csa_number(tags: dict[str, list[str]], name: str) -> float | None:
    """The first item of tag ``name`` as a number, or None."""
    try:
        return float(tags[name][0])
    except (KeyError, IndexError, ValueError):
        return None


def csa_vector(tags: dict[str, list[str]], name: str, n: int) -> list[float] | None:
    """Tag ``name`` as ``n`` numbers, or None."""
    try:
        values = [float(v) for v in tags[name]]
    except (KeyError, ValueError):
        return None
    return values if len(values) == n else None
