"""Which disguised copies does the privacy audit find? Real hippocampus MR cases (MSD Task04 at 2 mm, the
cohort and split of tests/eval/test_privacy_audit.py) returned by a "generator" under a disguise, at several
strengths, through the evaluate stage's audit and privacy gates with the default params.

Two settings: ``all`` -- 60 of the 142 training patients returned, every one disguised (the test's
matrix); ``hidden`` -- 10 disguised training patients among 23 real patients the audit never saw, where
only the copy test can see them. Two controls: the unseen patients themselves (must pass), and
structureless cases placed where the holdout differs from every other patient (a group difference,
not a leak: the membership gate must say inconclusive, never fail on membership nor pass). Per row: copies found of those planted (and by the image alone, as
if the label map had been disguised too), unseen patients wrongly flagged, the privacy gates that fail and
those that are inconclusive (a membership attack or the DCR share that its control explains), the strongest
membership attack's AUC (all cases, rare condition) and the DCR share with its control (closer to a control
patient than to an unseen one; closer to training than to a control patient). Disguises past
the issue's list (rotation, zoom, smoothing) show where the copy test stops. Prints a markdown table and writes ``--out``::

    OMP_NUM_THREADS=1 python benchmarks/privacy_disguises.py --out benchmarks/results/privacy-disguises-cpu.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, print_markdown, results_parser  # noqa: E402
from tests.eval.test_privacy_audit import CFG, RARE, audit, disguise, load_cohort, odd_generator  # noqa: E402

MATRIX = [("noise", s) for s in (0.02, 0.05, 0.1)] + [("flip", a) for a in (0, 1, 2)] + [("shift", s) for s in (1, 2, 4)] + \
    [("scale", s) for s in (0.8, 1.25, 1.5)] + [("blend", a) for a in (0.9, 0.7, 0.5)] + [("label_swap", 0)] + \
    [("rotate", d) for d in (3, 6, 10)] + [("zoom", z) for z in (1.05, 1.1)] + [("smooth", s) for s in (0.5, 1.0)]


def disguised(kind: str, strength: float, src: np.ndarray, partner: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The test's disguises, and three it does not plant: in-plane rotation (degrees), zoom about the
    centre, Gaussian smoothing of the image (sigma in voxels)."""
    from scipy import ndimage

    if kind not in ("rotate", "zoom", "smooth"):
        return disguise(kind, strength, src, partner, rng)
    out = src.copy()
    for i, case in enumerate(src):
        if kind == "rotate":
            out[i, 0] = ndimage.rotate(case[0], strength, axes=(0, 1), reshape=False, order=1, mode="nearest")
            out[i, 1] = ndimage.rotate(case[1], strength, axes=(0, 1), reshape=False, order=0)
        elif kind == "zoom":
            off = (np.array(case[0].shape) - 1) / 2 * (1 - 1 / strength)
            out[i, 0] = ndimage.affine_transform(case[0], np.eye(3) / strength, offset=off, order=1, mode="nearest")
            out[i, 1] = ndimage.affine_transform(case[1], np.eye(3) / strength, offset=off, order=0)
        else:
            out[i, 0] = ndimage.gaussian_filter(case[0], strength)
    return out.astype(np.float32)


def row(cohort: dict, setting: str, kind: str, strength, syn: np.ndarray, syn_y: np.ndarray, planted: np.ndarray) -> dict:
    t = time.perf_counter()
    priv, gates = audit(cohort, syn, syn_y)
    flagged = {p["synthetic"] for p in priv["copy_detection"]["copy_pairs"]}
    image = priv["copy_detection"]["channels"]["image"]
    by_image = np.array(image["synthetic_to_train"]) < image["threshold"]
    st = priv["strongest"]
    return {
        "setting": setting, "disguise": kind, "strength": strength,
        "synthetic_cases": len(syn), "planted_copies": int(planted.sum()),
        "copies_found": int(sum(1 for i in flagged if planted[i])),
        "unseen_flagged_as_copies": int(sum(1 for i in flagged if not planted[i])),
        "copies_found_by_image_alone": int((by_image & planted).sum()),
        "detection_rate": round(sum(1 for i in flagged if planted[i]) / planted.sum(), 3) if planted.sum() else None,
        "privacy_gates_failed": sorted(g for g, s in gates.items() if s == "fail"),
        "privacy_gates_warned": sorted(g for g, s in gates.items() if s == "warn"),
        "privacy_gates_inconclusive": sorted(g for g, s in gates.items() if s == "inconclusive"),
        "membership_auc_strongest_all": round(st["all"]["auc"], 3),
        "membership_auc_strongest_rare_condition": round(st["rare_condition"]["auc"], 3) if st["rare_condition"].get("measured") else None,
        "dcr_share": round(priv["dcr_share"], 3),
        "dcr_share_ci": [round(v, 3) for v in priv["dcr_share_ci"]],
        "dcr_share_control": _rounded(priv["dcr_share_control"]),
        "seconds": round(time.perf_counter() - t, 2),
    }


