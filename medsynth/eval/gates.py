"""Gates: a measured value, a threshold the user set, and a verdict.

States, worst first: ``fail`` (the threshold is crossed), ``inconclusive`` (the measurement could not
say anything, e.g. the real-only utility model did not learn: never read as a pass), ``warn`` (near the
threshold, or the interval reaches beyond it), ``not measured`` (switched off or no data; counts as a
warn in the overall verdict), ``pass``."""

from __future__ import annotations

from medsynth.config import GatesConfig

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


def explained_by_control(value: float, control_vs_nonmembers_ci: list[float], members_vs_control_ci: list[float]) -> bool:
    """The control rule shared by the membership attacks and the DCR share: ``value`` (members against
    non-members) is no higher than the control patients against the non-members can be (it lies within,
    or below, that 95% interval) and members against the control patients can be chance (that interval
    reaches 0.5)."""
    return value <= control_vs_nonmembers_ci[1] and members_vs_control_ci[0] <= 0.5


def confounded(report: dict) -> bool:
    """Whether an attack's control explains its AUC: the attack does not tell members from non-members
    better than it tells the control patients (never seen by the generator) from the non-members (its
    AUC lies within the control's 95% interval), and the members are not told from the control patients
    (that interval reaches 0.5). Then what it measures is how the holdout differs from everyone else,
    not membership. Without a measured control: False."""
    control = report.get("control") or {}
    if not control.get("measured"):
        return False
    return explained_by_control(report["auc"], control["control_vs_nonmembers"]["auc_ci"], control["members_vs_control"]["auc_ci"])


def dcr_share_confounded(privacy: dict) -> bool:
    """Whether the DCR share's control (privacy.json ``dcr_share_control``) explains it, by the attacks'
    rule (``explained_by_control``): the synthetic cases are no nearer the members than they are to
    other patients the generator never saw, relative to the non-members, and no nearer the members than
    those patients. Then the share measures how the holdout differs from everyone else as seen from
    the synthetic cases, not closeness to members. Without a measured control or a share: False."""
    control = privacy.get("dcr_share_control") or {}
    if not control.get("measured") or privacy.get("dcr_share") is None:
        return False
    return explained_by_control(privacy["dcr_share"], control["control_vs_nonmembers"]["share_ci"], control["members_vs_control"]["share_ci"])


def _control_sentence(name: str, report: dict) -> str:
    c = report["control"]
    a, m = c["control_vs_nonmembers"], c["members_vs_control"]
    return (f" {name} scores AUC {report['auc']:.2f} but tells {c['n_control']} other patients the generator never saw from the "
            f"non-members about as well ({a['auc']:.2f}, 95% CI {a['auc_ci'][0]:.2f}-{a['auc_ci'][1]:.2f}), and the members from those "
            f"patients at {m['auc']:.2f} ({m['auc_ci'][0]:.2f}-{m['auc_ci'][1]:.2f}, reaching chance): it measures how the holdout differs "
            "from the other patients as seen from these synthetic cases, not membership. Inconclusive, not a pass: a second holdout "
            "(another split seed) or more patients can settle it.")


def membership_gate(model: str, privacy: dict, subset: str, cfg: GatesConfig) -> dict:
    """The membership attacks the audience allows (privacy.json ``strongest.attacks_considered``) on all
    cases or on the rare condition's. The gate takes the strongest attack whose control does not
    explain it (``confounded``). All cases: fails above ``mia_auc_max``. Rare condition: fails above it
    only when the 95% interval also clears chance (0.5); above it with an interval reaching chance it
    warns, because a handful of rare holdout cases alone makes AUCs of 0.7 common by chance. When a
    confounded attack is above the threshold and no other attack fails, the gate is inconclusive."""
    strongest = privacy.get("strongest", {})
    best = strongest.get(subset, {"measured": False, "reason": "no attack ran"})
    label = "all cases" if subset == "all" else "rare condition"
    audience = privacy.get("audience", "share")
    scope = "black-box and white-box attacks (the model is to be shared)" if audience == "share" else "black-box attacks (internal use)"
    name = f"{model}: membership inference AUC, {label}"
    if not best.get("measured"):
        return upper_gate(name, None, cfg.mia_auc_max, cfg.warn_margin, f"Not measured: {best.get('reason')}.", "privacy")
    attacks = privacy.get("attacks", {})
    considered = [k for k in strongest.get("attacks_considered", attacks) if attacks.get(k, {}).get(subset, {}).get("measured")]
    reports = {k: {**attacks[k][subset], "kind": attacks[k]["kind"]} for k in considered} or {best["attack"]: best}
    thr = cfg.mia_auc_max
    clean = {k: r for k, r in reports.items() if not confounded(r)}
    above_confounded = sorted((k for k in reports if k not in clean and reports[k]["auc"] > thr), key=lambda k: -reports[k]["auc"])
    pick = max(clean or reports, key=lambda k: reports[k]["auc"])
    r = reports[pick]
    gate = upper_gate(name, r["auc"], thr, cfg.warn_margin,
                      f"The strongest of the {scope} whose control does not explain it, {pick} ({r['n_members']} members vs "
                      f"{r['n_nonmembers']} unseen patients): how well it tells who was in the training set (0.5 = chance).", "privacy")
    gate["ci"] = r["auc_ci"]
    gate["attack"] = pick
    control = r.get("control") or {}
    if control.get("measured"):
        gate["control"] = {"n_control": control["n_control"], "control_vs_nonmembers": control["control_vs_nonmembers"]["auc"],
                           "members_vs_control": control["members_vs_control"]["auc"]}
    if subset != "all" and gate["state"] == "fail" and r["auc_ci"][0] <= 0.5:
        gate["state"] = "warn"
        gate["sentence"] += " Above the threshold, but with so few cases the 95% interval still includes chance."
    if above_confounded and (gate["state"] != "fail" or pick not in clean):
        top = above_confounded[0]
        gate.update(state="inconclusive", value=reports[top]["auc"], ci=reports[top]["auc_ci"], attack=top)
        gate["sentence"] = f"The strongest of the {scope}." + _control_sentence(top, reports[top])
    return gate


