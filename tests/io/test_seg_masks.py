"""DICOM SEG objects are masks: matched to the real series they reference and put on its voxel grid.

The SEGs are made with highdicom from real GE MR slices (../shared/data/dicom/dcm_qa_nih), so the
references, frame positions and orientation are those of a real scanner's series.
"""

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.conftest import shared

GE = ("dicom", "dcm_qa_nih", "In", "20180918GE")


def _first_volume(folder: Path, n: int = 15) -> list[Path]:
    """The first time point of a real GE fMRI run: 15 axial slices."""
    return sorted(folder.glob("*.dcm"))[:n]


def _make_seg(images: list[pydicom.Dataset], labels: np.ndarray, fractional: bool = False) -> pydicom.Dataset:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algo = hd.AlgorithmIdentificationSequence(name="test", family=codes.cid7162.ArtificialIntelligence, version="1")
    descr = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=name, segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
        )
        for n, name in ((1, "lesion"), (2, "cyst"))
    ]
    return hd.seg.Segmentation(
        source_images=images, pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descr, series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1",
    )


def _labels(images: list[pydicom.Dataset]) -> np.ndarray:
    frames = np.zeros((len(images), int(images[0].Rows), int(images[0].Columns)), dtype=np.uint8)
    frames[4:9, 20:30, 12:26] = 1  # (slice, row, column)
    frames[10:12, 40:44, 40:47] = 2
    return frames


def _expected_on(frames: np.ndarray, images: list[pydicom.Dataset], affine_ras: np.ndarray, shape) -> np.ndarray:
    """Independent of the code under test: each labelled pixel's LPS centre from its slice's
    ImagePositionPatient / ImageOrientationPatient / PixelSpacing, flipped to RAS, then to a voxel."""
    out = np.zeros(shape, dtype=np.uint8)
    inv = np.linalg.inv(affine_ras)
    for s, ds in enumerate(images):
        iop = np.array([float(x) for x in ds.ImageOrientationPatient])
        ipp = np.array([float(x) for x in ds.ImagePositionPatient])
        dr, dc = (float(x) for x in ds.PixelSpacing)  # row spacing, column spacing
        r, c = np.nonzero(frames[s])
        lps = ipp[None] + c[:, None] * dc * iop[None, :3] + r[:, None] * dr * iop[None, 3:]
        ras = lps * np.array([-1, -1, 1])
        vox = np.rint((inv @ np.c_[ras, np.ones(len(ras))].T)[:3]).astype(int)
        out[vox[0], vox[1], vox[2]] = frames[s][r, c]
    return out


@pytest.fixture
def seg_input(tmp_path) -> dict:
    src = shared(*GE)
    inp = tmp_path / "export"
    files = _first_volume(src / "mr_0004")
    for f in files:
        (inp / "series").mkdir(parents=True, exist_ok=True)
        shutil.copy(f, inp / "series" / f.name)
    images = [pydicom.dcmread(f, force=True) for f in files]
    frames = _labels(images)
    seg = _make_seg(images, frames)
    (inp / "masks").mkdir()
    seg.save_as(inp / "masks" / "seg.dcm")
    # a SEG of a series that is not in the export
    other = [pydicom.dcmread(f, force=True) for f in _first_volume(src / "mr_0005")]
    _make_seg(other, _labels(other)).save_as(inp / "masks" / "orphan_seg.dcm")
    return {"input": inp, "images": images, "frames": frames}


