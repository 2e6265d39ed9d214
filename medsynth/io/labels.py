"""The labels CSV (``data.labels``): which condition, mask and patient each input case has. One reader for
ingest (which matches rows to cases) and for params validation (which needs the conditions alone), so both
accept and refuse the same files. Standard library only: params validation imports it."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path


class LabelsError(ValueError):
    """A labels CSV that cannot be used; the message names the file, the line where there is one, and the fix."""


@dataclass
class LabelRow:
    condition: str
    mask: str | None
    patient: str | None = None
    line: int = 0  # line number in the labels CSV


def read_labels(path: Path | str) -> dict[str, LabelRow]:
    """labels CSV (UTF-8, with or without a byte-order mark) -> rows by ``case`` (relative path, PatientID or
    SeriesInstanceUID, outer slashes stripped): ``condition``, optional ``mask``, ``patient``. Raises
    :class:`LabelsError` for a missing or unreadable file, another encoding, missing columns, an empty
    ``case`` or ``condition`` and a case listed twice."""
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"{path}: labels CSV not found (data.labels)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LabelsError(f"{path}: labels CSV cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise LabelsError(f"{path}:{line}: labels CSV is not UTF-8 (byte 0x{raw[exc.start]:02x}: Latin-1 or Windows-1252?): "
                          "save it as UTF-8 (Excel: 'CSV UTF-8'; or iconv -f latin1 -t utf-8)") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    cols = set(reader.fieldnames or [])
    if not {"case", "condition"} <= cols:
        raise LabelsError(f"{path}: labels CSV needs columns 'case' and 'condition' (optional 'mask', 'patient'); found {sorted(cols)}")
    out: dict[str, LabelRow] = {}
    for row in reader:
        i = reader.line_num
        key = (row.get("case") or "").strip().strip("/")
        cond = (row.get("condition") or "").strip()
        if not key or not cond:
            raise LabelsError(f"{path}:{i}: empty 'case' or 'condition'")
        if key in out:
            raise LabelsError(f"{path}:{i}: case {key!r} listed twice (first on line {out[key].line})")
        out[key] = LabelRow(cond, (row.get("mask") or "").strip() or None, (row.get("patient") or "").strip() or None, i)
    return out


__all__ = ["LabelRow", "LabelsError", "read_labels"]
