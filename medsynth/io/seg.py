"""DICOM SEG objects as masks: decoded with highdicom, matched to the image series they reference.

A SEG is not an image to convert: it is the mask of another series. ``read_seg_mask`` decodes it into a
label map in world (RAS) coordinates -- its own frame grid, which may cover only the slices that hold a
segment -- and ``mask_on_image`` resamples that map (nearest neighbour) onto the grid of the image
volume it belongs to. Matching is by SeriesInstanceUID: the SEG's ReferencedSeriesSequence and the
source-image references of its frames.

Label values: BINARY and LABELMAP SEGs give each voxel its segment number (1..n); where segments
overlap, the higher segment number wins. FRACTIONAL SEGs are thresholded at 0.5 first.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medsynth.io.dicom import SeriesError
from medsynth.io.nifti import resample_mask_to
from medsynth.io.quarantine import DEFAULT_MAX_VOXELS


@dataclass
class SegMask:
    """A decoded DICOM SEG: which series it masks and its label map in RAS world coordinates."""

    source: str  # path relative to the input root
    referenced_series: frozenset[str]
    segment_labels: dict[int, str]
    image: nib.Nifti1Image


def _referenced_series(seg) -> set[str]:
    refs = {str(series) for _study, series, _sop in seg.get_source_image_uids()}
    for item in seg.get("ReferencedSeriesSequence", []):
        refs.add(str(item.get("SeriesInstanceUID", "")))
    return {r for r in refs if r}


def read_seg_mask(path: Path, source: str | None = None, max_voxels: int = DEFAULT_MAX_VOXELS) -> SegMask:
    """Decode a DICOM SEG file of at most ``max_voxels`` (Rows x Columns x NumberOfFrames, checked before
    decoding) into a :class:`SegMask`; :class:`SeriesError` with the reason if it cannot."""
    import highdicom as hd

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = hd.seg.segread(str(path))
    except Exception as exc:
        raise SeriesError(f"DICOM SEG cannot be read: {type(exc).__name__}: {str(exc)[:160]}") from exc
    voxels = int(seg.get("Rows", 0) or 0) * int(seg.get("Columns", 0) or 0) * int(seg.get("NumberOfFrames", 1) or 1)
    if voxels > max_voxels:
        raise SeriesError(f"DICOM SEG declares {voxels:,} voxels (Rows x Columns x NumberOfFrames): over the limit of "
                          f"{max_voxels:,} voxels (data.max_voxels); not decoded")
    refs = _referenced_series(seg)
    if not refs:
        raise SeriesError("DICOM SEG references no image series: it cannot be matched to an image")
    numbers = [int(n) for n in seg.segment_numbers]
    labels = {n: str(seg.get_segment_description(n).segment_label) for n in numbers}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL:
                vol = seg.get_volume(combine_segments=False, rescale_fractional=True)
                prob = np.asarray(vol.array, dtype=np.float32).reshape(*vol.spatial_shape, -1)
                arr = np.zeros(vol.spatial_shape, dtype=np.uint8)
                for i, n in enumerate(numbers):  # ascending: the higher segment wins where they overlap
                    arr[prob[..., i] >= 0.5] = n
            else:
                vol = seg.get_volume(combine_segments=True, skip_overlap_checks=True)
                arr = np.asarray(vol.array).astype(np.uint8)
            affine = vol.get_affine("RAS")  # array indices -> RAS mm
    except Exception as exc:
        raise SeriesError(
            f"DICOM SEG frames do not form a regular 3D volume ({type(exc).__name__}: {str(exc)[:160]})"
        ) from exc
    img = nib.Nifti1Image(arr, affine)
    return SegMask(source or path.name, frozenset(refs), labels, img)


def mask_on_image(seg: SegMask, image: nib.Nifti1Image) -> np.ndarray:
    """The SEG's label map resampled onto ``image``'s voxel grid; SeriesError when they do not overlap."""
    out = resample_mask_to(seg.image, image)
    if not out.any():
        raise SeriesError("DICOM SEG does not overlap the image series it references (no segment voxel on its grid)")
    return out
