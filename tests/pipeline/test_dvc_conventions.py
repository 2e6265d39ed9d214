"""DVC used as DVC users expect: one small git-tracked metrics file that `dvc exp show` and `dvc metrics
diff` can compare, plots that are static images (rendered offline), the report naming a params.yaml
that differs from the commit. The real `dvc repro` / `dvc exp run` checks are in tests/pipeline/test_pipeline.py."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest
import yaml

from tests.conftest import ROOT


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"medsynth_stage_{name}", ROOT / "pipelines" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dvc_yaml_declares_one_git_tracked_metrics_file_and_image_plots_only():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    metrics = [(name, m) for name, st in dvc["stages"].items() for m in (st.get("do", st).get("metrics") or [])]
    assert [(n, list(m)) for n, m in metrics] == [("evaluate", ["metrics/summary.json"])]
    assert metrics[0][1]["metrics/summary.json"] == {"cache": False}  # git keeps it, so every commit and experiment has its own
    ignored = subprocess.run(["git", "check-ignore", "-q", "metrics/summary.json"], cwd=ROOT).returncode
    assert ignored == 1, "metrics/summary.json is gitignored: dvc exp show would show '!' for it"
    assert not any(st.get("do", st).get("plots") for st in dvc["stages"].values())  # no vega plot (it loads vega from the network)
    assert dvc["plots"] == ["reports/eval/figures", "reports/figures"]
    outs = {next(iter(o)) if isinstance(o, dict) else o for st in dvc["stages"].values() for o in st.get("do", st).get("outs", [])}
    assert set(dvc["plots"]) <= outs  # written by stages (evaluate's figures, report's training curves), all PNG


def _results():
    gates = [
        {"gate": "cgan: membership inference AUC, all cases", "area": "privacy", "state": "pass", "value": 0.55},
        {"gate": "cgan: membership inference AUC, rare condition", "area": "privacy", "state": "warn", "value": 0.7},
        {"gate": "cgan: realism (distance to real data vs unseen real)", "area": "fidelity", "state": "fail", "value": 7.7},
        {"gate": "cgan: utility (real + synthetic vs real)", "area": "utility", "state": "pass", "value": -0.01},
        {"gate": "cvae: utility (real + synthetic vs real)", "area": "utility", "state": "not measured", "value": None},
    ]
    fidelity = {"cgan": {"nn_distance_ratio": 7.7, "mmd2": 0.77, "per_condition": {}}, "cvae": {"nn_distance_ratio": 1.2, "mmd2": 0.2}}
    privacy = {"cgan": {"audience": "share", "dcr_share": 0.58, "copies": 0, "strongest": {
        "all": {"measured": True, "auc": 0.55}, "rare_condition": {"measured": False, "reason": "too few"}}},
        "cvae": {"audience": "share", "dcr_share": 0.2, "copies": 1}}
    utility = {"cgan": {"measured": True, "score": "dice", "arms": {"real": {"dice": 0.69}, "real+synthetic": {"dice": 0.68}},
                        "differences": {"real+synthetic - real": {"overall": {"mean": -0.01, "ci95": [-0.02, 0.0]}, "rare": None}}},
               "cvae": {"measured": False, "reason": "evaluate.utility.enabled is false"}}
    return {"overall": "fail", "gates": gates, "fidelity": fidelity, "privacy": privacy, "utility": utility}


def test_summary_metrics_hold_verdicts_gates_and_key_figures_flat_and_numeric():
    stage = _load("evaluate")
    s = stage.summary_metrics(_results(), ["cgan", "cvae"])
    assert s["verdict"] == "fail" and s["gates_failed"] == 1
    cgan = s["cgan"]
    assert cgan["verdict"] == "fail" and cgan["recommendation"] == "neither" and cgan["gates_failed"] == 1
    assert cgan["gates"] == {"membership_inference_auc_all_cases": "pass", "membership_inference_auc_rare_condition": "warn",
                             "realism": "fail", "utility": "pass"}
    assert (cgan["fidelity_nn_distance_ratio"], cgan["fidelity_mmd2"], cgan["privacy_dcr_share"], cgan["privacy_near_copies"]) == (7.7, 0.77, 0.58, 0)
    assert cgan["privacy_strongest_attack_auc"] == 0.55 and cgan["privacy_strongest_attack_auc_rare"] is None  # not measured: no number
    assert (cgan["utility_real"], cgan["utility_real_synthetic"], cgan["utility_difference"], cgan["utility_difference_rare"]) == (0.69, 0.68, -0.01, None)
    cvae = s["cvae"]
    assert cvae["verdict"] == "warn" and cvae["gates"] == {"utility": "not measured"} and "utility_real" not in cvae
    assert cvae["privacy_strongest_attack_auc"] is None and cvae["privacy_near_copies"] == 1
    leaves = []

    def walk(node):
        for v in node.values():
            walk(v) if isinstance(v, dict) else leaves.append(v)

    walk(s)
    assert all(v is None or isinstance(v, (str, int, float)) for v in leaves)  # no lists: every leaf is one column


@pytest.mark.parametrize("edit, expected", [(None, False), ("seed: 2\n", True)])
def test_report_stage_says_whether_params_yaml_differs_from_the_commit(tmp_path, monkeypatch, edit, expected):
    stage = _load("report")
    monkeypatch.chdir(tmp_path)
    assert stage.params_changed() is None  # no git repository
    git = ["git", "-c", "user.email=ci@medsynth.invalid", "-c", "user.name=ci"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    assert stage.params_changed() is None  # no commit yet
    (tmp_path / "other.txt").write_text("x")
    subprocess.run([*git, "add", "other.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    assert stage.params_changed() is True  # the commit has no params.yaml
    subprocess.run([*git, "add", "params.yaml"], check=True)
    subprocess.run([*git, "commit", "-qm", "p"], check=True)
    if edit:
        (tmp_path / "params.yaml").write_text(edit)
    assert stage.params_changed() is expected


def test_report_provenance_names_changed_params(tmp_path):
    import json

    from medsynth.report.build import build_report

    (tmp_path / "ingest.json").write_text(json.dumps({"deid": {"codes": [], "actions": {}, "nifti_header_fields_cleared": []}}))
    (tmp_path / "preprocess.json").write_text(json.dumps({"counts": {}, "conditions": [], "roi_size": [16] * 3, "spacing": [1] * 3}))
    for changed, text in ((True, "<strong>differs from commit"), (False, "as in commit"), (None, "not compared with a commit")):
        html = build_report(tmp_path, tmp_path, tmp_path, tmp_path, tmp_path / "r.html", [], "t", {}, repo_root=tmp_path,
                            live_root=tmp_path, params_changed=changed).read_text()
        assert f'id="params-provenance">{text}' in html
