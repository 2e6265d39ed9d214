"""Typed, validated configuration.

Every section of ``params.yaml`` maps to one model below. A wrong value fails at once with the
key path (``train.cgan.loss``), the value that was given and what is allowed, so a typo in
params.yaml never reaches a half-finished training run.

The library takes these objects; only ``pipelines/`` reads params.yaml (through
:func:`load_params`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from medsynth.io.labels import LabelsError, read_labels
from medsynth.io.quarantine import DEFAULT_MAX_VOXELS


class ConfigError(ValueError):
    """A params value is missing or not allowed. The message names key, value and what is allowed."""


def _yaml11_switch(v: Any) -> Any:
    """YAML 1.1 (PyYAML, which reads params.yaml) parses a bare on / off / yes / no as a boolean, and
    ``dvc exp run -S`` rewrites params.yaml in YAML 1.2, which drops the quotes around "off": both mean
    the switch's on / off."""
    return ("on" if v else "off") if isinstance(v, bool) else v


Switch = Annotated[Literal["auto", "on", "off"], BeforeValidator(_yaml11_switch)]




class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DemoConfig(_Section):
    patients: int = Field(60, ge=8, le=2000, description="number of phantom patients")
    rare_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of patients with a lesion")
    nifti_cases: int = Field(3, ge=0, description="cases written as NIfTI instead of DICOM")
    compressed_cases: int = Field(4, ge=0, description="DICOM series written RLE-compressed")
    bad_files: bool = Field(True, description="add a few broken inputs that must be quarantined")


class DataConfig(_Section):
    input: str = Field("demo", description="'demo', a folder of DICOM/NIfTI files, or a MedMNIST .npz")
    labels: str | None = Field(None, description="CSV with columns case,condition[,mask]")
    rare_condition: str = Field("lesion", description="the condition to augment")
    default_condition: str = Field("normal", description="condition of cases the labels CSV omits")
    npz_max_cases: int | None = Field(None, ge=12, description="use this many cases of an .npz (30 % from its test split, "
                                      "10 % from val, at least 4 each, the rest from train; each class in proportion, at least 2)")
    npz_class_names: list[str] = Field(["normal", "lesion"], min_length=2, description="condition name per npz label")
    nifti_modality: Literal["CT", "MR"] = Field("CT", description="modality assumed for NIfTI inputs")
    modality: Literal["CT", "MR"] | None = Field(
        None, description="keep only volumes of this modality (others quarantined with the reason); null keeps all"
    )
    max_voxels: int = Field(
        DEFAULT_MAX_VOXELS, ge=64**3, description="the most voxels one input file or series may declare (all frames and time "
        "points); larger ones are quarantined before they are decoded or inflated, so a small compressed file that "
        "expands to gigabytes cannot exhaust memory")
    demo: DemoConfig = DemoConfig()

    @property
    def is_demo(self) -> bool:
        return self.input == "demo"

    @property
    def is_npz(self) -> bool:
        return self.input.endswith(".npz")


class DeidConfig(_Section):
    key_file: str | None = Field(None, description="path of the site key file, outside the repo")
    key_env: str = "MEDSYNTH_DEID_KEY"
    ephemeral_key: bool = Field(False, description="throw-away key: pseudonyms NOT stable across runs")
    retain_longitudinal_modified_dates: bool = True
    retain_patient_characteristics: Literal[True, False, "all"] = Field(
        True, description="true: keep sex, age, size, weight; 'all': also ethnic group, smoking and pregnancy status...")
    clean_descriptors: bool = True
    retain_safe_private: bool = Field(False, description="keep the private acquisition parameters conversion reads (numbers, "
                                      "and vendor text only in its technical form: docs/privacy.md); off: no private tag is kept")
    quarantine_burned_in: bool = True
    max_date_shift_days: int = Field(365, ge=1, le=3650)
    unlisted_attributes: Literal["remove", "keep"] = Field(
        "remove", description="standard attributes outside Table E.1-1: remove all but a safe list, or keep them "
        "(free text, names and dates outside the table go either way)")


