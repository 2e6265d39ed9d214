"""Evaluate stage: fidelity, privacy, utility and gates for every trained model, written with the report's figures.

:func:`evaluate_models` runs one :class:`EvalJob` as named steps:

1. :func:`load_real_reference`: the real splits, their weight-free and learned features and the real side of
   the privacy audit, computed once and shared by every model;
2. per model, :func:`load_synthetic_set` (its cases in model space and their features) and
   :func:`evaluate_model` (fidelity, utility, privacy, condition fidelity and the gates);
   :func:`write_model_figures` draws its figures;
3. :func:`compare_counterfactual_utility`: counterfactual sets against the whole-volume generators;
4. :func:`write_results`: fidelity.json, privacy.json, utility.json and gates.json.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, cast

import numpy as np
import torch
from torch import nn

from medsynth.cohort import PreprocessInfo, TensorBank, data_info_from, load_bank, read_preprocess_info
from medsynth.config import EvalConfig, PreprocessConfig
from medsynth.data.transforms import to_model_space
from medsynth.eval import figures
from medsynth.eval.conditional import classifier_check, condition_fidelity_gate, conditional_fidelity, fit_condition_classifier
from medsynth.eval.counterfactual import INTERNAL_ONLY, read_counterfactual_set, seam_and_look, structure_copy_check
from medsynth.eval.encoder import embed, load_encoder, standardiser
from medsynth.eval.features import cached_features, volume_features
from medsynth.eval.fidelity import fidelity_metrics
from medsynth.eval.gates import counterfactual_gates, evaluate_gates, model_gates, overall
from medsynth.eval.metrics import feature_fidelity, ms_ssim_diversity
from medsynth.eval.privacy import PrivacyReference, audit_privacy, privacy_metrics, privacy_reference
from medsynth.eval.utility import classification_utility, cross_model_difference, segmentation_utility, shared_part, utility_gate, utility_sentence
from medsynth.io.writers import write_json_atomic
from medsynth.models import registry
from medsynth.synth.counterfactual import is_counterfactual_set
from medsynth.synth.sampler import file_sha256, load_sampler, model_space_arrays

if TYPE_CHECKING:
    from medsynth.models.counterfactual import CounterfactualSampler

# the figures tests/eval/test_conditional_fidelity.py draws, under the names it imports
_conditional_overlay_figure = figures.conditional_overlay_figure
_label_volume_figure = figures.label_volume_figure


class GateFailure(RuntimeError):
    pass


LEARNED_PRIVACY_KEYS = ("membership_auc_blackbox", "membership_auc_blackbox_ci", "dcr_share", "dcr_share_ci", "dcr_share_control",
                        "authenticity", "nndr_mean", "dcr_synthetic_to_train", "dcr_holdout_to_train")
REAL_SPLITS = ("train", "test", "holdout")  # train: the generators' members; test: fidelity's baseline; holdout: privacy's non-members
CONTROL_SPLITS = ("val", "test")  # the privacy audit's control: real patients no generator trained on, other than the non-members
NO_ENCODER = {"measured": False, "reason": "no encoder (run the encoder stage or set evaluate.encoder.weights)"}


@dataclass(frozen=True)
class EvalJob:
    """One evaluation: the earlier stages' outputs it reads, the models and settings, and where it writes.

    ``synth_root``/<model> holds a model's synthetic set (synthetic_manifest.csv, sidecars/),
    ``models_root``/<model> its export (model.pt) and checkpoints/last.ckpt. ``encoder_path``: the encoder
    stage's ``encoder.pt`` (``cfg.encoder.weights`` replaces it); without one the learned-feature metrics
    are left out and say so. ``rare_condition``: the condition the utility and privacy audits single out
    (unknown or None: the last one). ``cache_dir``: where the real sets' features are kept between runs."""

    preprocess_dir: Path
    synth_root: Path
    models_root: Path
    models: list[str]
    preprocess: PreprocessConfig
    cfg: EvalConfig
    seed: int
    out_dir: Path
    encoder_path: Path | None = None
    rare_condition: str | None = None
    cache_dir: Path | None = None


