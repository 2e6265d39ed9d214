"""DVC stage `fingerprint` (runs on every `dvc repro`): what the ingest stage would read -- the raw
export folder, the labels CSV, the site key -- as counts and digests in data/input_fingerprint.json,
so that ingest reruns when they change and only then (DVC tracks the paths in params.yaml, not what
lies behind them). No file name, folder name or input path is written; see medsynth/io/fingerprint.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from medsynth.config import ConfigError, load_params
from medsynth.io.deid import DeidKeyError, load_key
from medsynth.io.fingerprint import InputError, input_fingerprint
from medsynth.io.writers import write_json_atomic

OUT = Path("data/input_fingerprint.json")


def main() -> int:
    console = Console(stderr=True)
    try:
        params = load_params("params.yaml")
        secret = None if params.data.is_npz else load_key(params.deid, demo=params.data.is_demo).secret
        fp = input_fingerprint(params.data, secret)
    except (ConfigError, DeidKeyError, InputError) as exc:
        console.print(f"[red]fingerprint failed:[/red] {exc}")
        return 1
    before = OUT.read_text() if OUT.is_file() else None
    write_json_atomic(OUT, fp)
    src = fp["input"]
    what = "the demo (generated from params)" if src["kind"] == "demo" else f"{src['files']} file(s), {src['bytes']:,} bytes"
    console.print(f"fingerprint: input {what}; " + ("unchanged" if before == OUT.read_text() else "changed: ingest will run"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
