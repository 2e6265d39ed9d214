"""Write a synthetic case as a DICOM series (CT or MR Image Storage) plus its mask as a DICOM SEG.

What marks the data synthetic and keeps it free of PHI:

* SyntheticData (0008,001C) = YES on every object; ImageType DERIVED\\SECONDARY; PatientName
  ``SYNTHETIC^<case id>``, PatientID = the case id; no birth date, sex, institution or physician;
  SeriesDescription names the model and condition; ContentDate/Time = creation time.
* UIDs are fresh ``2.25.`` UIDs derived from the checkpoint hash, case id and seed, so a rerun with
  the same model and seed writes byte-identical files (reproducible for DVC) while no UID is shared
  with any real study.

Geometry: slice k of the volume is one image; columns run along voxel axis i and rows along axis j,
so ImageOrientationPatient holds the (LPS) directions of axes i and j, ImagePositionPatient the LPS
position of voxel (0, 0, k) and PixelSpacing (spacing of j, spacing of i). ``medsynth convert`` (or
dcm2niix) reads the series back to the same voxels and affine.

The SEG (highdicom, BINARY, one segment per mask label) references every image it was derived from,
shares the Frame of Reference and the study, and is written next to the series.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from medsynth import __version__
from medsynth.io.writers import atomic_path

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def derived_uid(*parts: str) -> str:
    """A ``2.25.`` UID (128-bit integer, as for UUID-derived UIDs) from a hash of ``parts``: unique in
    practice, never shared with a real object, and the same on a rerun."""
    digest = hashlib.sha256("\x1f".join(("medsynth-synthetic", *parts)).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def case_uids(case_key: str) -> dict[str, str]:
    """Deterministic fresh UIDs for one synthetic case (``case_key`` = checkpoint hash + case id + seed)."""
    return {name: derived_uid(case_key, name) for name in ("study", "series", "frame", "seg_series", "seg")}


def _geometry(affine_ras: np.ndarray) -> tuple[list[float], list[float], np.ndarray, float]:
    lps = RAS_TO_LPS @ np.asarray(affine_ras, dtype=float)
    sp = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir = lps[:3, 0] / sp[0]  # increasing column index = voxel axis i
    col_dir = lps[:3, 1] / sp[1]  # increasing row index = voxel axis j
    iop = [float(round(v, 8)) for v in (*row_dir, *col_dir)]
    pixel_spacing = [float(sp[1]), float(sp[0])]
    return iop, pixel_spacing, lps, float(sp[2])


def _stored(volume: np.ndarray, modality: str) -> tuple[np.ndarray, float, float]:
    """Float volume -> int16 stored values, slope, intercept. CT keeps integer HU; MR keeps 15 bits of range."""
    v = np.asarray(volume, dtype=np.float64)
    if modality == "CT":
        return np.clip(np.rint(v), -32768, 32767).astype(np.int16), 1.0, 0.0
    lo, hi = float(v.min()), float(v.max())
    slope = (hi - lo) / 65534.0 if hi > lo else 1.0
    intercept = lo + 32767.0 * slope
    stored = np.clip(np.rint((v - intercept) / slope), -32767, 32767).astype(np.int16)
    return stored, float(f"{slope:.10g}"), float(f"{intercept:.10g}")


def _fmt(v: float) -> str:
    """A DS value of at most 16 characters."""
    for digits in range(12, 3, -1):
        s = f"{v:.{digits}g}"
        if len(s) <= 16:
            return s
    return f"{v:.3e}"


def build_series(volume: np.ndarray, affine_ras: np.ndarray, modality: str, case_id: str, description: str, uids: dict[str, str],
                 created: _dt.datetime) -> list[Dataset]:
    """One DICOM dataset per slice along axis k of ``volume`` (i, j, k), in physical values (HU for CT)."""
    if modality not in ("CT", "MR"):
        raise ValueError(f"synthetic DICOM supports CT and MR, not {modality!r}")
    stored, slope, intercept = _stored(volume, modality)
    iop, pixel_spacing, lps, thickness = _geometry(affine_ras)
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    date, time = created.strftime("%Y%m%d"), created.strftime("%H%M%S")
    lo, hi = float(volume.min()), float(volume.max())
    out = []
    for k in range(stored.shape[2]):
        ds = Dataset()
        sop_uid = derived_uid(uids["series"], str(k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationVersionName = f"medsynth {__version__}"[:16]
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"] if modality == "CT" else ["DERIVED", "SECONDARY", "OTHER"]
        ds.SyntheticData = "YES"
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
        ds.ContentDate, ds.ContentTime = date, time
        ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.SeriesTime = date, time, date, time
        ds.AccessionNumber = ""
        ds.Modality = modality
        ds.Manufacturer = "medsynth"
        ds.ManufacturerModelName = "medsynth synthetic data"
        ds.SoftwareVersions = __version__
        ds.DeviceSerialNumber = "0"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "SYNTHETIC medsynth"
        ds.SeriesDescription = description[:64]
        ds.PatientName = f"SYNTHETIC^{case_id}"[:64]
        ds.PatientID = case_id[:64]
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.PatientIdentityRemoved = "YES"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = uids["frame"]
        ds.PositionReferenceIndicator = ""
        ds.PatientOrientation = ""
        position = (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]
        ds.ImagePositionPatient = [_fmt(v) for v in position]
        ds.ImageOrientationPatient = [_fmt(v) for v in iop]
        ds.PixelSpacing = [_fmt(v) for v in pixel_spacing]
        ds.SliceThickness = _fmt(thickness)
        ds.SpacingBetweenSlices = _fmt(thickness)
        ds.SliceLocation = _fmt(float(position[2]))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = _fmt(slope), _fmt(intercept)
        ds.RescaleType = "HU" if modality == "CT" else "US"
        ds.WindowCenter, ds.WindowWidth = _fmt((lo + hi) / 2), _fmt(max(hi - lo, 1.0))
        ds.BurnedInAnnotation = "NO"
        if modality == "CT":
            ds.KVP = ""
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "RM", "NONE", "", "3D"
            ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength, ds.MagneticFieldStrength = "", "", "", ""
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # rows = axis j, columns = axis i
        out.append(ds)
    return out


def build_seg(images: list[Dataset], mask: np.ndarray, labels: dict[int, str], uids: dict[str, str], condition: str) -> Dataset | None:
    """DICOM SEG (BINARY) of ``mask`` (i, j, k label map) referencing ``images``; None when the mask is empty."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    present = [v for v in sorted(labels) if v and (mask == v).any()]
    if not present:
        return None
    frames = np.ascontiguousarray(np.transpose(mask, (2, 1, 0)))  # (slices, rows=j, columns=i)
    # highdicom wants labels 1..n: relabel the present ones in order
    relabelled = np.zeros_like(frames, dtype=np.uint8)
    descriptions = []
    algorithm = hd.AlgorithmIdentificationSequence(name="medsynth", family=codes.cid7162.ArtificialIntelligence, version=__version__)
    for n, v in enumerate(present, start=1):
        relabelled[frames == v] = n
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=n, segment_label=f"{labels[v]} (synthetic {condition})"[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure, segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        ))
    seg = hd.seg.Segmentation(
        source_images=images, pixel_array=relabelled, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=uids["seg_series"], series_number=2,
        sop_instance_uid=uids["seg"], instance_number=1, manufacturer="medsynth", manufacturer_model_name="medsynth synthetic data",
        software_versions=__version__, device_serial_number="0", series_description=f"SYNTHETIC mask {condition}"[:64],
    )
    seg.SyntheticData = "YES"
    seg.ImageType = ["DERIVED", "PRIMARY"]
    return seg