@dataclass(frozen=True)
class LearnedFeatures:
    """The feature encoder and the real splits embedded with it, z-scored with the train split's mean and SD."""

    encoder: nn.Module
    image_only: bool
    scale: Callable[[np.ndarray], np.ndarray]
    real: dict[str, np.ndarray]  # split -> (N, F): REAL_SPLITS, and val when the cohort has val cases
    source: str  # what fidelity.json names as the encoder

    def of(self, cases: np.ndarray) -> np.ndarray:
        """(N, 2, D, H, W) cases -> (N, F) features on the real sets' scale."""
        return self.scale(embed(self.encoder, cases, image_only=self.image_only))


class ConditionalReference(TypedDict):
    """Every real case (val included) for the condition-fidelity checks and the real-only condition classifier."""

    x: np.ndarray  # (N, 2, D, H, W) float16: image, label map
    y: np.ndarray  # condition index
    is_train: np.ndarray
    net: nn.Module | None  # trained on the real train split; None when evaluate.conditional.classifier is false or a condition has no train case


@dataclass
class RealReference:
    """The real side of every comparison, loaded once and shared by every model."""

    info: PreprocessInfo
    n_labels: int
    rare_index: int
    banks: dict[str, TensorBank]  # REAL_SPLITS, and val when the cohort has val cases
    features: dict[str, np.ndarray]  # split -> weight-free features
    train_images: np.ndarray  # (N, D, H, W) float32
    train_masks: np.ndarray
    learned: LearnedFeatures | None
    privacy: PrivacyReference
    ms_ssim_real: float | None
    conditional: ConditionalReference | None = None  # built on first use (conditional_reference)
    control: ControlCases | None = None  # the privacy audit's control cases (val, test)

    @property
    def conditions(self) -> list[str]:
        return self.info["conditions"]


@dataclass(frozen=True)
class SyntheticSet:
    """One model's synthetic cases in model space, with their features."""

    model: str
    directory: Path
    rows: list[dict]
    counterfactual: bool  # real training cases with the rare condition painted in
    checkpoint_sha256: str | None  # the model.pt it was sampled from (its first case's sidecar)
    images: np.ndarray  # (N, D, H, W)
    masks: np.ndarray
    conditions: list[str]
    y: np.ndarray  # condition index
    features: np.ndarray  # weight-free
    learned: np.ndarray | None  # on the real sets' scale; None without an encoder


@dataclass
class ModelEvaluation:
    fidelity: dict
    privacy: dict
    utility: dict
    gates: list[dict]
    sources: np.ndarray | None = None  # a counterfactual set's source images (real training cases), in case order


class EvalResults(TypedDict):
    overall: str
    gates: list[dict]
    fidelity: dict[str, dict]  # by model
    privacy: dict[str, dict]
    utility: dict[str, dict]


def evaluate_models(job: EvalJob) -> EvalResults:
    """Fidelity (weight-free and learned features), privacy, utility and gates for every model of ``job``,
    written to ``job.out_dir`` (fidelity.json, privacy.json, utility.json, gates.json, figures/) and returned
    (fidelity, privacy and utility keyed by model). Raises GateFailure after writing when
    ``evaluate.strict`` is set and a gate failed."""
    ref = load_real_reference(job)
    fig_dir = job.out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    evaluations: dict[str, ModelEvaluation] = {}
    gates: list[dict] = []  # every model's, in the order of job.models
    checkpoints: dict[str, str | None] = {}  # the model.pt each model's gates were measured on (export-bundle checks it)
    shared_arms = None  # the utility arms without synthetic data (real, real+augmentation): trained once, shared by every model
    for k, model in enumerate(job.models):
        syn = load_synthetic_set(job, ref, model)
        checkpoints[model] = syn.checkpoint_sha256
        evaluations[model] = ev = evaluate_model(job, ref, syn, job.seed + k, shared_arms)
        gates += ev.gates
        shared_arms = shared_part(ev.utility) or shared_arms
        write_model_figures(fig_dir, job, ref, syn, ev)
    utility = {m: e.utility for m, e in evaluations.items()}
    compare_counterfactual_utility(job.models, utility, job.seed)
    results: EvalResults = {"overall": overall(gates), "gates": gates, "fidelity": {m: e.fidelity for m, e in evaluations.items()},
                            "privacy": {m: e.privacy for m, e in evaluations.items()}, "utility": utility}
    write_results(job.out_dir, results, job.cfg.strict, checkpoints)
    failed = [g["gate"] for g in gates if g["state"] == "fail"]
    if job.cfg.strict and failed:
        raise GateFailure(f"evaluate.strict is true and {len(failed)} gate(s) failed: " + "; ".join(failed))
    return results


