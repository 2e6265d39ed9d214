"""Does a generator draw each condition's structures? Per condition and mask label: how often, how large.

Trains one model on an already preprocessed cohort (``data/preprocess`` of a project) with setting
overrides, samples ``--samples`` cases per condition and prints, beside the real train and test cases of
each condition, the share of cases holding each label and its median volume (voxels, after the same
island cleaning synthesis applies). One JSON line per run is appended to ``--out``::

    python benchmarks/rare_structure.py --project . --model cvae --set '{"steps": 300, "mask_dice_weight": 0}' \\
        --tag cvae-ce-only --out benchmarks/results/rare-structure-cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def label_stats(masks: np.ndarray, n_labels: int) -> dict:
    flat = masks.reshape(len(masks), -1)
    out = {}
    for k in range(1, n_labels + 1):
        vol = (flat == k).sum(1)
        out[str(k)] = {"present": round(float((vol > 0).mean()), 4), "median_voxels": float(np.median(vol)) if len(vol) else 0.0}
    return out


def main(argv: list[str] | None = None) -> int:
    from medsynth.cohort import load_bank, read_preprocess_info
    from medsynth.config import load_params
    from medsynth.models.training import train_model
    from medsynth.synth.sampler import clean_mask, load_sampler, sample_arrays

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=Path("."), help="a project folder with params.yaml and data/preprocess")
    ap.add_argument("--model", default="cgan")
    ap.add_argument("--set", default="{}", help="JSON object of train.<model> settings to override")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--tag", default=None)
    ap.add_argument("--work", type=Path, default=None, help="model folder (kept: a later run with more steps resumes)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    over = json.loads(args.set)
    params = load_params(args.project / "params.yaml")
    cfg = {**params.train.section(args.model).model_dump(), **over}
    pre = args.project / "data" / "preprocess"
    work = args.work or Path(tempfile.mkdtemp(prefix="medsynth-rare-"))
    t0 = time.time()
    train_model(args.model, cfg, params.train, pre, work, params.seed, progress=False)
    info = read_preprocess_info(pre)
    n_lab = int(info["n_mask_labels"])
    res = {"tag": args.tag or args.model, "model": args.model, "settings": over, "seconds": round(time.time() - t0, 1),
           "min_island_voxels": params.synthesize.min_island_voxels, "conditions": {}}
    banks = {s: load_bank(pre, (s,), info) for s in ("train", "test")}
    for split, (x, y, _) in banks.items():
        for ci, c in enumerate(info["conditions"]):
            res["conditions"].setdefault(c, {})[f"real_{split}"] = label_stats(x[y == ci, 1].numpy().astype(int), n_lab)
    sampler = load_sampler(work / "model.pt")
    for ci, c in enumerate(info["conditions"]):
        x, y, _ = banks["train"]
        masks = x[y == ci, 1].numpy() if cfg.get("conditioning") == "mask" else None
        _, msk, _ = sample_arrays(sampler, c, args.samples, params.seed, masks=masks)
        msk = np.stack([clean_mask(m, params.synthesize.min_island_voxels) for m in msk])
        res["conditions"][c]["synthetic"] = label_stats(msk, n_lab)
    line = json.dumps(res)
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as fh:
            fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