def _rounded(node):
    """privacy.json's ``dcr_share_control`` with its shares to 3 decimals."""
    if isinstance(node, dict):
        return {k: _rounded(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_rounded(v) for v in node]
    return round(node, 3) if isinstance(node, float) else node


def _dcr(r: dict) -> str:
    """The DCR share, and its control's two shares where the row has them."""
    c = r.get("dcr_share_control") or {}
    if not c.get("measured"):
        return f"{r['dcr_share']:.2f}"
    return f"{r['dcr_share']:.2f} ({c['control_vs_nonmembers']['share']:.2f}; {c['members_vs_control']['share']:.2f})"


def markdown(result: dict) -> str:
    """The docs/benchmarks.md table of a results file."""
    rows, out = result["rows"], []
    short = {"membership inference AUC, all cases": "MIA all", "membership inference AUC, rare condition": "MIA rare",
             "share closer to training than to unseen patients": "DCR share", "near-copies of training patients": "copies"}
    out.append("| setting | disguise | strength | copies found / planted | by the image alone | unseen flagged | gates failed | "
               "gates inconclusive | MIA AUC all / rare | DCR share (control: control vs unseen; members vs control) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        failed = ", ".join(short[g] for g in r["privacy_gates_failed"]) or "none"
        inconclusive = ", ".join(short[g] for g in r.get("privacy_gates_inconclusive", [])) or "none"
        rare_auc = "-" if r["membership_auc_strongest_rare_condition"] is None else f"{r['membership_auc_strongest_rare_condition']:.2f}"
        strength = "" if r["strength"] is None else r["strength"]
        out.append(f"| {r['setting']} | {r['disguise']} | {strength} | {r['copies_found']} / {r['planted_copies']} | "
                   f"{r['copies_found_by_image_alone']} | {r['unseen_flagged_as_copies']} | {failed} | {inconclusive} | "
                   f"{r['membership_auc_strongest_all']:.2f} / {rare_auc} | {_dcr(r)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = results_parser(__doc__)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/privacy-disguises-cpu.json")
    args = ap.parse_args(argv)
    if print_markdown(args, markdown):
        return 0
    t0 = time.perf_counter()
    cohort = load_cohort()
    x, y = cohort["train"]
    ux, uy = cohort["unseen"]
    rows = [row(cohort, "control", "unseen real patients", None, ux, uy, np.zeros(len(ux), bool)),
            row(cohort, "group difference", "structureless cases away from the holdout", 6.0, odd_generator(cohort, 6.0), np.zeros(32, int),
                np.zeros(32, bool))]
    others = np.concatenate([ux, cohort["control"][0]])  # patients no "generator" trained on: label maps to swap in
    for kind, strength in MATRIX:
        rng = np.random.default_rng(1)
        partner = others[:60] if kind == "label_swap" else x[60:120]
        syn = disguised(kind, strength, x[:60], partner, rng)
        rows.append(row(cohort, "all", kind, strength, syn, y[:60], np.ones(60, bool)))
        rows.append(row(cohort, "hidden", kind, strength, np.concatenate([syn[:10], ux[10:]]), np.r_[y[:10], uy[10:]],
                        np.r_[np.ones(10, bool), np.zeros(len(ux) - 10, bool)]))
    rare = np.flatnonzero(y == RARE)
    syn = np.concatenate([disguised("noise", 0.02, x[rare], x[rare], np.random.default_rng(2)), ux[uy != RARE]])
    rows.append(row(cohort, "rare only", "noise", 0.02, syn, np.r_[y[rare], uy[uy != RARE]],
                    np.r_[np.ones(len(rare), bool), np.zeros((uy != RARE).sum(), bool)]))
    result = {
        "benchmark": "privacy audit against disguised copies",
        "machine": machine(),
        "cohort": {"name": "MSD Task04 hippocampus, 2 mm, 24x32x24",
                   **{f"{s}_cases": int(len(cohort[s][1])) for s in ("train", "holdout", "unseen", "control")},
                   "rare_condition": "small", "train_rare_cases": int((y == RARE).sum())},
        "params": {"audience": CFG.audience, "copy_distance_factor": CFG.copy_distance_factor, "mia_auc_max": CFG.gates.mia_auc_max,
                   "dcr_share_max": CFG.gates.dcr_share_max, "copies_max": CFG.gates.copies_max, "bootstrap": CFG.bootstrap},
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    print(f"wrote {args.out} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