# --- step 1: the real reference ---------------------------------------------------------------------------------------------------------

def load_real_reference(job: EvalJob) -> RealReference:
    """The real splits, their weight-free features (cached per content: preprocessing and cases), the
    learned features (with an encoder), the privacy audit's real side and the real MS-SSIM diversity."""
    info = read_preprocess_info(job.preprocess_dir)
    n_labels = max(1, int(info["n_mask_labels"]))
    banks = {s: load_bank(job.preprocess_dir, (s,), info) for s in REAL_SPLITS}
    val = _optional_bank(job.preprocess_dir, "val", info)
    if val is not None:  # the utility arms' model selection, the condition classifier and the privacy audit's control
        banks["val"] = val
    split_keys = {s: [info["transform_hash"], *(r["case_id"] for r in b.rows)] for s, b in banks.items()}
    features = {s: cached_features(job.cache_dir, f"weightfree-{s}", ["weightfree-v1", str(n_labels), *split_keys[s]],
                                   partial(_weightfree_features, b, n_labels))
                for s, b in banks.items()}
    train_images = banks["train"].x[:, 0].float().numpy()
    train_masks = banks["train"].x[:, 1].float().numpy()
    learned = load_learned_features(job, banks, split_keys)  # val too: part of the DCR share's control
    conditions = info["conditions"]
    rare_index = conditions.index(job.rare_condition) if job.rare_condition in conditions else len(conditions) - 1
    train, holdout = banks["train"], banks["holdout"]
    control = _control_cases(banks, features)
    priv = privacy_reference(train.x.float().numpy(), train.y.numpy(), holdout.x.float().numpy(), holdout.y.numpy(), features["train"],
                             features["holdout"], rare_index,
                             reference_features=features["test"],  # the density-ratio attack's population: neither members nor non-members
                             control_x=control.x.float().numpy(), control_y=control.y.numpy(), control_features=control.features,
                             control_in_density_reference=control.in_density_reference)
    return RealReference(info, n_labels, rare_index, banks, features, train_images, train_masks, learned, priv,
                         ms_ssim_diversity(train_images, seed=job.seed), control=control)


@dataclass(frozen=True)
class ControlCases:
    """The privacy audit's control (privacy.control_report, privacy.dcr_share_control): real patients no
    generator trained on and the audit does not use as non-members, the val split then the test split. ``in_density_reference``:
    the case is in the density-ratio attack's reference population (the test split)."""

    x: torch.Tensor
    y: torch.Tensor
    features: np.ndarray
    in_density_reference: np.ndarray


def _control_cases(banks: dict[str, TensorBank], features: dict[str, np.ndarray]) -> ControlCases:
    splits = [s for s in CONTROL_SPLITS if s in banks]
    return ControlCases(torch.cat([banks[s].x for s in splits]), torch.cat([banks[s].y for s in splits]),
                        np.concatenate([features[s] for s in splits]), np.concatenate([np.full(len(banks[s].y), s == "test") for s in splits]))


def _optional_bank(preprocess_dir: Path, split: str, info: PreprocessInfo) -> TensorBank | None:
    """A split's cases, or None for a split without cases."""
    try:
        return load_bank(preprocess_dir, (split,), info)
    except ValueError:
        return None


def _weightfree_features(bank: TensorBank, n_labels: int) -> np.ndarray:
    return volume_features(bank.x[:, 0].float().numpy(), bank.x[:, 1].float().numpy(), n_labels)


def _encoder_file(path: Path | None, cfg: EvalConfig) -> Path | None:
    """The user's encoder (evaluate.encoder.weights) if set, else the encoder stage's."""
    return Path(cfg.encoder.weights) if cfg.encoder.weights else path


def _load_encoder(path: Path | None, cfg: EvalConfig) -> tuple[nn.Module, bool] | None:
    """(encoder, image_only), or None when there is no encoder file."""
    weights = _encoder_file(path, cfg)
    if weights is None or not Path(weights).is_file():
        return None
    return load_encoder(weights, cfg.encoder.sha256 if cfg.encoder.weights else None)


