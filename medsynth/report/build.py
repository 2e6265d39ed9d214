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
            out[key] = " x ".join(f"{a:g}" if a == b else f"{a:g}-{b:g}" for a, b in zip(lo, hi))
    return out


def training_curves(live_dir: Path, model: str) -> str | None:
    """The model's DVCLive scalars (plots/metrics/*.tsv) as one embedded PNG, or None without logs."""
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
    for ax, (name, (x, y)) in zip(axes.ravel(), sorted(series.items())):
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
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


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
) -> Path:
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
            "curves": training_curves(Path(live_root or "dvclive") / m, m),
            "fidelity": fidelity.get(m, {}), "privacy": privacy.get(m, {}), "utility": utility.get(m, {}),
        })
    deid_gate = _deid_gate(ingest)
    all_gates = list(gates.get("gates", [])) + [deid_gate]
    states = {g["state"] for g in all_gates}
    verdict = "fail" if "fail" in states else ("warn" if states & {"warn", "not measured"} else "pass")
    env = Environment(loader=PackageLoader("medsynth.report", "templates"), autoescape=True)  # the template is report.html.j2: select_autoescape(["html"]) left it unescaped
    env.filters["fmt"] = fmt
    html = env.get_template("report.html.j2").render(
        title=title, verdict=verdict, gates=all_gates, ingest=ingest, pre=pre, cards=cards, ranges=cohort_ranges(Path(ingest_dir) / "manifest.csv"),
        params="\n".join(f"{k}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(redact_params(params).items())), versions=_versions(),
        commit=_git_commit(repo_root or Path.cwd()), lock=_lock_hashes((repo_root or Path.cwd()) / "dvc.lock"),
        created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(), version=__version__,
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
