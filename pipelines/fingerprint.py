"""DVC stage `fingerprint` (runs on every `dvc repro`): what the ingest stage would read -- the raw
export folder, the labels CSV, the site key -- as counts and digests in data/fingerprints/input.json,
so that ingest reruns when they change and only then (DVC tracks the paths in params.yaml, not what
lies behind them); likewise encoder_weights.json (evaluate depends on it) and perceptual_network.json
(the train stages do) there, for weights files named by path. No file name, folder name
or input path is written; see medsynth/io/fingerprint.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from medsynth.config import ConfigError, load_params
from medsynth.io.deid import DeidKeyError, load_key
from medsynth.io.fingerprint import InputError, input_fingerprint, weights_fingerprint
from medsynth.io.writers import write_json_atomic

FOLDER = Path("data/fingerprints")
OUT = FOLDER / "input.json"  # ingest depends on it


def main() -> int:
    console = Console(stderr=True)
    try:
        params = load_params("params.yaml")
        key = None if params.data.is_npz else load_key(params.deid, demo=params.data.is_demo)
        # a throw-away key (deid.ephemeral_key) is new on every run: tracking it would re-ingest and retrain every time
        fp = input_fingerprint(params.data, key.secret if key is not None and key.stable else None)
    except (ConfigError, DeidKeyError, InputError) as exc:
        console.print(f"[red]fingerprint failed:[/red] {escape(str(exc))}")
        return 1
    # weights named by path: evaluate depends on the first, the train stages on the second
    write_json_atomic(FOLDER / "encoder_weights.json", weights_fingerprint({"evaluate.encoder.weights": params.evaluate.encoder.weights}))
    write_json_atomic(FOLDER / "perceptual_network.json", weights_fingerprint(
        {f"train.{m}.perceptual_network": getattr(params.train.section(m), "perceptual_network", None) for m in params.train.models}))
    before = OUT.read_text() if OUT.is_file() else None
    write_json_atomic(OUT, fp)
    src = fp["input"]
    what = "the demo (generated from params)" if src["kind"] == "demo" else f"{src['files']} file(s), {src['bytes']:,} bytes"
    console.print(f"fingerprint: input {what}; " + ("unchanged" if before == OUT.read_text() else "changed: ingest will run"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
