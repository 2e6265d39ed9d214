"""Atomic output writers: a crash never leaves a half-written file behind.

Each writer writes to a temporary file in the destination folder, flushes it, then renames it
into place (``os.replace`` is atomic on POSIX within one file system). A temporary file is named
``.<name>.<8 random characters>.tmp[<extension>]``; one left by a process killed mid-write is removed by
:func:`remove_stale_temps` when the stage next writes that folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import nibabel as nib

# what atomic_path names its temporary files: tempfile's 8 random characters, then .tmp and the
# extension a writer needs to pick the format (.nii.gz, .npy, .png, .dcm)
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)*")


def remove_stale_temps(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Remove the temporary files :func:`atomic_path` leaves when its process is killed mid-write (only
    names of its pattern) from ``folder`` (and the folders below it, with ``recursive``); the paths removed.
    Call it where a stage starts writing a folder that no other process is writing."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*"):
        if _TEMP_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextmanager
def atomic_path(dest: str | Path, suffix: str = ""):
    """Yield a temporary path next to ``dest`` ending in ``suffix`` (e.g. ``.nii.gz``); on success it
    replaces ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp" + suffix, dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(dest: str | Path, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(dest)


def save_torch_atomic(dest: str | Path, obj: Any) -> Path:
    """``torch.save`` to ``dest`` atomically, and byte-reproducibly: saved to a path, torch names the
    archive's records after the file -- here a random temporary name -- so identical weights would give
    a different file (and DVC hash) on every run; saved to a buffer they are always named "archive"."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes_atomic(dest, buf.getvalue())


def utf8_text(text: str) -> bytes:
    """``text`` as UTF-8; a file name that is not valid UTF-8 (its bytes held as surrogates, ``M\udcfcller``)
    is written with its bytes escaped (``M\\xfcller``), so one odd name never stops an output."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").encode("utf-8")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace")


def write_text_atomic(dest: str | Path, text: str) -> Path:
    return write_bytes_atomic(dest, utf8_text(text))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _check_finite(obj: Any, where: str = "") -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"non-finite number at {where or '<root>'}; metrics must be finite or null")
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _check_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_finite(v, f"{where}[{i}]")


def write_json_atomic(dest: str | Path, obj: Any, allow_nonfinite: bool = False) -> Path:
    obj = json.loads(json.dumps(obj, default=_json_default))
    if not allow_nonfinite:
        _check_finite(obj)
    return write_text_atomic(dest, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv_atomic(dest: str | Path, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in fieldnames})
    return write_text_atomic(dest, buf.getvalue())


def write_nifti_atomic(dest: str | Path, img: nib.Nifti1Image) -> Path:
    suffix = ".nii.gz" if str(dest).endswith(".nii.gz") else ".nii"
    import nibabel as nib

    with atomic_path(dest, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return Path(dest)


def replace_dir_atomic(tmp_dir: str | Path, dest: str | Path) -> Path:
    """Move a fully written temporary folder into place, replacing ``dest``."""
    tmp_dir, dest = Path(tmp_dir), Path(dest)
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
        os.replace(tmp_dir, dest)
        shutil.rmtree(old)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_dir, dest)
    return dest


@contextmanager
def staging_dir(dest: str | Path):
    """Yield an empty folder beside ``dest``; on success it replaces ``dest`` as a whole."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging.", dir=dest.parent))
    try:
        yield tmp
        replace_dir_atomic(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
