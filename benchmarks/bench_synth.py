"""Synthesis speed: volumes/s sampled and written (NIfTI, DICOM series + SEG), and the share of time
spent writing, at the given sizes on the given device.

The generator is medsynth's cGAN generator at the GPU width (base 32 channels, z 128) with random
weights — speed does not depend on training. Sampling is batched; writing runs the real writers of
``medsynth synth`` (gzip NIfTI, one DICOM file per slice + a highdicom SEG). Run::

    python benchmarks/bench_synth.py --sizes 64 128 --n 32 --out bench-synth.json          # GPU
    python benchmarks/bench_synth.py --sizes 32 --n 4 --device cpu                         # CPU smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Clock, write_results  # noqa: E402


def make_sampler(size: int, device: str):
    from medsynth.config import CGANConfig, Params
    from medsynth.data.transforms import transform_settings
    from medsynth.models.cgan import CGANModule
    from medsynth.synth.sampler import LoadedSampler

    cfg = CGANConfig(base_channels=32, z_dim=128).model_dump()
    spacing = 1.5
    info = {
        "conditions": ["normal", "lesion"], "n_mask_labels": 1, "roi_size": [size] * 3, "spacing": [spacing] * 3, "modality": "CT",
        "reference_affine": (np.diag([spacing] * 3 + [1.0])).tolist(), "transform_settings": transform_settings(Params().preprocess, "CT"),
    }
    torch.manual_seed(0)
    net = CGANModule.build_sampler(cfg, info).eval().to(device)
    return LoadedSampler("cgan", net, cfg, info, "0" * 64)


def run(size: int, n: int, batch: int, device: str, workdir: Path) -> dict:
    from medsynth.synth.dicom_writer import write_dicom_case
    from medsynth.synth.sampler import clean_mask, physical_transform, sample_arrays, write_synthetic_case

    sampler = make_sampler(size, device)
    sample_arrays(sampler, "lesion", min(n, batch), seed=99, batch_size=batch, device=device)  # warm-up (cuDNN, allocator)
    with Clock(device) as t_sample:
        imgs, masks, seeds = sample_arrays(sampler, "lesion", n, seed=0, batch_size=batch, device=device)
    to_physical = physical_transform(sampler.data_info)
    affine = np.asarray(sampler.data_info["reference_affine"])
    with Clock() as t_clean:
        cleaned = [clean_mask(m, 4) for m in masks]
        physical = [to_physical(im) for im in imgs]
    side = {"model": "cgan", "condition": "lesion", "checkpoint_sha256": "0" * 64, "created": "2026-01-01T00:00:00+00:00"}
    write_dicom_case(workdir / "warm", "warm", physical[0], cleaned[0], affine, "CT", dict(side, seed=-1))  # imports, caches
    with Clock() as t_nifti:
        for i in range(n):
            write_synthetic_case(workdir / "nifti", f"SYN-{i:04d}", physical[i], cleaned[i], affine, dict(side, seed=seeds[i]))
    with Clock() as t_dicom:
        for i in range(n):
            write_dicom_case(workdir / "dicom", f"SYN-{i:04d}", physical[i], cleaned[i], affine, "CT", dict(side, seed=seeds[i]))
    total_nifti = t_sample.seconds + t_clean.seconds + t_nifti.seconds
    total_all = total_nifti + t_dicom.seconds
    return {
        "size": size, "n": n, "batch": batch, "device": device,
        "sample_s": round(t_sample.seconds, 3), "clean_s": round(t_clean.seconds, 3),
        "write_nifti_s": round(t_nifti.seconds, 3), "write_dicom_seg_s": round(t_dicom.seconds, 3),
        "sampled_volumes_per_s": round(n / t_sample.seconds, 2),
        "nifti_end_to_end_volumes_per_s": round(n / total_nifti, 2),
        "nifti_dicom_end_to_end_volumes_per_s": round(n / total_all, 2),
        "writing_share_nifti_only": round(t_nifti.seconds / total_nifti, 3),
        "writing_share_nifti_dicom": round((t_nifti.seconds + t_dicom.seconds) / total_all, 3),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--n", type=int, default=32, help="volumes per size")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            rows.append(run(size, args.n, args.batch, args.device, Path(tmp) / str(size)))
            print(rows[-1], flush=True)
    write_results(args.out, "synth", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
