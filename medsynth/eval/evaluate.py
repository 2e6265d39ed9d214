"""Evaluate stage: fidelity, privacy and gates for every trained model, plus the report's figures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from medsynth.cohort import data_info_from, load_bank, read_preprocess_info  # noqa: E402
from medsynth.config import EvalConfig, PreprocessConfig  # noqa: E402
from medsynth.data.transforms import to_model_space  # noqa: E402
from medsynth.eval.conditional import (  # noqa: E402
    classifier_check,
    condition_fidelity_gate,
    conditional_fidelity,
    fit_condition_classifier,
    label_keys,
    label_measures,
)
from medsynth.eval.counterfactual import INTERNAL_ONLY, read_counterfactual_set, seam_and_look, structure_copy_check  # noqa: E402
from medsynth.eval.encoder import embed, load_encoder, standardiser  # noqa: E402
from medsynth.eval.features import cached_features, volume_features  # noqa: E402
from medsynth.eval.fidelity import fidelity_metrics  # noqa: E402
from medsynth.eval.gates import counterfactual_gates, evaluate_gates, model_gates, overall  # noqa: E402
from medsynth.eval.metrics import feature_fidelity, ms_ssim_diversity  # noqa: E402
from medsynth.eval.privacy import audit_privacy, privacy_metrics, privacy_reference  # noqa: E402
from medsynth.eval.utility import (  # noqa: E402
    classification_utility,
    cross_model_difference,
    segmentation_utility,
    shared_part,
    utility_gate,
    utility_sentence,
)
from medsynth.io.writers import atomic_path, write_json_atomic  # noqa: E402
from medsynth.models import registry  # noqa: E402
from medsynth.synth.counterfactual import is_counterfactual_set  # noqa: E402
from medsynth.synth.sampler import file_sha256, load_sampler, model_space_arrays  # noqa: E402


class GateFailure(RuntimeError):
    pass


LEARNED_PRIVACY_KEYS = ("membership_auc_blackbox", "membership_auc_blackbox_ci", "dcr_share", "dcr_share_ci",
                        "authenticity", "nndr_mean", "dcr_synthetic_to_train", "dcr_holdout_to_train")


def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _sidecar(sdir: Path, row: dict) -> dict:
    path = Path(sdir) / "sidecars" / f"{row['case_id']}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _savefig(fig, dest: Path) -> None:
    with atomic_path(dest, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _whitebox(model: str, ckpt: Path, info: dict, members: tuple, nonmembers: tuple) -> dict | None:
    """Load the full checkpoint (weights only) and score real cases with D (GAN) or the ELBO (VAE):
    the white-box attack's scores of members and non-members (None: no checkpoint or no score)."""
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
    signal = "discriminator score" if hasattr(module, "discriminator_score") else "negative ELBO loss"
    return {"signal": signal, "members": s_m, "nonmembers": s_n}


