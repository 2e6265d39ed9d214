"""Counterfactual augmentation: real cases of the common condition changed to have the rare one.

The structure prior is checked where it matters: lesions drawn inside the organ, at the size and place of
real lesions, bright or dark as real ones are (phantoms); a smaller hippocampus drawn at the size real
small hippocampi have (the real MR cohort). The generator trains, writes its cases as their own kind with
the source case named and every voxel outside the edit region the source's; the seam measure and the
structure copy check detect what they are for; the verdict never calls the model fit to share."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from medsynth.cli import app
from medsynth.cohort import MANIFEST_FIELDS
from medsynth.config import PreprocessConfig
from medsynth.data.transforms import transform_hash, transform_settings
from medsynth.eval.counterfactual import seam_and_look, structure_copy_check
from medsynth.eval.gates import counterfactual_gates, model_verdict
from medsynth.models.base import TrainingDataError
from medsynth.models.counterfactual import CounterfactualSampler, StructurePrior
from medsynth.synth.counterfactual import INTERNAL_USE, synthesize_counterfactuals
from medsynth.synth.sampler import load_sampler, physical_transform
from tests.fixtures.hippocampus import load_hippocampus

BRIGHT, DARK = 0.6, -0.5
RARE, NORMAL = 0, 1  # condition indices: ["lesion", "normal"]


def phantoms(n_normal: int, n_rare: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x (N, 2, s, s, s), y, organ centres): an organ (label 1) in every case; in rare cases a lesion
    (label 2) inside it, bright in half of them and dark in the others."""
    rng = np.random.default_rng(seed)
    g = np.indices((size,) * 3, dtype=float)
    xs, ys, centres = [], [], []
    for i in range(n_normal + n_rare):
        c = size / 2 - 0.5 + rng.uniform(-1.5, 1.5, 3)
        r = rng.uniform(4.0, 5.5, 3)
        organ = sum(((gi - ci) / ri) ** 2 for gi, ci, ri in zip(g, c, r, strict=False)) <= 1
        img = -1 + 0.02 * rng.standard_normal(organ.shape)
        img[organ] = 0.05 * rng.standard_normal(organ.sum())
        lab = organ.astype(np.float32)
        if i >= n_normal:
            lc = c + rng.normal(0, 1.0, 3)
            lesion = (sum((gi - ci) ** 2 for gi, ci in zip(g, lc, strict=False)) <= rng.uniform(1.6, 2.2) ** 2) & organ
            img[lesion] = (BRIGHT if i % 2 else DARK) + 0.03 * rng.standard_normal(lesion.sum())
            lab[lesion] = 2
        xs.append(np.stack([img, lab]).astype(np.float32))
        ys.append(RARE if i >= n_normal else NORMAL)
        centres.append(c)
    return np.stack(xs), np.array(ys), np.array(centres)


def fitted_prior(x, y) -> tuple[StructurePrior, dict]:
    prior = StructurePrior(2)
    return prior, prior.fit(x[:, 0], np.rint(x[:, 1]), y, RARE, 0.5, 1.15)


def test_a_drawn_lesion_lies_in_the_organ_at_the_size_place_and_look_of_real_lesions():
    x, y, centres = phantoms(24, 8)
    prior, report = fitted_prior(x, y)
    assert prior.modes == {1: "keep", 2: "insert"} and report["labels"]["2"]["host_label"] == 1 and report["labels"]["2"]["inside_host"]
    real = [m for m in np.rint(x[y == RARE, 1]).astype(int)]
    real_vol = [int((m == 2).sum()) for m in real]
    real_off = [np.linalg.norm(np.argwhere(m == 2).mean(0) - np.argwhere(m > 0).mean(0)) for m in real]
    rng = np.random.default_rng(1)
    looks = []
    for m in np.rint(x[y == NORMAL, 1]).astype(int)[:12]:
        target, drawn = prior.draw(m, rng)
        lesion = target == 2
        assert lesion.any() and (m[lesion] == 1).all()  # inside the source's organ, nowhere else
        assert ndimage.label(lesion, np.ones((3, 3, 3)))[1] == 1  # one structure
        assert 0.5 * min(real_vol) <= lesion.sum() <= max(real_vol)
        off = np.linalg.norm(np.argwhere(lesion).mean(0) - np.argwhere(m > 0).mean(0))
        assert off <= max(real_off) + 2.0
        assert ((target == 1) | lesion).sum() == (m == 1).sum()  # the lesion takes organ voxels, the rest is as it was
        looks.append(drawn["mean_intensity"]["2"])
    looks = np.array(looks)
    assert (np.abs(looks - BRIGHT) < 0.1).any() and (np.abs(looks - DARK) < 0.1).any(), looks  # bright or dark, as real lesions


