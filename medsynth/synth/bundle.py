"""Share a trained generator as a MONAI bundle.

Layout (MONAI Bundle Specification)::

    <name>/configs/metadata.json      intended use, limits, versions, network_data_format
    <name>/configs/inference.json     `python -m monai.bundle run` samples synthetic cases
    <name>/configs/medsynth_model.json the architecture (model kind, config, data info)
    <name>/models/model.pt            state_dict of the sampler network (tensors only)
    <name>/docs/README.md, docs/license.txt

The bundle holds the generator only: no training data, no discriminator or encoder (a VAE-GAN with
the AutoencoderKL backbone keeps its encoder inside the same network), no patient identifier. Running it
needs medsynth installed (the network classes live there) and nothing from the network.

A bundle's config is code: ``monai.bundle run`` executes its ``$`` expressions. ``medsynth synth
--bundle`` never evaluates it: :func:`check_bundle` refuses configs that differ from what
:func:`export_bundle` writes, then :func:`load_bundle` reads ``medsynth_model.json`` and the weights
(``weights_only``).

``verify_metadata`` validates against a JSON schema shipped with medsynth
(``bundle_metadata_schema.json``), written from the specification's mandatory keys, because MONAI's
published schema is a download and medsynth never downloads at run time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from medsynth import __version__
from medsynth.io.writers import save_torch_atomic, write_json_atomic
from medsynth.models import registry
from medsynth.synth.sampler import LoadedSampler, file_sha256, load_sampler, synthesize

SCHEMA_PATH = Path(__file__).with_name("bundle_metadata_schema.json")
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"

INTENDED_USE = (
    "Research only. Generates synthetic 3D image + mask pairs of the training cohort's conditions, to augment "
    "segmentation or classification training sets or to share instead of patient scans. Not for diagnosis, "
    "treatment or any clinical decision."
)
LIMITS = [
    "Synthetic cases can reproduce features of training patients; no formal privacy guarantee (no differential "
    "privacy). Share only with the evaluation report that measured leakage for this exact checkpoint.",
    "Trained on one cohort, one modality and one spacing; outputs are only as representative as that cohort.",
    "Masks are generated, not annotated: check them before training a clinical model on them.",
]


def export_bundle(model_path: Path, out_dir: Path, name: str | None = None, report: dict | None = None) -> Path:
    """Write a MONAI bundle for the exported model ``model_path`` (model.pt or its folder) into ``out_dir``."""
    sampler = load_sampler(model_path)
    out_dir = Path(out_dir)
    info = sampler.data_info
    roi = [int(s) for s in info["roi_size"]]
    conditions = list(info["conditions"])
    model_pt = out_dir / "models" / "model.pt"
    save_torch_atomic(model_pt, {k: v.detach().cpu() for k, v in sampler.net.state_dict().items()})
    write_json_atomic(out_dir / "configs" / "medsynth_model.json", {
        "kind": sampler.kind, "config": sampler.config, "data_info": info, "source_checkpoint_sha256": sampler.checkpoint_sha256,
    })
    metadata = {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by medsynth {__version__} from a {sampler.kind} checkpoint"},
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"medsynth": __version__, "nibabel": _version("nibabel")},
        "optional_packages_version": {"highdicom": _version("highdicom")},
        "name": name or f"medsynth {sampler.kind} synthetic {info['modality']} generator",
        "task": f"Synthesis of 3D {info['modality']} image + mask pairs conditioned on {', '.join(conditions)}",
        "description": (f"medsynth {sampler.kind} generator ({sum(p.numel() for p in sampler.net.parameters())} parameters). "
                        f"Samples a {'x'.join(map(str, roi))} volume at spacing {info['spacing']} mm and its label map "
                        "for a chosen condition."),
        "authors": "medsynth users (the site that trained this checkpoint)",
        "copyright": "Copyright (c) the training site; synthetic outputs carry the same sharing terms as this bundle",
        "intended_use": INTENDED_USE,
        "limitations": LIMITS,
        "data_source": "the site's de-identified training cohort (not included in the bundle)",
        "data_type": "nifti",
        "synthetic_data": True,
        "conditions": conditions,
        "evaluation": report or {},
        "network_data_format": {
            "inputs": {
                "latent": {
                    "type": "tuples", "format": "latent", "modality": "n/a", "num_channels": 1,
                    "spatial_shape": [int(sampler.net.z_dim)], "dtype": "float32", "value_range": [],
                    "is_patch_data": False, "channel_def": {"0": "standard normal noise times temperature"},
                },
                "condition": {
                    "type": "tuples", "format": "classes", "modality": "n/a", "num_channels": 1, "spatial_shape": [1],
                    "dtype": "int64", "value_range": [0, len(conditions) - 1], "is_patch_data": False,
                    "channel_def": {str(i): c for i, c in enumerate(conditions)},
                },
            },
            "outputs": {
                "image": {
                    "type": "image", "format": "hounsfield" if info["modality"] == "CT" else "magnitude", "modality": info["modality"],
                    "num_channels": 1, "spatial_shape": roi, "dtype": "float32", "value_range": [-1, 1], "is_patch_data": False,
                    "channel_def": {"0": "synthetic image, model space [-1, 1] (written to NIfTI in physical units)"},
                },
                "mask": {
                    "type": "image", "format": "segmentation", "modality": "n/a", "num_channels": 1, "spatial_shape": roi,
                    "dtype": "uint8", "value_range": [0, int(info["n_mask_labels"])], "is_patch_data": False,
                    "channel_def": {"0": "label map: 0 background, 1.. labels"},
                },
            },
        },
    }
    write_json_atomic(out_dir / "configs" / "metadata.json", metadata)
    write_json_atomic(out_dir / "configs" / "inference.json", inference_config(str(out_dir.resolve()), conditions))
    (out_dir / "docs").mkdir(parents=True, exist_ok=True)
    (out_dir / "docs" / "README.md").write_text(_readme(metadata))
    (out_dir / "docs" / "license.txt").write_text("Set by the training site before sharing.\n")
    return out_dir


def inference_config(bundle_root: str, conditions: list[str]) -> dict:
    """``configs/inference.json`` as export writes it for a bundle at ``bundle_root``."""
    return {
        "imports": ["$import torch", "$from medsynth.synth import bundle as medsynth_bundle"],
        "bundle_root": bundle_root,
        "output_dir": "$@bundle_root + '/samples'",
        "condition": conditions[-1],
        "num_samples": 1,
        "seed": 0,
        "temperature": 1.0,
        "device": "$'cuda' if torch.cuda.is_available() else 'cpu'",
        "sampler": "$medsynth_bundle.load_bundle(@bundle_root, @device)",
        "run": ["$medsynth_bundle.sample_bundle(@sampler, @output_dir, @condition, @num_samples, @seed, @temperature, @device)"],
    }


class BundleError(ValueError):
    """A bundle's configs are not what ``export_bundle`` writes; the message names the file and what differs."""


