"""DICOM series -> volume + RAS affine.

Geometry rules (see docs/architecture.md, "DICOM geometry"):

* slices are ordered by ImagePositionPatient projected on the slice normal
  (``cross(row_cosines, column_cosines)``), never by InstanceNumber;
* the affine comes from ImageOrientationPatient, ImagePositionPatient and PixelSpacing, converted
  from DICOM's LPS patient space to RAS;
* RescaleSlope / RescaleIntercept are applied per slice (per frame for enhanced objects);
* enhanced multi-frame objects are read frame by frame from their functional groups;
* Siemens mosaics (with or without the CSA header) and UIH grids are unpacked by dcm2niix's rules;
* one SeriesInstanceUID is split when it holds several orientations or image sizes, and where
  dcm2niix's ``isSameSet`` splits it by default: derived images, vendor, modality, study date/time,
  and (not X-ray) real/imaginary/phase, TR, flip angle, echo time/number, Philips trigger time and
  protocol name; and, as dcm2niix does, files are stacked across series where it stacks them (Siemens
  XA classic by series time, Siemens dynamic series by protocol name, early XA series numbers by
  thousands), non-parallel mosaics are one 3D volume each, a GE B0 field map and the trigger delay
  times of a Philips enhanced object are written apart;
* repeated positions with the same count per position make a 4D (time) series;
* a file whose dcm2niix sort key an earlier file of its output has (the same image twice) is removed, with a series note;
* missing slices, uneven spacing, gantry tilt, single 2D images, objects without pixel data, empty
  images, NaN / Inf after rescaling and sizes over ``max_voxels`` (declared sizes, checked before
  decoding or inflating) are reported with a reason and never stop the batch.

The sub-modules, each importing only those above it:

* ``files``: discovery under a folder, the checks before a file is read (empty, unreadable, deflate
  bombs), the pydicom readers and the pixel-data completeness check;
* ``attributes``: ImageType words (derived, phase), private elements found by their creator and the
  attributes that split a series (``stack_key``);
* ``compressed``: compressed and big-endian single-frame grey-level pixel data through the codec
  plugins, without pydicom;
* ``pixels``: decoding (raw little endian, ``compressed``, else pydicom), multi-frame caching, rescale checks;
* ``geometry``: ``Slice``, orientation, ``lps_affine`` / ``LPS_TO_RAS``, splitting and stacking slices;
* ``philips``: the Philips scale slope, diffusion b values and the isotropic DWI volumes;
* ``ge``: GE diffusion b values of non-DTI series (whose trace volumes are set apart as Philips ones);
* ``slices``: files -> Slices (classic single-frame files, enhanced multi-frame objects);
* ``mosaics``: Siemens mosaics (CSA header) and UIH grids;
* ``scan``: the folder scan and classification into series (in forked child processes from 200 files);
  it imports ``attributes``, ``files`` and the fast reader only, and no numpy, so the command line starts
  it before it imports the rest;
* ``series``: a series' files -> ``DicomVolume``s.

pydicom is imported inside the functions that need it, never at module level: a folder the fast
reader (:mod:`medsynth.io.dicom_fast`) reads whole, compressed single-frame files included, converts
without it. The package's public names are imported on first use (PEP 562). Names with a leading
underscore are private to this package (shared between its sub-modules, not for other callers).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medsynth.io.dicom.attributes import DERIVED_DIFFUSION, complex_parts, is_derived, is_xray, manufacturer, stack_key
    from medsynth.io.dicom.files import (
        NIFTI_SUFFIXES,
        dataset_pixel_problem,
        discover_files,
        is_nifti,
        read_dataset,
        read_full_dataset,
        read_header,
        read_image_dataset,
    )
    from medsynth.io.dicom.ge import ge_diffusion, ge_non_dti
    from medsynth.io.dicom.geometry import LPS_TO_RAS, Slice, lps_affine, split_slices, stack_slices
    from medsynth.io.dicom.mosaics import (
        UIH_SLICES_IN_GRID,
        UIH_VFRAME_SEQUENCE,
        is_mosaic,
        is_uih_grid,
        mosaic_slice_count,
        siemens_csa_image,
        siemens_mosaic,
        uih_grid,
    )
    from medsynth.io.dicom.philips import isotropic_split, philips_diffusion, philips_float_scaling, philips_scale_slope
    from medsynth.io.dicom.pixels import decode_pixels, raw_little_endian_pixels
    from medsynth.io.dicom.scan import NOT_DICOM, SEG_SOP_CLASS, DicomScan, classify_file, read_scan_header, scan_folder
    from medsynth.io.dicom.series import DicomVolume, load_series
    from medsynth.io.dicom.slices import classic_slice, enhanced_slices, is_enhanced
    from medsynth.io.quarantine import DEFAULT_MAX_VOXELS, QuarantineEntry, SeriesError, error_text, max_decoded_bytes

# public name -> the sub-module that defines it, imported on first use (PEP 562): the folder scan
# (:mod:`medsynth.io.dicom.scan`) imports neither numpy nor the sub-modules that need it
_SUBMODULE = {
    "DERIVED_DIFFUSION": "medsynth.io.dicom.attributes",
    "complex_parts": "medsynth.io.dicom.attributes",
    "is_derived": "medsynth.io.dicom.attributes",
    "is_xray": "medsynth.io.dicom.attributes",
    "manufacturer": "medsynth.io.dicom.attributes",
    "stack_key": "medsynth.io.dicom.attributes",
    "NIFTI_SUFFIXES": "medsynth.io.dicom.files",
    "dataset_pixel_problem": "medsynth.io.dicom.files",
    "discover_files": "medsynth.io.dicom.files",
    "is_nifti": "medsynth.io.dicom.files",
    "read_dataset": "medsynth.io.dicom.files",
    "read_full_dataset": "medsynth.io.dicom.files",
    "read_header": "medsynth.io.dicom.files",
    "read_image_dataset": "medsynth.io.dicom.files",
    "ge_diffusion": "medsynth.io.dicom.ge",
    "ge_non_dti": "medsynth.io.dicom.ge",
    "LPS_TO_RAS": "medsynth.io.dicom.geometry",
    "Slice": "medsynth.io.dicom.geometry",
    "lps_affine": "medsynth.io.dicom.geometry",
    "split_slices": "medsynth.io.dicom.geometry",
    "stack_slices": "medsynth.io.dicom.geometry",
    "UIH_SLICES_IN_GRID": "medsynth.io.dicom.mosaics",
    "UIH_VFRAME_SEQUENCE": "medsynth.io.dicom.mosaics",
    "is_mosaic": "medsynth.io.dicom.mosaics",
    "is_uih_grid": "medsynth.io.dicom.mosaics",
    "mosaic_slice_count": "medsynth.io.dicom.mosaics",
    "siemens_csa_image": "medsynth.io.dicom.mosaics",
    "siemens_mosaic": "medsynth.io.dicom.mosaics",
    "uih_grid": "medsynth.io.dicom.mosaics",
    "isotropic_split": "medsynth.io.dicom.philips",
    "philips_diffusion": "medsynth.io.dicom.philips",
    "philips_float_scaling": "medsynth.io.dicom.philips",
    "philips_scale_slope": "medsynth.io.dicom.philips",
    "decode_pixels": "medsynth.io.dicom.pixels",
    "raw_little_endian_pixels": "medsynth.io.dicom.pixels",
    "DicomScan": "medsynth.io.dicom.scan",
    "DicomVolume": "medsynth.io.dicom.series",
    "NOT_DICOM": "medsynth.io.dicom.scan",
    "SEG_SOP_CLASS": "medsynth.io.dicom.scan",
    "classify_file": "medsynth.io.dicom.scan",
    "load_series": "medsynth.io.dicom.series",
    "read_scan_header": "medsynth.io.dicom.scan",
    "scan_folder": "medsynth.io.dicom.scan",
    "classic_slice": "medsynth.io.dicom.slices",
    "enhanced_slices": "medsynth.io.dicom.slices",
    "is_enhanced": "medsynth.io.dicom.slices",
    "DEFAULT_MAX_VOXELS": "medsynth.io.quarantine",
    "QuarantineEntry": "medsynth.io.quarantine",
    "SeriesError": "medsynth.io.quarantine",
    "error_text": "medsynth.io.quarantine",
    "max_decoded_bytes": "medsynth.io.quarantine",
}

__all__ = [
    "DEFAULT_MAX_VOXELS", "DERIVED_DIFFUSION", "LPS_TO_RAS", "NIFTI_SUFFIXES", "NOT_DICOM", "SEG_SOP_CLASS",
    "UIH_SLICES_IN_GRID", "UIH_VFRAME_SEQUENCE", "DicomScan", "DicomVolume", "QuarantineEntry", "SeriesError", "Slice",
    "classic_slice", "classify_file", "complex_parts", "dataset_pixel_problem", "decode_pixels", "discover_files", "enhanced_slices",
    "error_text", "ge_diffusion", "ge_non_dti", "is_derived", "is_enhanced", "is_mosaic", "is_nifti", "is_uih_grid", "is_xray",
    "isotropic_split", "load_series", "lps_affine", "manufacturer", "max_decoded_bytes", "mosaic_slice_count", "philips_diffusion",
    "philips_float_scaling", "philips_scale_slope", "raw_little_endian_pixels", "read_dataset", "read_full_dataset", "read_header",
    "read_image_dataset", "read_scan_header", "scan_folder", "siemens_csa_image", "siemens_mosaic", "split_slices", "stack_key",
    "stack_slices", "uih_grid",
]


def __getattr__(name: str) -> object:
    module = _SUBMODULE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
