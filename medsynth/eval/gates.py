"""Gates: a measured value, a threshold the user set, and a verdict.

States, worst first: ``fail`` (the threshold is crossed), ``inconclusive`` (the measurement could not
say anything, e.g. the real-only utility model did not learn: never read as a pass), ``warn`` (near the
threshold, or the interval reaches beyond it), ``not measured`` (switched off or no data; counts as a
warn in the overall verdict), ``pass``."""

from __future__ import annotations

from medsynth.config import GatesConfig

STATES = ("pass", "warn", "fail", "not measured", "inconclusive")
RANK = {"pass": 0, "not measured": 1, "warn": 1, "inconclusive": 2, "fail": 3}  # overall(): the worst gate decides


def upper_gate(name: str, value: float | None, threshold: float, margin: float, sentence: str, area: str) -> dict:
    """A gate that passes while value <= threshold; warns within ``margin`` (relative) below it."""
    if value is None:
        state = "not measured"
    elif value > threshold:
        state = "fail"
    elif value > threshold * (1 - margin):
        state = "warn"
    else:
        state = "pass"
    return {"gate": name, "area": area, "state": state, "value": value, "threshold": threshold, "rule": "<=", "sentence": sentence}


def evaluate_gates(model: str, fidelity: dict, privacy: dict, cfg: GatesConfig) -> list[dict]:
    m = cfg.warn_margin
    return [
        upper_gate(f"{model}: membership inference AUC", privacy["membership_auc_blackbox"], cfg.mia_auc_max, m,
                   "How well an attacker holding the synthetic data can tell who was in the training set (0.5 = no better than chance).", "privacy"),
        upper_gate(f"{model}: share closer to training than to unseen patients", privacy["dcr_share"], cfg.dcr_share_max, m,
                   "0.5 means synthetic cases are no closer to training patients than to patients the model never saw.", "privacy"),
        upper_gate(f"{model}: near-copies of training patients", float(privacy["copies"]), float(cfg.copies_max), 0.0,
                   "Synthetic cases closer to a training patient than real patients ever are to each other.", "privacy"),
        upper_gate(f"{model}: realism (distance to real data vs unseen real)", fidelity["nn_distance_ratio"], cfg.nn_distance_ratio_max, m,
                   "Median distance of synthetic cases to the real training data, divided by the same for unseen real patients (1 = as realistic as real).", "fidelity"),
    ]


def overall(gates: list[dict]) -> str:
    """fail > inconclusive > warn (a gate not measured counts as warn) > pass; no gate: pass."""
    unknown = [g["gate"] for g in gates if g["state"] not in RANK]
    if unknown:
        raise ValueError(f"gate(s) {unknown} have a state outside {list(RANK)}")
    worst = max((RANK[g["state"]] for g in gates), default=0)
    return {0: "pass", 1: "warn", 2: "inconclusive", 3: "fail"}[worst]
