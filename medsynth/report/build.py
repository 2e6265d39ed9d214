"""Build the self-contained HTML synthesis report from the pipeline's outputs.

Reads only files earlier stages wrote (ingest.json, preprocess.json, train.json, fidelity.json,
privacy.json, gates.json, figures/*.png, dvc.lock when present). Images are embedded as base64; no
script, font or stylesheet is fetched. Nothing from the raw input (paths, identifiers, dates)
reaches it: the inputs it reads hold pseudonymous ids and counts only.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader

from medsynth import __version__
from medsynth.eval.gates import VERDICT_RULE, model_verdict, overall
from medsynth.io.writers import write_text_atomic

PACKAGES = ["medsynth", "torch", "monai", "lightning", "nibabel", "pydicom", "numpy", "dvc", "dvclive"]


def _json(path: Path) -> dict:
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {}


def _img(path: Path) -> str | None:
    if not Path(path).is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "-"
    out["python"] = platform.python_version()
    return out


def _git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip() or "-"
    except Exception:
        return "-"


def _lock_hashes(lock_path: Path) -> list[dict]:
    """Output hashes from dvc.lock (plain YAML; no dvc import)."""
    import yaml

    if not Path(lock_path).is_file():
        return []
    lock = yaml.safe_load(Path(lock_path).read_text()) or {}
    rows = []
    for stage, body in sorted((lock.get("stages") or {}).items()):
        for out in body.get("outs", []) or []:
            rows.append({"stage": stage, "path": out.get("path"), "md5": (out.get("md5") or "")[:12]})
    return rows


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


WITHHELD = "<withheld: a local path>"
LOCAL_PATH_PARAMS = (("data", "input"), ("data", "labels"), ("deid", "key_file"))


def redact_params(params: dict) -> dict:
    """Params as the report shows them: local paths (input folder, labels CSV, key file) withheld, since
    a hospital's folder or file names can carry identifiers; the demo input is shown as is."""
    out = json.loads(json.dumps(params))
    for section, key in LOCAL_PATH_PARAMS:
        value = out.get(section, {}).get(key)
        if value and value != "demo":
            out[section][key] = WITHHELD
    return out


def cohort_ranges(manifest: Path) -> dict:
    """Voxel size and image size ranges of the ingested cases (from the pseudonymous manifest)."""
    import csv

    if not Path(manifest).is_file():
        return {}
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for key in ("spacing", "shape"):
        vals = []
        for r in rows:
            try:
                vals.append([float(v) for v in r.get(key, "").split("x")])
            except ValueError:
                continue
        vals = [v for v in vals if len(v) == 3]
        if vals:
            arr = np.array(vals)
            lo, hi = arr.min(0), arr.max(0)
            out[key] = " x ".join(f"{a:g}" if a == b else f"{a:g}-{b:g}" for a, b in zip(lo, hi, strict=False))
    return out


def training_curves(live_dir: Path, model: str) -> str | None:
    """The model's training curves as an embedded PNG (data URI), or None without logs."""
    png = training_curves_png(live_dir, model)
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode()


