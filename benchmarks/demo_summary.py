"""The user guide's demo figures, from a finished ``dvc repro``: the verdict, every gate's state and
sentence, and the rare condition's labels per model (synthetic vs real presence and median volume).

    python benchmarks/demo_summary.py            # reads reports/eval/ of this project
    python benchmarks/demo_summary.py --project /tmp/run

Prints Markdown for docs/user-guide.md ("The demo's verdict") so the numbers there come from a run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rare_labels(fidelity: dict, model: str) -> list[str]:
    cond = fidelity.get(model, {}).get("conditional")
    if not cond:
        return []
    rare = cond["rare_condition"]
    out = []
    for c in cond["conditions"]:
        for lab in cond["per_condition"][c]["labels"].values():
            p, v = lab["presence"], lab["volume"]
            s_med, r_med = v["synthetic"]["median"], v["real"]["median"]
            vol = f", median {s_med:.0f} vs {r_med:.0f} voxels" if s_med is not None and r_med is not None else ""
            out.append(f"{c}{' (rare)' if c == rare else ''} {lab['name']}: in {p['synthetic']}/{p['synthetic_n']} synthetic "
                       f"vs {p['real']}/{p['real_n']} real cases{vol}")
    return out


def _value(g: dict) -> str:
    v, t = g.get("value"), g.get("threshold")
    if v is None:
        return ""
    fmt = lambda x: f"{x:.3g}" if isinstance(x, (int, float)) else str(x)  # noqa: E731
    return f" (value {fmt(v)}, allowed {g.get('rule', '')} {fmt(t) if not isinstance(t, list) else '-'.join(map(fmt, t))})"


def summary(project: Path) -> str:
    ev = project / "reports" / "eval"
    gates = json.loads((ev / "gates.json").read_text())
    fidelity = json.loads((ev / "fidelity.json").read_text())
    models = sorted({g["gate"].split(":")[0] for g in gates["gates"] if ":" in g["gate"]})
    pre = project / "data" / "preprocess" / "preprocess.json"
    counts = json.loads(pre.read_text())["counts"] if pre.is_file() else {}
    split = "; ".join(f"{k} " + ", ".join(f"{n} {c}" for c, n in v.items()) for k, v in counts.items())
    lines = [f"Verdict: **{gates['overall'].upper()}**" + (f" (cases per split: {split})." if split else "."), ""]
    for m in models:
        lines.append(f"- **{m}**: " + "; ".join(rare_labels(fidelity, m)) + ".")
        for g in gates["gates"]:
            if g["gate"].startswith(f"{m}:"):
                lines.append(f"  - {g['gate'].split(':', 1)[1].strip()}: **{g['state']}**{_value(g)}. {g['sentence']}")
    rest = [g for g in gates["gates"] if ":" not in g["gate"]]
    lines += [f"- {g['gate']}: **{g['state']}**{_value(g)}. {g['sentence']}" for g in rest]
    utility = json.loads((ev / "utility.json").read_text()) if (ev / "utility.json").is_file() else {}
    lines += [f"- {m} utility, rare class: {u['sentence']}" for m, u in utility.items() if u.get("sentence")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", default=str(ROOT), help="a project folder after dvc repro (default: this one)")
    args = ap.parse_args(argv)
    print(summary(Path(args.project)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
