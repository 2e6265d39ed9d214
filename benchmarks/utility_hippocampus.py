"""Does synthetic data of the rare condition help, on real cohorts? The whole pipeline, measured per model.

Runs the real ``dvc repro`` in a scratch copy of this project with a cohort's params (what a user would
set: input, labels, rare condition, spacing), then gathers from the evaluate stage's JSON per model:
conditional fidelity of the rare condition (per label), the utility arms (overall and rare-class score
with 95% CIs, paired differences to real-only and to standard augmentation) and the privacy gates.

Cohorts:

* ``hippocampus``: ../shared/data/hippocampus, 260 real MR crops, expert labels (1 anterior, 2 posterior
  hippocampus), rare condition ``small`` (15%): segmentation utility (rare-class Dice).
* ``adrenal``: AdrenalMNIST3D (../shared/data/shapes/adrenalmnist3d_28.npz), rare class ``lesion``
  (hyperplasia/mass, 22%): classification utility (rare-class AUC).

CPU at 32^3 (about an hour for both on 2 cores)::

    python benchmarks/utility_hippocampus.py --cohort hippocampus --out benchmarks/results/utility-hippocampus-cpu.json
    python benchmarks/utility_hippocampus.py --cohort adrenal --out benchmarks/results/utility-adrenal28-cpu.json

GPU at 64^3 (hippocampus at 0.75 mm; AdrenalMNIST3D from the 64^3 file)::

    python benchmarks/utility_hippocampus.py --cohort hippocampus --roi 64 --spacing 0.75 --steps 4000 \\
        --accelerator gpu --out benchmarks/results/utility-hippocampus64-gpu.json
    python benchmarks/utility_hippocampus.py --cohort adrenal --npz ../shared/data/shapes/adrenalmnist3d_64.npz \\
        --roi 64 --steps 4000 --accelerator gpu --out benchmarks/results/utility-adrenal64-gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def cohort_params(cohort: str, args) -> dict:
    """The params.yaml changes a user makes for this cohort (see docs/user-guide.md, "Your own NIfTI cohort")."""
    if cohort == "hippocampus":
        data = SHARED / "hippocampus"
        return {
            "data": {"input": str(data), "labels": str(data / "labels.csv"), "rare_condition": "small",
                     "default_condition": "typical", "nifti_modality": "MR"},
            "preprocess": {"spacing": [args.spacing or 1.5] * 3, "roi_size": [args.roi] * 3},
            "synthesize": {"per_condition": {"typical": args.samples, "small": args.samples}, "formats": ["nifti"]},
            "evaluate": {"conditional": {"label_names": {1: "anterior hippocampus", 2: "posterior hippocampus"}}},
        }
    if cohort == "demo":
        return {"synthesize": {"per_condition": {"normal": args.samples, "lesion": args.samples}, "formats": ["nifti"]}}
    npz = Path(args.npz) if args.npz else SHARED / "shapes" / "adrenalmnist3d_28.npz"
    return {
        "data": {"input": str(npz), "rare_condition": "lesion", "default_condition": "normal", "npz_max_cases": args.max_cases},
        "preprocess": {"spacing": [1.0] * 3, "roi_size": [args.roi] * 3},
        "synthesize": {"per_condition": {"normal": args.samples, "lesion": args.samples}, "formats": ["nifti"]},
    }


def benchmark_key(work: Path) -> Path:
    """A fixed pseudonymisation key for these public cohorts: the same pseudonyms, so the same patient-level
    splits, in every run (a throw-away key drew other splits each time, and the runs could not be compared
    case by case). Not for real data: a site key is secret."""
    import hashlib

    key = work / "benchmark-public-cohort.key"
    key.write_text(hashlib.sha256(b"medsynth benchmark key for public cohorts").hexdigest() + "\n")
    key.chmod(0o600)
    return key


def merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def scratch_project(work: Path) -> Path:
    """This project's tracked files (and the working tree's changes) in a fresh git + DVC repository."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    repo = work / "project"
    for f in files:
        if (ROOT / f).is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    (repo / "dvc.lock").unlink(missing_ok=True)
    git = ["git", "-c", "user.name=medsynth-benchmark", "-c", "user.email=benchmark@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(git + ["add", "-A"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "scratch copy"], cwd=repo, check=True)  # DVCLive needs a commit to compare against
    return repo


def summarise(reports: Path, models: list[str]) -> list[dict]:
    read = lambda name: json.loads((reports / "eval" / name).read_text())  # noqa: E731
    fidelity, utility, privacy, gates = read("fidelity.json"), read("utility.json"), read("privacy.json"), read("gates.json")
    rows = []
    for m in models:
        cf = fidelity[m].get("counterfactual")
        train_json = reports.parent / "models" / m / "train.json"
        trained = json.loads(train_json.read_text()) if train_json.is_file() else {}
        rows.append({
            "model": m,
            "train": {k: trained.get(k) for k in ("steps", "train_seconds", "dp", "final_diversity")},
            "conditional": fidelity[m].get("conditional"),
            "utility": utility.get(m),
            "privacy": {k: privacy[m].get(k) for k in ("membership_auc_blackbox", "membership_auc_whitebox", "dcr_share", "copies")},
            "counterfactual": None if cf is None else {
                **{k: v for k, v in cf.items() if k not in ("seam_ratio_to_source_per_case", "source_case_ids")},
                "structure_copy_detection": {k: privacy[m]["structure_copy_detection"].get(k)
                                             for k in ("measured", "reason", "copies", "distance_factor", "reference_structures")},
                "closest_ratio_to_real_min": min((p["ratio_to_real_min"] for p in privacy[m]["structure_copy_detection"].get("closest_pairs", [])),
                                                 default=None)},
            "gates": [{k: g[k] for k in ("gate", "state", "sentence")} for g in gates["gates"] if g["gate"].startswith(f"{m}:")],
        })
    return rows


def compare_with(rows: list[dict], earlier: Path) -> list[dict]:
    """Paired differences of each counterfactual model's real+synthetic_rare arm against each model's of an
    earlier results file on the same cohort and params. Valid only when the two runs' real-only arms scored
    every test case alike (the same splits, seeds and code): checked, and said."""
    import numpy as np

    from medsynth.eval.utility import cross_model_difference

    data = json.loads(Path(earlier).read_text())  # a results file of this script, or an evaluate stage's utility.json
    old = {r["model"]: r["utility"] for r in data["rows"] if r.get("utility")} if "rows" in data else data
    out = []
    for r in rows:
        util = r["utility"] or {}
        if util.get("synthetic_kind") != "counterfactual" or not util.get("measured"):
            continue
        for name, other in old.items():
            key = "per_case_dice" if util["task"] == "segmentation" else "per_case_score"
            same = np.allclose(np.mean(util["arms"]["real"][key], 0), np.mean(other["arms"]["real"][key], 0), atol=1e-4)
            entry = {"model": r["model"], "against": name, "earlier": str(earlier), "real_arms_identical": bool(same)}
            if same:
                entry["difference"] = cross_model_difference(util, {**other, "test_is_rare": util["test_is_rare"]}, "real+synthetic_rare", 0)
            out.append(entry)
    return out


def _ci(v) -> str:
    return f" [{v[0]:+.3f}, {v[1]:+.3f}]" if v else " [no CI]"


def markdown(results: dict) -> str:
    """The docs/benchmarks.md tables of one results file: conditional fidelity of the rare condition per
    label, the utility arms and paired differences, the privacy gates (numbers as the run wrote them)."""
    lines, util0 = [], next((r["utility"] for r in results["rows"] if r["utility"]), None)
    score = util0["score"] if util0 else "dice"
    rare = results["rows"][0]["conditional"]["rare_condition"] if results["rows"][0]["conditional"] else "rare"
    lines += ["| model | condition, label | synthetic: present, median volume | real: present, median volume | ratio (real-vs-real range) |",
              "|---|---|---|---|---|"]
    for r in results["rows"]:
        cond = r["conditional"] or {}
        for c in cond.get("conditions", []):
            for _k, lab in cond["per_condition"][c]["labels"].items():
                p, v = lab["presence"], lab["volume"]
                rng = v["median_ratio_real_range"]
                fmt = lambda n, sh, med: f"{n}/{sh} ({100 * n / sh:.0f}%), {med:.0f}" if sh and med is not None else f"{n}/{sh}"  # noqa: E731
                lines.append(f"| {r['model']} | {c}, {lab['name']} | {fmt(p['synthetic'], p['synthetic_n'], v['synthetic']['median'])} | "
                             f"{fmt(p['real'], p['real_n'], v['real']['median'])} | "
                             + (f"{v['median_ratio']:.2f}" if v["median_ratio"] is not None else "-")
                             + (f" ({rng[0]:.2f}-{rng[1]:.2f})" if rng else "") + " |")
    lines += ["", f"| arm | overall {score} (95% CI) | {rare} {score} (95% CI) | val score |", "|---|---|---|---|"]
    for r in results["rows"]:
        u = r["utility"] or {}
        for arm, a in (u.get("arms") or {}).items():
            if arm in ("real", "real+augmentation") and r is not results["rows"][0]:
                continue
            name = arm if arm in ("real", "real+augmentation") else f"{arm} ({r['model']})"
            rv = a.get(f"rare_{score}")
            lines.append(f"| {name} | {a[score]:.3f}{_ci(a.get(f'{score}_ci95'))} | "
                         + (f"{rv:.3f}{_ci(a.get(f'rare_{score}_ci95'))}" if rv is not None else "-")
                         + f" | {a.get('val_' + score, a.get('val_neg_cross_entropy', float('nan'))):.3f} |")
    lines += ["", f"| model | difference (paired, 95% CI) | overall | {rare} |", "|---|---|---|---|"]
    for r in results["rows"]:
        for name, d in ((r["utility"] or {}).get("differences") or {}).items():
            if "synthetic" not in name:
                continue
            rr = d.get("rare")
            lines.append(f"| {r['model']} | {name} | {d['overall']['mean']:+.3f}{_ci(d['overall']['ci95'])} | "
                         + (f"{rr['mean']:+.3f}{_ci(rr['ci95'])}" if rr else "-") + " |")
    cfs = [r for r in results["rows"] if r.get("counterfactual")]
    if cfs:
        lines += ["", "| model | seam: border gradient / source (median, IQR) | vs real rare cases | structure mean intensity: counterfactual / real rare "
                  "| structure intensity spread: counterfactual / real rare | structure near-copies (closest / real min) |", "|---|---|---|---|---|---|"]
        for r in cfs:
            c = r["counterfactual"]
            sr, det = c["seam_ratio_to_source"], c["structure_copy_detection"]
            lines.append(f"| {r['model']} | {sr['median']:.2f} ({sr['iqr'][0]:.2f}-{sr['iqr'][1]:.2f}) | {c['seam_ratio_to_real_rare']['median']:.2f} | "
                         f"{c['structure_mean']['counterfactual']['median']:.3f} / {c['structure_mean']['real_rare']['median']:.3f} | "
                         f"{c['structure_std']['counterfactual']['median']:.3f} / {c['structure_std']['real_rare']['median']:.3f} | "
                         + (f"{det['copies']} of {sr['n']} ({c['closest_ratio_to_real_min']:.2f})" if det.get("measured")
                            else f"not measured: {det.get('reason')}")
                         + " |")
    for cmp in results.get("comparisons", []):
        if not cmp["real_arms_identical"]:
            lines += ["", f"{cmp['model']} vs {cmp['against']} ({cmp['earlier']}): not compared, the real-only arms differ between the runs."]
    cmps = [c for c in results.get("comparisons", []) if c.get("difference")]
    if cmps:
        lines += ["", f"| difference (paired, 95% CI) | overall | {rare} |", "|---|---|---|"]
        for c in cmps:
            d, rr = c["difference"], c["difference"].get("rare")
            lines.append(f"| real+counterfactual ({c['model']}) - real+synthetic_rare ({c['against']}, earlier run) | "
                         f"{d['overall']['mean']:+.3f}{_ci(d['overall']['ci95'])} | " + (f"{rr['mean']:+.3f}{_ci(rr['ci95'])}" if rr else "-") + " |")
    lines += ["", "| gate | state | sentence |", "|---|---|---|"]
    for r in results["rows"]:
        lines += [f"| {g['gate']} | {g['state']} | {g['sentence'].replace('|', '/')} |" for g in r["gates"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--markdown", metavar="RESULTS", help="print the docs/benchmarks.md tables of a results file and exit")
    ap.add_argument("--cohort", choices=["hippocampus", "adrenal", "demo"], default="hippocampus")
    ap.add_argument("--compare", help="an earlier results file of this script or an evaluate stage's utility.json (same cohort and "
                                      "params): paired differences of a counterfactual model's arm against its models' real+synthetic_rare arms")
    ap.add_argument("--npz", help="adrenal: the MedMNIST .npz (default: the 28^3 file in ../shared)")
    ap.add_argument("--max-cases", type=int, default=None, help="adrenal: cases taken from the npz (default: all)")
    ap.add_argument("--models", default="cgan,cvae")
    ap.add_argument("--roi", type=int, default=32)
    ap.add_argument("--spacing", type=float, default=None, help="hippocampus: isotropic spacing in mm (default 1.5)")
    ap.add_argument("--steps", type=int, default=None, help="training steps of every model (default: params.yaml)")
    ap.add_argument("--samples", type=int, default=32, help="synthetic cases per condition")
    ap.add_argument("--utility-seeds", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                    help="any other params.yaml value, e.g. --set 'train.cvae.dp={epsilon: 10}' (repeatable)")
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--work", help="keep the scratch project here (default: a temporary folder)")
    ap.add_argument("--resume", action="store_true", help="rerun dvc repro in the --work project as it is (stages done stay done)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    models = args.models.split(",")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="medsynth-utility-"))
    work.mkdir(parents=True, exist_ok=True)
    repo = work / "project"
    if not args.resume:
        scratch_project(work)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    over = merge(cohort_params(args.cohort, args), {"train": {"models": models, "accelerator": args.accelerator},
                                                     "deid": {"key_file": str(benchmark_key(work))}})
    if args.steps:
        for m in models:
            over["train"].setdefault(m, {})["steps"] = args.steps
    if args.utility_seeds:
        over.setdefault("evaluate", {}).setdefault("utility", {})["seeds"] = args.utility_seeds
    for item in args.set:
        key, _, value = item.partition("=")
        *parents, last = key.split(".")
        node = over
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = yaml.safe_load(value)
    params = merge(params, over)
    params["synthesize"]["per_condition"] = over["synthesize"]["per_condition"]  # this cohort's conditions only
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    t0 = time.time()
    # the stages import the scratch copy of medsynth, not an installed (editable) one that may have moved on
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, capture_output=True, text=True, env=env)
    seconds = round(time.time() - t0, 1)
    (work / "dvc-repro.log").write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        print(run.stdout[-4000:], run.stderr[-4000:], file=sys.stderr)
        return run.returncode
    pre = json.loads((repo / "data" / "preprocess" / "preprocess.json").read_text())
    rows = summarise(repo / "reports", models)
    write_results(args.out, f"utility-{args.cohort}", rows, {
        "comparisons": compare_with(rows, Path(args.compare)) if args.compare else [],
        "cohort": args.cohort, "params_changed": over, "dvc_repro_seconds": seconds,
        "counts": pre["counts"], "label_voxels": pre.get("label_voxels"),
        "verdict": json.loads((repo / "reports" / "eval" / "gates.json").read_text())["overall"],
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