def _read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (not a bundle written by medsynth export-bundle)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None


def _monai_syntax(obj, where: str = "") -> str | None:
    """The first place in a JSON value that MONAI's config parser would evaluate, reference or instantiate
    (a string starting with $, @ or %, a _target_ key), or None."""
    if isinstance(obj, str):
        return (where or "/") if obj.startswith(("$", "@", "%")) else None
    if isinstance(obj, dict):
        if "_target_" in obj:
            return f"{where}/_target_"
        return next((w for k, v in obj.items() if (w := _monai_syntax(v, f"{where}/{k}"))), None)
    if isinstance(obj, list):
        return next((w for i, v in enumerate(obj) if (w := _monai_syntax(v, f"{where}/{i}"))), None)
    return None


def check_bundle(bundle_root: str | Path) -> None:
    """Refuse a bundle whose configs are not exactly what :func:`export_bundle` writes for its own
    ``medsynth_model.json``: ``inference.json`` equal to :func:`inference_config` (``bundle_root`` may
    be any plain path), nothing evaluable in ``metadata.json``, no other file in ``configs/`` (MONAI
    reads e.g. ``logging.conf``). Nothing of the bundle is evaluated here."""
    configs = Path(bundle_root) / "configs"
    names = ("inference.json", "medsynth_model.json", "metadata.json")
    inference, spec, metadata = (_read_json(configs / n) for n in names)
    extra = sorted(p.name for p in configs.iterdir() if p.name not in names)
    if extra:
        raise BundleError(f"{configs}: holds {extra}, which medsynth export-bundle does not write; refused")
    try:
        conditions = [str(c) for c in spec["data_info"]["conditions"]]
    except (KeyError, TypeError):
        conditions = []
    if not conditions:
        raise BundleError(f"{configs / 'medsynth_model.json'}: no data_info.conditions (not written by medsynth export-bundle)")
    root = inference.get("bundle_root") if isinstance(inference, dict) else None
    expected = inference_config(root if isinstance(root, str) and not _monai_syntax(root) else "<a plain path>", conditions)
    if inference != expected:
        found = inference if isinstance(inference, dict) else {}
        keys = sorted(k for k in expected.keys() | found.keys() if found.get(k) != expected.get(k))
        raise BundleError(f"{configs / 'inference.json'}: differs from what medsynth export-bundle writes for this model at "
                          f"{keys}. A bundle's config is code (monai.bundle run executes it), so this bundle is refused and "
                          "nothing in it was run; ask the sender for an unmodified export")
    if where := _monai_syntax(metadata):
        raise BundleError(f"{configs / 'metadata.json'}: {where} holds a MONAI expression, reference or component, which "
                          "medsynth export-bundle never writes; refused")


