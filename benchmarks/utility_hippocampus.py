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
        }
    npz = Path(args.npz) if args.npz else SHARED / "shapes" / "adrenalmnist3d_28.npz"
    return {
        "data": {"input": str(npz), "rare_condition": "lesion", "default_condition": "normal", "npz_max_cases": args.max_cases},
        "preprocess": {"spacing": [1.0] * 3, "roi_size": [args.roi] * 3},
        "synthesize": {"per_condition": {"normal": args.samples, "lesion": args.samples}, "formats": ["nifti"]},
    }


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
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    return repo


def summarise(reports: Path, models: list[str]) -> list[dict]:
    read = lambda name: json.loads((reports / "eval" / name).read_text())  # noqa: E731
    fidelity, utility, privacy, gates = read("fidelity.json"), read("utility.json"), read("privacy.json"), read("gates.json")
    rows = []
    for m in models:
        rows.append({
            "model": m,
            "conditional": fidelity[m].get("conditional"),
            "utility": utility.get(m),
            "privacy": {k: privacy[m].get(k) for k in ("membership_auc_blackbox", "membership_auc_whitebox", "dcr_share", "copies")},
            "gates": [{k: g[k] for k in ("gate", "state", "sentence")} for g in gates["gates"] if g["gate"].startswith(f"{m}:")],
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", choices=["hippocampus", "adrenal"], default="hippocampus")
    ap.add_argument("--npz", help="adrenal: the MedMNIST .npz (default: the 28^3 file in ../shared)")
    ap.add_argument("--max-cases", type=int, default=None, help="adrenal: cases taken from the npz (default: all)")
    ap.add_argument("--models", default="cgan,cvae")
    ap.add_argument("--roi", type=int, default=32)
    ap.add_argument("--spacing", type=float, default=None, help="hippocampus: isotropic spacing in mm (default 1.5)")
    ap.add_argument("--steps", type=int, default=None, help="training steps of every model (default: params.yaml)")
    ap.add_argument("--samples", type=int, default=32, help="synthetic cases per condition")
    ap.add_argument("--utility-seeds", type=int, default=None)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--work", help="keep the scratch project here (default: a temporary folder)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    models = args.models.split(",")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="medsynth-utility-"))
    work.mkdir(parents=True, exist_ok=True)
    repo = scratch_project(work)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    over = merge(cohort_params(args.cohort, args), {"train": {"models": models, "accelerator": args.accelerator},
                                                     "deid": {"ephemeral_key": True}})
    if args.steps:
        for m in models:
            over["train"].setdefault(m, {})["steps"] = args.steps
    if args.utility_seeds:
        over.setdefault("evaluate", {}).setdefault("utility", {})["seeds"] = args.utility_seeds
    params = merge(params, over)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    t0 = time.time()
    run = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, capture_output=True, text=True)
    seconds = round(time.time() - t0, 1)
    (work / "dvc-repro.log").write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        print(run.stdout[-4000:], run.stderr[-4000:], file=sys.stderr)
        return run.returncode
    pre = json.loads((repo / "data" / "preprocess" / "preprocess.json").read_text())
    rows = summarise(repo / "reports", models)
    write_results(args.out, f"utility-{args.cohort}", rows, {
        "cohort": args.cohort, "params_changed": over, "dvc_repro_seconds": seconds,
        "counts": pre["counts"], "label_voxels": pre.get("label_voxels"),
        "verdict": json.loads((repo / "reports" / "eval" / "gates.json").read_text())["overall"],
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