class PreprocessConfig(_Section):
    roi_size: tuple[int, int, int] = (32, 32, 32)
    spacing: tuple[float, float, float] = (4.0, 4.0, 4.0)
    ct_window: tuple[float, float] = (-200.0, 300.0)
    mr_normalisation: Literal["percentile", "zscore"] = "percentile"
    mr_percentiles: tuple[float, float] = (1.0, 99.0)
    crop_foreground: bool = True
    splits: dict[str, float] = {"train": 0.55, "val": 0.1, "test": 0.15, "holdout": 0.2}
    min_cases_per_split: int = Field(1, ge=1)

    @field_validator("roi_size")
    @classmethod
    def _roi_multiple_of_8(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        for n in v:
            if n % 8 or n < 16:
                raise ValueError(f"each ROI side must be a multiple of 8 and >= 16, got {list(v)}")
        return v

    @field_validator("splits")
    @classmethod
    def _splits_sum(cls, v: dict[str, float]) -> dict[str, float]:
        required = {"train", "val", "test", "holdout"}
        if set(v) != required:
            raise ValueError(f"splits must have exactly the keys {sorted(required)}, got {sorted(v)}")
        if abs(sum(v.values()) - 1.0) > 1e-6 or min(v.values()) <= 0:
            raise ValueError(f"split fractions must be > 0 and sum to 1, got {v}")
        return v


class DPConfig(_Section):
    epsilon: float = Field(..., gt=0, description="privacy budget of the whole run (smaller: more noise, more privacy; 1-10 is usual)")
    delta: float = Field(1e-5, gt=0, lt=1, description="chance the epsilon bound fails; must be below 1 / training cases (checked at "
                         "training)")
    max_grad_norm: float = Field(1.0, gt=0, description="each case's gradient is clipped to this L2 norm before noise is added")


def _refused_with_dp(settings: list[tuple[str, object, object]], why: str) -> None:
    """Raise naming each (key, value, value allowed with dp) whose value differs, and ``why``."""
    bad = [f"{k}: {v} (allowed with dp: {ok})" for k, v, ok in settings if v != ok]
    if bad:
        raise ValueError("dp is set, but " + "; ".join(bad) + ": " + why)


class CGANConfig(_Section):
    steps: int = Field(600, ge=1)
    batch_size: int = Field(8, ge=1)
    z_dim: int = Field(64, ge=4)
    base_channels: int = Field(8, ge=4)
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    loss: Literal["hinge", "nonsaturating", "wgan-gp"] = "hinge"
    r1_gamma: float = Field(1.0, ge=0)
    r1_every: int = Field(4, ge=1)
    gp_weight: float = Field(10.0, ge=0)
    ema_decay: float = Field(0.99, ge=0, lt=1)
    diffaugment: bool = Field(True, description="differentiable augmentation of real and fake before the discriminator "
                              "(flips, translation, intensity, cutout), each applied with probability augment_p")
    ada_target: float = Field(
        0.6, ge=0, le=1, description="adaptive augmentation (ADA): augment_p rises while the share of real cases the "
        "discriminator scores positive exceeds this (it is memorising them) and falls otherwise; 0: fixed augment_p = 1 "
        "(plain DiffAugment, every batch augmented)")
    ada_images: int = Field(2000, ge=1, description="real cases shown for augment_p to move from 0 to 1 (ADA speed)")
    mode_seeking: float = Field(
        0.03, ge=0, description="weight of the mode-seeking term (MSGAN): the generator pays 1 / (how much its samples of "
        "one condition change with the noise), against the collapse where every noise gives the same case; 0: off")
    minibatch_std: bool = Field(True, description="minibatch standard deviation channel in the discriminator (against mode collapse)")
    upsample: Literal["nearest", "trilinear"] = Field(
        "trilinear", description="x2 upsampling in the generator: trilinear (smooth background) or nearest (a faint "
        "checkerboard speckle in the background; docs/benchmarks.md)")
    label_volume_weight: float = Field(
        1.0, ge=0, description="conditioning: class. Weight of a term matching each label's volume distribution among "
        "generated cases of a condition to that among real cases of the condition (1-D Wasserstein of log volumes): the "
        "rare condition's defining structure is drawn, at its size and frequency; 0: off")
    conditioning: Literal["class", "mask"] = Field(
        "class", description="class: generate image + mask from noise and the condition; mask: SPADE generator that "
        "paints an image for a given label map (synthesis then needs masks)"
    )
    dp: DPConfig | None = Field(
        None, description="differentially private training of the discriminator, the only network that sees training cases "
        "(DP-SGD on its real-case terms); the generator learns from it alone. {epsilon, delta, max_grad_norm}; null: off. Needs "
        "minibatch_std: false, ada_target: 0, label_volume_weight: 0 and conditioning: class; docs/privacy.md")

    @model_validator(mode="after")
    def _dp_settings(self) -> CGANConfig:
        if self.dp is not None:
            _refused_with_dp([("minibatch_std", self.minibatch_std, False), ("ada_target", self.ada_target, 0.0),
                              ("label_volume_weight", self.label_volume_weight, 0.0), ("conditioning", self.conditioning, "class")],
                             "each would use the training cases outside the differential-privacy guarantee (a batch statistic of "
                             "real cases, their discriminator scores, their label volumes, their masks)")
        return self


class CVAEConfig(_Section):
    steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    latent_dim: int = Field(64, ge=2)
    base_channels: int = Field(8, ge=4)
    lr: float = Field(
        3e-4, gt=0, description="Adam learning rate of encoder and decoder; 1e-3 let the encoder collapse (every case "
        "encoded to one point) in two of four seeds on AdrenalMNIST3D, 3e-4 in none of three (docs/benchmarks.md)")
    kl_weight: float = Field(
        0.02, ge=0, description="beta of a per-voxel ELBO: the KL (nats per case) is divided by the voxels per case, so the "
        "weight means the same at 16^3 and 128^3; too large and the decoder ignores its latent (every sample alike: 0.1 "
        "and 0.05 on AdrenalMNIST3D by 1,000 steps), too small and N(0, I) samples fall between the cases it learnt "
        "(stray blobs at 0.005 with latent_prior: standard; the fitted prior samples where the codes are); docs/benchmarks.md")
    kl_anneal_steps: int = Field(100, ge=0)
    free_bits: float = Field(
        0.0, ge=0, description="nats per latent dimension (batch mean) below which the KL is not penalised (free bits, "
        "Kingma et al. 2016; conv encoder): once the decoder ignores a dimension, Adam otherwise follows the tiny KL "
        "gradient alone and the encoder's codes collapse onto the prior; 0: off")
    mask_weight: float = Field(1.0, ge=0, description="weight of the mask loss against the image reconstruction")
    mask_label_weighting: Literal["none", "rarity"] = Field(
        "none", description="cross-entropy weight per label: none, or rarity (1 / sqrt of the label's voxel share in the "
        "training masks, capped at 50); rarity draws every label too large (hippocampus: 1.4-1.6x the real volume, "
        "docs/benchmarks.md): the Dice term alone already gives a small label its full weight")
    mask_dice_weight: float = Field(
        1.0, ge=0, description="weight of a soft Dice per foreground label (batch Dice) added to the mask cross-entropy: every "
        "label counts the same whatever its size; 0: cross-entropy only")
    latent_prior: Literal["fitted", "standard"] = Field(
        "fitted", description="what synthesis draws the latent from: fitted (after training, a Gaussian per condition fitted "
        "to the encoder's codes of that condition's training cases; AdrenalMNIST3D: MMD^2 0.26 -> 0.01 and samples as "
        "varied as real cases, docs/benchmarks.md) or standard (N(0, I), the textbook VAE prior). VAE-GAN: conv backbone only")
    prior_shrinkage: float = Field(
        0.1, ge=0, le=1, description="fitted prior: weight of the covariance's diagonal (1: independent dimensions); keeps "
        "it full rank when a condition has fewer cases than latent dimensions")
    prior_min_cases: int = Field(
        5, ge=2, description="fitted prior: a condition with fewer training cases samples the distribution fitted to all "
        "training cases (a mean of two or three codes is close to one patient's code; the privacy gates judge the "
        "result either way); with 5 the demo's 7 lesion cases get their own fit and the samples hold the lesion, "
        "pooled they mostly do not (docs/benchmarks.md). Like prior_shrinkage, read at export only: changing it "
        "refits the prior without retraining")
    dp: DPConfig | None = Field(
        None, description="differentially private training (DP-SGD, opacus accountant): {epsilon, delta, max_grad_norm}; "
        "null: off. Needs latent_prior: standard and mask_label_weighting: none (both would fit values to the training "
        "cases outside the guarantee); the VAE-GAN also backbone: conv, minibatch_std: false and perceptual_weight: 0, "
        "and its discriminator is trained with DP-SGD too; docs/privacy.md")

    @model_validator(mode="after")
    def _dp_settings(self) -> CVAEConfig:
        if self.dp is not None:
            _refused_with_dp([("latent_prior", self.latent_prior, "standard"), ("mask_label_weighting", self.mask_label_weighting, "none")],
                             "those fit values to the training cases outside the differential-privacy guarantee")
        return self


class VAEGANConfig(CVAEConfig):
    adv_weight: float = Field(0.05, ge=0, description="weight of the adversarial loss in the VAE step")
    lr_d: float = Field(2e-4, gt=0)
    adv_start: int = Field(50, ge=0, description="step from which the adversarial loss is used")
    prior_adversarial: bool = Field(
        False, description="the discriminator also judges samples decoded from the prior (Larsen et al. 2016), not "
        "only reconstructions, so what synthesis draws is trained to look real (AdrenalMNIST3D: lower MMD, did not stop the "
        "collapse of the prior samples; docs/benchmarks.md)")
    mode_seeking: float = Field(
        0.0, ge=0, description="weight of a mode-seeking term (MSGAN, as train.cgan.mode_seeking) on samples decoded from "
        "the prior: the decoder pays 1 / (how much its samples of one condition change with the latent); off by default: "
        "0.001 and 0.0001 made the decoder add noise on AdrenalMNIST3D (docs/benchmarks.md)")
    minibatch_std: bool = Field(
        True, description="conv backbone: minibatch standard deviation channel in the discriminator, so a batch of "
        "reconstructions that all look alike is told from real cases (against the decoder ignoring its latent)")
    backbone: Literal["conv", "autoencoderkl"] = Field(
        "conv", description="conv: vector latent (samples well from the prior); autoencoderkl: MONAI AutoencoderKL "
        "with a spatial latent + MONAI PatchDiscriminator (the MONAI recipe)")
    kl_channels: tuple[int, ...] = Field((32, 64, 64), min_length=2, description="autoencoderkl: channels per level")
    latent_channels: int = Field(3, ge=1, description="autoencoderkl: channels of the spatial latent")
    num_res_blocks: int = Field(1, ge=1)
    attention_levels: tuple[bool, ...] = Field((False, False, True), description="autoencoderkl: self-attention per level")
    norm_num_groups: int = Field(16, ge=1)
    disc_layers: int = Field(3, ge=1, description="autoencoderkl: PatchDiscriminator layers")
    disc_channels: int = Field(32, ge=4)
    perceptual_weight: float = Field(0.0, ge=0, description="weight of the optional perceptual loss (0: off)")
    perceptual_network: str | None = Field(
        None, description="local path of the perceptual loss's feature network: models/encoder/encoder.pt or a TorchScript "
        "file (e.g. MedicalNet traced, docs/user-guide.md); nothing is downloaded")
    perceptual_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="SHA-256 of perceptual_network; TorchScript "
                                          "is code and is loaded only when its digest equals this (docs/privacy.md)")

    @model_validator(mode="after")
    def _kl_shape(self) -> VAEGANConfig:
        if self.dp is not None:
            _refused_with_dp([("backbone", self.backbone, "conv"), ("minibatch_std", self.minibatch_std, False),
                              ("perceptual_weight", self.perceptual_weight, 0.0)],
                             "DP-SGD computes each training case's gradient alone, through encoder, decoder and discriminator; a "
                             "batch statistic (minibatch_std) or networks without per-case gradients (autoencoderkl's "
                             "batch-normalised discriminator, a TorchScript perceptual network) cannot")
        if len(self.attention_levels) != len(self.kl_channels):
            raise ValueError(f"attention_levels {list(self.attention_levels)} needs one entry per kl_channels level {list(self.kl_channels)}")
        if any(c % self.norm_num_groups for c in self.kl_channels):
            raise ValueError(f"every kl_channels entry {list(self.kl_channels)} must be a multiple of norm_num_groups {self.norm_num_groups}")
        if self.perceptual_weight > 0 and not self.perceptual_network:
            raise ValueError(f"perceptual_weight is {self.perceptual_weight} but perceptual_network is not set: give a local "
                             "encoder.pt or TorchScript path, or set perceptual_weight: 0")
        return self