def privacy_gates(model: str, privacy: dict, cfg: GatesConfig) -> list[dict]:
    return [
        membership_gate(model, privacy, "all", cfg),
        membership_gate(model, privacy, "rare_condition", cfg),
        dcr_share_gate(model, privacy, cfg),
        copies_gate(model, privacy["copy_detection"], cfg),
    ]


def _share(s: dict) -> str:
    return f"{s['share']:.2f} (95% CI {s['share_ci'][0]:.2f}-{s['share_ci'][1]:.2f})"


def dcr_share_gate(model: str, privacy: dict, cfg: GatesConfig) -> dict:
    """The share of synthetic cases closer to a training patient than to an unseen one: fails above
    ``dcr_share_max``; inconclusive instead when its control explains it (``dcr_share_confounded``)."""
    share = privacy.get("dcr_share")
    gate = upper_gate(f"{model}: share closer to training than to unseen patients", share, cfg.dcr_share_max, cfg.warn_margin,
                      "0.5 means synthetic cases are no closer to training patients than to patients the model never saw.", "privacy")
    if privacy.get("dcr_share_ci") is not None:
        gate["ci"] = privacy["dcr_share_ci"]
    control = privacy.get("dcr_share_control") or {}
    if control.get("measured"):
        gate["control"] = {"n_control": control["n_control"], "control_vs_nonmembers": control["control_vs_nonmembers"]["share"],
                           "members_vs_control": control["members_vs_control"]["share"]}
    if gate["state"] == "fail" and dcr_share_confounded(privacy):
        ci = privacy["dcr_share_ci"]
        gate["state"] = "inconclusive"
        gate["sentence"] = (
            f"{share:.2f} (95% CI {ci[0]:.2f}-{ci[1]:.2f}) of the synthetic cases are closer to a training patient than to an unseen "
            f"one, but about as many are closer to one of {control['n_control']} other patients the generator never saw than to an "
            f"unseen one ({_share(control['control_vs_nonmembers'])}), and the share closer to a training patient than to one of those "
            f"is {_share(control['members_vs_control'])}, reaching chance: the synthetic cases lie where the holdout differs from the "
            "other patients, not near the members. Inconclusive, not a pass: a second holdout (another split seed) or more patients "
            "can settle it.")
    return gate


def copies_gate(model: str, det: dict, cfg: GatesConfig) -> dict:
    """Near-copies; inconclusive when no two real patients give the real-to-real distance the threshold is made of."""
    return near_copy_gate(
        f"{model}: near-copies of training patients", det, cfg,
        "fewer than two real patients to measure how close two different patients come, so no copy threshold; no synthetic "
        "case can be called a copy or not",
        lambda: f"Synthetic cases closer to a training patient, after undoing flips, shifts and intensity changes, than "
                f"{det['distance_factor']:g} x the closest two different real patients are ({det['copies_rare_condition']} of the "
                "rare condition).")


def near_copy_gate(name: str, det: dict, cfg: GatesConfig, no_threshold: str, sentence) -> dict:
    """A copy-detection result (privacy.copy_detection) as a gate: fails above ``copies_max``; inconclusive, with the
    reason, when the detection did not run or had no real-to-real distance to make its threshold of."""
    reason = (det.get("reason") if det.get("measured") is False else
              no_threshold if det["channels"]["combined"]["threshold"] is None else None)  # image and label map together
    if reason is not None:
        return {"gate": name, "area": "privacy", "state": "inconclusive", "value": None, "threshold": float(cfg.copies_max), "rule": "<=",
                "sentence": f"Inconclusive: {reason}."}
    return upper_gate(name, float(det["copies"]), float(cfg.copies_max), 0.0, sentence(), "privacy")


