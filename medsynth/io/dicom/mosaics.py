"""Tiled images, one volume's slices in one image, unpacked by dcm2niix's rules: Siemens mosaics (slice
count and direction from the CSA header, else from the Siemens private elements and the acquisition
matrix) and United Imaging (UIH) grids (slice positions from the VFrame sequence)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

import numpy as np

from medsynth.io.dicom.attributes import _image_type, _private_bytes, _private_numbers
from medsynth.io.dicom.geometry import LPS_TO_RAS, _floats, _norm_iop, dcm2niix_order, lps_affine
from medsynth.io.dicom.pixels import _check_finite, _check_rescale, decode_pixels
from medsynth.io.dicom_fast import FastHeader
from medsynth.io.quarantine import SeriesError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


def is_mosaic(ds: Dataset | FastHeader) -> bool:
    return "MOSAIC" in _image_type(ds) or is_uih_grid(ds)


UIH_SLICES_IN_GRID = (0x0065, 0x1050)  # DS "MR Number Of Slice In Volume"
UIH_VFRAME_SEQUENCE = (0x0065, 0x1051)  # one item per slice: ImagePositionPatient, AcquisitionTime ...


def is_uih_grid(ds: Dataset | FastHeader) -> TypeGuard[Dataset]:
    """A United Imaging (UIH) grid: one volume's slices tiled in one image ("VFRAME")."""
    if isinstance(ds, FastHeader):
        return False  # the fast reader leaves grids to pydicom
    return str(ds.get("Manufacturer", "")).upper().startswith("UI") and UIH_SLICES_IN_GRID in ds