def write_dicom_case(out_dir: Path, case_id: str, volume: np.ndarray, mask: np.ndarray, affine_ras: np.ndarray, modality: str,
                     sidecar: dict, labels: dict[int, str] | None = None) -> dict:
    """Write ``out_dir/<case_id>/image/IM0001.dcm..`` and ``out_dir/<case_id>/seg.dcm``; return the UIDs."""
    created = _dt.datetime.fromisoformat(sidecar["created"]) if sidecar.get("created") else _dt.datetime.now(_dt.UTC)
    uids = case_uids(f"{sidecar.get('checkpoint_sha256', '')}/{case_id}/{sidecar.get('seed', '')}")
    description = f"SYNTHETIC {sidecar.get('model', '')} {sidecar.get('condition', '')}".strip()
    images = build_series(volume, affine_ras, modality, case_id, description, uids, created)
    case_dir = Path(out_dir) / case_id
    for k, ds in enumerate(images):
        with atomic_path(case_dir / "image" / f"IM{k + 1:04d}.dcm", suffix=".dcm") as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    seg = build_seg(images, mask, labels or {1: "lesion"}, uids, sidecar.get("condition", ""))
    if seg is not None:
        with atomic_path(case_dir / "seg.dcm", suffix=".dcm") as tmp:
            seg.save_as(tmp, enforce_file_format=True)
    return {"study_uid": uids["study"], "series_uid": uids["series"], "seg_written": seg is not None}


def read_seg_labels(seg_path: Path, image_dir: Path) -> np.ndarray:
    """Label map (i, j, k) of a SEG written by :func:`write_dicom_case`, on its image series' grid
    (the frames are matched to images through the SEG's source-image references)."""
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    images = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in Path(image_dir).glob("*.dcm")), key=lambda d: int(d.InstanceNumber))
    uids = [d.SOPInstanceUID for d in images]
    labels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True)
    return np.transpose(np.asarray(labels), (2, 1, 0))