def load_learned_features(job: EvalJob, banks: dict[str, TensorBank], split_keys: dict[str, list[str]]) -> LearnedFeatures | None:
    """The real splits embedded once (cached per encoder checksum and cases) and standardised on the
    train split; each model's synthetic set is embedded with the same scale. None without an encoder."""
    loaded = _load_encoder(job.encoder_path, job.cfg)
    enc_file = _encoder_file(job.encoder_path, job.cfg)
    if loaded is None or enc_file is None:
        return None
    encoder, image_only = loaded
    enc_sum = file_sha256(enc_file)
    raw = {s: cached_features(job.cache_dir, f"learned-{s}", ["learned-v1", enc_sum, *split_keys[s]],
                              partial(_embed_bank, encoder, b, image_only))
           for s, b in banks.items()}
    scale = standardiser(raw["train"])
    source = str(job.encoder_path if job.cfg.encoder.weights is None else "user weights")
    return LearnedFeatures(encoder, image_only, scale, {s: scale(v) for s, v in raw.items()}, source)


def _embed_bank(encoder: nn.Module, bank: TensorBank, image_only: bool) -> np.ndarray:
    return embed(encoder, bank.x.float().numpy(), image_only=image_only)


def conditional_reference(job: EvalJob, ref: RealReference) -> ConditionalReference:
    """Every real case (val included) with its condition and whether it is in the train split, and the
    condition classifier trained on the real train split only; built on the first call and kept on ``ref``."""
    if ref.conditional is not None:
        return ref.conditional
    parts = [("train", ref.banks["train"])]
    parts += [(s, ref.banks[s]) for s in ("val", "test", "holdout") if s in ref.banks]
    x = np.concatenate([b.x.numpy() for _, b in parts])  # float16 as cached: labels and [-1, 1] images are exact enough
    y = np.concatenate([b.y.numpy() for _, b in parts])
    is_train = np.concatenate([np.full(len(b.y), s == "train") for s, b in parts])
    ccfg = job.cfg.conditional
    net = fit_condition_classifier(x, y, is_train, len(ref.conditions), ref.n_labels, ccfg, job.seed) if ccfg.classifier else None
    ref.conditional = {"x": x, "y": y, "is_train": is_train, "net": net}
    return ref.conditional


# --- step 2: one model -----------------------------------------------------------------------------------------------------------------

def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _sidecar(sdir: Path, row: dict) -> dict:
    path = Path(sdir) / "sidecars" / f"{row['case_id']}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def load_synthetic_set(job: EvalJob, ref: RealReference, model: str) -> SyntheticSet:
    """``job.synth_root``/<model>'s cases in model space (the preprocess settings' intensity mapping),
    their condition indices and weight-free (and learned) features."""
    sdir = job.synth_root / model
    rows = _read_rows(sdir / "synthetic_manifest.csv")
    modality = ref.info["modality"]

    def to_model(a: np.ndarray) -> np.ndarray:
        return to_model_space(a, job.preprocess, modality)

    images, masks, conditions = model_space_arrays(sdir, rows, to_model)
    learned = ref.learned.of(np.stack([images, masks.astype(np.float32)], 1)) if ref.learned is not None else None
    return SyntheticSet(model, sdir, rows, is_counterfactual_set(rows), _sidecar(sdir, rows[0]).get("checkpoint_sha256") if rows else None,
                        images, masks, conditions, np.array([ref.conditions.index(c) for c in conditions]),
                        volume_features(images, masks, ref.n_labels), learned)


def evaluate_model(job: EvalJob, ref: RealReference, syn: SyntheticSet, seed: int, shared_arms: dict | None = None) -> ModelEvaluation:
    """Fidelity, utility, privacy and condition fidelity of one synthetic set, and its gates (privacy and
    realism, utility, condition fidelity). ``seed``: this model's bootstrap seed; ``shared_arms``: the
    utility arms without synthetic data from an earlier model."""
    cfg = job.cfg
    fid = measure_fidelity(job, ref, syn, seed)
    util = measure_utility(job, ref, syn, shared_arms)
    sources = None
    if syn.counterfactual:
        priv, fid["counterfactual"], sources = _counterfactual_checks(syn, ref, job.models_root, cfg)
        gates = list(counterfactual_gates(syn.model, fid, priv, cfg.gates))
    else:
        priv = measure_privacy(job, ref, syn, seed)
        gates = list(evaluate_gates(syn.model, fid, priv, cfg.gates))
    gates.append(utility_gate(syn.model, util, cfg.utility, cfg.gates.warn_margin))
    cond = measure_condition_fidelity(job, ref, syn, seed)
    fid["conditional"] = cond
    gates.append(condition_fidelity_gate(syn.model, cond, cond["classifier"], cfg.gates))
    if syn.counterfactual:  # every gate of the model: its cases are real patients' scans, the verdict at best internal use
        for g in model_gates(syn.model, gates):
            g["internal_only"] = True
    return ModelEvaluation(fid, priv, util, gates, sources)