class CounterfactualConfig(_Section):
    steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    base_channels: int = Field(16, ge=4, description="channels of the inpainting U-Net's first level (doubling per level) and of the discriminator")
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    rec_weight: float = Field(10.0, ge=0, description="weight of the L1 between the painted edit region and the real case's (training)")
    adv_weight: float = Field(1.0, ge=0, description="weight of the discriminator's judgement of the painted region and its surround; 0: L1 only")
    adv_start: int = Field(50, ge=0, description="steps of L1 alone before the adversarial term starts")
    r1_gamma: float = Field(1.0, ge=0)
    r1_every: int = Field(4, ge=1)
    ema_decay: float = Field(0.99, ge=0, lt=1)
    margin: int = Field(2, ge=1, le=8, description="voxels the edit region extends beyond the changed structure: the surround "
                        "repainted so that the structure blends into the real case (everything further out is the real case, unchanged)")
    defining_presence_gap: float = Field(
        0.5, gt=0, le=1, description="a label is inserted when its presence share among rare-condition training cases exceeds "
        "that among the others by at least this (e.g. a lesion)")
    defining_volume_ratio: float = Field(
        1.15, gt=1, description="a label present in both is rescaled when its median volume in rare-condition training cases "
        "differs from the others' by this factor either way (e.g. a smaller hippocampus)")