def load_bundle(bundle_root: str | Path, device: str = "cpu") -> LoadedSampler:
    """The bundle's generator, ready for :func:`sample_bundle` (or ``medsynth.synth.sampler``)."""
    root = Path(bundle_root)
    spec = json.loads((root / "configs" / "medsynth_model.json").read_text())
    net = registry.get(spec["kind"]).build_sampler(spec["config"], spec["data_info"])
    net.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval().to(device)
    return LoadedSampler(spec["kind"], net, spec["config"], spec["data_info"], file_sha256(root / "models" / "model.pt"))


def sample_bundle(sampler: LoadedSampler, output_dir: str | Path, condition: str, num_samples: int = 1, seed: int = 0,
                  temperature: float = 1.0, device: str = "cpu") -> list[dict]:
    """Sample ``num_samples`` cases of ``condition`` into ``output_dir`` (NIfTI + sidecars + manifest)."""
    if condition not in sampler.conditions:
        raise ValueError(f"condition {condition!r} unknown to this bundle; it knows {sampler.conditions}")
    return synthesize(sampler, Path(output_dir), {condition: int(num_samples)}, int(seed), float(temperature), 4, device=device)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _readme(meta: dict) -> str:
    limits = "\n".join(f"- {x}" for x in meta["limitations"])
    return f"""# {meta['name']}

{meta['description']}

## Intended use
{meta['intended_use']}

## Limits
{limits}

## Sample
```
medsynth synth --bundle . samples -c {meta['conditions'][-1]} -n 4
```
reads the weights and `configs/medsynth_model.json` and never runs the bundle's config; it refuses a
bundle whose configs differ from what medsynth export-bundle writes. Writes NIfTI image + mask pairs
marked SYNTHETIC, JSON sidecars and synthetic_manifest.csv to `samples/`. Needs medsynth
{meta['required_packages_version']['medsynth']} installed; nothing is downloaded.

`python -m monai.bundle run --config_file configs/inference.json --condition {meta['conditions'][-1]} --num_samples 4`
does the same through MONAI, but a bundle's config is code: MONAI executes its `$` expressions, so run
it only on a bundle you exported yourself or got unchanged from someone you trust.
"""
