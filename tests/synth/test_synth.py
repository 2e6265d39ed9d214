"""Synthetic outputs users take away: DICOM series + SEG, MONAI bundle, augmentation datalist."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medsynth.synth.dicom_writer import read_seg_labels, write_dicom_case

SIDE = {"checkpoint_sha256": "ab" * 32, "seed": 7, "model": "cgan", "condition": "lesion", "created": "2026-11-23T09:00:00+00:00"}


def _oblique_affine() -> np.ndarray:
    a, b = np.deg2rad(20), np.deg2rad(-12)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([1.5, 2.0, 3.0])
    aff[:3, 3] = [-40.0, 12.5, 80.0]
    return aff


CASES = {
    "CT-axial": ("CT", np.array([[2.0, 0, 0, -30], [0, 2.5, 0, -40], [0, 0, 3, 10], [0, 0, 0, 1]])),
    "MR-oblique": ("MR", _oblique_affine()),
    "CT-flipped": ("CT", np.array([[-1.0, 0, 0, 30], [0, 0, 2.0, -20], [0, -1.5, 0, 50], [0, 0, 0, 1]])),
}


def _volume(modality: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    vol = rng.normal(0, 300, (20, 18, 12))
    vol = np.rint(vol) if modality == "CT" else np.abs(vol) * 1.7
    mask = np.zeros(vol.shape, np.uint8)
    mask[4:9, 5:11, 3:8] = 1
    return vol, mask


@pytest.mark.parametrize("name", sorted(CASES))
def test_dicom_series_and_seg_round_trip_through_convert(name, tmp_path):
    from typer.testing import CliRunner

    from medsynth.cli import app

    modality, affine = CASES[name]
    vol, mask = _volume(modality)
    uids = write_dicom_case(tmp_path / "dcm", "SYN-cgan-lesion-0000", vol, mask, affine, modality, SIDE)
    case = tmp_path / "dcm" / "SYN-cgan-lesion-0000"
    files = sorted((case / "image").glob("*.dcm"))
    assert len(files) == vol.shape[2]
    sops = set()
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.SyntheticData == "YES" and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.SOPClassUID == (pydicom.uid.CTImageStorage if modality == "CT" else pydicom.uid.MRImageStorage)
        assert ds.StudyInstanceUID.startswith("2.25.") and ds.SeriesInstanceUID == uids["series_uid"]
        assert not ds.PatientBirthDate and not ds.PatientSex and "InstitutionName" not in ds
        assert str(ds.PatientName).startswith("SYNTHETIC")
        sops.add(ds.SOPInstanceUID)
    # the series goes back through `medsynth convert` to the same voxels and geometry
    res = CliRunner().invoke(app, ["convert", str(case / "image"), str(tmp_path / "nii"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    back = nib.load(tmp_path / "nii" / "series_0001.nii.gz")
    ref = nib.as_closest_canonical(nib.Nifti1Image(vol.astype(np.float32), affine))
    got = nib.as_closest_canonical(back)
    np.testing.assert_allclose(got.affine, ref.affine, atol=1e-3)
    tol = 0.0 if modality == "CT" else float(np.ptp(vol)) / 65534 * 0.51
    np.testing.assert_allclose(np.asarray(got.dataobj, dtype=np.float64), ref.get_fdata(), atol=tol + 1e-3, rtol=1e-4)
    # the SEG references the series it was derived from and decodes to the mask on its grid
    seg = pydicom.dcmread(case / "seg.dcm")
    assert seg.SyntheticData == "YES" and seg.Modality == "SEG"
    assert seg.StudyInstanceUID == uids["study_uid"] and seg.FrameOfReferenceUID == pydicom.dcmread(files[0]).FrameOfReferenceUID
    refs = {i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert refs and refs <= sops
    assert np.array_equal(read_seg_labels(case / "seg.dcm", case / "image"), mask)


def test_dcm2niix_reads_the_synthetic_series_like_medsynth(tmp_path):
    exe = shutil.which("dcm2niix")
    if exe is None:
        pytest.skip("dcm2niix is installed with the test extras")
    modality, affine = CASES["MR-oblique"]
    vol, mask = _volume(modality)
    write_dicom_case(tmp_path / "dcm", "c", vol, mask, affine, modality, SIDE)
    (tmp_path / "out").mkdir()
    subprocess.run([exe, "-z", "y", "-f", "x", "-o", str(tmp_path / "out"), str(tmp_path / "dcm" / "c" / "image")], check=True, capture_output=True)
    d = nib.as_closest_canonical(nib.load(tmp_path / "out" / "x.nii.gz"))
    ref = nib.as_closest_canonical(nib.Nifti1Image(vol.astype(np.float32), affine))
    np.testing.assert_allclose(d.affine, ref.affine, atol=1e-3)
    np.testing.assert_allclose(d.get_fdata(), ref.get_fdata(), atol=float(np.ptp(vol)) / 65534 + 1e-3)


def test_synth_cli_writes_nifti_dicom_sidecars_reproducibly(trained_cvae, tmp_path):
    from typer.testing import CliRunner

    from medsynth.cli import app

    for out in ("a", "b"):
        res = CliRunner().invoke(app, ["synth", str(trained_cvae), str(tmp_path / out), "-c", "lesion", "-n", "2", "--seed", "4"])
        assert res.exit_code == 0, res.output
    a, b = tmp_path / "a", tmp_path / "b"
    side = json.loads((a / "sidecars" / "SYN-cvae-lesion-0001.json").read_text())
    assert side["synthetic"] and side["seed"] == 400_001 and side["dicom"]["series_uid"].startswith("2.25.")
    assert nib.load(a / "images" / "SYN-cvae-lesion-0001.nii.gz").header["descrip"].tobytes().startswith(b"SYNTHETIC")
    assert len(list((a / "dicom" / "SYN-cvae-lesion-0001" / "image").glob("*.dcm"))) == 16
    for sub in ("images", "masks"):
        for f in (a / sub).glob("*.nii.gz"):
            assert np.array_equal(np.asarray(nib.load(f).dataobj), np.asarray(nib.load(b / sub / f.name).dataobj))
    assert json.loads((b / "sidecars" / "SYN-cvae-lesion-0001.json").read_text())["dicom"] == side["dicom"]


def test_monai_bundle_verifies_and_samples_offline(trained_cvae, tmp_path):
    from medsynth.synth.bundle import SCHEMA_PATH, export_bundle

    bundle = export_bundle(trained_cvae, tmp_path / "bundle")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert "Research only" in meta["intended_use"] and meta["limitations"]
    verify = [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(bundle / "configs" / "metadata.json"), "--filepath", str(SCHEMA_PATH)]
    r = subprocess.run(verify, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    broken = dict(meta)
    del broken["task"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    verify[verify.index("--meta_file") + 1] = str(tmp_path / "broken.json")
    assert subprocess.run(verify, capture_output=True, text=True, timeout=300).returncode != 0
    run = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
           "--output_dir", str(tmp_path / "samples"), "--num_samples", "2", "--condition", "normal"]
    r = subprocess.run(run, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    imgs = sorted((tmp_path / "samples" / "images").glob("*.nii.gz"))
    assert [p.name for p in imgs] == ["SYN-cvae-normal-0000.nii.gz", "SYN-cvae-normal-0001.nii.gz"]
    assert nib.load(imgs[0]).shape == (16, 16, 16)


def test_mix_synthetic_ratio_oversampling_and_a_monai_unet_step(trained_cvae, demo_ingested, tmp_path):
    import torch
    from monai.data import DataLoader, Dataset
    from monai.networks.nets import UNet
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ResizeWithPadOrCropd

    from medsynth.synth.augment import allocate, mix_synthetic
    from medsynth.synth.sampler import synthesize

    synth = tmp_path / "synth"
    synthesize(trained_cvae / "model.pt", synth, {"lesion": 8, "normal": 8}, 1, 1.0, 4, formats=("nifti",))
    real = [{"image": str(p), "label": str(demo_ingested / "masks" / p.name)} for p in sorted((demo_ingested / "images").glob("*.nii.gz"))
            if (demo_ingested / "masks" / p.name).is_file()][:10]
    assert len(real) == 10
    mixed = mix_synthetic(real, synth, ratio=1.0, oversample={"lesion": 3.0}, seed=0)
    syn = [m for m in mixed if m["synthetic"]]
    assert mixed[:10] == [dict(r, synthetic=False, condition="unknown", case_id="") for r in real] and len(syn) == 10
    assert sum(m["condition"] == "lesion" for m in syn) == 8  # 10 * 24/32 = 7.5 -> largest remainder
    assert len({m["case_id"] for m in syn if m["condition"] == "lesion"}) == 8  # no repeat before the pool is used up
    assert mixed == mix_synthetic(real, synth, ratio=1.0, oversample={"lesion": 3.0}, seed=0)
    assert allocate(5, {"a": 2, "b": 2}, {}) in ({"a": 3, "b": 2}, {"a": 2, "b": 3})
    with pytest.raises(ValueError, match="no synthetic case"):
        mix_synthetic(real, synth, oversample={"tumour": 2.0})
    # the three lines of the docs, in a user's own MONAI loop
    keys = ["image", "label"]
    tf = Compose([LoadImaged(keys), EnsureChannelFirstd(keys), ResizeWithPadOrCropd(keys, (16, 16, 16))])
    mixed = mix_synthetic(real, synth, ratio=0.5)
    loader = DataLoader(Dataset(mixed[-2:] + mixed[:2], transform=tf), batch_size=4)  # synthetic first: MONAI's collate takes its keys
    net = UNet(3, 1, 2, channels=(4, 8), strides=(2,))
    opt = torch.optim.Adam(net.parameters())
    batch = next(iter(loader))
    assert batch["synthetic"].tolist() == [True, True, False, False] and batch["condition"][2:] == ["unknown", "unknown"]
    loss = torch.nn.functional.cross_entropy(net(batch["image"].float()), batch["label"][:, 0].long().clamp(0, 1))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
