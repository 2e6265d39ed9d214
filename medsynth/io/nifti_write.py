"""RAS volumes as NIfTI-1 files, with numpy alone.

``medsynth convert`` writes every volume through here: importing nibabel costs half a second (it
imports pydicom), more than converting a small folder. The results equal nibabel's
``as_closest_canonical`` and ``Nifti1Image`` + ``set_sform``/``set_qform`` (code 1) + ``to_filename``
(tested): same voxels, axes, affine, qform, units and data type.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np

NIFTI1_HEADER_BYTES = 348
VOX_OFFSET = 352  # header + the 4-byte extension flag (no extensions)
DATATYPES = {np.dtype(np.uint8): (2, 8), np.dtype(np.int16): (4, 16), np.dtype(np.int32): (8, 32),
             np.dtype(np.float32): (16, 32), np.dtype(np.float64): (64, 64), np.dtype(np.uint16): (512, 16)}
UNITS_MM_SEC = 2 | 8


def compact_dtype(data: np.ndarray) -> np.ndarray:
    """Store integral data that fits int16 as int16 (like scanners do), everything else as float32."""
    if data.dtype.kind in "iu" and data.size and data.min() >= -32768 and data.max() <= 32767:
        return data.astype(np.int16)
    if data.dtype.kind == "f" and data.size:
        if np.all(np.isfinite(data)) and np.all(data == np.round(data)) and data.min() >= -32768 and data.max() <= 32767:
            return data.astype(np.int16)
    return data.astype(np.float32)


def closest_ras_orientation(affine: np.ndarray) -> np.ndarray:
    """For each voxel axis, the RAS axis it runs closest to and its direction (+1/-1): nibabel's
    ``io_orientation`` (nearest orthogonal matrix, then the largest component per axis, greedily from
    the axis most aligned with a world axis)."""
    rzs = np.asarray(affine, dtype=np.float64)[:3, :3]
    zooms = np.sqrt(np.sum(rzs * rzs, axis=0))
    zooms[zooms == 0] = 1
    p, s, qs = np.linalg.svd(rzs / zooms, full_matrices=False)
    keep = s > s.max() * 3 * np.finfo(np.float64).eps
    r = p[:, keep] @ qs[keep]
    ornt = np.full((3, 2), np.nan)
    for in_ax in np.argsort(np.min(-(r**2), axis=0), kind="stable"):
        col = r[:, in_ax]
        if np.allclose(col, 0):
            continue
        out_ax = int(np.argmax(np.abs(col)))
        ornt[in_ax] = (out_ax, -1.0 if col[out_ax] < 0 else 1.0)
        r[out_ax, :] = 0
    if np.isnan(ornt).any():
        raise ValueError(f"affine has no orientation (singular): {affine.tolist()}")
    return ornt


def reorient_to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxels and affine with the voxel axes permuted and flipped to the closest RAS+ axes (extra
    axes, e.g. time, untouched); the world position of every voxel is unchanged."""
    ornt = closest_ras_orientation(affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return data, np.asarray(affine, dtype=np.float64)
    shape = np.asarray(data.shape[:3], dtype=np.float64)
    for ax, flip in enumerate(ornt[:, 1]):
        if flip == -1:
            data = np.flip(data, axis=ax)
    order = list(range(data.ndim))
    order[:3] = [int(i) for i in np.argsort(ornt[:, 0])]
    data = data.transpose(order)
    undo_reorder = np.eye(4)[[int(v) for v in ornt[:, 0]] + [3], :]
    undo_flip = np.diag(list(ornt[:, 1]) + [1.0])
    center = -(shape - 1) / 2.0
    undo_flip[:3, 3] = ornt[:, 1] * center - center
    return data, np.asarray(affine, dtype=np.float64) @ undo_flip @ undo_reorder


def _quaternion(affine: np.ndarray) -> tuple[float, tuple[float, float, float], np.ndarray]:
    """qfac, quaternion (b, c, d) and zooms of the affine's rotation (the nearest orthogonal one)."""
    rzs = affine[:3, :3]
    zooms = np.sqrt(np.sum(rzs * rzs, axis=0))
    r = rzs / zooms
    qfac = 1.0
    if np.linalg.det(r) <= 0:
        qfac = -1.0
        r = r.copy()
        r[:, -1] *= -1
    p, _s, qs = np.linalg.svd(r)
    r = p @ qs
    # Shepperd's method on the largest diagonal term; sign chosen so a >= 0
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    if trace > 0:
        s = math.sqrt(trace + 1.0) * 2
        a, b, c, d = 0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2
        a, b, c, d = (r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s
    elif r[1, 1] > r[2, 2]:
        s = math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2
        a, b, c, d = (r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s
    else:
        s = math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2
        a, b, c, d = (r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s
    if a < 0:
        b, c, d = -b, -c, -d
    return qfac, (b, c, d), zooms


def nifti1_bytes(data: np.ndarray, affine: np.ndarray, descrip: str = "") -> bytes:
    """A single-file NIfTI-1 image (header, no extensions, voxels in Fortran order) on ``affine``,
    sform and qform code 1 (scanner space), units mm and s."""
    data = np.asarray(data)
    if data.dtype not in DATATYPES:
        raise TypeError(f"NIfTI data type {data.dtype} is not written here (use int16, uint8, float32 ...)")
    if not 1 <= data.ndim <= 7:
        raise ValueError(f"{data.ndim}D data cannot be a NIfTI-1 image")
    affine = np.asarray(affine, dtype=np.float64)
    code, bitpix = DATATYPES[data.dtype]
    qfac, (qb, qc, qd), zooms = _quaternion(affine)
    dim = [data.ndim, *data.shape] + [1] * (7 - data.ndim)
    pixdim = [qfac, *zooms.tolist()] + [1.0] * 4
    hdr = bytearray(NIFTI1_HEADER_BYTES)
    struct.pack_into("<i", hdr, 0, NIFTI1_HEADER_BYTES)
    struct.pack_into("<8h", hdr, 40, *dim)
    struct.pack_into("<hh", hdr, 70, code, bitpix)
    struct.pack_into("<8f", hdr, 76, *pixdim)
    struct.pack_into("<f", hdr, 108, float(VOX_OFFSET))
    struct.pack_into("<ff", hdr, 112, 1.0, 0.0)  # scl_slope, scl_inter: stored values are the values
    hdr[123] = UNITS_MM_SEC
    hdr[148:148 + 80] = descrip.encode("ascii", "replace")[:79].ljust(80, b"\x00")
    struct.pack_into("<hh", hdr, 252, 1, 1)  # qform_code, sform_code: scanner anatomical
    struct.pack_into("<6f", hdr, 256, qb, qc, qd, *affine[:3, 3].tolist())
    struct.pack_into("<12f", hdr, 280, *affine[:3, :4].reshape(-1).tolist())
    hdr[344:348] = b"n+1\x00"
    return bytes(hdr) + b"\x00\x00\x00\x00" + np.asarray(data).tobytes(order="F")


def write_nifti(dest: Path, data: np.ndarray, affine: np.ndarray, descrip: str = "") -> None:
    """Write a NIfTI-1 file (gzip level 1, no timestamp, as nibabel writes ``.nii.gz``) to ``dest``."""
    payload = nifti1_bytes(data, affine, descrip)
    with open(dest, "wb") as fh:
        fh.write(gzip.compress(payload, compresslevel=1, mtime=0) if str(dest).endswith(".gz") else payload)