def _mosaic_volume(files: list[tuple[Path, Dataset | FastHeader]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The files of one series that each hold a volume's slices tiled in one image (Siemens mosaics,
    UIH grids) -> 3D, or 4D in dcm2niix's file order (:func:`mosaic_order`), data and RAS affine."""
    vols, affs, keys = [], [], []
    notes: list[str] = []
    for path, ds in files:
        try:
            pixels = ds.pixel_array() if isinstance(ds, FastHeader) else decode_pixels(path, ds)
            arr, aff, note = uih_grid(ds, pixels) if is_uih_grid(ds) else siemens_mosaic(ds, pixels)
        except SeriesError:
            raise
        except Exception as exc:
            raise SeriesError(f"tiled image (mosaic / grid) cannot be unpacked: {str(exc)[:120]}") from None
        if note and note not in notes:
            notes.append(note)
        vols.append(arr)
        affs.append(aff)
        keys.append(mosaic_order(ds))
    order = sorted(range(len(vols)), key=lambda i: keys[i])
    first = order[0]
    if any(v.shape != vols[first].shape for v in vols):
        raise SeriesError(f"mosaic volumes in one series differ in size: {sorted({v.shape for v in vols})}")
    moved = _moved_from_first(affs, order)
    data = np.stack([vols[i] for i in order], axis=-1) if len(vols) > 1 else vols[0]
    _check_finite(data)
    kind = "UIH grid" if any(n.startswith("UIH grid") for n in notes) else "Siemens mosaic"
    return data, LPS_TO_RAS @ affs[first], [f"{kind} ({len(vols)} volume(s))", *[n for n in notes if not n.startswith("UIH grid")],
                                            *([moved] if moved else [])]


def _moved_from_first(affs: list[np.ndarray], order: list[int], atol_mm: float = 1e-3) -> str:
    """A note on the volumes whose grid lies elsewhere than the first's (a slab moved between volumes), or
    "" when none does. dcm2niix stacks a series' parallel mosaics (isSameSet compares orientation, not
    position) and writes them all on the first one's grid (saveDcm2Nii: the header of dcmSort[0]), without
    a warning; so does this. A SeriesError where the voxel sizes or axes differ (e.g. the slice normal
    reversed), which no single grid holds."""
    ref = affs[order[0]]
    ref_sizes = np.linalg.norm(ref[:3, :3], axis=0)
    normal = ref[:3, 2] / ref_sizes[2]
    shifts = []
    for rank, i in enumerate(order[1:], start=2):
        sizes = np.linalg.norm(affs[i][:3, :3], axis=0)
        if not np.allclose(sizes, ref_sizes, rtol=1e-3, atol=1e-4) or not np.allclose(affs[i][:3, :3] / sizes, ref[:3, :3] / ref_sizes, atol=1e-3):
            raise SeriesError(f"mosaic volumes in one series have different voxel sizes or axes (volume {rank}: voxel "
                              f"{np.round(sizes, 4).tolist()} mm, first {np.round(ref_sizes, 4).tolist()} mm): no one grid holds them")
        offset = affs[i][:3, 3] - ref[:3, 3]
        if np.linalg.norm(offset) > atol_mm:
            shifts.append((rank, float(np.linalg.norm(offset)), float(offset @ normal)))
    if not shifts:
        return ""
    far = max(shifts, key=lambda s: s[1])
    return (f"mosaic positions differ: {len(shifts)} of {len(order)} volumes lie off the first volume's grid, up to {far[1]:.2f} mm "
            f"(volume {far[0]}: {far[2]:+.2f} mm along the slice normal); all are written on the first volume's grid, as dcm2niix "
            "writes them (it does not warn)")


def mosaic_order(ds: Dataset | FastHeader) -> tuple:
    """Where a tiled image comes in its series' 4D volume: dcm2niix's file order (:func:`dcm2niix_order`:
    series number, then instance number, then the SOPInstanceUID's CRC), not the acquisition number or
    time; the first in this order gives the 4D volume's grid."""
    return dcm2niix_order(ds)


SAME_ORIENTATION = 1e-4  # dcm2niix's isSameFloatGE, per ImageOrientationPatient value


def mosaics_not_parallel(files: list[tuple[Path, Dataset | FastHeader]]) -> bool:
    """Whether the mosaics of one series do not share an orientation (an ImageOrientationPatient value more
    than 1e-4 from the first mosaic's, e.g. prospective motion correction): dcm2niix then writes each
    mosaic as its own 3D volume (nii_dicom_batch.cpp, ``isSameSet`` and issue 481)."""
    first = None
    for _path, ds in files:
        try:
            iop = _floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", Path("."))
        except SeriesError:
            return False  # the volume's own conversion names the problem
        if first is None:
            first = iop
        elif np.any(np.abs(iop - first) > SAME_ORIENTATION):
            return True
    return False


def _untile(ds: Dataset | FastHeader, pixels: np.ndarray, n: int, n_col: int, n_row: int) -> np.ndarray:
    """The first ``n`` tiles of an ``n_row`` x ``n_col`` grid, read row by row, rescaled, as
    (cols, rows, n) data."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    tile_r, tile_c = rows // n_row, cols // n_col
    if tile_r < 2 or tile_c < 2 or n > n_row * n_col:
        raise SeriesError(f"tiled image: {n} slices in a {n_row} x {n_col} grid of a {rows} x {cols} image leave tiles of "
                          f"{tile_r} x {tile_c} pixels: the slice count is wrong")
    pixels = pixels.astype(np.float64)
    if pixels.shape != (rows, cols):
        raise SeriesError(f"tiled image: pixel array {pixels.shape} != Rows x Columns {(rows, cols)}")
    slope, intercept = float(ds.get("RescaleSlope", 1.0) or 1.0), float(ds.get("RescaleIntercept", 0.0) or 0.0)
    _check_rescale(slope, intercept)
    data = np.empty((tile_c, tile_r, n), dtype=np.float32)
    for k in range(n):
        r0, c0 = (k // n_col) * tile_r, (k % n_col) * tile_c
        data[:, :, k] = (pixels[r0:r0 + tile_r, c0:c0 + tile_c] * slope + intercept).T
    return data


def _slice_spacing(ds: Dataset | FastHeader) -> float:
    return float(ds.get("SpacingBetweenSlices", 0) or 0) or float(ds.get("SliceThickness", 0) or 0)


def uih_grid(ds: Dataset, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """A UIH grid ("VFRAME": n slices tiled ceil(sqrt(n)) wide, ceil(n / cols) high, row by row) ->
    (cols, rows, n) data, LPS affine and a note. The slice positions are the ImagePositionPatient of the
    VFrame sequence's items (0065,1051) when the file has no top-level one; the slice spacing is
    SpacingBetweenSlices (else SliceThickness), its direction the one the first and last positions
    show (dcm2niix's rules)."""
    try:
        n = int(round(float(ds[UIH_SLICES_IN_GRID].value if not isinstance(ds[UIH_SLICES_IN_GRID].value, bytes)
                            else ds[UIH_SLICES_IN_GRID].value.decode("latin-1").strip("\x00 "))))
    except (TypeError, ValueError):
        raise SeriesError("UIH grid: MR Number Of Slice In Volume (0065,1050) is not a number") from None
    if n < 1:
        raise SeriesError(f"UIH grid: MR Number Of Slice In Volume (0065,1050) is {n}")
    n_col = math.ceil(math.sqrt(n))
    n_row = math.ceil(n / n_col)
    positions = _uih_positions(ds)
    if not positions:
        raise SeriesError("UIH grid without any ImagePositionPatient (top level or VFrame sequence 0065,1051): slice positions unknown")
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        items = _uih_items(ds)
        iop = next((it.get("ImageOrientationPatient") for it in items if "ImageOrientationPatient" in it), None)
    iop = _norm_iop(_floats(iop, 6, "ImageOrientationPatient", Path(".")))
    ps = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing", Path("."))
    normal = np.cross(iop[:3], iop[3:])
    dz = _slice_spacing(ds)
    first, last = positions[0], positions[-1]
    along = float(np.dot(last - first, normal))
    if dz <= 0:
        if len(positions) < 2 or abs(along) < 1e-6:
            raise SeriesError("UIH grid: neither SpacingBetweenSlices, SliceThickness nor two slice positions give the slice spacing")
        dz = abs(along) / (len(positions) - 1)
    sign = (1.0 if along > 0 else -1.0) if len(positions) > 1 and abs(along) > 1e-6 else (1.0 if normal.sum() >= 0 else -1.0)
    if len(positions) >= n > 1:
        _check_grid_positions(positions[-n:], normal * sign, dz)
    aff = lps_affine(iop, ps, normal * sign * dz, first)
    return _untile(ds, pixels, n, n_col, n_row), aff, f"UIH grid: {n} slices in {n_row} x {n_col} tiles"


def _check_grid_positions(positions: list[np.ndarray], direction: np.ndarray, dz: float, rtol: float = 0.02) -> None:
    """A SeriesError unless the grid's slice positions step ``dz`` apart along ``direction`` (the
    spacing the affine uses), without shear: the checks a slice-per-file series gets."""
    pos = np.array(positions, dtype=np.float64)
    offsets = pos - pos[0]
    along = offsets @ direction
    gaps = np.diff(along)
    if np.any(np.abs(gaps - dz) > max(rtol * dz, 1e-3)):
        raise SeriesError(f"UIH grid: slice positions step {gaps.min():.3f} to {gaps.max():.3f} mm where SpacingBetweenSlices / "
                          f"SliceThickness says {dz:.3f} mm (missing, uneven or reordered slices)")
    shear = np.linalg.norm(offsets - np.outer(along, direction), axis=1).max()
    if shear > max(0.01 * dz * (len(positions) - 1), 1e-3):
        raise SeriesError(f"UIH grid: slice positions leave the slice normal by up to {shear:.2f} mm (gantry tilt or inconsistent "
                          "positions): tilt correction is not supported")


def _uih_items(ds: Dataset) -> list:
    elem = ds.get(UIH_VFRAME_SEQUENCE)
    if elem is None:
        return []
    value = elem.value
    if isinstance(value, bytes):  # read without a VR (implicit VR, private): parse the items
        from pydicom.values import convert_SQ

        value = convert_SQ(value, True if ds.is_implicit_VR is None else ds.is_implicit_VR, True)
    return list(value)


def _uih_positions(ds: Dataset) -> list[np.ndarray]:
    """The ImagePositionPatient values in file order: the top-level one, then each VFrame item's."""
    found = []
    if "ImagePositionPatient" in ds:
        found.append(_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", Path(".")))
    for item in _uih_items(ds):
        if "ImagePositionPatient" in item:
            found.append(_floats(item.ImagePositionPatient, 3, "ImagePositionPatient", Path(".")))
    return found


def siemens_csa_image(ds: Dataset | FastHeader) -> dict[str, list[str]] | None:
    """The CSA image header (0029,xx10) of a Siemens file, or None when it is absent or unreadable."""
    from medsynth.io.siemens_csa import CSAError, read_csa

    raw = _private_bytes(ds, 0x0029, "SIEMENS CSA HEADER", 0x10)
    if not isinstance(raw, bytes) or not raw:
        return None
    try:
        return read_csa(raw)
    except CSAError:
        return None


def mosaic_slice_count(ds: Dataset | FastHeader, csa: dict[str, list[str]] | None = None) -> tuple[int, str]:
    """The number of slices in a Siemens mosaic and where it came from, in dcm2niix's order: the CSA
    header's NumberOfImagesInMosaic; without it MosaicRefAcqTimes (0019,1029), NumberOfImagesInMosaic
    (0019,100A), the tiles the AcquisitionMatrix fits (blank tiles included), the phase-encoding steps.
    SeriesError when none is there."""
    from medsynth.io.siemens_csa import csa_number

    in_csa = csa_number(csa, "NumberOfImagesInMosaic") if csa else None
    if in_csa and in_csa > 1:
        return int(in_csa), "the CSA header"
    times = _private_numbers(ds, 0x0019, "SIEMENS MR HEADER", 0x29, "d")
    if times and len(times) > 1:
        return len(times), "slice times (0019,1029)"
    count = _private_numbers(ds, 0x0019, "SIEMENS MR HEADER", 0x0A, "H")
    if count and int(count[0]) > 1:
        return int(count[0]), "NumberOfImagesInMosaic (0019,100A)"
    rows, cols = int(ds.Rows), int(ds.Columns)
    matrix = ds.get("AcquisitionMatrix") or []
    matrix = [int(v) for v in (matrix if isinstance(matrix, (list, tuple)) or hasattr(matrix, "__iter__") else [matrix])]
    if len(matrix) == 4:
        freq = matrix[0] or matrix[1]
        phase = matrix[2] or matrix[3]
        if freq and phase and cols % freq == 0 and cols // freq > 2 and rows % phase == 0 and rows // phase > 2:
            return (cols // freq) * (rows // phase), f"every tile of the {freq} x {phase} AcquisitionMatrix (blank tiles kept)"
    steps = int(ds.get("NumberOfPhaseEncodingSteps", 0) or 0)
    if steps and cols % steps == 0 and rows % steps == 0 and cols // steps > 1:
        return (cols // steps) * (rows // steps), f"every tile of {steps} phase-encoding steps (blank tiles kept)"
    raise SeriesError("Siemens mosaic without a CSA header and without NumberOfImagesInMosaic or an AcquisitionMatrix "
                      "that tiles it: the number of slices is unknown (keep the CSA header: deid.retain_safe_private: true)")


def siemens_mosaic(ds: Dataset | FastHeader, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """A Siemens mosaic -> (cols, rows, slices) data, LPS affine and a note (empty with a CSA header).

    As dcm2niix: ceil(sqrt(n)) tiles a side, read row by row; the first slice's corner is the mosaic's
    ImagePositionPatient moved by half the mosaic less one tile; slices SpacingBetweenSlices (else
    SliceThickness) apart along the slice normal, pointing as the CSA header's SliceNormalVector does
    (without it: foot to head, Siemens' default numbering)."""
    from medsynth.io.siemens_csa import csa_vector

    csa = siemens_csa_image(ds)
    n, source = mosaic_slice_count(ds, csa)
    side = math.ceil(math.sqrt(n))
    rows, cols = int(ds.Rows), int(ds.Columns)
    iop = _norm_iop(_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", Path(".")))
    ipp = _floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", Path("."))
    ps = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing", Path("."))
    dz = _slice_spacing(ds)
    if dz <= 0:
        raise SeriesError("Siemens mosaic: neither SpacingBetweenSlices nor SliceThickness gives the slice spacing")
    data = _untile(ds, pixels, n, side, side)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    slice_normal = csa_vector(csa, "SliceNormalVector", 3) if csa else None
    if np.dot(normal, slice_normal if slice_normal is not None else (0.0, 0.0, 1.0)) < 0:  # dcm2niix: det[row | col | normal] < 0
        normal = -normal
    # the first tile's corner: the mosaic's corner moved by half the mosaic less one tile
    corner = ipp + row_dir * ps[1] * (cols - cols / side) / 2.0 + col_dir * ps[0] * (rows - rows / side) / 2.0
    aff = lps_affine(iop, ps, normal * dz, corner)
    note = "" if csa is not None and source == "the CSA header" else \
        f"CSA header absent: {n} slices from {source}" + ("" if slice_normal is not None else "; slice order assumed foot to head")
    return data, aff, note
