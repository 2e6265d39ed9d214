"""Sample synthetic image + mask pairs from an exported model and write them, marked synthetic.

* ``load_sampler`` reads ``model.pt`` with ``torch.load(weights_only=True)``: plain tensors and a
  JSON-able config, rebuilt through the model registry.
* Sampling is batched, seeded per case (``seed + case index``), with a temperature on the noise.
* Masks: argmax over background + labels, then connected components smaller than
  ``min_island_voxels`` are removed per label (26-connectivity) -- the documented cleaning rule.
* Every case is written as NIfTI image + mask in physical space (the cohort's spacing, RAS), with
  ``descrip`` starting "SYNTHETIC", optionally as a DICOM series + SEG (``dicom_writer``), and a JSON sidecar (model, checkpoint hash, seed, condition,
  params hash, creation time). ``synthetic_manifest.csv`` uses the real manifest's columns.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from medsynth import __version__
from medsynth.cohort import ManifestRow, generated_row, write_manifest
from medsynth.io.nifti import nifti_on_grid, voxel_array
from medsynth.io.writers import write_json_atomic, write_nifti_atomic
from medsynth.models import registry
from medsynth.models.blocks import Sampler
from medsynth.models.export_format import migrate

SYNTHETIC_DESCRIP = "SYNTHETIC medsynth"


@dataclass
class LoadedSampler:
    kind: str
    net: Sampler
    config: dict
    data_info: dict
    checkpoint_sha256: str

    @property
    def conditions(self) -> list[str]:
        return list(self.data_info["conditions"])


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_sampler(path: Path, device: str = "cpu") -> LoadedSampler:
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no exported model (train first, or pass a model.pt)")
    blob = migrate(torch.load(path, map_location="cpu", weights_only=True), str(path))
    kind = blob["kind"]
    net = registry.get(kind).build_sampler(blob["config"], blob["data_info"])
    net.load_state_dict(blob["state_dict"])
    net.eval().to(device)
    return LoadedSampler(kind, net, blob["config"], blob["data_info"], file_sha256(path))


def clean_mask(mask: np.ndarray, min_island_voxels: int) -> np.ndarray:
    """Remove connected components (26-connectivity) smaller than ``min_island_voxels``, per label."""
    if min_island_voxels <= 1:
        return mask
    out = mask.copy()
    structure = np.ones((3, 3, 3), dtype=bool)
    for label in np.unique(mask):
        if label == 0:
            continue
        comp, n = ndimage.label(mask == label, structure=structure)
        if n == 0:
            continue
        sizes = ndimage.sum(np.ones_like(comp), comp, index=np.arange(1, n + 1))
        for i, size in enumerate(sizes, start=1):
            if size < min_island_voxels:
                out[comp == i] = 0
    return out


def needs_masks(sampler: LoadedSampler) -> bool:
    """True for a mask-conditioned model (cGAN ``conditioning: mask``): it paints images for given masks."""
    return bool(getattr(sampler.net, "needs_mask", False))


def read_mask_folder(folder: Path, roi: tuple[int, ...] | list[int], condition: str | None = None) -> np.ndarray:
    """Label maps (NIfTI) on the model grid, e.g. ``data/synth/cvae/masks`` of another model's synthetic
    cases -> (m, D, H, W) uint8. A file of another shape is an error that names it. With ``condition``
    and a manifest beside the folder (``synthetic_manifest.csv`` or ``manifest.csv``: case_id,
    condition), only that condition's masks are read -- a normal case's mask is not painted as a lesion
    case; without a manifest every mask is used."""
    files = sorted(Path(folder).glob("*.nii*"))
    if not files:
        raise FileNotFoundError(f"{folder}: no NIfTI mask found")
    manifest = next((m for m in (Path(folder).parent / "synthetic_manifest.csv", Path(folder).parent / "manifest.csv") if m.is_file()), None)
    if condition is not None and manifest is not None:
        import csv

        with open(manifest, newline="") as fh:
            of_case = {r["case_id"]: r.get("condition") for r in csv.DictReader(fh) if r.get("case_id")}
        case = lambda f: f.name.removesuffix(".gz").removesuffix(".nii")  # noqa: E731
        files = [f for f in files if of_case.get(case(f)) == condition]
        if not files:
            raise FileNotFoundError(f"{folder}: no mask of condition {condition!r} ({manifest.name} lists "
                                    f"{sorted({c for c in of_case.values() if c})})")
    out = []
    for f in files:
        arr = voxel_array(f)
        if tuple(arr.shape) != tuple(roi):
            raise ValueError(f"{f}: mask shape {arr.shape} is not the model grid {tuple(roi)} (preprocess.roi_size)")
        out.append(np.rint(arr).astype(np.uint8))
    return np.stack(out)


@torch.no_grad()
def sample_arrays(
    sampler: LoadedSampler, condition: str, n: int, seed: int, temperature: float = 1.0, batch_size: int = 8,
    device: str = "cpu", masks: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """n samples of ``condition`` -> (images (n, D, H, W) in [-1, 1], label maps (n, D, H, W), seeds).

    ``masks`` (m, D, H, W) label maps on the model grid: required by a mask-conditioned model, which
    paints one image per mask (masks are used in a seeded random order, repeated when n > m)."""
    if condition not in sampler.conditions:
        raise ValueError(f"condition {condition!r} unknown to this model; it knows {sampler.conditions}")
    given = None
    if needs_masks(sampler):
        if masks is None or len(masks) == 0:
            raise ValueError(f"{sampler.kind} is conditioned on masks (conditioning: mask): give label maps of condition {condition!r} to sample for")
        order = np.random.default_rng(seed).permutation(len(masks))
        given = np.asarray(masks)[order[np.arange(n) % len(masks)]]
    c = sampler.conditions.index(condition)
    imgs, out_masks, seeds = [], [], []
    for start in range(0, n, batch_size):
        ids = list(range(start, min(n, start + batch_size)))
        z = torch.stack([torch.randn(sampler.net.z_dim, generator=torch.Generator().manual_seed(seed + i)) for i in ids]) * temperature
        y = torch.full((len(ids),), c, dtype=torch.long)
        extra = (torch.from_numpy(given[ids][:, None].astype(np.int64)).to(device),) if given is not None else ()
        img, mask = sampler.net.sample(y.to(device), z.to(device), *extra)
        imgs.append(img[:, 0].float().cpu().numpy())
        out_masks.append(mask[:, 0].cpu().numpy().astype(np.uint8))
        seeds += [seed + i for i in ids]
    return np.concatenate(imgs), np.concatenate(out_masks), seeds


def write_synthetic_case(
    out_dir: Path,
    case_id: str,
    image: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    sidecar: dict,
    descrip: str = SYNTHETIC_DESCRIP,
    extra: dict[str, tuple[str, np.ndarray]] | None = None,
) -> None:
    """images/, masks/ and sidecars/ of one case; ``extra``: more label volumes, folder -> (what, array), e.g.
    ``{"regions": ("edit region", region)}``."""
    img = nifti_on_grid(image.astype(np.float32), affine, f"{descrip} {sidecar['model']} {sidecar['condition']}")
    write_nifti_atomic(out_dir / "images" / f"{case_id}.nii.gz", img)
    for folder, (what, vol) in {"masks": ("mask", mask), **(extra or {})}.items():
        write_nifti_atomic(out_dir / folder / f"{case_id}.nii.gz", nifti_on_grid(vol.astype(np.uint8), affine, f"{descrip} {what}"))
    write_json_atomic(out_dir / "sidecars" / f"{case_id}.json", sidecar)


def _preprocess_settings(data_info: dict):
    from medsynth.config import PreprocessConfig

    settings = data_info.get("transform_settings") or {}
    if not settings:
        info = Path("data/preprocess/preprocess.json")
        if info.is_file():
            settings = json.loads(info.read_text()).get("transform_settings", {})
    return PreprocessConfig(**{k: v for k, v in settings.items() if k in PreprocessConfig.model_fields})


def physical_transform(data_info: dict) -> Callable[[np.ndarray], np.ndarray]:
    """Model space -> physical intensities with the settings the model was trained with (stored in its
    export); exports without them fall back to the pipeline's data/preprocess/preprocess.json."""
    from medsynth.data.transforms import from_model_space

    pre = _preprocess_settings(data_info)
    return lambda a: from_model_space(a, pre, data_info["modality"])


