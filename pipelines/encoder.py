"""DVC stage `encoder`: train the self-supervised 3D feature encoder on the real train split only.

Writes models/encoder/encoder.pt (tensors + config, loadable with weights_only) and encoder.json
(loss curve summary). The evaluate stage computes FID / KID / PRDC / alpha-beta in its feature space.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from medsynth.cohort import load_bank, read_preprocess_info
from medsynth.config import ConfigError, load_params
from medsynth.eval.encoder import save_encoder, train_encoder
from medsynth.io.writers import write_json_atomic


def main() -> int:
    console = Console(stderr=True)
    try:
        params = load_params("params.yaml")
    except ConfigError as exc:
        console.print(f"[red]encoder failed:[/red] {escape(str(exc))}")
        return 1
    cfg = params.evaluate.encoder
    info = read_preprocess_info(Path("data/preprocess"))
    x, _, rows = load_bank(Path("data/preprocess"), ("train",), info)
    t0 = time.perf_counter()
    with console.status(f"training the feature encoder on {len(x)} real train cases"):
        enc, losses = train_encoder(x, cfg.steps, cfg.batch_size, cfg.dim, cfg.width, params.seed)
    out = Path("models/encoder")
    meta = {"train_cases": len(rows), "steps": cfg.steps, "transform_hash": info["transform_hash"], "dim": cfg.dim}
    save_encoder(enc, out / "encoder.pt", meta)
    k = max(1, len(losses) // 10)
    write_json_atomic(out / "encoder.json", {**meta, "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k,
                                             "wall_seconds": round(time.perf_counter() - t0, 2),
                                             "used_by_evaluate": cfg.weights is None})
    console.print(f"encoder: {cfg.steps} steps on {len(rows)} cases, NT-Xent {losses[0]:.3f} -> {losses[-1]:.3f}; wrote {out}/encoder.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
