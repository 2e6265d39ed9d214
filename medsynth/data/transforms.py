"""MONAI transform chains built from :class:`PreprocessConfig`.

Image and mask go through one dictionary chain, so every spatial step (orientation, resampling,
foreground crop, pad/crop) is applied to both with the same parameters: images are resampled
linearly, masks with nearest neighbour. Intensities end in [-1, 1] (the generators' tanh range).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from medsynth.config import PreprocessConfig

BACKGROUND = -1.0


def transform_settings(cfg: PreprocessConfig, modality: str) -> dict:
    """Everything that changes the cached tensors; its hash keys the cache."""
    return {"version": 2, "modality": modality, **json.loads(cfg.model_dump_json())}


def transform_hash(cfg: PreprocessConfig, modality: str) -> str:
    blob = json.dumps(transform_settings(cfg, modality), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def intensity_transform(cfg: PreprocessConfig, modality: str):
    """CT: HU window -> [-1, 1]; MR: robust percentiles (or z-score) -> [-1, 1]; SEG/binary: [0,1] -> [-1,1]."""
    if modality == "CT":
        lo, hi = cfg.ct_window
        return ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=-1.0, b_max=1.0, clip=True)
    if modality == "MR":
        lo, hi = cfg.mr_percentiles
        if cfg.mr_normalisation == "percentile":
            return ScaleIntensityRangePercentilesd("image", lower=lo, upper=hi, b_min=-1.0, b_max=1.0, clip=True)
        return _ZScoreToUnit()
    return ScaleIntensityRanged("image", a_min=0.0, a_max=1.0, b_min=-1.0, b_max=1.0, clip=True)


class _ZScoreToUnit:
    """z-score inside the foreground (non-zero voxels), mapped to [-1, 1] by clipping at +-3 SD."""

    def __call__(self, d):
        img = d["image"]
        fg = img[img > 0]
        if fg.numel() > 10:
            z = (img - fg.mean()) / (fg.std() + 1e-6)
            d["image"] = (z / 3.0).clamp(-1, 1)
        return d


def foreground(x) -> np.ndarray:
    return x > BACKGROUND + 0.02


def build_transforms(cfg: PreprocessConfig, modality: str, with_mask: bool = True) -> Compose:
    keys = ["image", "mask"] if with_mask else ["image"]
    modes = ["bilinear", "nearest"] if with_mask else ["bilinear"]
    chain = [
        LoadImaged(keys, image_only=False),
        EnsureChannelFirstd(keys),
        Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys, pixdim=cfg.spacing, mode=modes, padding_mode=["border", "zeros"][: len(keys)]),
        intensity_transform(cfg, modality),
    ]
    if cfg.crop_foreground:
        chain.append(CropForegroundd(keys, source_key="image", select_fn=foreground, margin=2, allow_smaller=True))
    chain.append(ResizeWithPadOrCropd(["image"], spatial_size=cfg.roi_size, value=BACKGROUND))
    if with_mask:
        chain.append(ResizeWithPadOrCropd(["mask"], spatial_size=cfg.roi_size, value=0))
    return Compose(chain)


def to_model_space(hu_or_raw: np.ndarray, cfg: PreprocessConfig, modality: str) -> np.ndarray:
    """Physical intensities -> model space [-1, 1] (CT/SEG only; MR scaling is per volume)."""
    if modality == "CT":
        lo, hi = cfg.ct_window
        return np.clip((hu_or_raw - lo) / (hi - lo) * 2 - 1, -1, 1)
    if modality == "MR":
        v = hu_or_raw.astype(np.float64)
        lo, hi = np.percentile(v, [1, 99])
        return np.clip((v - lo) / max(hi - lo, 1e-6) * 2 - 1, -1, 1)
    return np.clip(hu_or_raw * 2 - 1, -1, 1)


def from_model_space(x: np.ndarray, cfg: PreprocessConfig, modality: str) -> np.ndarray:
    """Model space [-1, 1] -> physical intensities (CT: HU inside the window; MR: arbitrary units 0..1000)."""
    x = np.asarray(x, dtype=np.float32)
    if modality == "CT":
        lo, hi = cfg.ct_window
        return (x + 1) / 2 * (hi - lo) + lo
    if modality == "MR":
        return (x + 1) / 2 * 1000.0
    return (x + 1) / 2
