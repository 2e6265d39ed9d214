"""A shared generator: an exported bundle runs wherever it is copied, names no path of the exporting
machine, embeds its own model's gates, and is refused when that model failed a privacy gate."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from medsynth.cli import app
from medsynth.eval.gates import model_verdict


def _gate(name: str, area: str, state: str) -> dict:
    return {"gate": name, "area": area, "state": state, "value": 0.1, "threshold": 0.5, "rule": "<=", "sentence": "s"}


def _gates(cvae_privacy: str = "pass") -> dict:
    gates = [_gate("cvae: membership inference AUC, all cases", "privacy", "pass"),
             _gate("cvae: near-copies of training patients", "privacy", cvae_privacy),
             _gate("cvae: realism (distance to real data vs unseen real)", "fidelity", "pass"),
             _gate("cvae: utility (real + synthetic vs real)", "utility", "pass"),
             _gate("cgan: near-copies of training patients", "privacy", "fail")]
    return {"overall": "fail", "gates": gates, "strict": False}


def _export(tmp_path, model, out, gates: dict, *extra: str):
    (tmp_path / "eval").mkdir(exist_ok=True)
    (tmp_path / "eval" / "gates.json").write_text(json.dumps(gates))
    (tmp_path / "eval" / "privacy.json").write_text(json.dumps({"cvae": {"audience": "share"}}))
    return CliRunner().invoke(app, ["export-bundle", str(model), str(out), "--report", str(tmp_path / "eval" / "gates.json"),
                                    "--model-name", "cvae", *extra])


def test_copied_bundle_runs_elsewhere_and_names_no_local_path(trained_cvae, tmp_path):
    exported = tmp_path / "exporting_site" / "bundle"
    res = _export(tmp_path, trained_cvae, exported, _gates())
    assert res.exit_code == 0, res.output
    copy = shutil.copytree(exported, tmp_path / "recipient" / "received")
    shutil.rmtree(tmp_path / "exporting_site")
    for f in copy.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for local in {str(tmp_path), str(tmp_path.resolve()), str(trained_cvae), str(trained_cvae.resolve())}:
                assert local.encode() not in data, f"{f.relative_to(copy)} names {local}"

    meta = json.loads((copy / "configs" / "metadata.json").read_text())
    ev = meta["evaluation"]
    assert ev["checkpoint_sha256"] == hashlib.sha256((trained_cvae / "model.pt").read_bytes()).hexdigest()
    assert {g["gate"].split(":")[0] for g in ev["gates"]} == {"cvae"} and len(ev["gates"]) == 4
    assert ev["recommendation"] == "fit to share" and not ev["forced"]
    assert meta["required_packages_version"]["medsynth"] and meta["optional_packages_version"]
    assert set(meta["contents"]["latent_statistics"]["tensors"]) == {"prior.mean", "prior.scale_tril"}
    readme = (copy / "docs" / "README.md").read_text()
    assert "prior.scale_tril" in readme and ev["checkpoint_sha256"] in readme and "fit to share" in readme

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    runs = {  # cwd elsewhere, config by absolute path; cwd the bundle, config relative
        elsewhere: [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(copy / "configs" / "inference.json"),
                    "--num_samples", "1", "--condition", "lesion"],
        copy: [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
               "--output_dir", str(elsewhere / "out2"), "--num_samples", "1"],
    }
    for cwd, cmd in runs.items():
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)
        assert r.returncode == 0, r.stdout + r.stderr
    assert [p.name for p in (copy / "samples" / "images").glob("*.nii.gz")] == ["SYN-cvae-lesion-0000.nii.gz"]
    assert [p.name for p in (elsewhere / "out2" / "images").glob("*.nii.gz")] == ["SYN-cvae-normal-0000.nii.gz"]
    shutil.rmtree(copy / "samples")
    res = CliRunner().invoke(app, ["synth", "--bundle", str(copy), str(elsewhere / "out3"), "-c", "lesion", "-n", "1", "--no-dicom"])
    assert res.exit_code == 0, res.output
    assert (elsewhere / "out3" / "images" / "SYN-cvae-lesion-0000.nii.gz").is_file()

    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(copy / "configs" / "inference.json")
    parser["bundle_root"] = str(copy)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(copy / "models" / "model.pt", weights_only=True))


def test_export_refuses_a_failed_privacy_gate_unless_forced(trained_cvae, tmp_path):
    res = _export(tmp_path, trained_cvae, tmp_path / "refused", _gates("fail"))
    assert res.exit_code == 2 and "cvae: near-copies of training patients" in " ".join(res.output.split())
    assert not (tmp_path / "refused").exists()
    res = _export(tmp_path, trained_cvae, tmp_path / "forced", _gates("fail"), "--force")
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "forced" / "configs" / "metadata.json").read_text())
    assert meta["evaluation"]["forced"] and meta["evaluation"]["privacy_gates_failed"] == ["cvae: near-copies of training patients"]
    assert meta["evaluation"]["recommendation"] == "neither" and meta["limitations"][0].startswith("EXPORTED WITH --force: despite failed privacy gates")
    assert "Exported with --force: despite failed privacy gates" in (tmp_path / "forced" / "docs" / "README.md").read_text()
    res = _export(tmp_path, trained_cvae, tmp_path / "wrong", _gates(), "--model-name", "vaegan")
    assert res.exit_code == 2 and "no gate of model 'vaegan'" in " ".join(res.output.split())


def test_export_refuses_gates_measured_on_another_checkpoint(trained_cvae, tmp_path):
    sha = hashlib.sha256((trained_cvae / "model.pt").read_bytes()).hexdigest()
    res = _export(tmp_path, trained_cvae, tmp_path / "own", {**_gates(), "checkpoints": {"cvae": sha}})
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "own" / "configs" / "metadata.json").read_text())["evaluation"]["gates_measured_on_this_checkpoint"] == "yes"
    other = {**_gates(), "checkpoints": {"cvae": "0" * 64}}  # e.g. the model was retrained after the evaluate stage ran
    res = _export(tmp_path, trained_cvae, tmp_path / "stale", other)
    assert res.exit_code == 2 and "measured on checkpoint 000000000000" in " ".join(res.output.split())
    assert not (tmp_path / "stale").exists()
    res = _export(tmp_path, trained_cvae, tmp_path / "stale", other, "--force")
    meta = json.loads((tmp_path / "stale" / "configs" / "metadata.json").read_text())
    assert res.exit_code == 0 and meta["evaluation"]["forced"] and "another checkpoint" in meta["limitations"][0]


@pytest.mark.parametrize("states, audience, expected", [
    ({"privacy": "pass", "fidelity": "pass", "utility": "pass"}, "share", "fit to share"),
    ({"privacy": "pass", "fidelity": "pass", "utility": "pass"}, "internal", "fit for internal augmentation"),
    ({"privacy": "warn", "fidelity": "pass", "utility": "warn"}, "share", "fit for internal augmentation"),
    ({"privacy": "pass", "fidelity": "pass", "utility": "not measured"}, "share", "neither"),
    ({"privacy": "pass", "fidelity": "inconclusive", "utility": "pass"}, "share", "neither"),
    ({"privacy": "fail", "fidelity": "pass", "utility": "pass"}, "share", "neither"),
])
def test_model_verdict_rule(states, audience, expected):
    gates = [_gate(f"m: {a}", a, s) for a, s in states.items()] + [_gate("other: x", "privacy", "fail")]
    v = model_verdict("m", gates, audience)
    assert v["recommendation"] == expected and (v["reasons"] == []) == (expected == "fit to share")


def test_report_verdict_table_and_pdf_page_numbers(tmp_path):
    """The rows of the per-model verdict table come from model_verdict (test above); a model's full card
    needs the evaluate stage's outputs, so no model is listed here."""
    from medsynth.report.build import build_report
    from medsynth.report.pdf import html_to_pdf

    (tmp_path / "ingest.json").write_text(json.dumps({"deid": {"codes": [], "actions": {}, "nifti_header_fields_cleared": []}}))
    (tmp_path / "preprocess.json").write_text(json.dumps({"counts": {}, "conditions": [], "roi_size": [16] * 3, "spacing": [1] * 3}))
    html = build_report(tmp_path, tmp_path, tmp_path, tmp_path, tmp_path / "report.html", [], "t", {},
                        repo_root=tmp_path, live_root=tmp_path)
    text = " ".join(html.read_text().split())
    assert 'id="model-verdicts"' in text and "Fit to share: the privacy audit was run for sharing" in text
    if shutil.which("chromium") is None or shutil.which("pdftotext") is None:
        pytest.skip("page numbers need Debian's chromium and poppler-utils")
    html_to_pdf(html, tmp_path / "report.pdf")
    pdf_text = subprocess.run(["pdftotext", str(tmp_path / "report.pdf"), "-"], capture_output=True, text=True, check=True).stdout
    assert "page 1 of " in pdf_text and str(tmp_path) not in pdf_text