def training_curves_png(live_dir: Path, model: str) -> bytes | None:
    """The model's logged scalars (``live_dir``/plots/metrics/*.tsv, as DVCLive writes them) as one PNG,
    or None without logs."""
    import csv
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted(p for p in (Path(live_dir) / "plots" / "metrics").glob("*.tsv") if p.stem not in ("epoch", "step"))
    series = {}
    for f in files:
        with open(f, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if len(rows) >= 2:
            series[f.stem] = ([float(r["step"]) for r in rows], [float(r[f.stem]) for r in rows])
    if not series:
        return None
    n = len(series)
    cols = min(4, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3 * cols, 2.2 * ((n + cols - 1) // cols)), squeeze=False)
    for ax, (name, (x, y)) in zip(axes.ravel(), sorted(series.items()), strict=False):
        ax.plot(x, y, lw=1)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(f"{model}: training curves (DVCLive; x = optimizer step)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _share(k, n, ci) -> str:
    if not n:
        return "-"
    return f"{k} of {n} ({k / n:.0%}; {ci[0]:.0%}–{ci[1]:.0%})" if ci else f"{k} of {n}"


def _median(v: dict) -> str:
    if v.get("median") is None:
        return "-"
    ci = v.get("median_ci")
    return f"{v['median']:.0f}" + (f" ({ci[0]:.0f}–{ci[1]:.0f})" if ci else "")


def _vs(value, baseline, digits: int = 2) -> str:
    return f"{fmt(value, digits)} (real {fmt(baseline, digits)})" if value is not None else "-"


def conditional_rows(cond: dict) -> dict:
    """fidelity.json's ``conditional`` block as table rows, the rare condition first (its order there)."""
    if not cond:
        return {}
    defining = {d["label"]: d["defined_by"] for d in cond.get("defining_labels", []) if d.get("defined_by")}
    rows = []
    for c in cond["conditions"]:
        pc = cond["per_condition"][c]
        for key, lab in pc["labels"].items():
            p, v, loc = lab["presence"], lab["volume"], lab["centroid"]
            rows.append({
                "condition": c, "rare": c == cond["rare_condition"], "label": lab["name"],
                "defining": defining.get(key) if c == cond["rare_condition"] else None,
                "real_presence": _share(p["real"], p["real_n"], p["real_ci"]),
                "syn_presence": _share(p["synthetic"], p["synthetic_n"], p["synthetic_ci"]),
                "real_median": _median(v["real"]), "syn_median": _median(v["synthetic"]),
                "ratio": _vs(v["median_ratio"], v["median_ratio_real_baseline"]),
                "wasserstein": _vs(v["wasserstein"], v["wasserstein_real_baseline"]),
                "centroid": _vs(loc["distance_relative"], loc["distance_relative_real_baseline"]),
            })
    clf = cond.get("classifier", {})
    classifier = []
    if clf.get("measured"):
        for c in cond["conditions"]:
            r, s = clf["real_heldout"], clf["synthetic"]
            classifier.append({"condition": c, "real": _recall(r, c), "synthetic": _recall(s, c)})
        classifier.append({"condition": "balanced accuracy", "real": fmt(clf["real_heldout"]["balanced_accuracy"], 2),
                           "synthetic": fmt(clf["synthetic"]["balanced_accuracy"], 2)})
    return {"rare": cond["rare_condition"], "rows": rows, "classifier": classifier, "classifier_reason": clf.get("reason"),
            "classifier_steps": clf.get("steps")}


def _recall(block: dict, c: str) -> str:
    n, r, ci = block["n"].get(c, 0), block["recall"].get(c), block["recall_ci"].get(c)
    if not n:
        return "-"
    return f"{r:.0%} of {n}" + (f" ({ci[0]:.0%}–{ci[1]:.0%})" if ci else "")


def _with_ci(value, ci, signed: bool = False) -> str:
    if value is None:
        return "-"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f.format(value) + (f" ({f.format(ci[0])} to {f.format(ci[1])})" if ci else "")


def utility_rows(util: dict) -> dict:
    """utility.json's block of one model as table rows: per arm the score overall and for the rare
    condition with 95% CIs, and each arm's paired difference to real and to real+augmentation."""
    if not util.get("measured"):
        return {}
    key = util["score"]
    arms = []
    for name, a in util["arms"].items():
        row = {"arm": name, "train_cases": a.get("train_cases"), "overall": _with_ci(a[key], a.get(f"{key}_ci95")),
               "val": fmt(a.get(f"val_{key}", a.get("val_neg_cross_entropy"))), "best_steps": ", ".join(str(s) for s in a.get("best_step_per_seed", [])),
               "per_seed": ", ".join(fmt(v) for v in a.get(f"{key}_per_seed", []))}
        if key == "dice":
            row["rare"] = _with_ci(a.get("rare_dice"), a.get("rare_dice_ci95"))
            row["labels"] = ", ".join(f"{k}: {fmt(v)}" for k, v in a.get("per_label_dice", {}).items())
        arms.append(row)
    diffs = [{"pair": pair, "overall": _with_ci(d["overall"]["mean"], d["overall"]["ci95"], True),
              "rare": _with_ci(d["rare"]["mean"], d["rare"]["ci95"], True) if d.get("rare") else "-"}
             for pair, d in util.get("differences", {}).items()]
    return {"arms": arms, "differences": diffs, "segmentation": key == "dice"}


def build_report(
    ingest_dir: Path,
    preprocess_dir: Path,
    models_root: Path,
    eval_dir: Path,
    out_path: Path,
    models: list[str],
    title: str,
    params: dict,
    repo_root: Path | None = None,
    live_root: Path | None = None,
    params_changed: bool | None = None,
) -> Path:
    """The report of ``models`` at ``out_path``. ``params_changed``: whether the parameters the results
    were made with differ from those of the git commit the report names (True: say so in the
    provenance; None: not known)."""
    ingest = _json(Path(ingest_dir) / "ingest.json")
    pre = _json(Path(preprocess_dir) / "preprocess.json")
    fidelity = _json(Path(eval_dir) / "fidelity.json")
    privacy = _json(Path(eval_dir) / "privacy.json")
    gates = _json(Path(eval_dir) / "gates.json")
    utility = _json(Path(eval_dir) / "utility.json") if (Path(eval_dir) / "utility.json").is_file() else {}
    figs = Path(eval_dir) / "figures"
    cards = []
    for m in models:
        t = _json(Path(models_root) / m / "train.json")
        cards.append({
            "name": m, "train": t,
            "slices": _img(figs / f"{m}_slices.png"), "dcr": _img(figs / f"{m}_dcr.png"), "roc": _img(figs / f"{m}_membership_roc.png"),
            "pairs": _img(figs / f"{m}_closest_pairs.png"), "dists": _img(figs / f"{m}_distributions.png"),
            "cf_pairs": _img(figs / f"{m}_counterfactual_pairs.png"),
            "overlay": _img(figs / f"{m}_conditional_overlay.png"), "label_volumes": _img(figs / f"{m}_label_volumes.png"),
            "conditional": conditional_rows(fidelity.get(m, {}).get("conditional", {})),
            "condition_gate": next((g for g in gates.get("gates", []) if g.get("gate") == f"{m}: condition fidelity"), None),
            "utility_rows": utility_rows(utility.get(m, {})),
            "utility_gate": next((g for g in gates.get("gates", []) if g.get("area") == "utility" and g.get("gate", "").startswith(f"{m}: ")), None),
            "curves": training_curves(Path(live_root or "dvclive") / m, m),
            "fidelity": fidelity.get(m, {}), "privacy": privacy.get(m, {}), "utility": utility.get(m, {}),
        })
    deid_gate = _deid_gate(ingest)
    all_gates = list(gates.get("gates", [])) + [deid_gate]
    verdict = overall(all_gates)  # the evaluate stage's ranking: fail > inconclusive > warn (or not measured) > pass
    verdicts = [model_verdict(m, all_gates, privacy.get(m, {}).get("audience")) for m in models]
    # autoescape=True, not select_autoescape(["html"]): the template's name ends in .j2, which that would leave unescaped
    env = Environment(loader=PackageLoader("medsynth.report", "templates"), autoescape=True)
    env.filters["fmt"] = fmt
    html = env.get_template("report.html.j2").render(
        title=title, verdict=verdict, verdicts=verdicts, verdict_rule=VERDICT_RULE, gates=all_gates, ingest=ingest, pre=pre, cards=cards,
        ranges=cohort_ranges(Path(ingest_dir) / "manifest.csv"),
        params="\n".join(f"{k}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(redact_params(params).items())), versions=_versions(),
        commit=_git_commit(repo_root or Path.cwd()), params_changed=params_changed, lock=_lock_hashes((repo_root or Path.cwd()) / "dvc.lock"),
        created=_dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(), version=__version__,
    )
    write_text_atomic(out_path, html)
    return Path(out_path)


def _deid_gate(ingest: dict) -> dict:
    d = ingest.get("deid", {})
    src = d.get("key_source", "none")
    if src == "none":
        state, sentence = "pass", "The source data hold no identifiers (MedMNIST); nothing to de-identify."
    elif not d.get("pseudonyms_stable", True):
        state, sentence = "warn", "A throw-away key was used: pseudonyms are not stable across runs."
    elif src == "demo":
        state, sentence = "warn", "The public demo key was used (fake patients only): never use it for real data."
    else:
        state, sentence = "pass", "Every DICOM file was de-identified with the site key before any other step read it."
    return {"gate": "de-identification", "area": "de-identification", "state": state, "value": d.get("dicom_files_deidentified", 0),
            "threshold": "site key", "rule": "", "sentence": sentence}
