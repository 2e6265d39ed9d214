"""A real `dvc repro` of the whole pipeline on a tiny params override, in a temporary copy of the repo.

The input is the demo cohort written outside the repo with a canary planted in every identifying text
attribute (names in folder names too), so the same run proves that no identifier reaches any file the
pipeline writes: NIfTI, CSV, JSON, DVCLive logs, dvc.lock, the HTML report and its PDF. The report is
then opened in a real headless Chromium and its PDF rendered to PNG pages with pdftoppm.
"""

import csv
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import yaml

from tests.conftest import ROOT, SHARED
from tests.fixtures.phi import originals_of, plant_canaries, real_dicom_files

CANARY = "CANARYQV"
# identifying text attributes of the demo headers (the de-identification profile removes or replaces them)
PLANTED = ("PatientName", "PatientID", "OtherPatientIDs", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
           "OperatorsName", "PerformingPhysicianName", "AccessionNumber", "StudyID", "RequestingPhysician")


def _run(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def _dvc_json(args: list[str], cwd: Path):
    """A dvc command's --json output, parsed; it fails the test when DVC could not load a revision's metrics."""
    r = subprocess.run([sys.executable, "-m", "dvc", *args, "--json"], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "failed to load" not in r.stderr, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(r.stdout)


def _plant_canaries(root: Path) -> dict:
    """Canary values into the identifying attributes of every DICOM file under ``root`` (in place: this
    is the test's own copy of the input). Returns what an output must never contain."""
    names, values = set(), {}
    for f in sorted(root.rglob("*")):
        if not f.is_file() or f.suffix in (".gz", ".csv", ".nii"):
            continue
        try:
            ds = pydicom.dcmread(f)
        except Exception:
            continue  # the demo's deliberately broken files
        names.update(str(ds.get("PatientName", "")).split("^"))
        for kw in PLANTED:  # one canary per original value: a patient's files still belong together
            original = str(ds.get(kw, "")) + f"/{ds.get('PatientID', '')}"
            n = values.setdefault((kw, original), len(values) + 1)
            setattr(ds, kw, f"{CANARY}{n:05d}" if kw != "PatientName" else f"{CANARY}^{n:05d}")
        ds.save_as(f)
    folders = {p.name for p in root.iterdir() if p.is_dir()}  # e.g. KHAN_JANE_MRN4711000
    # real scanners' headers too (GE, Siemens, Philips MR; deid-data CT, ultrasound, secondary captures),
    # with a canary in every text attribute the PS3.15 table removes, replaces or cleans
    originals: set[str] = set()
    counter = [0]
    for i, f in enumerate(_real_inputs()):
        ds = pydicom.dcmread(f, force=True)
        originals |= originals_of(ds)
        plant_canaries(ds, CANARY, counter)
        dest = root / "outside_referrals" / f"{f.parent.name}_{i:03d}.dcm"
        dest.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(dest, enforce_file_format=False)
    return {"canary": CANARY, "names": sorted(x for x in names if len(x) >= 4), "folders": sorted(folders),
            "originals": sorted(originals), "real_files": counter[0]}


def _shifted_dates(root: Path, key: str) -> list[str]:
    """Every date the pipeline legitimately writes: each input file's dates moved by its patient's keyed
    offset. One patient's shifted date can fall, by chance, on another file's original date (a demo study
    on 2019-01-28 moved 98 days back lands on a real Siemens scan's 2018-10-22): that is no leak, so such
    dates cannot serve as needles."""
    from medsynth.config import DeidConfig
    from medsynth.io.deid import Deidentifier, DeidKey, _shift_date

    deid = Deidentifier(DeidConfig(), DeidKey(key.encode(), "file", True))
    out = set()
    for f in sorted(root.rglob("*")):
        if not f.is_file() or f.suffix in (".gz", ".csv", ".nii"):
            continue
        try:
            ds = pydicom.dcmread(f, force=True)
        except Exception:
            continue
        shift = deid.pseudo.date_shift_days(deid.patient_key(ds))
        out |= {_shift_date(str(e.value), shift)[:8] for e in ds.iterall() if e.VR in ("DA", "DT") and isinstance(e.value, str) and e.value}
    return sorted(x for x in out if x)


def _real_inputs() -> list[Path]:
    """Real DICOM that ends up as cases (a GE MR volume, a Philips enhanced MR) or is quarantined
    (2D images, burned-in ultrasound, secondary captures, a Siemens mosaic run)."""
    ge = sorted((SHARED / "dicom/dcm_qa_nih/In/20180918GE/mr_0004").glob("*.dcm"))[:15]  # one 3D time point
    philips = sorted((SHARED / "dicom/dcm_qa_enh/In/Philips").glob("*.dcm"))
    return ge + philips + real_dicom_files(per_folder=1)


def _copy_repo(repo: Path) -> Path:
    """The project's tracked files, copied to ``repo`` (a user's fresh clone, without its git history)."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    return repo


def estimates_outside_their_intervals(node, path: str = "") -> list[str]:
    """Every (estimate, interval) pair of an evaluate JSON -- value/ci, mean/ci95, auc/auc_ci, X/X_ci,
    a TPR and its ci -- whose estimate lies outside the interval."""
    out = []
    if isinstance(node, dict):
        pairs = [("value", "ci"), ("mean", "ci95"), ("tpr", "ci"), ("auc", "auc_ci"), ("share", "ci")]
        # presence: {"real": 39, "real_share": 1.0, "real_ci": [...]} -- the interval is the share's
        pairs += [(f"{k}_share" if f"{k}_share" in node else k, f"{k}_ci") for k in node if f"{k}_ci" in node]
        pairs += [(k, f"{k}_ci95") for k in node if f"{k}_ci95" in node]
        for point, interval in pairs:
            v, ci = node.get(point), node.get(interval)
            if isinstance(v, (int, float)) and isinstance(ci, list) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci):
                if not ci[0] - 1e-9 <= v <= ci[1] + 1e-9:
                    out.append(f"{path}.{point} {v:.4g} not in [{ci[0]:.4g}, {ci[1]:.4g}]")
        for k, child in node.items():
            out += estimates_outside_their_intervals(child, f"{path}.{k}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            out += estimates_outside_their_intervals(child, f"{path}[{i}]")
    return out


def params_models(repo: Path) -> list[str]:
    return yaml.safe_load((repo / "params.yaml").read_text())["train"]["models"]


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline")
    repo = _copy_repo(base / "repo")
    raw = base / "hospital_export"
    from medsynth.config import DemoConfig
    from medsynth.data.demo import generate_demo_cohort

    # half rare: the train split then holds 3 lesion cases, enough for the counterfactual model to learn the lesion from
    generate_demo_cohort(raw, DemoConfig(patients=12, rare_fraction=0.5, nifti_cases=1, compressed_cases=1), seed=7)
    planted = _plant_canaries(raw)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    key = hashlib.sha256(b"medsynth tiny_repo site key").hexdigest()  # fixed: the run is reproducible
    (base / "site.key").write_text(key + "\n")
    planted["shifted_dates"] = _shifted_dates(raw, key)
    params["data"].update({"input": str(raw), "labels": str(raw / "labels.csv"), "modality": "CT"})
    params["deid"]["key_file"] = str(base / "site.key")
    params["preprocess"].update({"roi_size": [16, 16, 16], "spacing": [8.0, 8.0, 8.0]})
    params["train"]["models"] = ["cgan", "cvae", "counterfactual"]
    for m in params["train"]["models"]:
        params["train"][m].update({"steps": 3, "batch_size": 2, "base_channels": 4})
    params["train"]["checkpoint_every"] = 2
    params["train"]["log_every"] = 1  # every step a DVCLive row: the resume check below counts them
    params["synthesize"]["per_condition"] = {"normal": 3, "lesion": 3}
    params["evaluate"]["bootstrap"] = 20
    params["evaluate"]["encoder"].update({"steps": 5, "batch_size": 4, "width": 4, "dim": 16})
    params["evaluate"]["utility"].update({"steps": 3, "seeds": 1, "batch_size": 2, "channels": [4, 8]})
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _run(["git", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.email=ci@medsynth.invalid", "-c", "user.name=ci", "commit", "-qm", "tiny"], repo)
    _run(["git", "tag", "sources"], repo)  # the repository's own files, before any run (the PHI scan skips them)
    _run([sys.executable, "-m", "dvc", "repro"], repo)
    return {"repo": repo, "raw": raw, "key": key, **planted}


@pytest.mark.integration
def test_dvc_repro_of_a_medmnist_npz_input(tmp_path):
    """data.input may be a MedMNIST .npz (README): the DVC stages up to preprocess run on one -- ingest
    writes every output dvc.yaml declares, the DICOM folder empty -- and the fingerprint sees the file."""
    npz = SHARED / "shapes" / "adrenalmnist3d_28.npz"
    if not npz.is_file():
        pytest.skip(f"{npz} not present")
    repo = _copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].update({"input": str(npz), "npz_max_cases": 60})
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _run(["git", "init", "-q"], repo)
    out = _run([sys.executable, "-m", "dvc", "repro", "preprocess"], repo)
    assert re.findall(r"Running stage '([^']+)'", out) == ["fingerprint", "ingest", "preprocess"]
    assert (repo / "data/ingest/dicom").is_dir() and not any((repo / "data/ingest/dicom").iterdir())
    assert json.loads((repo / "data/fingerprints/input.json").read_text())["input"]["kind"] == "npz"
    assert json.loads((repo / "data/preprocess/preprocess.json").read_text())["cases"] == 60


@pytest.mark.integration
def test_dvc_repro_tiny(tiny_repo):
    repo = tiny_repo["repo"]
    dvc = [sys.executable, "-m", "dvc"]
    for m in ("cgan", "cvae"):
        imgs = sorted((repo / "data/synth" / m / "images").glob("*.nii.gz"))
        assert len(imgs) == 6
        img = nib.load(imgs[0])
        assert img.shape == (16, 16, 16) and b"SYNTHETIC" in bytes(img.header["descrip"])
        assert (repo / "models" / m / "checkpoints" / "last.ckpt").is_file()
        assert len(list((repo / "data/synth" / m / "dicom").glob("*/image/*.dcm"))) == 6 * 16
    for f in ("gates.json", "fidelity.json", "privacy.json", "utility.json"):
        outside = estimates_outside_their_intervals(json.loads((repo / "reports/eval" / f).read_text()))  # finite only (the writer refuses NaN)
        assert not outside, f"{f}: point estimates outside their own 95% interval: {outside[:5]}"
    utility = json.loads((repo / "reports/eval/utility.json").read_text())
    assert utility["cgan"]["measured"] and utility["cgan"]["arms"]["real"] == utility["cvae"]["arms"]["real"]  # one shared baseline
    gates = json.loads((repo / "reports/eval/gates.json").read_text())
    assert {g["state"] for g in gates["gates"]} <= {"pass", "warn", "fail", "inconclusive", "not measured"}
    for m in params_models(repo):  # the model.pt each model's gates were measured on: export-bundle checks it
        assert gates["checkpoints"][m] == hashlib.sha256((repo / "models" / m / "model.pt").read_bytes()).hexdigest()
    # 3 training steps of a 4-channel UNet learn nothing: the utility gate must say so, never pass
    util_gates = [g for g in gates["gates"] if g["area"] == "utility"]
    assert len(util_gates) == 3 and all(g["state"] == "inconclusive" for g in util_gates), util_gates
    assert gates["overall"] in ("fail", "inconclusive")
    html = (repo / "reports/report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 and 'id="verdict-table"' in html
    assert 'id="params-provenance">as in commit' in html  # params.yaml is the committed one
    check_summary_metrics(repo, gates)
    check_plots_render_offline(repo)
    # the counterfactual model: real train cases without the lesion, changed to have it; internal use only
    cf = repo / "data/synth/counterfactual"
    with open(repo / "data/preprocess/manifest.csv", newline="") as fh:
        real = {r["case_id"]: r for r in csv.DictReader(fh)}
    cases = sorted((cf / "images").glob("*.nii.gz"))
    assert len(cases) == 3 and not (cf / "dicom").exists()
    for f in cases:
        side = json.loads((cf / "sidecars" / f.name.replace(".nii.gz", ".json")).read_text())
        src = real[side["source_case_id"]]
        assert src["split"] == "train" and src["condition"] == "normal" and side["condition"] == "lesion"
        assert (np.asarray(nib.load(cf / "masks" / f.name).dataobj) == 2).any() and (cf / "regions" / f.name).is_file()
        assert b"COUNTERFACTUAL" in bytes(nib.load(f).header["descrip"])
    assert "real+synthetic_rare - cgan's real+synthetic_rare" in utility["counterfactual"]["differences"]
    cf_gates = [g for g in gates["gates"] if g["gate"].startswith("counterfactual: ")]
    assert cf_gates and all(g.get("internal_only") for g in cf_gates)
    assert "Internal augmentation only." in html and (repo / "reports/eval/figures/counterfactual_counterfactual_pairs.png").is_file()
    cached = {p.name.split("-")[0] + "-" + p.name.split("-")[1] for p in (repo / "data/features").glob("*.npy")}
    # the real splits' features, val's for the privacy audit's control (the attacks' and the DCR share's, whose second opinion uses the learned ones)
    assert cached == {f"{space}-{split}" for space in ("weightfree", "learned") for split in ("train", "test", "holdout", "val")}
    ingest = json.loads((repo / "data/ingest/ingest.json").read_text())
    reasons = ingest["quarantine_by_reason"]
    assert reasons.get("modality MR not selected", 0) >= 1  # the real GE MR volume (Philips: 4D)
    assert any(r.startswith("BurnedInAnnotation is YES") for r in reasons), reasons  # deid-data ultrasound
    out = _run(dvc + ["repro"], repo)
    assert re.findall(r"Running stage '([^']+)'", out) == ["fingerprint"]  # second run: only the input is looked at
    said = " ".join(out.split())  # rich wraps long lines
    assert "unchanged since the last ingest" in said and "out of date" not in said  # and it says what is true
    _run(dvc + ["params", "diff"], repo)
    # the export changes behind the same path (a label edited in the CSV): ingest is stale, and DVC knows
    labels = tiny_repo["raw"] / "labels.csv"
    original, st = labels.read_text(), labels.stat()
    rows = original.splitlines()
    k = next(k for k, r in enumerate(rows) if k and ",normal" in r)
    flipped = rows[:k] + [rows[k].replace(",normal", ",lesion", 1)] + rows[k + 1 :]
    labels.write_text("\n".join(flipped) + "\n")
    assert "changed since the last ingest (dvc.lock): ingest is out of date" in " ".join(_run(dvc + ["repro", "fingerprint"], repo).split())
    assert "data/fingerprints/input.json" in _run(dvc + ["status", "ingest"], repo)
    labels.write_text(original)  # and back, as it was (same bytes, same time): nothing to do again
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns))
    _run(dvc + ["repro", "fingerprint"], repo)
    assert "ingest" not in _run(dvc + ["status"], repo)


@pytest.mark.integration
def test_dvc_repro_resumes_training_and_keeps_its_curves(tiny_repo):
    """More steps in params.yaml -> `dvc repro` continues from the persisted checkpoint and the DVCLive
    curves grow; a forced rerun with nothing left to train (what a code change does) still succeeds."""
    repo = tiny_repo["repo"]
    dvc = [sys.executable, "-m", "dvc"]
    curves = repo / "dvclive/cgan/plots/metrics"

    def steps_logged() -> dict[str, list[int]]:
        return {p.relative_to(curves).as_posix(): [int(float(r["step"])) for r in csv.DictReader(p.open(), delimiter="\t")]
                for p in sorted(curves.rglob("*.tsv"))}

    before = steps_logged()
    assert before["loss_g.tsv"] == [0, 1, 2], before  # logged every step (tiny config)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["cgan"]["steps"] = 5
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    out = _run(dvc + ["repro", "-s", "train@cgan"], repo)
    assert "Running stage 'train@cgan'" in out
    summary = json.loads((repo / "models/cgan/train.json").read_text())
    assert summary["steps"] == 5 and "fresh_start" not in summary, summary  # resumed, not restarted
    after = steps_logged()
    assert after["loss_g.tsv"] == [0, 1, 2, 3, 4], after  # appended to, not reset
    assert set(after) == set(before)
    _run(dvc + ["repro", "-f", "-s", "train@cgan"], repo)  # nothing left to train: still a clean run
    assert steps_logged() == after
    assert json.loads((repo / "models/cgan/train.json").read_text())["steps"] == 5


def check_summary_metrics(repo: Path, gates: dict) -> None:
    """metrics/summary.json is the one metrics file: what `dvc metrics show` reads, each model's verdict and
    gate states as gates.json has them, its key figures the very numbers of fidelity/privacy/utility.json."""
    summary = json.loads((repo / "metrics/summary.json").read_text())
    (workspace,) = _dvc_json(["metrics", "show"], repo).values()  # the workspace, DVC's key ""
    assert list(workspace["data"]) == ["metrics/summary.json"], workspace  # not 393 columns of every JSON
    assert workspace["data"]["metrics/summary.json"]["data"] == without_nulls(summary)  # DVC leaves out what was not measured
    fidelity, privacy = (json.loads((repo / "reports/eval" / f).read_text()) for f in ("fidelity.json", "privacy.json"))
    utility = json.loads((repo / "reports/eval/utility.json").read_text())
    assert summary["verdict"] == gates["overall"]
    for m in params_models(repo):
        s = summary[m]
        mine = [g for g in gates["gates"] if g["gate"].startswith(f"{m}: ")]
        assert sorted(s["gates"].values()) == sorted(g["state"] for g in mine) and s["gates_failed"] == sum(g["state"] == "fail" for g in mine)
        assert s["fidelity_nn_distance_ratio"] == fidelity[m]["nn_distance_ratio"] > 0
        assert s["utility_difference"] == utility[m]["differences"]["real+synthetic - real"]["overall"]["mean"]
        assert s["gates"]["utility"] == "inconclusive"  # 3 steps of a 4-channel UNet: as the gates say
        if m != "counterfactual":  # 6 members, 2 non-members: too few for an attack; the summary says null, not a number
            assert s["privacy_strongest_attack_auc"] == privacy[m]["strongest"]["all"].get("auc")
            assert (s["privacy_strongest_attack_auc"] is None) == (s["gates"]["membership_inference_auc_all_cases"] == "not measured")
            assert s["privacy_dcr_share"] == privacy[m]["dcr_share"]
        for key in ("fidelity_nn_distance_ratio", "fidelity_mmd2", "utility_real", "utility_real_synthetic", "utility_difference"):
            assert isinstance(s[key], (int, float)), (m, key, s[key])
    assert "config" not in json.dumps(summary) and "steps" not in json.dumps(summary)  # no config values: those are params


def check_plots_render_offline(repo: Path) -> None:
    """`dvc plots show` renders the figures as images in a page that fetches nothing: no script at all."""
    out = repo / "dvc_plots"
    _run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(out)], repo)
    page = (out / "index.html").read_text()
    assert "<script" not in page and not re.search(r"""(src|href)=["']?https?://""", page), page[:2000]
    figures = sorted((repo / "reports/eval/figures").glob("*.png")) + sorted((repo / "reports/figures").glob("*.png"))
    assert {f"{m}_training_curves.png" for m in params_models(repo)} <= {f.name for f in figures}
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(figures) >= 20 and all((out / src).stat().st_size > 1000 for src in sources), sources


@pytest.mark.integration
def test_dvc_exp_run_with_fewer_steps_retrains_and_exp_show_compares_the_runs(tiny_repo):
    """The results committed as a user would (dvc.lock, metrics/summary.json), then `dvc exp run -S` with
    fewer cGAN steps than its checkpoint holds (as `-S train.cgan.steps=20` after 300 steps): the cGAN is
    retrained from scratch to exactly those steps (its curves restart), `dvc exp show` has the summary's
    numbers for the commit and for the experiment (not `!`), and `dvc metrics diff` reads the commit's.
    The experiment runs the train stage only, to keep the suite short: evaluate's summary is unchanged."""
    import torch

    repo = tiny_repo["repo"]
    dvc = [sys.executable, "-m", "dvc"]
    git = ["git", "-c", "user.email=ci@medsynth.invalid", "-c", "user.name=ci"]
    _run(git + ["add", "dvc.lock", "metrics/summary.json", "params.yaml"], repo)
    _run(git + ["commit", "-qm", "results"], repo)
    assert "metrics/summary.json" in _run(["git", "ls-files", "metrics"], repo)  # git keeps it: not ignored
    committed = json.loads((repo / "metrics/summary.json").read_text())
    checkpoint = int(torch.load(repo / "models/cgan/checkpoints/last.ckpt", weights_only=True)["state_dict"]["iteration"])
    assert checkpoint >= 2  # checkpoint_every: 2
    out = _run(dvc + ["exp", "run", "-n", "fewer", "-S", "train.cgan.steps=1", "train@cgan"], repo)
    assert "Running stage 'train@cgan'" in out
    summary = json.loads((repo / "models/cgan/train.json").read_text())
    assert summary["steps"] == summary["config"]["steps"] == 1, summary
    assert f"at step {checkpoint}, beyond steps = 1 (steps was lowered)" in summary["fresh_start"]
    curve = (repo / "dvclive/cgan/plots/metrics/loss_g.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in curve[1:]] == ["0"], curve  # the curves restart with the run
    shown = _dvc_json(["exp", "show"], repo)
    assert "fewer" in json.dumps(shown)
    runs = [d["data"] for d in _find(shown, "metrics/summary.json") if isinstance(d, dict) and "data" in d]
    assert len(runs) >= 2 and all(r == without_nulls(committed) for r in runs), runs  # the commit's and the experiment's, numbers and all
    d = _dvc_json(["metrics", "diff", "--all"], repo)["metrics/summary.json"]  # HEAD (the commit) against the workspace
    assert d["cgan.fidelity_nn_distance_ratio"] == {"old": committed["cgan"]["fidelity_nn_distance_ratio"],
                                                     "new": committed["cgan"]["fidelity_nn_distance_ratio"], "diff": 0}, d


def without_nulls(node):
    """A JSON tree without its null leaves, as DVC reads a metrics file."""
    return {k: without_nulls(v) for k, v in node.items() if v is not None} if isinstance(node, dict) else node


def _find(node, key: str) -> list:
    """Every value of ``key`` anywhere in a JSON tree."""
    if isinstance(node, dict):
        return ([node[key]] if key in node else []) + [x for v in node.values() for x in _find(v, key)]
    if isinstance(node, list):
        return [x for v in node for x in _find(v, key)]
    return []


def _texts(root: Path):
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel.startswith((".git/", ".dvc/cache/")):
            continue  # git objects and DVC's cache hold copies of what is scanned
        data = p.read_bytes()
        if p.name.endswith(".gz"):
            data = gzip.decompress(data)
        if p.suffix == ".html":  # embedded images are base64 text: random letters, not identifiers
            data = re.sub(rb"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", b"", data)
        yield p, data


@pytest.mark.integration
def test_no_identifier_in_any_file_the_pipeline_writes(tiny_repo):
    repo, raw = tiny_repo["repo"], tiny_repo["raw"]
    needles = [tiny_repo["canary"].encode()] + [n.encode() for n in tiny_repo["names"]]
    needles += [f.encode() for f in tiny_repo["folders"]] + [b"MRN4711", tiny_repo["key"].encode()]
    # original UIDs and dates of the real files, less the dates a keyed shift legitimately produces
    chance = set(tiny_repo["originals"]) & set(tiny_repo["shifted_dates"])
    needles += [o.encode() for o in tiny_repo["originals"] if o not in chance]
    assert tiny_repo["real_files"] > 200 and len(tiny_repo["originals"]) - len(chance) > 20 and len(chance) <= 3, chance
    tracked = set(subprocess.run(["git", "ls-tree", "-r", "--name-only", "sources"], cwd=repo, capture_output=True, text=True, check=True).stdout.split())
    written = [p for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts and p.relative_to(repo).as_posix() not in tracked]
    scanned, hits = 0, []
    for p, data in _texts(repo):
        if p.relative_to(repo).as_posix() in tracked:
            continue  # the repository's own files (sources, tests, the user's params.yaml)
        scanned += 1
        for needle in needles:
            if needle in data:
                hits.append((p.relative_to(repo).as_posix(), needle.decode()))
        # dvc.lock and DVC's experiment cache (what `dvc exp show` read) record params.yaml's data.input
        if str(raw).encode() in data and p.name != "dvc.lock" and not p.relative_to(repo).as_posix().startswith(".dvc/tmp/exps/cache/"):
            hits.append((p.relative_to(repo).as_posix(), "input path"))
    kinds = {p.suffix for p in written}
    assert scanned > 100 and {".gz", ".csv", ".json", ".html", ".pdf", ".dcm", ".lock"} <= kinds | {".lock"}
    assert (repo / "dvclive").is_dir() and any((repo / "dvclive").rglob("*.tsv"))
    assert not hits, hits[:20]
    # and no original name anywhere in a file or folder name the pipeline made
    for p in written:
        rel = p.relative_to(repo).as_posix()
        assert not any(f in rel for f in tiny_repo["folders"]), rel


@pytest.mark.integration
def test_report_escapes_text_from_params_and_inputs(tiny_repo, tmp_path):
    """Text that comes from the user's params or data (a title, a condition name in a labels CSV warning)
    is HTML-escaped: the template is report.html.j2, which select_autoescape(["html"]) once left raw."""
    from medsynth.report.build import build_report

    repo = tiny_repo["repo"]
    ingest = json.loads((repo / "data/ingest/ingest.json").read_text())
    ingest["warnings"] = ["conditions '<img src=x onerror=alert(1)>' and 'normal' differ only in case"]
    (tmp_path / "ingest").mkdir()
    (tmp_path / "ingest" / "ingest.json").write_text(json.dumps(ingest))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    out = build_report(tmp_path / "ingest", repo / "data/preprocess", repo / "models", repo / "reports/eval", tmp_path / "r.html",
                       params["train"]["models"], "<script>alert(1)</script> & co", params, repo_root=repo, live_root=repo / "dvclive")
    html = Path(out).read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


NUMBER = r"-?\d+(?:\.\d+)?"
ESTIMATE_WITH_CI = re.compile(rf"^({NUMBER}) \(({NUMBER}) – ({NUMBER})")  # "0.614 (0.543 – 0.705)..." in one cell
INTERVAL = re.compile(rf"^({NUMBER}) – ({NUMBER})$")  # a CI cell beside the estimate's cell


def assert_estimates_within_intervals(rows: list[list[str]]) -> int:
    """Every point estimate the report prints with a 95% interval lies within it (as printed, 3 decimals)."""
    checked = 0
    for cells in rows:
        for i, cell in enumerate(cells):
            for part in cell.split("; "):
                m = ESTIMATE_WITH_CI.match(part)
                if m:
                    v, lo, hi = map(float, m.groups())
                    assert lo <= v <= hi, (cells, part)
                    checked += 1
            m = INTERVAL.match(cell)
            if m and i > 0 and re.fullmatch(NUMBER, cells[i - 1]):
                v, (lo, hi) = float(cells[i - 1]), map(float, m.groups())
                assert lo <= v <= hi, cells
                checked += 1
    assert checked >= 5, f"only {checked} estimates with intervals found: the report's tables changed shape"
    return checked


def assert_captions_agree_with_tables(rows: list[list[str]], captions: list[str]) -> None:
    """A number a figure caption states is the number its model's table gives: near-copies found."""
    in_tables = [re.match(r"\d+", cells[1]).group() for cells in rows
                 if len(cells) > 1 and cells[0].startswith("Near-copies of training patients") and re.match(r"\d+", cells[1])]
    in_captions = [m.group(1) for c in captions for m in [re.search(r"Near-copies found: (\d+)", c)] if m]
    assert in_captions and in_captions == in_tables, (in_captions, in_tables)


def test_the_interval_and_caption_checks_catch_what_they_are_for():
    good = [["Membership inference AUC, all cases", "0.614", "0.543 – 0.705", "0.5 = chance"],
            ["distance_features", "all", "0.614 (0.543 – 0.705)", "0.500 (0.400 – 0.600); 0.52 (0.41 – 0.63); 33 control patients"],
            ["Share closer", "0.421", "0.380 – 0.470", ""], ["x", "0.2 (0.1 – 0.3)"], ["y", "0.2 (0.1 – 0.3)"],
            ["Near-copies of training patients (aligned)", "2 (1 rare)", "", "0 expected"]]
    assert assert_estimates_within_intervals(good) == 7
    with pytest.raises(AssertionError):
        assert_estimates_within_intervals(good + [["TPR at 1%", "all", "0.810 (0.820 – 0.900)"]])
    with pytest.raises(AssertionError):
        assert_estimates_within_intervals(good + [["DCR", "0.300", "0.310 – 0.400", ""]])
    assert_captions_agree_with_tables(good, ["Copy check by eye: ... Near-copies found: 2."])
    with pytest.raises(AssertionError):
        assert_captions_agree_with_tables(good, ["Copy check by eye: ... Near-copies found: 0."])


@pytest.mark.integration
def test_report_in_headless_chromium_and_pdf_pages(tiny_repo, tmp_path):
    chromium = shutil.which("chromium")
    pdftoppm = shutil.which("pdftoppm")
    if not chromium or not pdftoppm:
        pytest.skip("needs Debian's chromium and poppler-utils (installed by .ci/run; see README)")
    from playwright.sync_api import sync_playwright

    repo = tiny_repo["repo"]
    report = repo / "reports" / "report.html"
    errors, external = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: external.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        page.goto(report.as_uri(), wait_until="load")
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        table_rows = page.evaluate("Array.from(document.querySelectorAll('tr')).map(r => Array.from(r.cells).map(c => c.innerText.trim()))")
        captions = page.evaluate("Array.from(document.querySelectorAll('figcaption')).map(c => c.innerText)")
        rows = page.locator("#verdict-table tbody tr").count()
        verdict = page.locator("#overall-verdict").inner_text()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert not external, external  # self-contained: nothing fetched from the network
    assert_estimates_within_intervals(table_rows)
    assert_captions_agree_with_tables(table_rows, captions)
    assert len(images) >= 6 and all(c and w > 0 and h > 0 for c, w, h in images), images
    assert rows >= 3 and re.search(r"Overall verdict: (PASS|WARN|FAIL)", verdict, re.I)
    assert (tmp_path / "report.png").stat().st_size > 20_000
    shutil.copy(tmp_path / "report.png", repo / "reports" / "report-screenshot.png")
    # the pipeline's PDF: real pages, none blank
    pdf = repo / "reports" / "report.pdf"
    assert pdf.stat().st_size > 10_000
    subprocess.run([pdftoppm, "-png", "-r", "40", str(pdf), str(tmp_path / "page")], check=True, timeout=120)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert 3 <= len(pages) <= 40, len(pages)
    from PIL import Image

    first = np.asarray(Image.open(pages[0]).convert("RGB"), dtype=np.int16)
    red = (first[..., 0] > 150) & (first[..., 1] < 110) & (first[..., 2] < 110)
    green = (first[..., 1] > 100) & (first[..., 0] < 80) & (first[..., 2] < 120)
    assert (red | green).sum() > 20, "page 1 holds no traffic-light verdict"
    for i, pg in enumerate(pages):
        a = np.asarray(Image.open(pg).convert("L"), dtype=np.float32)
        assert (a < 200).sum() > 50, f"{pg.name} is blank"
        if i < len(pages) - 1:  # the last page may hold the tail of a table only
            assert a.std() > 3 and (a < 200).mean() > 0.005, f"{pg.name} looks blank"
