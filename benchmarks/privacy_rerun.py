"""The privacy audit of finished pipeline runs, again, through the evaluate stage's own steps
(``load_real_reference``, ``load_synthetic_set``, ``measure_privacy``, ``privacy_gates``) with the code
of this checkout: each run's membership attacks, their controls and the privacy gates, without
retraining and without the utility arms. The learned-feature second opinion is left out (no encoder).

    python benchmarks/privacy_rerun.py RUN_DIR [RUN_DIR ...] --out benchmarks/results/FILE.json
    python benchmarks/privacy_rerun.py --markdown benchmarks/results/FILE.json

RUN_DIR: a pipeline folder after `dvc repro` (params.yaml, data/preprocess, data/synth, models/); the
cached real features in data/features are reused when they match.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, print_markdown, results_parser  # noqa: E402
from medsynth.config import load_params  # noqa: E402
from medsynth.eval.evaluate import EvalJob, load_real_reference, load_synthetic_set, measure_privacy  # noqa: E402
from medsynth.eval.gates import privacy_gates  # noqa: E402


def rerun(run: Path) -> dict:
    params = load_params(run / "params.yaml")
    job = EvalJob(preprocess_dir=run / "data/preprocess", synth_root=run / "data/synth", models_root=run / "models", models=params.train.models,
                  preprocess=params.preprocess, cfg=params.evaluate, seed=params.seed, out_dir=run / "reports/eval-rerun",
                  encoder_path=None, rare_condition=params.data.rare_condition, cache_dir=run / "data/features")
    ref = load_real_reference(job)
    models = {}
    for k, model in enumerate(job.models):
        syn = load_synthetic_set(job, ref, model)
        if syn.counterfactual:
            continue
        priv = measure_privacy(job, ref, syn, job.seed + k)
        attacks = {}
        for name, a in priv["attacks"].items():
            attacks[name] = {}
            for subset in ("all", "rare_condition"):
                r = a[subset]
                c = r.get("control", {})
                attacks[name][subset] = {
                    "auc": r.get("auc"), "auc_ci": r.get("auc_ci"), "measured": r["measured"],
                    "control_vs_nonmembers": c["control_vs_nonmembers"] if c.get("measured") else None,
                    "members_vs_control": c["members_vs_control"] if c.get("measured") else None,
                    "n_control": c.get("n_control"), "control_reason": None if c.get("measured") else c.get("reason"),
                }
        gates = privacy_gates(model, priv, job.cfg.gates)
        models[model] = {"attacks": attacks, "gates": [{k2: g.get(k2) for k2 in ("gate", "state", "value", "attack", "control", "sentence")}
                                                       for g in gates],
                         "dp": json.loads((run / "models" / model / "train.json").read_text()).get("dp") if (run / "models" / model / "train.json").is_file()
                         else None}
    return {"run": run.name if run.name != "project" else run.parent.name, "models": models}


def markdown(result: dict) -> str:
    out = ["| run | model | attack | AUC members vs holdout | control vs holdout | members vs control | membership gate, all cases |",
           "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        for model, m in r["models"].items():
            gate = next(g for g in m["gates"] if g["gate"].endswith("membership inference AUC, all cases"))
            for name, a in m["attacks"].items():
                s = a["all"]
                if not s["measured"]:
                    continue
                fmt = lambda d: "-" if d is None else f"{d['auc']:.3f} [{d['auc_ci'][0]:.2f}, {d['auc_ci'][1]:.2f}]"  # noqa: E731
                out.append(f"| {r['run']} | {model} | {name} | {fmt(s)} | {fmt(s['control_vs_nonmembers'])} | {fmt(s['members_vs_control'])} | "
                           f"{gate['state'] if gate['attack'] == name else ''} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = results_parser(__doc__)
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if print_markdown(args, markdown):
        return 0
    t0 = time.perf_counter()
    result = {"benchmark": "privacy audit of finished runs, with each attack's control", "machine": machine(),
              "runs": [rerun(r) for r in args.runs], "seconds": 0.0}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