def model_space_transform(data_info: dict) -> Callable[[np.ndarray], np.ndarray]:
    """Physical intensities -> model space, the inverse of :func:`physical_transform`."""
    from medsynth.data.transforms import to_model_space

    pre = _preprocess_settings(data_info)
    return lambda a: to_model_space(a, pre, data_info["modality"])


def synthesize(
    model_path: Path | LoadedSampler,
    out_dir: Path,
    per_condition: dict[str, int],
    seed: int,
    temperature: float,
    min_island_voxels: int,
    to_physical: Callable[[np.ndarray], np.ndarray] | None = None,
    params_hash: str = "",
    batch_size: int = 8,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
    formats: tuple[str, ...] = ("nifti",),
    masks: dict[str, np.ndarray] | None = None,
) -> list[ManifestRow]:
    """Sample every condition's count, write cases + sidecars + synthetic_manifest.csv; return the rows.

    ``formats``: "nifti" (always written: evaluation reads it) and optionally "dicom" (a CT/MR series
    per case plus a DICOM SEG, see :mod:`medsynth.synth.dicom_writer`). ``masks``: label maps per
    condition for a mask-conditioned model (see :func:`sample_arrays`)."""
    sampler = model_path if isinstance(model_path, LoadedSampler) else load_sampler(model_path, device)
    to_physical = to_physical or physical_transform(sampler.data_info)
    modality = sampler.data_info["modality"]
    dicom = "dicom" in formats and modality in ("CT", "MR")
    if dicom:
        from medsynth.synth.dicom_writer import write_dicom_case  # highdicom is only needed for DICOM output
    affine = np.asarray(sampler.data_info["reference_affine"], dtype=np.float64)
    spacing = sampler.data_info["spacing"]
    rows: list[ManifestRow] = []
    for ci, (condition, n) in enumerate(sorted(per_condition.items())):
        if n <= 0:
            continue
        base_seed = seed * 100_000 + ci * 10_000
        given = (masks or {}).get(condition)
        imgs, labels, seeds = sample_arrays(sampler, condition, n, base_seed, temperature, batch_size, device, given)
        for i in range(n):
            case_id = f"SYN-{sampler.kind}-{condition}-{i:04d}"
            mask = labels[i] if given is not None else clean_mask(labels[i], min_island_voxels)
            sidecar = {
                "synthetic": True,
                "model": sampler.kind,
                "checkpoint_sha256": sampler.checkpoint_sha256,
                "seed": int(seeds[i]),
                "temperature": temperature,
                "condition": condition,
                "params_hash": params_hash,
                "created": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
                "medsynth_version": __version__,
                "mask_rule": "a given mask (mask-conditioned model)" if given is not None
                else f"argmax over background+labels; components < {min_island_voxels} voxels removed (26-connectivity)",
            }
            physical = to_physical(imgs[i])
            if dicom:
                sidecar["dicom"] = write_dicom_case(out_dir / "dicom", case_id, physical, mask, affine, modality, sidecar)
            elif "dicom" in formats:
                sidecar["dicom"] = f"not written: modality {modality} has no image storage class here (CT and MR only)"
            write_synthetic_case(out_dir, case_id, physical, mask, affine, sidecar)
            rows.append(generated_row(case_id, case_id, condition, modality, imgs[i].shape, spacing, f"synthetic:{sampler.kind}"))
            if progress:
                progress(1)
    write_manifest(out_dir / "synthetic_manifest.csv", rows)
    return rows


def model_space_arrays(out_dir: Path, rows: Sequence[Mapping[str, Any]],
                       to_model: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read written synthetic cases back as model-space arrays (for evaluation)."""
    imgs, masks, conds = [], [], []
    for r in rows:
        imgs.append(to_model(voxel_array(out_dir / "images" / f"{r['case_id']}.nii.gz")))
        masks.append(voxel_array(out_dir / "masks" / f"{r['case_id']}.nii.gz"))
        conds.append(r["condition"])
    return np.stack(imgs), np.stack(masks), conds

