"""Preprocessing throughput, and one training epoch read from medsynth's cache versus an uncached MONAI
``Dataset`` running the same transforms (the baseline), in one run.

* preprocess: ``preprocess_cohort`` over an ingested cohort (MONAI chain: load, RAS, resample, intensity,
  foreground crop, pad/crop) -> volumes/s.
* cached epoch: what training does — ``load_bank`` reads the cached float16 tensors once through a MONAI
  ``CacheDataset`` into one bank, then every batch of the epoch is gathered from it.
* uncached epoch: ``monai.data.Dataset`` with the same transform chain over the same training cases,
  through a ``DataLoader`` (``--workers`` processes), batch by batch.

By default the demo cohort is generated and ingested into a temporary folder; ``--ingest DIR`` uses an
existing ``data/ingest``. Run::

    python benchmarks/bench_preprocess.py --patients 40 --out bench-preprocess.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Clock, write_results  # noqa: E402


def make_ingest(tmp: Path, patients: int) -> Path:
    from medsynth.config import DemoConfig, Params
    from medsynth.data.demo import generate_demo_cohort
    from medsynth.io.deid import DEMO_KEY, DeidKey
    from medsynth.io.ingest import ingest

    p = Params()
    generate_demo_cohort(tmp / "raw", DemoConfig(patients=patients, bad_files=False), seed=1)
    ingest(tmp / "raw", tmp / "ingest", p.data, p.deid, DeidKey(DEMO_KEY, "demo", True), labels_path=tmp / "raw" / "labels.csv")
    return tmp / "ingest"


def main(argv=None) -> int:
    from monai.data import DataLoader, Dataset

    from medsynth.cohort import load_bank, read_manifest
    from medsynth.config import Params
    from medsynth.data.preprocess import preprocess_cohort
    from medsynth.data.transforms import build_transforms

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ingest", type=Path, default=None, help="an existing ingest folder (default: demo cohort)")
    ap.add_argument("--patients", type=int, default=40)
    ap.add_argument("--roi", type=int, default=32)
    ap.add_argument("--spacing", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    cfg = Params().preprocess.model_copy(update={"roi_size": (args.roi,) * 3, "spacing": (args.spacing,) * 3})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ingest_dir = args.ingest or make_ingest(tmp, args.patients)
        cases = read_manifest(ingest_dir / "manifest.csv")
        with Clock() as t_pre:
            info = preprocess_cohort(ingest_dir, tmp / "pre", cfg, 1, "lesion")
        n_cases = len(cases)
        train = [r for r in read_manifest(tmp / "pre" / "manifest.csv") if r["split"] == "train"]
        # cached: read the bank once, then gather every batch of one epoch from it
        with Clock() as t_cached:
            x, y, _ = load_bank(tmp / "pre", ("train",))
            for start in range(0, len(x), args.batch):
                batch = x[start : start + args.batch].float()
                assert torch.isfinite(batch).all()
        # baseline: an uncached MONAI Dataset with the same transforms
        items = []
        for r in train:
            item = {"image": str(ingest_dir / "images" / f"{r['case_id']}.nii.gz")}
            item["mask"] = str(ingest_dir / "masks" / f"{r['case_id']}.nii.gz")
            items.append(item)
        chain = build_transforms(cfg, info["modality"], with_mask=True)
        loader = DataLoader(Dataset(items, transform=chain), batch_size=args.batch, num_workers=args.workers)
        with Clock() as t_uncached:
            for b in loader:
                assert torch.isfinite(b["image"]).all()
    rows = [{
        "cases": n_cases, "train_cases": len(train), "roi": args.roi, "spacing_mm": args.spacing, "workers": args.workers,
        "preprocess_s": round(t_pre.seconds, 2), "preprocess_volumes_per_s": round(n_cases / t_pre.seconds, 2),
        "epoch_cached_s": round(t_cached.seconds, 3), "epoch_uncached_monai_dataset_s": round(t_uncached.seconds, 3),
        "uncached_over_cached": round(t_uncached.seconds / t_cached.seconds, 1),
    }]
    write_results(args.out, "preprocess", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