def test_outside_the_edit_region_the_counterfactual_is_the_source_case():
    x, y, _ = phantoms(6, 4)
    net = CounterfactualSampler(2, 2, 4, 16, margin=2).eval()
    net.prior.fit(x[:, 0], np.rint(x[:, 1]), y, RARE, 0.5, 1.15)
    src = x[0]
    cf = net.counterfactual(src[0], np.rint(src[1]).astype(int), RARE, np.random.default_rng(0))
    region = cf["region"].astype(bool)
    assert np.array_equal(cf["image"][~region], src[0][~region])
    lesion = cf["mask"] == 2
    assert lesion.any() and region[ndimage.binary_dilation(lesion, np.ones((3, 3, 3)), iterations=2)].all()
    assert np.array_equal(cf["mask"][~lesion], np.rint(src[1]).astype(np.uint8)[~lesion])


def test_a_smaller_hippocampus_is_drawn_at_the_size_of_real_small_ones():
    """Real MR: the prior learns that the rare condition (small) rescales both hippocampus labels, and a
    typical case changed to small has the volume real small cases have."""
    x, y = load_hippocampus(["small", "typical"])
    masks = np.rint(x[:, 1]).astype(int)
    prior = StructurePrior(2)
    report = prior.fit(x[:, 0], masks, y, 0, 0.5, 1.15)
    assert prior.modes == {1: "rescale", 2: "rescale"}, report
    vol = (masks > 0).reshape(len(masks), -1).sum(1)
    rng = np.random.default_rng(0)
    typical = np.flatnonzero(y == 1)[:40]
    drawn = []
    for i in typical:
        target, info = prior.draw(masks[i], rng)
        assert set(np.unique(target)) == {0, 1, 2}
        src = masks[i] > 0
        near = ndimage.binary_dilation(src, iterations=2)  # shrunk about its centre, a curved structure moves a little
        assert ((target > 0) & near).sum() >= 0.9 * (target > 0).sum()
        drawn.append((target > 0).sum())
    real_small, real_typical = np.median(vol[y == 0]), np.median(vol[y == 1])
    assert abs(np.median(drawn) / real_small - 1) < 0.1, (np.median(drawn), real_small, real_typical)
    assert 0.9 * vol[y == 0].min() <= min(drawn) and max(drawn) <= 1.1 * vol[y == 0].max()
    assert np.median(drawn) < 0.85 * np.median(vol[typical])  # the typical cases were changed, not left as they were


def _seam_inputs(src: np.ndarray, cf: np.ndarray, region: np.ndarray) -> dict:
    mask = np.zeros(src.shape, int)
    mask[region] = 2
    return seam_and_look(cf[None], mask[None], region[None], src[None], src[None], mask[None], [2], 0)


def test_the_seam_measure_sees_a_pasted_edge_and_a_smeared_one():
    rng = np.random.default_rng(0)
    src = ndimage.gaussian_filter(rng.standard_normal((24, 24, 24)), 1.0)
    region = np.zeros(src.shape, bool)
    region[8:16, 8:16, 8:16] = True
    assert _seam_inputs(src, src, region)["seam_ratio_to_source"]["median"] == pytest.approx(1.0)
    pasted = src.copy()
    pasted[region] += 1.0
    assert _seam_inputs(src, pasted, region)["seam_deviation"] > 1.5
    smeared = src.copy()
    smeared[ndimage.binary_dilation(region, iterations=2)] = src.mean()
    assert _seam_inputs(src, smeared, region)["seam_ratio_to_source"]["median"] < 0.67


