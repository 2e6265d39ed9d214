"""DVC stage `evaluate`: fidelity, privacy, utility and gates for every trained model (+ figures), and
metrics/summary.json, the one metrics file dvc.yaml declares.

The summary is what `dvc exp show` and `dvc metrics diff` compare between runs: a verdict per model and
per gate and the key figures, flat and numeric where it can be; no config value (those are params). It
is small and git-tracked (`cache: false`, not gitignored), so every commit and experiment keeps its
own. The full results stay in reports/eval/*.json (plain outputs, cached by DVC).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from medsynth.config import ConfigError, load_params
from medsynth.eval.evaluate import EvalJob, EvalResults, GateFailure, evaluate_models
from medsynth.eval.gates import model_gates, model_verdict, overall
from medsynth.io.writers import write_json_atomic

SUMMARY = Path("metrics/summary.json")


def gate_key(model: str, gate: str) -> str:
    """A gate's name as a metrics key: "cgan: realism (distance to real data vs unseen real)" -> "realism"."""
    name = re.sub(r"\([^)]*\)", "", gate.removeprefix(f"{model}: "))
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "gate"


def _figure(block: dict, *keys: str) -> float | None:
    """A nested number of a results block, None where it was not measured."""
    for k in keys:
        block = block.get(k) if isinstance(block, dict) else None
    return block if isinstance(block, (int, float)) and not isinstance(block, bool) else None


def model_summary(model: str, gates: list[dict], fidelity: dict, privacy: dict, utility: dict) -> dict:
    """One model's verdict, its gates' states and its key figures: realism and MMD² (fidelity), the
    strongest membership attack's AUC on all cases and on the rare condition, the DCR share and the
    near-copies (privacy), and the utility score with real data alone, with real + synthetic, and their
    paired difference on all test cases and on the rare condition's."""
    mine = model_gates(model, gates)
    verdict = model_verdict(model, gates, privacy.get("audience"))
    out: dict = {"verdict": overall(mine), "recommendation": verdict["recommendation"],
                 "gates_failed": sum(g["state"] == "fail" for g in mine),
                 "gates_inconclusive": sum(g["state"] == "inconclusive" for g in mine), "gates": {}}
    for g in mine:
        key = gate_key(model, g["gate"])
        while key in out["gates"]:
            key += "_"
        out["gates"][key] = g["state"]
    out["fidelity_nn_distance_ratio"] = _figure(fidelity, "nn_distance_ratio")
    out["fidelity_mmd2"] = _figure(fidelity, "mmd2")
    if "counterfactual" in fidelity:
        out["fidelity_seam_ratio"] = _figure(fidelity, "counterfactual", "seam_ratio_to_source", "median")
    out["privacy_strongest_attack_auc"] = _figure(privacy, "strongest", "all", "auc")
    out["privacy_strongest_attack_auc_rare"] = _figure(privacy, "strongest", "rare_condition", "auc")
    out["privacy_dcr_share"] = _figure(privacy, "dcr_share")
    out["privacy_near_copies"] = _figure(privacy, "copies")
    if utility.get("measured"):
        score, diff = utility["score"], utility.get("differences", {}).get("real+synthetic - real", {})
        out["utility_real"] = _figure(utility, "arms", "real", score)
        out["utility_real_synthetic"] = _figure(utility, "arms", "real+synthetic", score)
        out["utility_difference"] = _figure(diff, "overall", "mean")
        out["utility_difference_rare"] = _figure(diff, "rare", "mean")
    return out


def summary_metrics(results: EvalResults, models: list[str]) -> dict:
    """metrics/summary.json from what evaluate_models returned."""
    out: dict = {"verdict": results["overall"], "gates_failed": sum(g["state"] == "fail" for g in results["gates"])}
    for m in models:
        out[m] = model_summary(m, results["gates"], results["fidelity"].get(m, {}), results["privacy"].get(m, {}),
                               results["utility"].get(m, {}))
    return out


def main() -> int:
    console = Console(stderr=True)
    try:
        params = load_params("params.yaml")
        with console.status("evaluating fidelity and privacy"):
            res = evaluate_models(EvalJob(
                preprocess_dir=Path("data/preprocess"), synth_root=Path("data/synth"), models_root=Path("models"), models=params.train.models,
                preprocess=params.preprocess, cfg=params.evaluate, seed=params.seed, out_dir=Path("reports/eval"),
                encoder_path=Path("models/encoder/encoder.pt"), rare_condition=params.data.rare_condition, cache_dir=Path("data/features")))
    except (ConfigError, GateFailure) as exc:
        console.print(f"[red]evaluate failed:[/red] {escape(str(exc))}")
        return 1
    write_json_atomic(SUMMARY, summary_metrics(res, params.train.models))
    states = ", ".join(f"{g['gate']}={g['state']}" for g in res["gates"])
    console.print(f"evaluate: overall {res['overall'].upper()} -> reports/eval/gates.json, {SUMMARY} ({states})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