def evaluate_gates(model: str, fidelity: dict, privacy: dict, cfg: GatesConfig) -> list[dict]:
    return privacy_gates(model, privacy, cfg) + [
        upper_gate(f"{model}: realism (distance to real data vs unseen real)", fidelity["nn_distance_ratio"], cfg.nn_distance_ratio_max,
                   cfg.warn_margin, "Median distance of synthetic cases to the real training data, divided by the same for unseen real "
                   "patients (1 = as realistic as real).", "fidelity"),
    ]


def counterfactual_gates(model: str, fidelity: dict, privacy: dict, cfg: GatesConfig) -> list[dict]:
    """Gates of a counterfactual set: near-copies of training patients' structures among the changed structures and the
    seam at the edit region's border. No whole-case realism gate: outside its edit region a counterfactual case is a
    training patient's scan, so its distance to the training data is small whatever was painted (the seam, the look
    of the structure and the condition-fidelity gate judge what was). Each is marked ``internal_only``."""
    det = privacy["structure_copy_detection"]
    copies = near_copy_gate(
        f"{model}: changed structures, near-copies of training patients' structures", det, cfg,
        "no two real patients' structures to measure how close two different ones come",
        lambda: f"Counterfactual structures closer to a training patient's structure, after undoing flips, shifts and intensity "
                f"changes, than {det['distance_factor']:g} x the closest two different real patients' structures "
                f"({det['reference_structures']['train']} training structures).")
    seam = fidelity["counterfactual"]
    med = seam["seam_ratio_to_source"]["median"]
    sentence = ("No counterfactual case." if med is None else
                f"Gradient magnitude on the border of the repainted region over the same voxels of the source case (1 = no seam; "
                f"median {med:.2f}), judged either way: a pasted edge raises it, a smeared surround lowers it.")
    seam_gate = upper_gate(f"{model}: seam at the edit region's border", seam.get("seam_deviation"), cfg.seam_ratio_max, cfg.warn_margin,
                           sentence, "fidelity")
    return [{**copies, "internal_only": True}, {**seam_gate, "internal_only": True}]


def overall(gates: list[dict]) -> str:
    """fail > inconclusive > warn (a gate not measured counts as warn) > pass; no gate: pass."""
    unknown = [g["gate"] for g in gates if g["state"] not in RANK]
    if unknown:
        raise ValueError(f"gate(s) {unknown} have a state outside {list(RANK)}")
    worst = max((RANK[g["state"]] for g in gates), default=0)
    return {0: "pass", 1: "warn", 2: "inconclusive", 3: "fail"}[worst]


VERDICT_RULE = (
    "Counterfactual models are at best fit for internal augmentation: their cases are real patients' scans. "
    "Fit to share: the privacy audit was run for sharing (evaluate.audience: share, white-box attacks included) and every "
    "privacy gate of the model passes, and it is fit for internal augmentation. Fit for internal augmentation: no gate of "
    "the model (privacy, fidelity, utility) fails or is inconclusive, and its utility gate was measured (pass or warn). "
    "Neither: otherwise."
)


def model_gates(model: str, gates: list[dict]) -> list[dict]:
    """The gates of one model: those named ``"<model>: ..."``."""
    return [g for g in gates if str(g.get("gate", "")).startswith(f"{model}: ")]


def model_verdict(model: str, gates: list[dict], audience: str | None) -> dict:
    """One model's verdict (the worst of its gates) and recommendation by :data:`VERDICT_RULE`; ``reasons``
    say what keeps it from the next better recommendation."""
    mine = model_gates(model, gates)
    bad = [f"{g['gate']}: {g['state']}" for g in mine if g["state"] in ("fail", "inconclusive")]
    if not any(g.get("area") == "utility" and g["state"] in ("pass", "warn") for g in mine):
        bad.append(f"{model}: utility not measured")
    if bad:
        return {"model": model, "state": overall(mine), "recommendation": "neither", "reasons": bad}
    if any(g.get("internal_only") for g in mine):
        return {"model": model, "state": overall(mine), "recommendation": "fit for internal augmentation",
                "reasons": [f"{model}: counterfactual cases are real patients' scans with a synthetic structure painted in; "
                            "never fit to share"]}
    reasons = [f"{g['gate']}: {g['state']}" for g in mine if g.get("area") == "privacy" and g["state"] != "pass"]
    if not any(g.get("area") == "privacy" for g in mine):
        reasons.append(f"{model}: no privacy gate")
    if audience != "share":
        reasons.append(f"privacy audited for {audience or 'an unrecorded audience'}, not for sharing (evaluate.audience: share)")
    return {"model": model, "state": overall(mine), "recommendation": "fit for internal augmentation" if reasons else "fit to share",
            "reasons": reasons}
