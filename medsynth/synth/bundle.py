"""Share a trained generator as a MONAI bundle.

Layout (MONAI Bundle Specification)::

    <name>/configs/metadata.json      intended use, limits, versions, network_data_format, contents,
                                      evaluation (this model's gates, tied to the checkpoint's SHA-256)
    <name>/configs/inference.json     `python -m monai.bundle run` samples synthetic cases
    <name>/configs/medsynth_model.json the architecture (model kind, config, data info)
    <name>/models/model.pt            state_dict of the sampler network (tensors only)
    <name>/docs/README.md, docs/license.txt

The bundle holds the generator only: no training data, no discriminator or encoder (a VAE-GAN with
the AutoencoderKL backbone keeps its encoder inside the same network), no patient identifier; a VAE's
fitted latent prior (per-condition statistics of training codes) is part of the weights and stated in
``contents``. No file names a path: ``bundle_root`` is found at run time (:func:`running_bundle_root`),
so a copied bundle runs anywhere. Running it needs medsynth installed (the network classes live there)
and nothing from the network.

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
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from medsynth import __version__
from medsynth.cohort import ManifestRow
from medsynth.eval.gates import VERDICT_RULE, model_gates, model_verdict, overall
from medsynth.io.writers import save_torch_atomic, write_json_atomic
from medsynth.models import registry
from medsynth.models.blocks import Sampler
from medsynth.models.export_format import EXPORT_FORMAT, migrate
from medsynth.synth.counterfactual import INTERNAL_USE as COUNTERFACTUAL_USE
from medsynth.synth.counterfactual import is_counterfactual
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


class ExportRefused(ValueError):
    """The model failed a privacy gate (and export was not forced), or the gates name no such model."""


def export_bundle(model_path: Path, out_dir: Path, name: str | None = None, gates: dict | None = None,
                  model_name: str | None = None, force: bool = False, audience: str | None = None) -> Path:
    """Write a MONAI bundle for the exported model ``model_path`` (model.pt or its folder) into ``out_dir``.

    ``gates`` is the evaluate stage's gates.json; the gates of ``model_name`` (default: the model's folder
    name) are embedded with the SHA-256 of the model file. A failed privacy gate refuses the export
    (:class:`ExportRefused`) unless ``force``; a forced bundle says so in its metadata and README.
    ``audience`` (privacy.json's, share or internal) decides whether "fit to share" can be recommended."""
    model_path = Path(model_path)
    sampler = load_sampler(model_path)
    counterfactual = is_counterfactual(sampler)
    if counterfactual and not force:
        raise ExportRefused(f"{model_path}: a counterfactual model changes real patients' scans, and its cases are for internal "
                            "augmentation only; a bundle is for sharing a generator, so export is refused. Inside the site use "
                            "`medsynth synth MODEL OUT -c CONDITION --from FOLDER`; --force writes a bundle marked internal-only")
    model_name = model_name or (model_path.parent.name if model_path.suffix == ".pt" else model_path.name)
    evaluation = _evaluation(model_name, sampler.checkpoint_sha256, gates, force, audience)
    out_dir = Path(out_dir)
    info = sampler.data_info
    roi = [int(s) for s in info["roi_size"]]
    conditions = list(info["conditions"])
    model_pt = out_dir / "models" / "model.pt"
    save_torch_atomic(model_pt, {k: v.detach().cpu() for k, v in sampler.net.state_dict().items()})
    write_json_atomic(out_dir / "configs" / "medsynth_model.json", {
        "format": EXPORT_FORMAT, "kind": sampler.kind, "config": sampler.config, "data_info": info, "source_checkpoint_sha256": sampler.checkpoint_sha256,
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
                        + (f"Changes a real {'x'.join(map(str, roi))} case (image + label map) at spacing {info['spacing']} mm to have "
                           "the rare condition (medsynth synth --from)." if counterfactual else
                           f"Samples a {'x'.join(map(str, roi))} volume at spacing {info['spacing']} mm and its label map "
                           "for a chosen condition.")),
        "authors": "medsynth users (the site that trained this checkpoint)",
        "copyright": "Copyright (c) the training site; synthetic outputs carry the same sharing terms as this bundle",
        "intended_use": f"INTERNAL AUGMENTATION ONLY. {COUNTERFACTUAL_USE}" if counterfactual else INTENDED_USE,
        "limitations": ([f"EXPORTED WITH --force: {_forced_reason(evaluation)}. Do not share it outside the training site."]
                        if evaluation.get("forced") else [])
                       + ([f"COUNTERFACTUAL MODEL, EXPORTED WITH --force: {COUNTERFACTUAL_USE}"] if counterfactual else []) + LIMITS,
        "data_source": "the site's de-identified training cohort (not included in the bundle)",
        "data_type": "nifti",
        "synthetic_data": True,
        "conditions": conditions,
        "contents": _contents(sampler, model_path),
        "evaluation": evaluation,
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
    write_json_atomic(out_dir / "configs" / "inference.json", inference_config(conditions))
    (out_dir / "docs").mkdir(parents=True, exist_ok=True)
    (out_dir / "docs" / "README.md").write_text(_readme(metadata))
    (out_dir / "docs" / "license.txt").write_text("Set by the training site before sharing.\n")
    return out_dir


def _evaluation(model: str, sha256: str, gates: dict | None, force: bool, audience: str | None) -> dict:
    """metadata.json's ``evaluation``: the gates of ``model`` only, the checkpoint they belong to, the
    verdict and recommendation, and whether export was forced past a failed privacy gate."""
    if gates is None:
        return {"model": model, "checkpoint_sha256": sha256, "evaluated": False, "gates": [],
                "recommendation": "not evaluated: exported without the evaluate stage's gates.json (--report)"}
    mine = model_gates(model, gates.get("gates", []))
    if not mine:
        known = sorted({g["gate"].split(":")[0] for g in gates.get("gates", []) if ":" in g.get("gate", "")})
        raise ExportRefused(f"gates.json holds no gate of model {model!r} (it has {known}); pass --model-name")
    measured = (gates.get("checkpoints") or {}).get(model)
    if measured is not None and measured != sha256 and not force:
        raise ExportRefused(f"gates.json's gates of {model!r} were measured on checkpoint {measured[:12]}..., not on this model.pt "
                            f"({sha256[:12]}...): rerun the evaluate stage (dvc repro) for this model, or --force to export it "
                            "with gates that are not its own")
    failed = [g["gate"] for g in mine if g.get("area") == "privacy" and g["state"] == "fail"]
    if failed and not force:
        raise ExportRefused(f"{model} failed privacy gate(s) {failed}: a shared bundle would leak what they measured. "
                            "Export refused; --force exports it anyway and marks the bundle as such")
    verdict = model_verdict(model, mine, audience)
    match = ("not recorded (gates.json written by an older medsynth)" if measured is None else
             "yes" if measured == sha256 else f"NO: the gates were measured on checkpoint {measured} (exported with --force)")
    return {"model": model, "checkpoint_sha256": sha256, "evaluated": True, "audience": audience, "overall": overall(mine),
            "recommendation": verdict["recommendation"], "recommendation_reasons": verdict["reasons"], "rule": VERDICT_RULE,
            "privacy_gates_failed": failed, "forced": bool(failed) or (measured is not None and measured != sha256),
            "gates_measured_on_this_checkpoint": match, "gates": mine}


def _forced_reason(ev: dict) -> str:
    reasons = [f"despite failed privacy gates ({'; '.join(ev['privacy_gates_failed'])})"] if ev.get("privacy_gates_failed") else []
    if str(ev.get("gates_measured_on_this_checkpoint", "")).startswith("NO"):
        reasons.append("with gates measured on another checkpoint")
    return " and ".join(reasons)


def _contents(sampler: LoadedSampler, model_path: Path) -> dict:
    """metadata.json's ``contents``: what models/model.pt holds, the fitted latent statistics named apart."""
    sd = sampler.net.state_dict()
    modules: dict[str, int] = {}
    for key, t in sd.items():
        modules[key.split(".")[0]] = modules.get(key.split(".")[0], 0) + t.numel()
    stats = {k: list(t.shape) for k, t in sd.items() if k.startswith("prior.")}
    out: dict[str, Any] = {"weights": f"state_dict of the {sampler.kind} sampler network; values per top-level module: {modules}",
           "training_data": "none: no image, mask, identifier or per-case value of a training patient"}
    if stats:
        train = model_path.parent if model_path.suffix == ".pt" else model_path
        summary = json.loads((train / "train.json").read_text()) if (train / "train.json").is_file() else {}
        if is_counterfactual(sampler):
            fitted = summary.get("structure_prior")
            what = ("the structure prior: per label whether the rare condition inserts or rescales it; for an inserted label the "
                    "mean, spread and range of its log volume, the mean and Cholesky factor of the offset of its centre from the label "
                    "it lies in and whether it lies inside it; for rescaled labels the mean, spread and range of their log volume; per "
                    "changed label 19 quantiles of its mean intensity; all over the rare-condition training cases. Aggregates, not "
                    "per-patient records; the model needs a real case to change")
        else:
            fitted = summary.get("latent_prior")
            what = ("the fitted latent prior synthesis draws from: per condition, the mean (prior.mean) and the Cholesky factor of "
                    "the covariance, shrunk towards its diagonal (prior.scale_tril), of the encoder's codes of that condition's "
                    f"training cases; a condition with fewer than prior_min_cases ({sampler.config.get('prior_min_cases')}) gets "
                    "the statistics of all training cases pooled. Aggregates, not per-patient records")
        out["latent_statistics"] = {"tensors": stats, "what": what, "per_condition": fitted or "not recorded (no train.json beside the model)"}
    else:
        out["latent_statistics"] = "none: the generator samples standard normal noise"
    return out


def running_bundle_root() -> str:
    """The folder of the bundle ``monai.bundle run`` is running: the parent of the ``configs/`` folder of
    its config file (the running ``ConfigWorkflow``'s ``config_root_path``, found on the call stack)."""
    from monai.bundle import ConfigWorkflow

    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        wf = frame.f_locals.get("self")
        if isinstance(wf, ConfigWorkflow):
            root = Path(wf.config_root_path)
            return str((root.parent if root.name == "configs" else root).resolve())
        frame = frame.f_back
    raise RuntimeError("bundle_root: not run by monai.bundle run's ConfigWorkflow; pass --bundle_root DIR")


def network_def(bundle_root: str | Path) -> Sampler:
    """The bundle's sampler network, untrained (MONAI's ``network_def``; ``models/model.pt`` holds its state_dict)."""
    spec = model_spec(bundle_root)
    return registry.get(spec["kind"]).build_sampler(spec["config"], spec["data_info"])


def model_spec(bundle_root: str | Path) -> dict:
    """The bundle's ``configs/medsynth_model.json`` (kind, config, data info), in the current export format."""
    path = Path(bundle_root) / "configs" / "medsynth_model.json"
    return migrate(json.loads(path.read_text()), str(path))


def inference_config(conditions: list[str]) -> dict:
    """``configs/inference.json`` as export writes it. It names no path: ``bundle_root`` is the folder
    of the running config (``--bundle_root DIR`` overrides it)."""
    return {
        "imports": ["$import torch", "$from medsynth.synth import bundle as medsynth_bundle"],
        "bundle_root": "$medsynth_bundle.running_bundle_root()",
        "output_dir": "$@bundle_root + '/samples'",
        "condition": conditions[-1],
        "num_samples": 1,
        "seed": 0,
        "temperature": 1.0,
        "device": "$'cuda' if torch.cuda.is_available() else 'cpu'",
        "network_def": "$medsynth_bundle.network_def(@bundle_root)",
        "sampler": "$medsynth_bundle.load_bundle(@bundle_root, @device, @network_def)",
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
    ``medsynth_model.json``: ``inference.json`` equal to :func:`inference_config`, nothing evaluable in
    ``metadata.json``, no other file in ``configs/`` (MONAI reads e.g. ``logging.conf``). Nothing of the
    bundle is evaluated here."""
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
    expected = inference_config(conditions)
    if inference != expected:
        found = inference if isinstance(inference, dict) else {}
        keys = sorted(k for k in expected.keys() | found.keys() if found.get(k) != expected.get(k))
        raise BundleError(f"{configs / 'inference.json'}: differs from what medsynth export-bundle writes for this model at "
                          f"{keys}. A bundle's config is code (monai.bundle run executes it), so this bundle is refused and "
                          "nothing in it was run; ask the sender for an unmodified export")
    if where := _monai_syntax(metadata):
        raise BundleError(f"{configs / 'metadata.json'}: {where} holds a MONAI expression, reference or component, which "
                          "medsynth export-bundle never writes; refused")


def load_bundle(bundle_root: str | Path, device: str = "cpu", net: Sampler | None = None) -> LoadedSampler:
    """The bundle's generator (``net``: its :func:`network_def`, built here when None), ready for
    :func:`sample_bundle` (or ``medsynth.synth.sampler``)."""
    root = Path(bundle_root)
    spec = model_spec(root)
    net = network_def(root) if net is None else net
    net.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval().to(device)
    return LoadedSampler(spec["kind"], net, spec["config"], spec["data_info"], file_sha256(root / "models" / "model.pt"))


def sample_bundle(sampler: LoadedSampler, output_dir: str | Path, condition: str, num_samples: int = 1, seed: int = 0,
                  temperature: float = 1.0, device: str = "cpu") -> list[ManifestRow]:
    """Sample ``num_samples`` cases of ``condition`` into ``output_dir`` (NIfTI + sidecars + manifest)."""
    if condition not in sampler.conditions:
        raise ValueError(f"condition {condition!r} unknown to this bundle; it knows {sampler.conditions}")
    if is_counterfactual(sampler):
        raise ValueError("a counterfactual bundle changes real cases and does not sample from noise: "
                         "medsynth synth --bundle BUNDLE OUT -c CONDITION --from FOLDER")
    return synthesize(sampler, Path(output_dir), {condition: int(num_samples)}, int(seed), float(temperature), 4, device=device)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _readme(meta: dict) -> str:
    limits = "\n".join(f"- {x}" for x in meta["limitations"])
    ev, contents = meta["evaluation"], meta["contents"]
    stats = contents["latent_statistics"]
    if isinstance(stats, dict):
        stats = (f"{stats['what']}. Tensors: " + ", ".join(f"`{k}` {v}" for k, v in stats["tensors"].items())
                 + f". Training cases per condition: {stats['per_condition']}.")
    forced = (f"\n**Exported with --force: {_forced_reason(ev)}.** Do not share this bundle outside the training site.\n"
              if ev.get("forced") else "")
    if ev.get("evaluated"):
        num = lambda v: f"{v:.4g}" if isinstance(v, float) else v  # noqa: E731
        rows = "\n".join(f"| {g['gate']} | {g['state']} | {num(g.get('value'))} | {g.get('rule', '')} {g.get('threshold')} |"
                         for g in ev["gates"])
        evaluation = (f"Gates of model `{ev['model']}` measured by the evaluate stage (audit for: {ev.get('audience') or 'not recorded'}); "
                      f"they belong to the checkpoint with SHA-256 `{ev['checkpoint_sha256']}` (of the exported model.pt). Overall: "
                      f"**{ev['overall']}**. Recommendation: **{ev['recommendation']}**"
                      + (f" ({'; '.join(ev['recommendation_reasons'])})" if ev["recommendation_reasons"] else "")
                      + f".\n\n| Gate | State | Measured | Threshold |\n|---|---|---|---|\n{rows}\n\nRule: {ev['rule']}")
    else:
        evaluation = f"Not evaluated: {ev['recommendation']}. Checkpoint SHA-256 `{ev['checkpoint_sha256']}`."
    return f"""# {meta['name']}
{forced}
{meta['description']}

## Intended use
{meta['intended_use']}

## Limits
{limits}

## What this bundle holds
- Weights (`models/model.pt`): {contents['weights']}.
- Fitted statistics: {stats}
- Training data: {contents['training_data']}.

## Evaluation
{evaluation}

## Sample
```
medsynth synth --bundle . samples -c {meta['conditions'][-1]} -n 4
```
reads the weights and `configs/medsynth_model.json` and never runs the bundle's config; it refuses a
bundle whose configs differ from what medsynth export-bundle writes. Writes NIfTI image + mask pairs
marked SYNTHETIC, JSON sidecars and synthetic_manifest.csv to `samples/`. Needs medsynth
{meta['required_packages_version']['medsynth']} installed; nothing is downloaded.

`python -m monai.bundle run --config_file configs/inference.json --condition {meta['conditions'][-1]} --num_samples 4`
does the same through MONAI (from any folder; `bundle_root` is the folder holding `configs/`, and
`--output_dir DIR` writes elsewhere than `samples/` in it), but a bundle's config is code: MONAI executes
its `$` expressions, so run it only on a bundle you exported yourself or got unchanged from someone you trust.
"""