def test_a_copied_training_lesion_is_flagged_and_an_unseen_one_is_not():
    x, y, _ = phantoms(20, 12, seed=3)
    train = np.r_[np.flatnonzero(y == NORMAL)[:14], np.flatnonzero(y == RARE)[:8]]
    hold = np.r_[np.flatnonzero(y == NORMAL)[14:], np.flatnonzero(y == RARE)[8:]]
    normals = x[np.flatnonzero(y == NORMAL)[:4]]

    def pasted(donors):
        img, msk = normals[:, 0].copy(), np.rint(normals[:, 1]).astype(int)
        for k, d in enumerate(donors):
            sel = np.rint(d[1]) == 2
            img[k][sel], msk[k][sel] = d[0][sel], 2
        return img, msk

    copied = pasted(x[train][y[train] == RARE][:4])
    det = structure_copy_check(*copied, x[train], y[train], x[hold], y[hold], RARE, [2], 2, 0.5)
    assert det["measured"] and det["copies"] == 4, det["closest_pairs"]
    unseen = pasted(x[hold][y[hold] == RARE][:4])
    det = structure_copy_check(*unseen, x[train], y[train], x[hold], y[hold], RARE, [2], 2, 0.5)
    assert det["copies"] == 0


def test_the_verdict_never_calls_a_counterfactual_model_fit_to_share():
    fid = {"nn_distance_ratio": 1.0, "counterfactual": {"seam_ratio_to_source": {"median": 1.05}, "seam_deviation": 1.05}}
    det = {"measured": True, "copies": 0, "distance_factor": 0.5, "reference_structures": {"train": 8}, "channels": {"combined": {"threshold": 0.2}}}
    from medsynth.config import GatesConfig

    gates = counterfactual_gates("cf", fid, {"structure_copy_detection": det}, GatesConfig())
    gates.append({"gate": "cf: utility (real + synthetic vs real)", "area": "utility", "state": "pass", "internal_only": True})
    assert {g["state"] for g in gates} == {"pass"}
    verdict = model_verdict("cf", gates, "share")
    assert verdict["recommendation"] == "fit for internal augmentation" and "never fit to share" in verdict["reasons"][0]
    fid["counterfactual"].update({"seam_ratio_to_source": {"median": 1.9}, "seam_deviation": 1.9})
    assert next(g for g in counterfactual_gates("cf", fid, {"structure_copy_detection": det}, GatesConfig()) if "seam" in g["gate"])["state"] == "fail"


def write_bank(folder, x, y, conditions=("lesion", "normal")) -> None:
    """A preprocess stage's output (tensors, manifest, preprocess.json) holding arrays x, y: all train."""
    (folder / "tensors").mkdir(parents=True)
    rows = []
    for i, (case, c) in enumerate(zip(x, y, strict=False)):
        cid = f"case{i:03d}"
        np.save(folder / "tensors" / f"{cid}.npy", case.astype(np.float16))
        rows.append({"case_id": cid, "patient": f"P{i:03d}", "condition": conditions[c], "modality": "CT", "shape": "16x16x16",
                     "spacing": "8x8x8", "source": "nifti", "has_mask": 1, "split": "train"})
    with open(folder / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, MANIFEST_FIELDS)
        w.writeheader()
        w.writerows(rows)
    pre = PreprocessConfig(roi_size=(16, 16, 16), spacing=(8.0, 8.0, 8.0))
    (folder / "preprocess.json").write_text(json.dumps({
        "conditions": list(conditions), "rare_condition": conditions[0], "n_mask_labels": 2, "roi_size": [16] * 3, "spacing": [8.0] * 3,
        "modality": "CT", "reference_affine": np.diag([8.0, 8.0, 8.0, 1.0]).tolist(), "transform_hash": transform_hash(pre, "CT"),
        "transform_settings": transform_settings(pre, "CT")}))