@pytest.mark.integration
def test_convert_writes_seg_masks_on_the_image_grid(seg_input, tmp_path):
    from medsynth.io.convert import convert_folder

    out = tmp_path / "out"
    convert_folder(seg_input["input"], out, workers=1)
    rows = list(csv.DictReader(open(out / "series.csv")))
    image_rows = [r for r in rows if r["modality"] == "MR"]
    seg_rows = [r for r in rows if r["modality"] == "SEG"]
    assert len(image_rows) == 1 and len(seg_rows) == 1
    assert seg_rows[0]["file"] == image_rows[0]["file"].replace(".nii.gz", "_seg.nii.gz")
    assert "1=lesion" in seg_rows[0]["notes"] and "2=cyst" in seg_rows[0]["notes"]
    img = nib.load(out / image_rows[0]["file"])
    mask = nib.load(out / seg_rows[0]["file"])
    assert mask.shape == img.shape and np.allclose(mask.affine, img.affine)
    expected = _expected_on(seg_input["frames"], seg_input["images"], img.affine, img.shape)
    got = np.asarray(mask.dataobj)
    assert got.sum() > 0 and np.array_equal(got, expected)
    q = list(csv.DictReader(open(out / "quarantine.csv")))
    assert [(r["path"], r["reason"]) for r in q if "seg" in r["path"]] == [
        ("masks/orphan_seg.dcm", "DICOM SEG: the image series it references is not among the converted 3D volumes")
    ]


@pytest.mark.integration
def test_ingest_matches_seg_to_its_series_after_deidentification(seg_input, tmp_path):
    """The keyed UID replacement rewrites the SEG's references and the image UIDs alike, so the mask still
    finds its image; the orphan SEG is quarantined with its reason."""
    from medsynth.config import Params
    from medsynth.io.deid import DeidKey
    from medsynth.io.ingest import ingest

    p = Params()
    out = tmp_path / "ingest"
    res = ingest(seg_input["input"], out, p.data, p.deid, DeidKey(b"seg-test-key-0123456789", "file", True), workers=1)
    assert len(res.cases) == 1 and res.cases[0]["has_mask"] == 1
    case = res.cases[0]["case_id"]
    img = nib.load(out / "images" / f"{case}.nii.gz")
    mask = nib.load(out / "masks" / f"{case}.nii.gz")
    expected = _expected_on(seg_input["frames"], seg_input["images"], img.affine, img.shape)
    assert np.array_equal(np.asarray(mask.dataobj), expected)
    # the de-identified SEG still points at the de-identified image series
    deid_segs = [pydicom.dcmread(f) for f in (out / "dicom").rglob("*.dcm") if pydicom.dcmread(f, stop_before_pixels=True).Modality == "SEG"]
    image_series = {pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in (out / "dicom").rglob("*.dcm")}
    assert len(deid_segs) == 2
    for s in deid_segs:
        assert s.ReferencedSeriesSequence[0].SeriesInstanceUID.startswith("2.25.")
    assert sum(s.ReferencedSeriesSequence[0].SeriesInstanceUID in image_series for s in deid_segs) == 1
    reasons = [q["reason"] for q in res.quarantine]
    assert "DICOM SEG: the image series it references is not in the input" in reasons


def test_fractional_seg_is_thresholded_and_a_broken_seg_gets_a_reason(tmp_path):
    from medsynth.io.convert import ConvertedVolume
    from medsynth.io.dicom import SeriesError
    from medsynth.io.seg import mask_on_image, read_seg_mask

    files = _first_volume(shared(*GE) / "mr_0004")
    images = [pydicom.dcmread(f, force=True) for f in files]
    frames = _labels(images)
    prob = np.zeros(frames.shape + (2,), dtype=np.float32)  # (slices, rows, columns, segments)
    prob[..., 0] = np.where(frames == 1, 0.8, 0.3)  # 0.3 everywhere else: below the 0.5 threshold
    prob[..., 1] = np.where(frames == 2, 0.6, 0.0)
    _make_seg(images, prob, fractional=True).save_as(tmp_path / "frac.dcm")
    seg = read_seg_mask(tmp_path / "frac.dcm")
    (tmp_path / "series").mkdir()
    for f in files:
        shutil.copy(f, tmp_path / "series" / f.name)
    from medsynth.io.convert import iter_volumes

    (img,) = [v.image for v in iter_volumes(tmp_path / "series", workers=1) if isinstance(v, ConvertedVolume)]
    got = mask_on_image(seg, img)
    assert np.array_equal(got, _expected_on(frames, images, img.affine, img.shape))

    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 40)
    with pytest.raises(SeriesError, match="DICOM SEG cannot be read"):
        read_seg_mask(bad)
