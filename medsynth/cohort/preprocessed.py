"""The preprocess stage's outputs: ``preprocess.json`` (:class:`PreprocessInfo`) and the model-space
tensors ``tensors/<case_id>.npy`` of every case, read per split as one :class:`TensorBank`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import numpy as np
import torch

from medsynth.cohort.manifest import ManifestRow, read_manifest


class StaleCacheError(RuntimeError):
    pass


class PreprocessInfo(TypedDict, total=False):
    cases: int
    patients: int
    modality: str
    conditions: list[str]  # sorted; a condition's index is its class label
    rare_condition: str
    counts: dict[str, dict[str, int]]  # split -> condition -> cases
    by_condition: dict[str, int]
    n_mask_labels: int
    has_masks: bool
    roi_size: list[int]
    spacing: list[float]
    reference_affine: list[list[float]]  # RAS affine synthetic cases are written with
    foreground_fraction_mean: float
    transform_hash: str  # the cache key: the transform settings hashed
    transform_settings: dict[str, Any]
    label_voxels: dict[str, Any]
    cohort_extent_mm: Any
    spacing_fitting_roi: list[float] | None
    warnings: list[str]


def read_preprocess_info(preprocess_dir: Path, expected_hash: str | None = None) -> PreprocessInfo:
    """``preprocess.json``; with ``expected_hash``, a StaleCacheError when the tensors were made with other settings."""
    info_path = Path(preprocess_dir) / "preprocess.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path}: not found (run the preprocess stage first)")
    info = json.loads(info_path.read_text())
    if expected_hash is not None and info["transform_hash"] != expected_hash:
        raise StaleCacheError(
            f"{info_path}: cached tensors were made with transform settings {info['transform_hash']}, "
            f"current settings hash to {expected_hash}; rerun the preprocess stage (dvc repro does this)"
        )
    return info


class TensorBank(NamedTuple):
    """Cases of some splits: x float16 (N, 2, D, H, W) (image in [-1, 1], label map), y long (N,) condition
    index, and their manifest rows in the same order."""

    x: torch.Tensor
    y: torch.Tensor
    rows: list[ManifestRow]

    @classmethod
    def load(cls, preprocess_dir: Path, splits: tuple[str, ...] = ("train",), info: PreprocessInfo | None = None) -> TensorBank:
        from monai.data import CacheDataset

        preprocess_dir = Path(preprocess_dir)
        info = info or read_preprocess_info(preprocess_dir)
        rows = [r for r in read_manifest(preprocess_dir / "manifest.csv") if r["split"] in splits]
        if not rows:
            raise ValueError(f"{preprocess_dir / 'manifest.csv'}: no case in splits {list(splits)}")
        cond_index = {c: i for i, c in enumerate(info["conditions"])}
        items = [{"x": str(preprocess_dir / "tensors" / f"{r['case_id']}.npy"), "y": cond_index[r["condition"]]} for r in rows]

        def load(d):
            return {"x": torch.from_numpy(np.load(d["x"])), "y": d["y"]}

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = CacheDataset(items, transform=load, progress=False, num_workers=0)
            data = [ds[i] for i in range(len(ds))]
        return cls(torch.stack([d["x"] for d in data]), torch.tensor([d["y"] for d in data], dtype=torch.long), rows)


def load_bank(preprocess_dir: Path, splits: tuple[str, ...] = ("train",), info: PreprocessInfo | None = None) -> TensorBank:
    """The cases of ``splits`` as a :class:`TensorBank` (x, y, rows)."""
    return TensorBank.load(preprocess_dir, splits, info)


def data_info_from(info: PreprocessInfo) -> dict:
    """What a model keeps of the preprocessing record in its export (enough to write its samples back)."""
    return {
        "conditions": info["conditions"],
        "n_mask_labels": max(1, int(info["n_mask_labels"])),
        "roi_size": info["roi_size"],
        "spacing": info["spacing"],
        "modality": info["modality"],
        "reference_affine": info["reference_affine"],
        "transform_hash": info["transform_hash"],
        "transform_settings": info["transform_settings"],
        "rare_condition": info.get("rare_condition"),
    }