def measure_fidelity(job: EvalJob, ref: RealReference, syn: SyntheticSet, seed: int) -> dict:
    """Weight-free fidelity against the real train split (test split: the real-to-real baseline), per
    condition too, MS-SSIM diversity, and the learned-feature fidelity (or why it was not measured)."""
    cfg = job.cfg
    fid = fidelity_metrics(syn.features, ref.features["train"], ref.features["test"], syn.images, ref.train_images, syn.masks, ref.train_masks,
                           seed, cfg.bootstrap)
    per_cond, per_cond_learned = _per_condition_fidelity(job, ref, syn, seed)
    fid["per_condition"] = per_cond
    fid["ms_ssim_synthetic"] = ms_ssim_diversity(syn.images, seed=job.seed)
    fid["ms_ssim_real"] = ref.ms_ssim_real
    if ref.learned is not None and syn.learned is not None:
        fid["learned"] = feature_fidelity(syn.learned, ref.learned.real["train"], ref.learned.real["test"], seed, max(10, cfg.bootstrap // 4))
        fid["learned"]["encoder"] = ref.learned.source
        fid["learned"]["per_condition"] = per_cond_learned
    else:
        fid["learned"] = dict(NO_ENCODER)
    return fid


def _per_condition_fidelity(job: EvalJob, ref: RealReference, syn: SyntheticSet, seed: int) -> tuple[dict, dict]:
    """Weight-free (at least 2 synthetic and 2 real train cases) and learned (at least 3) fidelity per condition;
    a condition with too few real test cases is compared with the whole test split as baseline."""
    n_boot = max(10, job.cfg.bootstrap // 4)
    train_y, test_y = ref.banks["train"].y, ref.banks["test"].y
    per_cond, per_cond_learned = {}, {}
    for ci, cond in enumerate(ref.conditions):
        sel_s = np.array([c == cond for c in syn.conditions])
        sel_t = (train_y == ci).numpy()
        sel_te = (test_y == ci).numpy()
        if sel_s.sum() >= 2 and sel_t.sum() >= 2:
            test = ref.features["test"][sel_te] if sel_te.sum() >= 2 else ref.features["test"]
            per_cond[cond] = fidelity_metrics(syn.features[sel_s], ref.features["train"][sel_t], test, syn.images[sel_s], ref.train_images[sel_t],
                                              syn.masks[sel_s], ref.train_masks[sel_t], seed, n_boot)
        if ref.learned is not None and syn.learned is not None and sel_s.sum() >= 3 and sel_t.sum() >= 3:
            real = ref.learned.real
            per_cond_learned[cond] = feature_fidelity(syn.learned[sel_s], real["train"][sel_t], real["test"][sel_te] if sel_te.sum() >= 3 else real["test"],
                                                      seed, 10)
    return per_cond, per_cond_learned


def measure_utility(job: EvalJob, ref: RealReference, syn: SyntheticSet, shared_arms: dict | None = None) -> dict:
    """The utility arms of the synthetic set (or why they were not measured)."""
    if not job.cfg.utility.enabled:
        return {"measured": False, "reason": "evaluate.utility.enabled is false"}
    return _utility(syn.model, ref.info, ref.banks, (syn.images, syn.masks, syn.y), ref.n_labels, ref.rare_index, job.cfg,
                    job.seed, shared_arms, "counterfactual" if syn.counterfactual else "synthetic")


def _utility(model: str, info: PreprocessInfo, banks: dict[str, TensorBank], synthetic: tuple, n_labels: int,
             rare_index: int, cfg: EvalConfig, seed: int, shared_arms: dict | None = None, kind: str = "synthetic") -> dict:
    """Utility arms of one model's synthetic set, model selection on the real val split (without one,
    the utility functions hold back part of the train split and say so), and its one-sentence answer."""
    train = (banks["train"].x.float().numpy(), banks["train"].y.numpy())
    test = (banks["test"].x.float().numpy(), banks["test"].y.numpy())
    val = (banks["val"].x.float().numpy(), banks["val"].y.numpy()) if "val" in banks else None  # no case in the val split: None
    if info["modality"] != "SEG" and int(info["n_mask_labels"]) > 0:
        util = segmentation_utility(train, test, synthetic, n_labels, rare_index, cfg.utility, seed, shared_arms, val)
    else:
        util = classification_utility(train, test, synthetic, len(info["conditions"]), rare_index, cfg.utility, seed, shared_arms, val)
    util["synthetic_kind"] = kind
    util["sentence"] = utility_sentence(model, util, cfg.utility)
    return util


def measure_privacy(job: EvalJob, ref: RealReference, syn: SyntheticSet, seed: int) -> dict:
    """A whole-volume generator's privacy audit against the real reference (black-box attacks, and the
    white-box one from its checkpoint), with the distance tests repeated in the encoder's feature space."""
    cfg = job.cfg
    train, holdout = ref.banks["train"], ref.banks["holdout"]
    control = (ref.control.x, ref.control.y) if ref.control is not None and len(ref.control.y) else None
    whitebox = _whitebox(syn.model, job.models_root / syn.model / "checkpoints" / "last.ckpt", ref.info, (train.x, train.y), (holdout.x, holdout.y),
                         control)
    priv = audit_privacy(ref.privacy, np.stack([syn.images, syn.masks.astype(np.float32)], 1), syn.features, syn.y, cfg.audience,
                         cfg.copy_distance_factor, seed, cfg.bootstrap, whitebox)
    if ref.learned is not None and syn.learned is not None:  # second opinion: the same distance tests in the encoder's feature space
        real = ref.learned.real
        ctrl = [real[s] for s in CONTROL_SPLITS if s in real]  # the control cases of the weight-free audit, in the encoder's space
        lp = privacy_metrics(syn.learned, real["train"], real["holdout"], seed, max(20, cfg.bootstrap // 4), np.concatenate(ctrl) if ctrl else None)
        priv["learned"] = {key: lp[key] for key in LEARNED_PRIVACY_KEYS}
    else:
        priv["learned"] = dict(NO_ENCODER)
    return priv


def _whitebox(model: str, ckpt: Path, info: PreprocessInfo, members: tuple, nonmembers: tuple, control: tuple | None = None) -> dict | None:
    """Load the full checkpoint (weights only) and score real cases with D (GAN) or the ELBO (VAE):
    the white-box attack's scores of members, non-members and control cases (None: no checkpoint or no score)."""
    if not ckpt.is_file():
        return None
    blob = torch.load(ckpt, map_location="cpu", weights_only=True)
    if not blob.get("medsynth_config"):
        return None
    module = registry.get(model)(blob["medsynth_config"], data_info_from(info))
    module.load_state_dict(blob["state_dict"], strict=False)
    module.eval()
    score = getattr(module, "discriminator_score", None) or getattr(module, "elbo_score", None)
    if score is None:
        return None
    with torch.no_grad():
        s_m = score(members[0].float(), members[1]).float().numpy()
        s_n = score(nonmembers[0].float(), nonmembers[1]).float().numpy()
        s_c = score(control[0].float(), control[1]).float().numpy() if control is not None else None
    signal = "discriminator score" if hasattr(module, "discriminator_score") else "negative ELBO loss"
    return {"signal": signal, "members": s_m, "nonmembers": s_n, "control": s_c}


def _counterfactual_checks(syn: SyntheticSet, ref: RealReference, models_root: Path, cfg: EvalConfig) -> tuple[dict, dict, np.ndarray]:
    """Privacy (the changed structures' copy check, the internal-only statement) and the seam and look of a
    counterfactual set; and its source images."""
    regions, source_ids = read_counterfactual_set(syn.directory, syn.rows)
    net = cast("CounterfactualSampler", load_sampler(models_root / syn.model / "model.pt").net)
    labels, margin = net.prior.changed_labels(), net.margin
    train, holdout = ref.banks["train"], ref.banks["holdout"]
    train_x, train_y = train.x.float().numpy(), train.y.numpy()
    index = {r["case_id"]: i for i, r in enumerate(train.rows)}
    missing = sorted(set(source_ids) - set(index))
    if missing:
        raise ValueError(f"{syn.directory}: source case(s) {', '.join(missing[:5])} of the counterfactual cases are not in the train split")
    sources = train_x[[index[c] for c in source_ids], 0]
    rare = train_y == ref.rare_index
    look = seam_and_look(syn.images, np.rint(syn.masks).astype(np.int64), regions, sources, train_x[rare, 0],
                         np.rint(train_x[rare, 1]).astype(np.int64), labels, margin)
    det = structure_copy_check(syn.images, np.rint(syn.masks), train_x, train_y, holdout.x.float().numpy(), holdout.y.numpy(), ref.rare_index,
                               labels, margin, cfg.copy_distance_factor)
    look["source_case_ids"] = source_ids
    priv = {"kind": "counterfactual", "use": INTERNAL_ONLY, "audience": "internal", "structure_copy_detection": det, "copies": det.get("copies")}
    return priv, look, sources


def measure_condition_fidelity(job: EvalJob, ref: RealReference, syn: SyntheticSet, seed: int) -> dict:
    """Per condition and mask label: presence, volume and location against every real case, and the
    real-only condition classifier on the synthetic cases (or why it was not run)."""
    cfg = job.cfg
    real = conditional_reference(job, ref)
    cond = conditional_fidelity(syn.masks, syn.conditions, real["x"][:, 1], real["y"], real["is_train"], ref.conditions, ref.rare_index,
                                ref.n_labels, cfg.conditional, seed, cfg.bootstrap)
    cond["classifier"] = (classifier_check(real["net"], real["x"], real["y"], real["is_train"], np.stack([syn.images, syn.masks], 1),
                                           syn.conditions, ref.conditions, ref.n_labels, cfg.conditional.classifier_steps)
                          if cfg.conditional.classifier else {"measured": False, "reason": "evaluate.conditional.classifier is false"})
    return cond


def write_model_figures(fig_dir: Path, job: EvalJob, ref: RealReference, syn: SyntheticSet, ev: ModelEvaluation) -> None:
    """``fig_dir``/<model>_*.png: slices, privacy (or counterfactual pairs), distributions, condition overlays and label volumes."""
    model = syn.model
    figures.slices_figure(model, fig_dir, syn.images, syn.conditions, ref.banks["train"], ref.conditions)
    if syn.counterfactual:
        assert ev.sources is not None
        figures.counterfactual_pairs_figure(model, fig_dir, syn.images, syn.masks, ev.sources, ev.fidelity["counterfactual"])
    else:
        figures.privacy_figures(model, fig_dir, ev.privacy)
        figures.closest_pairs_figure(model, fig_dir, syn.images, ref.train_images, ev.privacy["copy_detection"])
    figures.distributions_figure(model, fig_dir, syn.images, syn.masks, ref.train_images, ref.train_masks)
    real = conditional_reference(job, ref)
    cond = ev.fidelity["conditional"]
    figures.conditional_overlay_figure(model, fig_dir, syn.images, syn.masks, syn.conditions, real, ref.conditions, cond, job.cfg.conditional)
    figures.label_volume_figure(model, fig_dir, syn.masks, syn.conditions, real, ref.conditions, cond, ref.n_labels)


# --- steps 3 and 4: across models, and the outputs -----------------------------------------------------------------------------------------

def compare_counterfactual_utility(models: list[str], utility: dict[str, dict], seed: int) -> None:
    """Adds to each counterfactual set's utility ``differences`` its real+synthetic_rare arm against each
    whole-volume generator's: the same test cases, seeds and baselines."""
    for m in models:
        if utility[m].get("synthetic_kind") != "counterfactual":
            continue
        for other in models:
            if other != m and utility[other].get("synthetic_kind") != "counterfactual":
                d = cross_model_difference(utility[m], utility[other], "real+synthetic_rare", seed)
                if d is not None:
                    utility[m]["differences"][f"real+synthetic_rare - {other}'s real+synthetic_rare"] = d


def write_results(out_dir: Path, results: EvalResults, strict: bool, checkpoints: dict[str, str | None]) -> None:
    """fidelity.json, privacy.json, utility.json (by model) and gates.json (the verdict, every gate, whether
    evaluate.strict was set and the checkpoint each model was measured on), each written atomically."""
    write_json_atomic(out_dir / "fidelity.json", results["fidelity"])
    write_json_atomic(out_dir / "privacy.json", results["privacy"])
    write_json_atomic(out_dir / "utility.json", results["utility"])
    write_json_atomic(out_dir / "gates.json", {"overall": results["overall"], "gates": results["gates"], "strict": strict, "checkpoints": checkpoints})
