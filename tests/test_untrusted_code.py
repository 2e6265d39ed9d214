"""Files that are code (TorchScript, a MONAI bundle's config) run only when the user vouched for them."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch


class FileWriter(torch.nn.Module):
    """A crafted feature encoder: every forward pass overwrites ``target`` with b"A"s."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)
        t.fill_(65)
        return x.flatten(1)[:, :4] + t.float().sum() * 0


@pytest.fixture
def hostile_torchscript(tmp_path) -> tuple[Path, Path, str]:
    target = tmp_path / "target.bin"
    target.write_bytes(bytes(8))
    path = tmp_path / "encoder.pt"  # told by content, whatever the suffix
    torch.jit.script(FileWriter(str(target))).save(str(path))
    return path, target, hashlib.sha256(path.read_bytes()).hexdigest()


def test_torchscript_is_refused_unless_its_sha256_is_pinned(hostile_torchscript):
    from medsynth.config import ConfigError, EncoderConfig, Params, VAEGANConfig
    from medsynth.eval.encoder import embed, load_encoder
    from medsynth.eval.evaluate import _load_encoder
    from medsynth.models.perceptual import PerceptualLoss3d

    path, target, digest = hostile_torchscript
    x = torch.zeros(2, 2, 4, 4, 4)
    with pytest.raises(ConfigError, match=f"evaluate.encoder.weights: {path} is TorchScript.*evaluate.encoder.sha256: {digest}"):
        load_encoder(path)
    pinned = f"train.vaegan.perceptual_network: {path} is TorchScript.*train.vaegan.perceptual_sha256: {digest}"
    with pytest.raises(ConfigError, match=pinned):
        PerceptualLoss3d(path)
    wrong = "0" * 64
    with pytest.raises(ConfigError, match=f"{path} has SHA-256 {digest}, not the evaluate.encoder.sha256 {wrong}"):
        _load_encoder(None, Params().evaluate.model_copy(update={"encoder": EncoderConfig(weights=str(path), sha256=wrong)}))
    assert target.read_bytes() == bytes(8)  # nothing of the file ran
    cfg = Params().evaluate.model_copy(update={"encoder": EncoderConfig(weights=str(path), sha256=digest.upper())})
    net, image_only = _load_encoder(None, cfg)
    assert image_only and embed(net, x, image_only=True).shape == (2, 4)
    assert target.read_bytes() == b"A" * 8  # pinned, it loads and runs: it was the file's own code
    with pytest.raises(ValueError, match="sha256 is set but weights is not"):
        EncoderConfig(sha256=digest)
    with pytest.raises(ValueError, match="perceptual_sha256"):
        VAEGANConfig(perceptual_sha256="not-a-digest")


def test_synth_bundle_never_runs_the_config_and_refuses_a_changed_one(trained_cvae, tmp_path):
    import nibabel as nib
    from typer.testing import CliRunner

    from medsynth.cli import app
    from medsynth.synth.bundle import export_bundle

    export_bundle(trained_cvae, tmp_path / "exported")
    bundle = shutil.copytree(tmp_path / "exported", tmp_path / "received")
    res = CliRunner().invoke(app, ["synth", "--bundle", str(bundle), str(tmp_path / "out"), "-c", "lesion", "-n", "2", "--no-dicom"])
    assert res.exit_code == 0, res.output
    imgs = sorted((tmp_path / "out" / "images").glob("*.nii.gz"))
    assert [p.name for p in imgs] == ["SYN-cvae-lesion-0000.nii.gz", "SYN-cvae-lesion-0001.nii.gz"]
    assert nib.load(imgs[0]).header["descrip"].tobytes().startswith(b"SYNTHETIC")

    marker = tmp_path / "pwned"
    payload = f"$__import__('os').system('touch {marker}')"
    inference = bundle / "configs" / "inference.json"
    clean = json.loads(inference.read_text())
    tampered = {"bundle_root": {**clean, "bundle_root": payload}, "run": {**clean, "run": [payload, *clean["run"]]}}
    for key, config in tampered.items():
        inference.write_text(json.dumps(config))
        res = CliRunner().invoke(app, ["synth", "--bundle", str(bundle), str(tmp_path / f"out_{key}"), "-c", "lesion", "-n", "1"])
        said = " ".join(res.output.split())
        assert res.exit_code == 2 and "differs from what medsynth export-bundle writes" in said and f"['{key}']" in said, said
        assert not marker.exists() and not (tmp_path / f"out_{key}").exists()
    run = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(inference), "--output_dir", str(tmp_path / "monai"),
           "--num_samples", "1", "--condition", "normal"]
    subprocess.run(run, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert marker.exists()  # the same config under monai.bundle run executes the payload

    inference.write_text(json.dumps(clean))
    meta = bundle / "configs" / "metadata.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "version": payload}))
    res = CliRunner().invoke(app, ["synth", "--bundle", str(bundle), str(tmp_path / "out_meta"), "-c", "lesion", "-n", "1"])
    assert res.exit_code == 2 and "/version holds a MONAI expression" in " ".join(res.output.split())
    shutil.copy(tmp_path / "exported" / "configs" / "metadata.json", meta)
    (bundle / "configs" / "logging.conf").write_text("[loggers]\nkeys=root\n")
    res = CliRunner().invoke(app, ["synth", "--bundle", str(bundle), str(tmp_path / "out_log"), "-c", "lesion", "-n", "1"])
    assert res.exit_code == 2 and "['logging.conf']" in res.output