def test_the_generator_trains_and_writes_counterfactual_cases_of_their_own_kind(tmp_path):
    from tests.conftest import train_tiny

    x, y, _ = phantoms(8, 4)
    write_bank(tmp_path / "pre", x, y)
    summary = train_tiny("counterfactual", tmp_path / "pre", tmp_path / "model", 3)
    assert summary["steps"] == 3 and summary["structure_prior"]["labels"]["2"]["mode"] == "insert"
    sampler = load_sampler(tmp_path / "model")
    to_physical = physical_transform(sampler.data_info)
    sources = [(f"case{i:03d}", x[i]) for i in np.flatnonzero(y == NORMAL)]
    rows, skipped = synthesize_counterfactuals(sampler, tmp_path / "cf", sources, "lesion", 10, 7, to_physical)
    assert len(rows) == 10 and not skipped and {r["source"] for r in rows} == {"counterfactual:counterfactual"}
    used = []
    for r in rows:
        side = json.loads((tmp_path / "cf" / "sidecars" / f"{r['case_id']}.json").read_text())
        assert side["kind"] == "counterfactual" and side["use"] == INTERNAL_USE and side["condition"] == "lesion"
        used.append(side["source_case_id"])
        src = x[int(side["source_case_id"][4:])]
        img = np.asarray(nib.load(tmp_path / "cf" / "images" / f"{r['case_id']}.nii.gz").dataobj)
        region = np.asarray(nib.load(tmp_path / "cf" / "regions" / f"{r['case_id']}.nii.gz").dataobj) > 0
        mask = np.asarray(nib.load(tmp_path / "cf" / "masks" / f"{r['case_id']}.nii.gz").dataobj)
        assert np.allclose(img[~region], to_physical(src[0])[~region], atol=1e-3)
        assert (mask == 2).any() and (np.rint(src[1])[mask == 2] == 1).all()
    assert set(used) == {s for s, _ in sources}  # all 8 sources used before any twice (10 cases)
    # the same from a user's folder (medsynth synth --from), and a whole-volume model refuses --from
    folder = tmp_path / "mine"
    for d in ("images", "masks"):
        (folder / d).mkdir(parents=True)
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    for cid, case in sources[:3]:
        nib.save(nib.Nifti1Image(to_physical(case[0]).astype(np.float32), affine), folder / "images" / f"{cid}.nii.gz")
        nib.save(nib.Nifti1Image(np.rint(case[1]).astype(np.uint8), affine), folder / "masks" / f"{cid}.nii.gz")
    res = CliRunner().invoke(app, ["synth", str(tmp_path / "model"), str(tmp_path / "out"), "-c", "lesion", "-n", "2", "--from", str(folder)])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "out" / "images").glob("*.nii.gz"))) == 2 and "internal augmentation only" in res.output
    res = CliRunner().invoke(app, ["synth", str(tmp_path / "model"), str(tmp_path / "out2"), "-c", "lesion", "-n", "2"])
    assert res.exit_code == 2 and "--from" in res.output
    # a bundle is for sharing: refused; forced, it says internal only and what the structure prior holds
    from medsynth.synth.bundle import ExportRefused, export_bundle

    with pytest.raises(ExportRefused, match="internal"):
        export_bundle(tmp_path / "model", tmp_path / "bundle")
    export_bundle(tmp_path / "model", tmp_path / "bundle", force=True)
    meta = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    assert meta["intended_use"].startswith("INTERNAL AUGMENTATION ONLY") and "structure prior" in meta["contents"]["latent_statistics"]["what"]
    res = CliRunner().invoke(app, ["synth", "--bundle", str(tmp_path / "bundle"), str(tmp_path / "out3"), "-c", "lesion", "-n", "1",
                                   "--from", str(folder)])
    assert res.exit_code == 0, res.output


def test_a_train_split_without_the_structure_stops_training_with_the_reason(tmp_path):
    from tests.conftest import train_tiny

    x, y, _ = phantoms(8, 1)
    write_bank(tmp_path / "pre", x, y)
    with pytest.raises(TrainingDataError, match="1 rare-condition and 8 other training cases"):
        train_tiny("counterfactual", tmp_path / "pre", tmp_path / "model", 3)