class ModelSection(_Section):
    """The settings every model section has. A plug-in model (``medsynth.models`` entry point) names its
    own subclass as the ``config_class`` attribute of its module class to have its keys validated like the
    built-in ones; without one, its other keys reach the module as they are written."""

    model_config = ConfigDict(extra="allow", frozen=True)
    steps: int = Field(400, ge=1)
    batch_size: int = Field(8, ge=1)


BUILTIN_MODELS = ("cgan", "cvae", "vaegan", "counterfactual")


class TrainConfig(_Section):
    # extra keys are plug-in models' sections, checked in _models_and_plugin_sections
    model_config = ConfigDict(extra="allow", frozen=True)
    models: list[str] = ["cgan", "cvae", "counterfactual"]
    accelerator: Literal["cpu", "gpu", "auto"] = "cpu"
    devices: int = Field(1, ge=1)
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    num_workers: int = Field(0, ge=0)
    compile: Switch = Field("auto", description="torch.compile the networks (auto: on a GPU)")
    channels_last: Switch = Field(
        "off", description="channels-last 3D memory format (auto: on a GPU). Off by default: on an H100 it gave no gain for "
        "the VAE-GAN at 96x96x64 and was 12% slower at 64^3 (docs/benchmarks.md)")
    activation_checkpointing: bool = Field(False, description="recompute activations in backward to save GPU memory")
    diversity_alarm: float = Field(
        0.5, ge=0, le=1, description="mode-collapse alarm: warn (and record in train.json) when samples of a fixed noise "
        "batch are less than this fraction as diverse as real pairs; 0 turns it off")
    cgan: CGANConfig = CGANConfig()
    cvae: CVAEConfig = CVAEConfig()
    vaegan: VAEGANConfig = VAEGANConfig()
    counterfactual: CounterfactualConfig = CounterfactualConfig()

    @model_validator(mode="after")
    def _models_and_plugin_sections(self) -> TrainConfig:
        """Every name in ``models`` is a registered model; every key beyond the settings above is the
        section of a registered plug-in model, validated by its ``config_class`` (or :class:`ModelSection`)."""
        from medsynth.models import registry  # reads entry points; a plug-in is imported only if it has a section

        registered = registry.available()
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        problems = []
        for name in self.models:
            if name not in registered:
                problems.append(f"train.models: {name!r} is not a registered model; registered: {', '.join(registered)}")
            elif name not in BUILTIN_MODELS and name not in extra:
                problems.append(f"train.{name}: missing: a plug-in model in train.models needs its own section (dvc.yaml "
                                f"tracks train.<model>); write `{name}: {{}}` under train for its defaults")
        for key, value in list(extra.items()):
            if key not in registered:
                problems.append(f"train.{key}: unknown key (value {value!r}); not a setting of train and no model of that "
                                f"name is registered ({', '.join(registered)})")
                continue
            section = getattr(registry.get(key), "config_class", None) or ModelSection
            try:
                extra[key] = section.model_validate(value if value is not None else {})
            except ValidationError as exc:
                problems += [_describe_error({**e, "loc": ("train", key, *e["loc"])}) for e in exc.errors()]
        for name in self.models:
            dp = getattr(self.section(name), "dp", None)
            if dp is None:
                continue
            if self.precision == "16-mixed":
                problems.append(f"train.precision: 16-mixed with train.{name}.dp: the gradient scaler of 16-mixed rescales the "
                                "gradients DP-SGD sets itself; use bf16-mixed or 32-true")
            if self.devices * self.num_nodes > 1:
                problems.append(f"train.devices x train.num_nodes: {self.devices * self.num_nodes} with train.{name}.dp: DP-SGD "
                                "here runs on one device (each process would draw its own batch and noise, outside the accountant); "
                                "set devices: 1 and num_nodes: 1")
        if problems:
            raise PydanticCustomError("medsynth_config", "{detail}", {"detail": "\n  ".join(problems)})
        return self

    def section(self, name: str) -> BaseModel | None:
        """The settings of model ``name`` (built-in or plug-in); None if it has none."""
        if name in BUILTIN_MODELS:
            return getattr(self, name)
        return (self.__pydantic_extra__ or {}).get(name)


