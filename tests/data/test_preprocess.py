"""Preprocessing on real data: geometry kept (a known physical point stays put), mask aligned after every
transform, intensity ranges per modality, cache invalidation, and the npz source on AdrenalMNIST3D."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medsynth.config import DataConfig, Params, PreprocessConfig
from medsynth.data.transforms import build_transforms, transform_hash
from tests.conftest import shared

MARK = 20000.0


def _marked_case(tmp_path, voxel=(20, 40, 17)):
    """A real LAS-oriented MR volume (dcm2niix reference, 3.25 x 3.25 x 3.2 mm) with a bright 3^3 marker
    block at a known voxel, and a mask of the same block."""
    src = nib.load(shared("dicom", "dcm_qa_12bit", "Ref", "2.nii"))
    data = np.asarray(src.dataobj, dtype=np.float32)
    mask = np.zeros(data.shape, np.uint8)
    sl = tuple(slice(v - 1, v + 2) for v in voxel)
    data[sl] = MARK
    mask[sl] = 1
    nib.save(nib.Nifti1Image(data, src.affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(mask, src.affine), tmp_path / "mask.nii.gz")
    centre = src.affine @ np.array([*voxel, 1.0])
    return {"image": str(tmp_path / "img.nii.gz"), "mask": str(tmp_path / "mask.nii.gz")}, centre[:3], float(data[mask == 0].max())


def _centroid_mm(t) -> np.ndarray:
    arr = np.asarray(t[0])
    idx = np.argwhere(arr > 0.5).mean(0)
    return (np.asarray(t.affine, dtype=np.float64) @ np.array([*idx, 1.0]))[:3]


@pytest.mark.parametrize("spacing", [(4.0, 4.0, 4.0), (2.0, 3.0, 5.0)])
def test_known_point_keeps_its_place_and_mask_stays_aligned_after_every_transform(tmp_path, spacing):
    item, centre_mm, real_max = _marked_case(tmp_path)
    # CT-style window that maps the real anatomy to -1 and the marker to +1: the image marker stays visible
    cfg = PreprocessConfig(roi_size=(24, 24, 24), spacing=spacing, ct_window=(real_max + 1, MARK))
    chain = build_transforms(cfg, "CT").transforms
    d = dict(item)
    intensity_done = False
    for t in chain:
        d = t(d)
        name = type(t).__name__
        if name.startswith("ScaleIntensity"):
            intensity_done = True
        if name in ("LoadImaged", "EnsureChannelFirstd") or set(getattr(t, "keys", ())) == {"image"}:
            continue  # image-only steps (the image's pad value) are followed by the mask's own step
        img, msk = d["image"], d["mask"]
        assert np.allclose(np.asarray(img.affine), np.asarray(msk.affine), atol=1e-4), f"after {name}: affines differ"
        assert img.shape == msk.shape, f"after {name}: shapes differ"
        on = np.asarray(img[0]) > (0.0 if intensity_done else MARK / 2)
        m = np.asarray(msk[0]) > 0.5
        jaccard = (on & m).sum() / max((on | m).sum(), 1)
        assert jaccard > 0.5, f"after {name}: image marker and mask overlap only {jaccard:.2f}"
        # the known physical point is where the mask says, within one output voxel
        assert np.linalg.norm(_centroid_mm(msk) - centre_mm) <= max(spacing) * 0.87 + 1e-3, name
    assert tuple(d["image"].shape[1:]) == (24, 24, 24)
    assert tuple(round(float(v), 3) for v in np.linalg.norm(np.asarray(d["image"].affine)[:3, :3], axis=0)) == spacing
    codes = nib.aff2axcodes(np.asarray(d["image"].affine))
    assert codes == ("R", "A", "S")


def test_intensity_ranges_per_modality(tmp_path):
    src = nib.load(shared("dicom", "dcm_qa_12bit", "Ref", "2.nii"))
    nib.save(src, tmp_path / "mr.nii.gz")
    item = {"image": str(tmp_path / "mr.nii.gz")}
    for norm in ("percentile", "zscore"):
        cfg = PreprocessConfig(mr_normalisation=norm, crop_foreground=False, roi_size=(64, 64, 32), spacing=(3.25, 3.25, 3.2))
        out = np.asarray(build_transforms(cfg, "MR", with_mask=False)(dict(item))["image"])
        assert out.min() >= -1 and out.max() <= 1, norm
        if norm == "percentile":
            lo, hi = np.percentile(out, [0.5, 99.5])
            assert lo == pytest.approx(-1, abs=0.01) and hi == pytest.approx(1, abs=0.01)
        else:
            assert -0.5 < out[out > -1].mean() < 0.5
    hu = np.linspace(-1000, 1000, 32 ** 3, dtype=np.float32).reshape(32, 32, 32)
    nib.save(nib.Nifti1Image(hu, np.diag([2.0, 2, 2, 1])), tmp_path / "ct.nii.gz")
    cfg = PreprocessConfig(ct_window=(-200.0, 300.0), crop_foreground=False, roi_size=(32, 32, 32), spacing=(2.0, 2.0, 2.0))
    out = np.asarray(build_transforms(cfg, "CT", with_mask=False)({"image": str(tmp_path / "ct.nii.gz")})["image"])[0]
    assert out.min() == -1 and out.max() == 1
    inside = (hu > -200) & (hu < 300)
    assert np.allclose(out[inside], (hu[inside] + 200) / 500 * 2 - 1, atol=2e-3)


def test_changed_transform_setting_invalidates_the_cache(preprocessed, tmp_path):
    from medsynth.cohort import StaleCacheError, read_preprocess_info
    from medsynth.models.training import train_model

    info = json.loads((preprocessed / "preprocess.json").read_text())
    cfg = Params().preprocess.model_copy(update={"roi_size": (16, 16, 16), "spacing": (8.0, 8.0, 8.0)})
    assert info["transform_hash"] == transform_hash(cfg, info["modality"])
    hashes = {transform_hash(cfg, "CT")}
    for change in ({"ct_window": (-100.0, 300.0)}, {"spacing": (8.0, 8.0, 6.0)}, {"roi_size": (16, 16, 24)},
                   {"crop_foreground": False}, {"mr_percentiles": (2.0, 98.0)}):
        changed = cfg.model_copy(update=change)
        h = transform_hash(changed, "CT")
        assert h not in hashes, change
        hashes.add(h)
        with pytest.raises(StaleCacheError, match="rerun the preprocess stage"):
            read_preprocess_info(preprocessed, h)
    p = Params()
    with pytest.raises(StaleCacheError):
        train_model("cvae", p.train.cvae.model_dump(), p.train, preprocessed, tmp_path / "m", seed=0,
                    expected_hash=transform_hash(cfg.model_copy(update={"ct_window": (-50.0, 50.0)}), "CT"), progress=False)


def test_npz_source_adrenalmnist3d_28(tmp_path):
    from medsynth.data.preprocess import preprocess_cohort
    from medsynth.io.ingest import ingest_npz

    npz = shared("shapes", "adrenalmnist3d_28.npz")
    z = np.load(npz)
    ingest_npz(npz, tmp_path / "ing", DataConfig(input=str(npz)), seed=3)
    with open(tmp_path / "ing" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == sum(len(z[f"{s}_labels"]) for s in ("train", "val", "test") if f"{s}_images" in z.files)
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test", "holdout")}
    assert len(by_split["train"]) == len(z["train_labels"])
    assert len(by_split["test"]) + len(by_split["holdout"]) == len(z["test_labels"])
    assert abs(len(by_split["test"]) - len(by_split["holdout"])) <= 2
    patients = [r["patient"] for r in rows]
    assert len(set(patients)) == len(patients)  # one case per patient: no one in two splits
    cfg = Params().preprocess.model_copy(update={"roi_size": (32, 32, 32), "spacing": (1.0, 1.0, 1.0), "crop_foreground": False})
    info = preprocess_cohort(tmp_path / "ing", tmp_path / "pre", cfg, 3, "lesion")
    assert info["modality"] == "SEG" and set(info["conditions"]) == {"normal", "lesion"}
    counts = info["counts"] if "counts" in info else info["by_condition_and_split"]
    assert counts  # per-condition counts are reported
    x = np.load(next((tmp_path / "pre" / "tensors").glob("*.npy")))
    assert x.shape == (2, 32, 32, 32) and x.dtype == np.float16 and x.min() >= -1 and x.max() <= 1
    assert set(np.unique(x[1])) <= {0.0, 1.0}
    assert torch.from_numpy(x.astype(np.float32))[0][x[1] > 0].mean() > 0.5  # the shape is bright where its mask is


def test_preprocess_reports_label_sizes_and_warns_when_the_rare_structure_is_too_small(preprocessed, demo_ingested, tmp_path):
    """The demo's lesion (radius 9-13 mm) is a handful of voxels at 8 mm: preprocess.json says so per label and
    warns; at 4 mm it is large enough and the warning is gone."""
    from medsynth.config import Params
    from medsynth.data.preprocess import preprocess_cohort

    info = json.loads((preprocessed / "preprocess.json").read_text())
    lesion, normal = info["label_voxels"]["lesion"], info["label_voxels"]["normal"]
    assert lesion["2"]["present_share"] == 1.0 and normal["2"]["present_share"] == 0.0
    assert 0 < lesion["2"]["median_voxels"] < 20
    assert normal["1"]["median_voxels"] > lesion["2"]["median_voxels"]
    assert any("label 2 of condition 'lesion'" in w for w in info["warnings"]), info["warnings"]
    assert info["spacing_fitting_roi"][0] > 3  # the phantoms span ~14 cm: 16 voxels fit it at ~9 mm
    cfg = Params().preprocess.model_copy(update={"roi_size": (32, 32, 32), "spacing": (4.0, 4.0, 4.0)})
    fine = preprocess_cohort(demo_ingested, tmp_path / "pre4", cfg, 1, "lesion")
    assert fine["label_voxels"]["lesion"]["2"]["median_voxels"] >= 20
    assert not any("label 2" in w for w in fine["warnings"]), fine["warnings"]
