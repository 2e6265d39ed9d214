"""DVC stage `fingerprint` (runs on every `dvc repro`): what the ingest stage would read, as digests DVC
can compare between runs.

``params.yaml`` names the raw input (a PACS export folder, a labels CSV, a site key file) by path, and
DVC tracks a path, not what lies behind it: new files in the export folder, an edited labels CSV or
another site key would leave ``dvc repro`` saying "didn't change" and the cohort stale. This stage is
``always_changed`` and writes ``data/fingerprints/input.json``; the ingest stage depends on it, so it
reruns exactly when the input changed. Likewise ``encoder_weights.json`` (evaluate depends on it) and
``perceptual_network.json`` (the train stages do), for weights files params.yaml names by path.

What it holds, and what it must not: counts, total bytes and SHA-256 digests over the sorted
(relative path, size, modification time) of every input file -- never a file name, a folder name or
the input path, which in a PACS export carry patient names and record numbers -- the SHA-256 of the
labels CSV's bytes, and a key id (an HMAC of a fixed text under the site key: which key, not the key).
File contents are not read (a stat per file: a 100,000-file export takes about a second); a file
rewritten with the same size and time is not noticed (``dvc repro -f ingest`` then).

What it prints compares the new input.json with the one the last ingest ran on, as dvc.lock records
it (DVC deletes this stage's outputs before running it, so the previous file is gone by then).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape

from medsynth.config import ConfigError, DataConfig, load_params
from medsynth.io.deid import DeidKeyError, load_key
from medsynth.io.writers import write_json_atomic

FOLDER = Path("data/fingerprints")
OUT = FOLDER / "input.json"  # ingest depends on it
LOCK = Path("dvc.lock")


class InputError(RuntimeError):
    """The raw input named in params.yaml is not there, or cannot be read."""


def _tree_digest(root: Path) -> dict[str, Any]:
    """Files, bytes and one digest over (relative path, size, mtime) of every file under ``root``."""
    h = hashlib.sha256()
    files = size = 0
    entries = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in filenames:
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except OSError:  # a dangling link: ingest quarantines what it cannot read
                continue
            entries.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    for rel, n, mtime in sorted(entries):
        h.update(f"{rel}\0{n}\0{mtime}\n".encode())
        files += 1
        size += n
    return {"files": files, "bytes": size, "sha256": h.hexdigest()}


def _stat_digest(path: Path) -> dict[str, Any]:
    """One file's size and a digest of (size, modification time): what DVC cannot see behind a path."""
    st = path.stat()
    return {"bytes": st.st_size, "sha256": hashlib.sha256(f"{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()}


def weights_fingerprint(paths: dict[str, str | None]) -> dict[str, Any]:
    """Size and modification time of each weights file a stage loads from a path in params.yaml
    (``evaluate.encoder.weights``, a VAE-GAN's ``perceptual_network``): swapping the file at the same
    path reruns the stages that use it. Keys are the params keys; no path is written. A path that does
    not exist (yet: the encoder stage's own encoder.pt on a first run) is recorded as missing."""
    out: dict[str, Any] = {}
    for key, value in sorted(paths.items()):
        if not value:
            continue
        p = Path(value).expanduser()
        out[key] = _stat_digest(p) if p.is_file() else {"missing": True}
    return out


def key_id(secret: bytes) -> str:
    """Which site key is in use, without revealing it: the first 16 hex digits of HMAC-SHA256(key, text)."""
    return hmac.new(secret, b"medsynth site key id", hashlib.sha256).hexdigest()[:16]


def input_fingerprint(data: DataConfig, key_secret: bytes | None = None) -> dict[str, Any]:
    """The fingerprint of ``data.input`` (folder, .npz file or the generated demo), ``data.labels`` and the
    site key. Raises :class:`InputError` naming the missing path."""
    if data.is_demo:
        src: dict[str, Any] = {"kind": "demo"}  # generated from params.yaml's data.demo, which DVC tracks
    else:
        path = Path(data.input).expanduser()
        if data.is_npz:
            if not path.is_file():
                raise InputError(f"data.input: {path}: no such .npz file")
            src = {"kind": "npz", "files": 1, **_stat_digest(path)}
        else:
            if not path.is_dir():
                raise InputError(f"data.input: {path}: no such folder (the raw export to ingest)")
            src = {"kind": "folder", **_tree_digest(path)}
    out: dict[str, Any] = {"version": 1, "input": src}
    if data.labels:
        labels = Path(data.labels).expanduser()
        if not labels.is_file():
            raise InputError(f"data.labels: {labels}: no such file")
        try:
            out["labels"] = {"bytes": labels.stat().st_size, "sha256": hashlib.sha256(labels.read_bytes()).hexdigest()}
        except OSError as exc:
            raise InputError(f"data.labels: {labels}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if key_secret is not None:
        out["key_id"] = key_id(key_secret)
    return out


def ingested_digest(lock: Path = LOCK, dep: Path = OUT) -> str | None:
    """The MD5 dvc.lock records for ``dep`` among the ingest stage's deps: the input.json the last ingest
    ran on. None without a dvc.lock or an ingest entry (nothing ingested yet)."""
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError):
        return None
    for d in (stages.get("ingest") or {}).get("deps") or []:
        if d.get("path") == dep.as_posix():
            return d.get("md5")
    return None


def input_status(written: Path = OUT, lock: Path = LOCK) -> str:
    """What the new input.json means for ingest, said only as far as it is known: unchanged or changed
    since the last ingest (dvc.lock), or not ingested yet."""
    recorded = ingested_digest(lock, written)
    if recorded is None:
        return "no earlier ingest recorded in dvc.lock"
    if hashlib.md5(written.read_bytes()).hexdigest() == recorded:
        return "unchanged since the last ingest"
    return "changed since the last ingest (dvc.lock): ingest is out of date"


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
    write_json_atomic(OUT, fp)
    src = fp["input"]
    what = "the demo (generated from params)" if src["kind"] == "demo" else f"{src['files']} file(s), {src['bytes']:,} bytes"
    console.print(f"fingerprint: input {what}; {input_status()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