class SynthConfig(_Section):
    per_condition: dict[str, int] = Field(
        {"normal": 8, "lesion": 8}, description="synthetic cases per condition; each key a condition of the cohort (the demo's "
        "normal and lesion, the labels CSV's conditions or data.npz_class_names; checked at load)")
    temperature: float = Field(1.0, gt=0, le=2.0)
    batch_size: int = Field(8, ge=1)
    min_island_voxels: int = Field(4, ge=0)
    formats: list[Literal["nifti", "dicom"]] = Field(["nifti", "dicom"], min_length=1,
                                                     description="nifti is always written; dicom adds a CT/MR series + SEG per case")


class GatesConfig(_Section):
    mia_auc_max: float = Field(0.6, ge=0.5, le=1, description="membership gates: highest allowed AUC of the strongest attack the "
                               "audience allows, on all cases and on the rare condition's (which fails only when its 95% "
                               "interval also clears 0.5; above the threshold otherwise it warns)")
    dcr_share_max: float = Field(0.55, ge=0, le=1)
    copies_max: int = Field(0, ge=0, description="most near-copies of training patients allowed (evaluate.copy_distance_factor)")
    nn_distance_ratio_max: float = Field(1.5, gt=0, description="median synthetic->train NN distance / test->train")
    seam_ratio_max: float = Field(
        1.5, gt=1, description="counterfactual cases: fail when the gradient magnitude on the edit region's border differs from "
        "the source case's there by more than this factor either way (median over cases): a visible seam or a smeared surround")
    warn_margin: float = Field(0.05, ge=0, le=1)
    condition_min_real_cases: int = Field(
        3, ge=1, description="condition-fidelity gate: fewer real cases of the rare condition than this (all splits; outside "
        "the train split for the classifier check) and the check is inconclusive")
    condition_presence_gap_max: float = Field(
        0.5, gt=0, le=1, description="condition-fidelity gate: fail when the share of synthetic rare cases that contain a label "
        "differs from the share among real rare cases by more than this (a missing lesion: 0 of 8 against 6 of 6 is 1.0)")
    condition_volume_ratio_min: float = Field(
        0.5, gt=0, lt=1, description="condition-fidelity gate: lowest allowed median volume of a label in synthetic rare cases, "
        "as a multiple of the real rare cases' median; for a label that defines the condition by its volume the range is "
        "narrowed to half way (log scale) to the other conditions' median")
    condition_volume_ratio_max: float = Field(
        2.0, gt=1, description="condition-fidelity gate: highest allowed median volume ratio, synthetic / real rare cases")
    condition_classifier_balanced_accuracy_min: float = Field(
        0.7, ge=0.5, le=1, description="condition-fidelity gate: the real-only classifier must reach this balanced accuracy on "
        "real held-out cases for its verdict on synthetic cases to count; below it the classifier check is inconclusive")
    condition_classifier_recall_drop_max: float = Field(
        0.3, ge=0, le=1, description="condition-fidelity gate: the classifier's recall on synthetic rare cases may be at most "
        "this much below its recall on real held-out rare cases")
    condition_classifier_failure: Literal["warn", "fail"] = Field(
        "warn", description="condition-fidelity gate: state when the classifier recall drops by more than allowed (the "
        "structural checks always fail)")


