"""NIfTI reading with validation, RAS reorientation and header hygiene."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from medsynth.io.nifti_write import compact_dtype, reorient_to_ras
from medsynth.io.quarantine import DEFAULT_MAX_VOXELS, SeriesError, error_text

if TYPE_CHECKING:
    import numpy.typing as npt


def make_ras_image(data: np.ndarray, affine: np.ndarray, descrip: str = "") -> nib.Nifti1Image:
    """A NIfTI image reoriented to the closest RAS+ axes, sform/qform set, header clean."""
    data, affine = reorient_to_ras(compact_dtype(np.asarray(data)), np.asarray(affine, dtype=np.float64))
    return finish_header(nib.Nifti1Image(data, affine), descrip)


def nifti_on_grid(data: np.ndarray, affine: np.ndarray, descrip: str = "") -> nib.Nifti1Image:
    """A NIfTI image on exactly ``affine`` (no reorientation: e.g. a mask on its image's grid)."""
    return finish_header(nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64)), descrip)


def finish_header(img: nib.Nifti1Image, descrip: str = "") -> nib.Nifti1Image:
    """sform and qform from the image's affine (scanner space), mm units, free-text fields cleared."""
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    return clean_header(img, descrip=descrip)


def clean_header(img: nib.Nifti1Image, descrip: str = "") -> nib.Nifti1Image:
    """Clear the free-text NIfTI fields that can carry identifiers and drop header extensions."""
    hdr = img.header
    hdr["descrip"] = descrip.encode("ascii", "replace")[:79]
    hdr["aux_file"] = b""
    hdr["db_name"] = b""
    hdr["intent_name"] = b""
    hdr.extensions.clear()
    return img


def voxel_array(path: str | Path, dtype: npt.DTypeLike | None = None) -> np.ndarray:
    """The voxels of a NIfTI file as stored, on its own grid: ``np.asarray(nib.load(path).dataobj, dtype)``."""
    img = nib.load(str(path))
    if not isinstance(img, nib.Nifti1Image):  # NIfTI-2 images are Nifti1Image subclasses
        raise TypeError(f"{path}: not a NIfTI-1/2 image ({type(img).__name__})")
    return np.asarray(img.dataobj, dtype)


def load_nifti_checked(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> nib.Nifti1Image:
    """Load a NIfTI file and check it can be a volume of at most ``max_voxels`` voxels (the header's
    dimensions, checked before the voxels are read). Raises SeriesError naming the reason."""
    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise SeriesError(f"unreadable NIfTI: {error_text(exc)}") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise SeriesError(f"not a NIfTI-1/2 image ({type(img).__name__})")
    aff = img.affine
    if aff is None or not np.all(np.isfinite(aff)):
        raise SeriesError("broken affine: non-finite values")
    det = float(np.linalg.det(aff[:3, :3]))
    if abs(det) < 1e-6:
        raise SeriesError(f"broken affine: singular (determinant {det:.2e})")
    if img.ndim not in (3, 4):
        raise SeriesError(f"{img.ndim}D image: expected 3D (or 4D, split into 3D volumes)")
    shape, dtype = tuple(int(n) for n in img.shape), img.get_data_dtype()
    voxels = math.prod(shape)
    if voxels == 0:
        raise SeriesError(f"empty image: shape {shape}")
    if voxels > max_voxels:
        raise SeriesError(f"header declares {' x '.join(map(str, shape))} = {voxels:,} voxels ({voxels * dtype.itemsize:,} bytes of "
                          f"{dtype}): over the limit of {max_voxels:,} voxels (data.max_voxels); not decoded")
    try:
        data = np.asarray(img.dataobj)
    except Exception as exc:
        raise SeriesError(f"truncated or corrupt voxel data ({' x '.join(map(str, shape))} {dtype} declared): {error_text(exc)}") from None
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise SeriesError(f"{bad} NaN/Inf voxel(s)")
    return img


def split_4d(img: nib.Nifti1Image) -> list[nib.Nifti1Image]:
    """A 4D image -> its 3D volumes (a 3D image -> itself)."""
    if img.ndim == 3:
        return [img]
    data = np.asarray(img.dataobj)
    return [nib.Nifti1Image(data[..., t], img.affine) for t in range(data.shape[3])]


def resample_mask_to(mask: nib.Nifti1Image, target: nib.Nifti1Image) -> np.ndarray:
    """Nearest-neighbour resampling of a label map onto ``target``'s voxel grid (world coordinates)."""
    m = np.asarray(mask.dataobj)
    if m.ndim == 4 and m.shape[3] == 1:
        m = m[..., 0]
    if m.ndim != 3:
        raise SeriesError(f"mask must be 3D, got shape {m.shape}")
    if m.shape == target.shape[:3] and np.allclose(mask.affine, target.affine, atol=1e-3):
        return np.rint(m).astype(np.uint8)
    vox2vox = np.linalg.inv(mask.affine) @ target.affine
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in target.shape[:3]], indexing="ij")
    coords = np.stack([ii, jj, kk, np.ones_like(ii)], axis=0).reshape(4, -1)
    # nearest neighbour with an explicit rounding: a target voxel centre that lands on the mask's last
    # sample plus rounding noise (5.0000001 of 0..5) belongs to that sample, not outside the mask
    src = np.floor((vox2vox @ coords)[:3] + 0.5).astype(np.int64)
    inside = np.all((src >= 0) & (src < np.asarray(m.shape)[:, None]), axis=0)
    out = np.zeros(src.shape[1], dtype=np.uint8)
    out[inside] = np.rint(m[src[0, inside], src[1, inside], src[2, inside]]).astype(np.uint8)
    return out.reshape(target.shape[:3])
