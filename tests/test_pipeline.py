"""A real `dvc repro` of the whole pipeline on a tiny params override, in a temporary copy of the repo."""

import json
import shutil
import subprocess
import sys

import nibabel as nib
import pytest
import yaml

from tests.conftest import ROOT


def _run(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


@pytest.mark.integration
def test_dvc_repro_tiny(tmp_path):
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["demo"].update({"patients": 12, "rare_fraction": 0.34, "nifti_cases": 1, "compressed_cases": 1})
    params["preprocess"].update({"roi_size": [16, 16, 16], "spacing": [8.0, 8.0, 8.0]})
    for m in ("cgan", "cvae"):
        params["train"][m].update({"steps": 3, "batch_size": 2, "base_channels": 4})
    params["train"]["checkpoint_every"] = 2
    params["synthesize"]["per_condition"] = {"normal": 3, "lesion": 3}
    params["evaluate"]["bootstrap"] = 20
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _run(["git", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.email=ci@medsynth.invalid", "-c", "user.name=ci", "commit", "-qm", "tiny"], repo)
    dvc = [sys.executable, "-m", "dvc"]
    _run(dvc + ["repro"], repo)
    for m in ("cgan", "cvae"):
        imgs = sorted((repo / "data/synth" / m / "images").glob("*.nii.gz"))
        assert len(imgs) == 6
        img = nib.load(imgs[0])
        assert img.shape == (16, 16, 16) and b"SYNTHETIC" in bytes(img.header["descrip"])
        assert (repo / "models" / m / "checkpoints" / "last.ckpt").is_file()
    for f in ("metrics.json", "gates.json", "fidelity.json", "privacy.json"):
        json.loads((repo / "reports/eval" / f).read_text())  # finite numbers only (writer refuses NaN)
    gates = json.loads((repo / "reports/eval/gates.json").read_text())
    assert {g["state"] for g in gates["gates"]} <= {"pass", "warn", "fail"}
    html = (repo / "reports/report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 and 'id="verdict-table"' in html
    for needle in ("MRN47", "ELSEWHERE", "DOE^", str(ROOT.parent)):
        assert needle not in html
    out = _run(dvc + ["repro"], repo)
    assert "Running stage" not in out  # second run: nothing reruns
    _run(dvc + ["metrics", "show"], repo)
    _run(dvc + ["params", "diff"], repo)