class EncoderConfig(_Section):
    steps: int = Field(200, ge=1, description="self-supervised training steps on the real train split")
    batch_size: int = Field(16, ge=2)
    dim: int = Field(64, ge=8, description="feature dimension")
    width: int = Field(16, ge=4, description="channels of the first level")
    weights: str | None = Field(None, description="local TorchScript encoder (N,1,D,H,W)->(N,F) to use instead (e.g. MedicalNet)")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="SHA-256 of the weights file; TorchScript is code and "
                               "is loaded only when its digest equals this (docs/privacy.md)")

    @model_validator(mode="after")
    def _pin_needs_weights(self) -> EncoderConfig:
        if self.sha256 and not self.weights:
            raise ValueError("sha256 is set but weights is not: the digest pins the file named by evaluate.encoder.weights")
        return self


class UtilityConfig(_Section):
    enabled: bool = Field(True, description="train downstream models on real, real+augmentation, real+synthetic, "
                          "real+synthetic_rare and synthetic data, and score them on the real test split")
    steps: int = Field(200, ge=1, description="most training steps per downstream model (every arm and seed the same budget)")
    eval_every: int = Field(25, ge=1, description="score the model on the real val split every this many steps; the best "
                            "weights are kept")
    patience: int = Field(2, ge=1, description="stop after this many val scorings without improvement")
    lr: float = Field(3e-3, gt=0, le=1, description="Adam learning rate of the downstream models")
    seeds: int = Field(3, ge=1, le=20, description="repeats per arm (different initial weights); each test case's score is "
                       "averaged over them")
    batch_size: int = Field(4, ge=1)
    synthetic_ratio: float = Field(1.0, gt=0, description="synthetic cases per real case in the real+synthetic and "
                                   "real+synthetic_rare arms")
    channels: tuple[int, ...] = Field((8, 16, 32), min_length=2, description="UNet / classifier channels per level")
    max_dice_drop: float = Field(0.05, ge=0, le=1, description="utility gate: real+synthetic may lose at most this much Dice (or AUC) "
                                 "against real alone (paired mean over test cases; warn when its 95% CI reaches beyond)")
    min_baseline: dict[Literal["dice", "auc"], float] = Field(
        {"dice": 0.5, "auc": 0.7}, description="the real-only model must reach this on the real test split, else the utility "
        "gate is inconclusive (never pass): a comparison with a baseline that learned nothing measures noise. Dice 0.5 is far "
        "above what an untrained or background-only model scores on a small structure (about 0.03 at 3% foreground) and "
        "below what a working small UNet reaches on a learnable task (0.8 on hippocampus MR); ROC AUC 0.7 is the usual "
        "floor of acceptable discrimination, 0.5 being chance")

    @field_validator("min_baseline", mode="before")
    @classmethod
    def _baseline_defaults(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            raise ValueError("min_baseline must be a mapping like {dice: 0.5, auc: 0.7} (Dice floor for segmentation, "
                             "ROC AUC floor for classification)")
        v = {"dice": 0.5, "auc": 0.7, **v}
        for key, val in v.items():
            if isinstance(val, (int, float)) and not 0 <= val <= 1:
                raise ValueError(f"min_baseline.{key} must be in [0, 1], got {val}")
        return v


class ConditionalConfig(_Section):
    """evaluate.conditional: per-condition, per-label fidelity and the real-only condition classifier."""

    label_names: dict[int, str] = Field({}, description="name per mask label for tables and gate sentences, e.g. {1: organ, 2: lesion}")
    defining_presence_gap: float = Field(
        0.5, gt=0, le=1, description="a label defines the rare condition by its presence (or absence) when the share of real "
        "rare train cases that contain it exceeds (falls short of) the other conditions' share by this much")
    defining_volume_ratio: float = Field(
        1.15, gt=1, description="a label defines the rare condition by its volume when its median volume in real rare train "
        "cases is at least this multiple of the other conditions' median, or at most its inverse ...")
    defining_volume_separation: float = Field(
        0.75, gt=0.5, lt=1, description="... and the volumes separate the conditions: ROC AUC of the rare cases' volumes against "
        "the others' at least this, or at most 1 minus it")
    classifier: bool = Field(True, description="train the real-only condition classifier (image + one-hot mask)")
    classifier_steps: int = Field(150, ge=1, description="training steps of the condition classifier")
    classifier_batch_size: int = Field(16, ge=2, description="condition classifier batch size (class-balanced)")
    classifier_channels: tuple[int, ...] = Field((8, 16, 32), min_length=2, description="condition classifier channels per level")
    figure_cases: int = Field(3, ge=1, le=8, description="cases per condition and source in the overlay figure")


class EvalConfig(_Section):
    bootstrap: int = Field(200, ge=10)
    audience: Literal["internal", "share"] = Field(
        "share", description="who gets the synthetic data: share (outside the hospital; whoever gets a model can run it, so "
        "the membership gates take the strongest of the black-box and the white-box attacks) or internal (the models stay "
        "inside; black-box attacks on the synthetic cases only). share is the safe default")
    copy_distance_factor: float = Field(
        0.5, gt=0, lt=1, description="a synthetic case is a near-copy when its aligned distance to a training patient (flips, "
        "shifts and intensity changes undone; image and label map together or either alone) is below this fraction of the "
        "smallest distance between two different real patients. An average of two patients sits near 0.7 of it")
    strict: bool = False
    gates: GatesConfig = GatesConfig()
    encoder: EncoderConfig = EncoderConfig()
    utility: UtilityConfig = UtilityConfig()
    conditional: ConditionalConfig = ConditionalConfig()


class ReportConfig(_Section):
    title: str = "medsynth synthesis report"
    slices_per_condition: int = Field(3, ge=1, le=12)


class Params(_Section):
    seed: int = 1234
    data: DataConfig = DataConfig()
    deid: DeidConfig = DeidConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    train: TrainConfig = TrainConfig()
    synthesize: SynthConfig = SynthConfig()
    evaluate: EvalConfig = EvalConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Params:
        if self.data.rare_condition == self.data.default_condition:
            raise ValueError("data.rare_condition and data.default_condition must differ")
        problems = roi_problems(self.preprocess.roi_size, self.train)
        conditions = cohort_conditions(self.data)
        unknown = sorted(set(self.synthesize.per_condition) - conditions) if conditions is not None else []
        if unknown and conditions is not None:
            problems.append(f"synthesize.per_condition: {', '.join(map(repr, unknown))} is not a condition of this cohort; its conditions "
                            f"are {', '.join(map(repr, sorted(conditions)))} ({_conditions_source(self.data)})")
        if problems:
            raise PydanticCustomError("medsynth_config", "{detail}", {"detail": "\n  ".join(problems)})
        return self


DEMO_CONDITIONS = ("normal", "lesion")  # what the embedded demo cohort's cases are labelled


def cohort_conditions(data: DataConfig) -> set[str] | None:
    """The conditions the cohort's cases can have, known from params.yaml and the labels CSV alone: the
    demo's, the npz class names, or the labels CSV's conditions plus ``default_condition`` (cases the CSV
    omits). None for DICOM/NIfTI input without a labels CSV (every case gets ``default_condition``: a
    cohort to de-identify or convert, not yet to synthesize from; the train stage checks
    ``synthesize.per_condition`` against the preprocessed cohort) and for a CSV that ingest refuses
    (ingest names the file and the line)."""
    if data.input == "demo":
        return set(DEMO_CONDITIONS)
    if data.input.endswith(".npz"):
        return set(data.npz_class_names)
    if not data.labels:
        return None
    try:
        rows = read_labels(data.labels)
    except LabelsError:
        return None
    return {r.condition for r in rows.values()} | {data.default_condition}


def _conditions_source(data: DataConfig) -> str:
    if data.input == "demo":
        return "the demo cohort"
    if data.input.endswith(".npz"):
        return "data.npz_class_names"
    return f"data.labels {data.labels} and data.default_condition"


def roi_problems(roi: tuple[int, int, int], train: TrainConfig) -> list[str]:
    """What keeps each built-in model in ``train.models`` from taking ROI ``roi`` (plug-ins check their own).
    The conv networks grow from a 4^3 seed by doubling one size for all three axes (cgan.py, cvae.py); the
    AutoencoderKL halves each axis once per kl_channels level after the first."""
    conv = [m for m in train.models if m in ("cgan", "cvae", "counterfactual") or (m == "vaegan" and train.vaegan.backbone == "conv")]
    problems = []
    if conv and not (len(set(roi)) == 1 and roi[0] & (roi[0] - 1) == 0):
        side = 1 << (max(roi) - 1).bit_length()
        problems.append(f"preprocess.roi_size: {list(roi)} is not allowed for train.models {', '.join(conv)}: the three sides "
                        f"must be equal and a power of two (16, 32, 64, 128, ...), e.g. {[side] * 3}; only vaegan with "
                        "train.vaegan.backbone: autoencoderkl takes a non-cubic ROI")
    if "vaegan" in train.models and train.vaegan.backbone == "autoencoderkl":
        down = 2 ** (len(train.vaegan.kl_channels) - 1)
        if any(s % down for s in roi):
            problems.append(f"preprocess.roi_size: {list(roi)} is not allowed for train.vaegan.backbone autoencoderkl with "
                            f"kl_channels {list(train.vaegan.kl_channels)}: each side must be a multiple of {down}")
    return problems


def _describe_error(err: ErrorDetails) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "<root>"
    value = err.get("input")
    msg = err["msg"]
    ctx = err.get("ctx") or {}
    if err["type"] == "medsynth_config":  # already worded with its key(s)
        return ctx["detail"]
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key (value {value!r}); check the spelling against params.yaml docs"
    if err["type"] == "literal_error" and "expected" in ctx:
        return f"{key}: {value!r} is not allowed; allowed: {ctx['expected']}"
    return f"{key}: {value!r} is not allowed: {msg}"


def parse_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate a params mapping. Raises :class:`ConfigError` listing every bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        lines = [_describe_error(e) for e in exc.errors()]
        raise ConfigError(f"invalid {source}:\n  " + "\n  ".join(lines)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, source=str(path))