def evaluate_models(
    preprocess_dir: Path,
    synth_root: Path,
    models_root: Path,
    models: list[str],
    pre_cfg: PreprocessConfig,
    cfg: EvalConfig,
    seed: int,
    out_dir: Path,
    encoder_path: Path | None = None,
    rare_condition: str | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """Fidelity (weight-free and learned features), privacy, utility and gates for every model, written
    to ``out_dir`` (fidelity.json, privacy.json, utility.json, gates.json, figures/) and returned as
    ``{"overall", "gates", "fidelity", "privacy", "utility"}`` (the last three keyed by model).

    ``encoder_path``: the encoder stage's ``encoder.pt`` (or a user's TorchScript encoder); without one
    the learned-feature metrics are left out and say so."""
    info = read_preprocess_info(preprocess_dir)
    modality = info["modality"]
    n_labels = max(1, int(info["n_mask_labels"]))
    banks = {s: load_bank(preprocess_dir, (s,), info) for s in ("train", "test", "holdout")}
    # the real sets' features are computed once per content (preprocessing, cases, encoder) and cached
    split_keys = {s: [info["transform_hash"], *(r["case_id"] for r in b[2])] for s, b in banks.items()}
    feats = {s: cached_features(cache_dir, f"weightfree-{s}", ["weightfree-v1", str(n_labels), *split_keys[s]],
                                lambda b=b: volume_features(b[0][:, 0].float().numpy(), b[0][:, 1].float().numpy(), n_labels))
             for s, b in banks.items()}
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    fidelity_all, privacy_all, gates = {}, {}, []
    to_model = lambda a: to_model_space(a, pre_cfg, modality)  # noqa: E731
    train_imgs = banks["train"][0][:, 0].float().numpy()
    train_masks = banks["train"][0][:, 1].float().numpy()
    encoder = _load_encoder(encoder_path, cfg)
    learned, scale = None, None
    if encoder:  # real sets embedded and standardised once; each model's synthetic set with the same scale
        enc_file = Path(cfg.encoder.weights) if cfg.encoder.weights else encoder_path
        enc_sum = file_sha256(enc_file)
        raw = {s: cached_features(cache_dir, f"learned-{s}", ["learned-v1", enc_sum, *split_keys[s]],
                                  lambda b=b: embed(encoder[0], b[0].float().numpy(), image_only=encoder[1]))
               for s, b in banks.items()}
        scale = standardiser(raw["train"])
        learned = {s: scale(v) for s, v in raw.items()}
    rare_index = info["conditions"].index(rare_condition) if rare_condition in info["conditions"] else len(info["conditions"]) - 1
    # the real side of the privacy audit (aligned vectors, real-to-real baseline), shared by every model
    priv_ref = privacy_reference(banks["train"][0].float().numpy(), banks["train"][1].numpy(), banks["holdout"][0].float().numpy(),
                                 banks["holdout"][1].numpy(), feats["train"], feats["holdout"], rare_index,
                                 reference_features=feats["test"])  # the density-ratio attack's population: neither members nor non-members
    ms_ssim_real = ms_ssim_diversity(train_imgs, seed=seed)
    checkpoints: dict[str, str | None] = {}  # the model.pt each model's gates were measured on (export-bundle checks it)
    utility_all, shared_arms = {}, None  # the utility arms without synthetic data (real, real+augmentation): trained once, shared by every model
    for k, model in enumerate(models):
        sdir = Path(synth_root) / model
        rows = _read_rows(sdir / "synthetic_manifest.csv")
        counterfactual = is_counterfactual_set(rows)
        checkpoints[model] = _sidecar(sdir, rows[0]).get("checkpoint_sha256") if rows else None
        s_img, s_mask, s_cond = model_space_arrays(sdir, rows, to_model)
        s_y = np.array([info["conditions"].index(c) for c in s_cond])
        f_syn = volume_features(s_img, s_mask, n_labels)
        fid = fidelity_metrics(f_syn, feats["train"], feats["test"], s_img, train_imgs, s_mask, train_masks, seed + k, cfg.bootstrap)
        l_syn = scale(embed(encoder[0], np.stack([s_img, s_mask.astype(np.float32)], 1), image_only=encoder[1])) if learned else None
        per_cond, per_cond_learned = {}, {}
        for ci, cond in enumerate(info["conditions"]):
            sel_s = np.array([c == cond for c in s_cond])
            sel_t = (banks["train"][1] == ci).numpy()
            sel_te = (banks["test"][1] == ci).numpy()
            if sel_s.sum() >= 2 and sel_t.sum() >= 2:
                per_cond[cond] = fidelity_metrics(f_syn[sel_s], feats["train"][sel_t], feats["test"][sel_te] if sel_te.sum() >= 2 else feats["test"],
                                                  s_img[sel_s], train_imgs[sel_t], s_mask[sel_s], train_masks[sel_t], seed + k, max(10, cfg.bootstrap // 4))
            if learned is not None and sel_s.sum() >= 3 and sel_t.sum() >= 3:
                per_cond_learned[cond] = feature_fidelity(
                    l_syn[sel_s], learned["train"][sel_t], learned["test"][sel_te] if sel_te.sum() >= 3 else learned["test"], seed + k, 10)
        fid["per_condition"] = per_cond
        fid["ms_ssim_synthetic"] = ms_ssim_diversity(s_img, seed=seed)
        fid["ms_ssim_real"] = ms_ssim_real
        if learned is not None:
            fid["learned"] = feature_fidelity(l_syn, learned["train"], learned["test"], seed + k, max(10, cfg.bootstrap // 4))
            fid["learned"]["encoder"] = str(encoder_path if cfg.encoder.weights is None else "user weights")
            fid["learned"]["per_condition"] = per_cond_learned
        else:
            fid["learned"] = {"measured": False, "reason": "no encoder (run the encoder stage or set evaluate.encoder.weights)"}
        if cfg.utility.enabled:
            util = _utility(model, preprocess_dir, info, banks, (s_img, s_mask, s_y), n_labels, rare_index, cfg, seed, shared_arms,
                            "counterfactual" if counterfactual else "synthetic")
            shared_arms = shared_part(util) or shared_arms
        else:
            util = {"measured": False, "reason": "evaluate.utility.enabled is false"}
        utility_all[model] = util
        if counterfactual:
            priv, fid["counterfactual"], sources = _counterfactual_checks(model, sdir, rows, s_img, s_mask, banks, Path(models_root), cfg, rare_index)
            gates += counterfactual_gates(model, fid, priv, cfg.gates)
        else:
            whitebox = _whitebox(model, Path(models_root) / model / "checkpoints" / "last.ckpt", info,
                                 (banks["train"][0], banks["train"][1]), (banks["holdout"][0], banks["holdout"][1]))
            priv = audit_privacy(priv_ref, np.stack([s_img, s_mask.astype(np.float32)], 1), f_syn, s_y, cfg.audience, cfg.copy_distance_factor,
                                 seed + k, cfg.bootstrap, whitebox)
            if learned is not None:  # second opinion: the same distance tests in the encoder's feature space
                lp = privacy_metrics(l_syn, learned["train"], learned["holdout"], seed + k, max(20, cfg.bootstrap // 4))
                priv["learned"] = {key: lp[key] for key in LEARNED_PRIVACY_KEYS}
            else:
                priv["learned"] = {"measured": False, "reason": "no encoder (run the encoder stage or set evaluate.encoder.weights)"}
            gates += evaluate_gates(model, fid, priv, cfg.gates)
        fidelity_all[model] = fid
        privacy_all[model] = priv
        gates.append(utility_gate(model, util, cfg.utility, cfg.gates.warn_margin))
        _slices_figure(model, fig_dir, s_img, s_cond, banks, info)
        if counterfactual:
            _counterfactual_pairs_figure(model, fig_dir, s_img, s_mask, sources, fid["counterfactual"])
        else:
            _privacy_figures(model, fig_dir, priv)
            _closest_pairs_figure(model, fig_dir, s_img, train_imgs, priv["copy_detection"])
        _distributions_figure(model, fig_dir, s_img, s_mask, train_imgs, train_masks)
        if k == 0:  # every real case and the real-only condition classifier, built once and shared by every model
            cond_real = _conditional_reference(preprocess_dir, info, banks, n_labels, cfg, seed)
        cond = conditional_fidelity(s_mask, s_cond, cond_real["x"][:, 1], cond_real["y"], cond_real["is_train"], info["conditions"], rare_index,
                                    n_labels, cfg.conditional, seed + k, cfg.bootstrap)
        cond["classifier"] = (classifier_check(cond_real["net"], cond_real["x"], cond_real["y"], cond_real["is_train"], np.stack([s_img, s_mask], 1),
                                               s_cond, info["conditions"], n_labels, cfg.conditional.classifier_steps)
                              if cfg.conditional.classifier else {"measured": False, "reason": "evaluate.conditional.classifier is false"})
        fid["conditional"] = cond
        gates.append(condition_fidelity_gate(model, cond, cond["classifier"], cfg.gates))
        _conditional_overlay_figure(model, fig_dir, s_img, s_mask, s_cond, cond_real, info["conditions"], cond, cfg.conditional)
        _label_volume_figure(model, fig_dir, s_mask, s_cond, cond_real, info["conditions"], cond, n_labels)
        if counterfactual:  # every gate of the model: its cases are real patients' scans, the verdict at best internal use
            for g in model_gates(model, gates):
                g["internal_only"] = True
    for m in models:  # counterfactual sets against the whole-volume generators: the same test cases, seeds and baselines
        if utility_all[m].get("synthetic_kind") != "counterfactual":
            continue
        for other in models:
            if other != m and utility_all[other].get("synthetic_kind") != "counterfactual":
                d = cross_model_difference(utility_all[m], utility_all[other], "real+synthetic_rare", seed)
                if d is not None:
                    utility_all[m]["differences"][f"real+synthetic_rare - {other}'s real+synthetic_rare"] = d
    verdict = overall(gates)
    write_json_atomic(out_dir / "fidelity.json", fidelity_all)
    write_json_atomic(out_dir / "privacy.json", privacy_all)
    write_json_atomic(out_dir / "utility.json", utility_all)
    write_json_atomic(out_dir / "gates.json", {"overall": verdict, "gates": gates, "strict": cfg.strict, "checkpoints": checkpoints})
    failed = [g["gate"] for g in gates if g["state"] == "fail"]
    if cfg.strict and failed:
        raise GateFailure(f"evaluate.strict is true and {len(failed)} gate(s) failed: " + "; ".join(failed))
    return {"overall": verdict, "gates": gates, "fidelity": fidelity_all, "privacy": privacy_all, "utility": utility_all}


def _load_encoder(path: Path | None, cfg: EvalConfig):
    weights = Path(cfg.encoder.weights) if cfg.encoder.weights else path
    if weights is None or not Path(weights).is_file():
        return None
    return load_encoder(weights, cfg.encoder.sha256 if cfg.encoder.weights else None)


def _counterfactual_checks(model: str, sdir: Path, rows: list[dict], s_img: np.ndarray, s_mask: np.ndarray, banks: dict, models_root: Path,
                           cfg: EvalConfig, rare_index: int) -> tuple[dict, dict, np.ndarray]:
    """Privacy (the changed structures' copy check, the internal-only statement) and the seam and look of a
    counterfactual set; and its source images."""
    regions, source_ids = read_counterfactual_set(sdir, rows)
    net = load_sampler(models_root / model / "model.pt").net
    labels, margin = net.prior.changed_labels(), net.margin
    train_x, train_y = banks["train"][0].float().numpy(), banks["train"][1].numpy()
    index = {r["case_id"]: i for i, r in enumerate(banks["train"][2])}
    missing = sorted(set(source_ids) - set(index))
    if missing:
        raise ValueError(f"{sdir}: source case(s) {', '.join(missing[:5])} of the counterfactual cases are not in the train split")
    sources = train_x[[index[c] for c in source_ids], 0]
    rare = train_y == rare_index
    look = seam_and_look(s_img, np.rint(s_mask).astype(np.int64), regions, sources, train_x[rare, 0], np.rint(train_x[rare, 1]).astype(np.int64),
                         labels, margin)
    det = structure_copy_check(s_img, np.rint(s_mask), train_x, train_y, banks["holdout"][0].float().numpy(), banks["holdout"][1].numpy(),
                               rare_index, labels, margin, cfg.copy_distance_factor)
    look["source_case_ids"] = source_ids
    priv = {"kind": "counterfactual", "use": INTERNAL_ONLY, "audience": "internal", "structure_copy_detection": det, "copies": det.get("copies")}
    return priv, look, sources


def _counterfactual_pairs_figure(model, fig_dir, s_img, s_mask, sources: np.ndarray, look: dict, n: int = 4) -> None:
    """Source case beside its counterfactual, slice through the changed structure, with its outline."""
    k = min(n, len(s_img))
    fig, axes = plt.subplots(2, max(1, k), figsize=(2.3 * max(1, k), 4.8), squeeze=False)
    labels = look["changed_labels"]
    for j in range(k):
        sel = np.isin(np.rint(s_mask[j]), labels)
        z = int(np.argwhere(sel).mean(0)[2]) if sel.any() else s_img.shape[-1] // 2
        for row, (vol, title) in enumerate([(sources[j], "source (real)"), (s_img[j], "counterfactual")]):
            ax = axes[row, j]
            ax.imshow(vol[:, :, z].T[::-1], cmap="gray", vmin=-1, vmax=1)
            if row == 1 and sel[:, :, z].any():
                ax.contour(sel[:, :, z].T[::-1].astype(float), levels=[0.5], colors="red", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            seam = look["seam_ratio_to_source_per_case"][j]
            ax.set_title(f"{title}\n{look['source_case_ids'][j]}" if row == 0 else f"{title}\nseam ratio {seam:.2f}", fontsize=7)
    fig.suptitle(f"{model}: real cases (top) and the same cases with the rare condition painted in (bottom; red: changed labels)", fontsize=9)
    _savefig(fig, fig_dir / f"{model}_counterfactual_pairs.png")


def _utility(model: str, preprocess_dir: Path, info: dict, banks: dict, synthetic: tuple, n_labels: int, rare_index: int, cfg: EvalConfig,
             seed: int, shared_arms: dict | None = None, kind: str = "synthetic") -> dict:
    """Utility arms of one model's synthetic set, model selection on the real val split (without one,
    the utility functions hold back part of the train split and say so), and its one-sentence answer."""
    train = (banks["train"][0].float().numpy(), banks["train"][1].numpy())
    test = (banks["test"][0].float().numpy(), banks["test"][1].numpy())
    try:
        vb = load_bank(preprocess_dir, ("val",), info)
        val = (vb[0].float().numpy(), vb[1].numpy())
    except ValueError:  # no case in the val split
        val = None
    if info["modality"] != "SEG" and int(info["n_mask_labels"]) > 0:
        util = segmentation_utility(train, test, synthetic, n_labels, rare_index, cfg.utility, seed, shared_arms, val)
    else:
        util = classification_utility(train, test, synthetic, len(info["conditions"]), rare_index, cfg.utility, seed, shared_arms, val)
    util["synthetic_kind"] = kind
    util["sentence"] = utility_sentence(model, util, cfg.utility)
    return util


def _mid_slices(vol: np.ndarray) -> list[np.ndarray]:
    d, h, w = vol.shape
    return [vol[d // 2].T[::-1], vol[:, h // 2].T[::-1], vol[:, :, w // 2].T[::-1]]


def _slices_figure(model, fig_dir, s_img, s_cond, banks, info) -> None:
    conds = info["conditions"]
    fig, axes = plt.subplots(len(conds), 6, figsize=(12, 2.2 * len(conds)), squeeze=False)
    x_train, y_train = banks["train"][0], banks["train"][1]
    for ci, cond in enumerate(conds):
        real_idx = np.flatnonzero(y_train.numpy() == ci)
        syn_idx = [i for i, c in enumerate(s_cond) if c == cond]
        real = x_train[real_idx[0], 0].float().numpy() if len(real_idx) else np.full(s_img.shape[1:], -1.0)
        syn = s_img[syn_idx[0]] if syn_idx else np.full(s_img.shape[1:], -1.0)
        for j, (title, vol) in enumerate([("real", real), ("synthetic", syn)]):
            for v, sl in enumerate(_mid_slices(vol)):
                ax = axes[ci, j * 3 + v]
                ax.imshow(sl, cmap="gray", vmin=-1, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{title} {cond} ({'axial sagittal coronal'.split()[v]})", fontsize=7)
    fig.suptitle(f"{model}: real (left) vs synthetic (right), orthogonal mid-slices per condition", fontsize=9)
    _savefig(fig, fig_dir / f"{model}_slices.png")


def _privacy_figures(model, fig_dir, priv) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    v = priv["dcr_values"]
    bins = np.linspace(0, max(max(v["synthetic_to_train"]), max(v["holdout_to_train"])) * 1.05, 20)
    axes[0].hist(v["holdout_to_train"], bins=bins, alpha=0.6, label="unseen real patients -> training (baseline)", density=True)
    axes[0].hist(v["synthetic_to_train"], bins=bins, alpha=0.6, label="synthetic -> training", density=True)
    axes[0].set_xlabel("distance to the closest training patient (weight-free features)")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=6)
    axes[0].set_title("distance to closest record", fontsize=9)
    c = priv["copy_detection"]["channels"]["combined"]
    bins = np.linspace(0, max(max(c["synthetic_to_train"]), max(c["real_to_real"])) * 1.05, 24)
    axes[1].hist(c["real_to_real"], bins=bins, alpha=0.6, label="real patient -> other training patient (baseline)", density=True)
    axes[1].hist(c["synthetic_to_train"], bins=bins, alpha=0.6, label="synthetic -> training", density=True)
    if c["threshold"] is not None:
        axes[1].axvline(c["threshold"], color="red", ls="--", label="copy threshold")
    axes[1].set_xlabel("aligned distance (flips, shifts, intensity undone)")
    axes[1].legend(fontsize=6)
    axes[1].set_title("copy test: image and label map", fontsize=9)
    fig.suptitle(f"{model}: distance to the closest training patient", fontsize=9)
    _savefig(fig, fig_dir / f"{model}_dcr.png")
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    r = priv["membership_roc_blackbox"]
    ax.plot(r["fpr"], r["tpr"], label=f"distance, features (AUC {priv['membership_auc_blackbox']:.2f})")
    aligned = priv.get("attacks", {}).get("distance_aligned", {}).get("all", {})
    if "membership_roc_aligned" in priv and aligned.get("auc") is not None:  # not measured on too few cases
        a = priv["membership_roc_aligned"]
        ax.plot(a["fpr"], a["tpr"], label=f"distance, aligned images (AUC {aligned['auc']:.2f})")
    if "membership_roc_whitebox" in priv:
        w = priv["membership_roc_whitebox"]
        ax.plot(w["fpr"], w["tpr"], label=f"white-box (AUC {priv['membership_auc_whitebox']:.2f})")
    ax.plot([0, 1], [0, 1], "k:", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{model}: membership inference", fontsize=9)
    ax.legend(fontsize=6)
    _savefig(fig, fig_dir / f"{model}_membership_roc.png")


def _closest_pairs_figure(model, fig_dir, s_img, train_imgs, detection: dict, n: int = 4) -> None:
    """The synthetic cases nearest to being a copy (aligned space), each beside that training patient."""
    pairs = detection["closest_pairs"][:n]
    fig, axes = plt.subplots(2, max(1, len(pairs)), figsize=(2.2 * max(1, len(pairs)), 4.6), squeeze=False)
    for j, p in enumerate(pairs):
        for row, (vol, label) in enumerate([(s_img[p["synthetic"]], "synthetic"), (train_imgs[p["train"]], "closest training case")]):
            ax = axes[row, j]
            ax.imshow(_mid_slices(vol)[0], cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label}\n{p['channel']}: {p['ratio_to_real_min']:.2f} x real min" if row == 0 else label, fontsize=7)
    fig.suptitle(f"{model}: the {len(pairs)} synthetic cases nearest to a training patient (copy below "
                 f"{detection['distance_factor']:g} x the closest real pair)", fontsize=9)
    _savefig(fig, fig_dir / f"{model}_closest_pairs.png")


def _distributions_figure(model, fig_dir, s_img, s_mask, train_imgs, train_masks) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    bins = np.linspace(-1, 1, 41)
    axes[0].hist(train_imgs.ravel(), bins=bins, density=True, alpha=0.6, label="real (train)")
    axes[0].hist(s_img.ravel(), bins=bins, density=True, alpha=0.6, label="synthetic")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("intensity (model space, -1 = background)")
    axes[0].set_title("intensity distribution", fontsize=9)
    axes[0].legend(fontsize=7)
    vr = (train_masks > 0).reshape(len(train_masks), -1).mean(1) * 100
    vs = (s_mask > 0).reshape(len(s_mask), -1).mean(1) * 100
    vb = np.linspace(0, max(vr.max(initial=0), vs.max(initial=0)) * 1.05 + 1e-6, 15)
    axes[1].hist(vr, bins=vb, density=True, alpha=0.6, label="real (train)")
    axes[1].hist(vs, bins=vb, density=True, alpha=0.6, label="synthetic")
    axes[1].set_xlabel("mask volume (% of the volume)")
    axes[1].set_title("mask volume distribution", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{model}: intensities and mask volumes, real vs synthetic", fontsize=9)
    _savefig(fig, fig_dir / f"{model}_distributions.png")


def _conditional_reference(preprocess_dir: Path, info: dict, banks: dict, n_labels: int, cfg: EvalConfig, seed: int) -> dict:
    """Every real case (val included) with its condition and whether it is in the train split, and the
    condition classifier trained on the real train split only."""
    parts = [("train", banks["train"])]
    for s in ("val", "test", "holdout"):
        if s in banks:
            parts.append((s, banks[s]))
            continue
        try:
            parts.append((s, load_bank(preprocess_dir, (s,), info)))
        except ValueError:  # a split without cases
            pass
    x = np.concatenate([b[0].numpy() for _, b in parts])  # float16 as cached: labels and [-1, 1] images are exact enough
    y = np.concatenate([b[1].numpy() for _, b in parts])
    is_train = np.concatenate([np.full(len(b[1]), s == "train") for s, b in parts])
    net = fit_condition_classifier(x, y, is_train, len(info["conditions"]), n_labels, cfg.conditional, seed) if cfg.conditional.classifier else None
    return {"x": x, "y": y, "is_train": is_train, "net": net}


LABEL_COLOURS = plt.get_cmap("tab10").colors


def _overlay(ax, img: np.ndarray, mask: np.ndarray, z: int, title: str) -> None:
    """Axial slice ``z`` of the image in grey with each mask label in its own colour."""
    ax.imshow(np.asarray(img[z], np.float32).T[::-1], cmap="gray", vmin=-1, vmax=1)
    lab = np.rint(mask[z].T[::-1]).astype(int)
    rgba = np.zeros((*lab.shape, 4))
    for v in range(1, lab.max(initial=0) + 1):
        rgba[lab == v] = (*LABEL_COLOURS[(v - 1) % len(LABEL_COLOURS)], 0.55)
    ax.imshow(rgba)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=6)


def _slice_through(mask: np.ndarray, key: str | None) -> int:
    """The axial slice with the most voxels of label ``key`` (else of any label, else the middle)."""
    m = np.rint(mask).astype(int)
    for sel in ([m == int(key)] if key and key != "all" else []) + [m > 0]:
        area = sel.reshape(len(sel), -1).sum(1)
        if area.max() > 0:
            return int(area.argmax())
    return len(m) // 2


def _conditional_overlay_figure(model, fig_dir, s_img, s_mask, s_cond, ref, conditions, cond, ccfg) -> None:
    """Per condition (the rare one first): synthetic cases beside real ones, the mask over the image, on
    the axial slice through the most voxels of the rare condition's (first) defining label."""
    n = ccfg.figure_cases
    defining = [d["label"] for d in cond["defining_labels"] if d["defined_by"] in ("presence", "volume")]
    key = defining[0] if defining else None
    order = cond["conditions"]
    fig, axes = plt.subplots(len(order), 2 * n, figsize=(1.7 * 2 * n, 1.95 * len(order)), squeeze=False)
    for row, c in enumerate(order):
        syn = [i for i, sc in enumerate(s_cond) if sc == c][:n]
        real = np.flatnonzero(ref["y"] == conditions.index(c))[:n]
        cases = [(s_img[i], s_mask[i], f"synthetic {c}") for i in syn] + [None] * (n - len(syn))
        cases += [(ref["x"][i, 0], ref["x"][i, 1], f"real {c}") for i in real] + [None] * (n - len(real))
        for j, case in enumerate(cases):
            ax = axes[row, j]
            if case is None:
                ax.axis("off")
                continue
            z = _slice_through(case[1], key)
            _overlay(ax, case[0], case[1], z, f"{case[2]} (slice {z})")
    names = cond.get("label_names", {})
    handles = [plt.Rectangle((0, 0), 1, 1, color=LABEL_COLOURS[(v - 1) % len(LABEL_COLOURS)], alpha=0.7) for v in range(1, cond["n_labels"] + 1)]
    fig.legend(handles, [f"label {v}" + (f" ({names[str(v)]})" if str(v) in names else "") for v in range(1, cond["n_labels"] + 1)],
               loc="lower center", ncol=min(6, cond["n_labels"]), fontsize=7, frameon=False)
    fig.suptitle(f"{model}: synthetic (left) and real (right) cases per condition, {cond['rare_condition']} first; mask labels in colour",
                 fontsize=9)
    _savefig(fig, fig_dir / f"{model}_conditional_overlay.png")


def _label_volume_figure(model, fig_dir, s_mask, s_cond, ref, conditions, cond, n_labels) -> None:
    """Per condition (rows, the rare one first) and label (columns): volumes of the cases that contain
    the label, synthetic vs real, with how many cases contain it."""
    keys = label_keys(n_labels)
    m_syn, m_real = label_measures(s_mask, n_labels), label_measures(ref["x"][:, 1], n_labels)
    order = cond["conditions"]
    fig, axes = plt.subplots(len(order), len(keys), figsize=(2.6 * len(keys), 2.3 * len(order)), squeeze=False)
    rng = np.random.default_rng(0)
    for row, c in enumerate(order):
        s_sel = np.array([sc == c for sc in s_cond], bool)
        r_sel = ref["y"] == conditions.index(c)
        for col, key in enumerate(keys):
            ax = axes[row, col]
            vals = [m_real[key]["volume"][r_sel & m_real[key]["present"]], m_syn[key]["volume"][s_sel & m_syn[key]["present"]]]
            for x, v in enumerate(vals):
                if len(v):
                    ax.boxplot(v, positions=[x], widths=0.5, showfliers=False)
                    ax.scatter(x + rng.uniform(-0.12, 0.12, len(v)), v, s=8, alpha=0.6, color=f"C{x}")
                else:
                    ax.text(x, 0.5, "in no case", transform=ax.get_xaxis_transform(), ha="center", fontsize=7, color="0.4")
            p = cond["per_condition"][c]["labels"][key]["presence"]
            ax.set_xticks([0, 1], [f"real\n{p['real']}/{p['real_n']}", f"synthetic\n{p['synthetic']}/{p['synthetic_n']}"], fontsize=7)
            ax.set_xlim(-0.6, 1.6)
            ax.tick_params(axis="y", labelsize=6)
            ax.set_title(f"{c}: {cond['per_condition'][c]['labels'][key]['name']}", fontsize=7)
            if col == 0:
                ax.set_ylabel("voxels (cases with the label)", fontsize=7)
    fig.suptitle(f"{model}: volume per label when present, real vs synthetic (under each: cases that contain it)", fontsize=9)
    fig.tight_layout()
    _savefig(fig, fig_dir / f"{model}_label_volumes.png")
