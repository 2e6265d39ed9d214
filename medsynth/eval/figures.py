"""The evaluate stage's figures (``figures/<model>_*.png``): real vs synthetic slices, distributions,
the privacy audit's distances and ROC curves, counterfactual pairs and the per-condition label views.

matplotlib is imported inside the functions with the Agg backend (files only, no display), so importing
this module neither loads matplotlib nor changes the backend of a program that uses one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medsynth.config import ConditionalConfig
from medsynth.eval.conditional import label_keys, label_measures
from medsynth.io.writers import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from medsynth.cohort import TensorBank

AXES_NAMES = ("axial", "sagittal", "coronal")


def _agg() -> None:
    """The Agg backend (files only), set before pyplot is imported."""
    import matplotlib

    matplotlib.use("Agg")


def label_colours() -> list[tuple[float, float, float]]:
    """One RGB colour per mask label (label v: entry (v - 1) modulo the length), tab10's."""
    import matplotlib
    from matplotlib.colors import ListedColormap, to_rgba_array

    cmap = matplotlib.colormaps["tab10"]
    assert isinstance(cmap, ListedColormap)
    return [(float(r), float(g), float(b)) for r, g, b, _ in to_rgba_array(cmap.colors)]


def _savefig(fig: Figure, dest: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(dest, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def mid_slices(vol: np.ndarray) -> list[np.ndarray]:
    """The axial, sagittal and coronal mid-slices of a (D, H, W) volume, oriented for display."""
    d, h, w = vol.shape
    return [vol[d // 2].T[::-1], vol[:, h // 2].T[::-1], vol[:, :, w // 2].T[::-1]]


def slices_figure(model: str, fig_dir: Path, s_img: np.ndarray, s_cond: Sequence[str], train: TensorBank, conditions: Sequence[str]) -> None:
    """Per condition: the first real training case and the first synthetic case, orthogonal mid-slices."""
    _agg()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(conditions), 6, figsize=(12, 2.2 * len(conditions)), squeeze=False)
    x_train, y_train = train[0], train[1]
    for ci, cond in enumerate(conditions):
        real_idx = np.flatnonzero(y_train.numpy() == ci)
        syn_idx = [i for i, c in enumerate(s_cond) if c == cond]
        real = x_train[real_idx[0], 0].float().numpy() if len(real_idx) else np.full(s_img.shape[1:], -1.0)
        syn = s_img[syn_idx[0]] if syn_idx else np.full(s_img.shape[1:], -1.0)
        for j, (title, vol) in enumerate([("real", real), ("synthetic", syn)]):
            for v, sl in enumerate(mid_slices(vol)):
                ax = axes[ci, j * 3 + v]
                ax.imshow(sl, cmap="gray", vmin=-1, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{title} {cond} ({AXES_NAMES[v]})", fontsize=7)
    fig.suptitle(f"{model}: real (left) vs synthetic (right), orthogonal mid-slices per condition", fontsize=9)
    _savefig(fig, fig_dir / f"{model}_slices.png")


def privacy_figures(model: str, fig_dir: Path, priv: Mapping[str, Any]) -> None:
    """Distance-to-closest-record and copy-test histograms (``_dcr.png``) and the membership attacks' ROC
    curves (``_membership_roc.png``) of one model's privacy audit."""
    _agg()
    import matplotlib.pyplot as plt

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


def closest_pairs_figure(model: str, fig_dir: Path, s_img: np.ndarray, train_imgs: np.ndarray, detection: Mapping[str, Any], n: int = 4) -> None:
    """The synthetic cases nearest to being a copy (aligned space), each beside that training patient."""
    _agg()
    import matplotlib.pyplot as plt

    pairs = detection["closest_pairs"][:n]
    fig, axes = plt.subplots(2, max(1, len(pairs)), figsize=(2.2 * max(1, len(pairs)), 4.6), squeeze=False)
    for j, p in enumerate(pairs):
        for row, (vol, label) in enumerate([(s_img[p["synthetic"]], "synthetic"), (train_imgs[p["train"]], "closest training case")]):
            ax = axes[row, j]
            ax.imshow(mid_slices(vol)[0], cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label}\n{p['channel']}: {p['ratio_to_real_min']:.2f} x real min" if row == 0 else label, fontsize=7)
    fig.suptitle(f"{model}: the {len(pairs)} synthetic cases nearest to a training patient (copy below "
                 f"{detection['distance_factor']:g} x the closest real pair)", fontsize=9)
    _savefig(fig, fig_dir / f"{model}_closest_pairs.png")


def counterfactual_pairs_figure(model: str, fig_dir: Path, s_img: np.ndarray, s_mask: np.ndarray, sources: np.ndarray, look: Mapping[str, Any],
                                n: int = 4) -> None:
    """Source case beside its counterfactual, slice through the changed structure, with its outline."""
    _agg()
    import matplotlib.pyplot as plt

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


def distributions_figure(model: str, fig_dir: Path, s_img: np.ndarray, s_mask: np.ndarray, train_imgs: np.ndarray, train_masks: np.ndarray) -> None:
    """Intensity and mask-volume histograms, real training cases vs synthetic."""
    _agg()
    import matplotlib.pyplot as plt

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


def _overlay(ax: Axes, img: np.ndarray, mask: np.ndarray, z: int, title: str, colours: Sequence[tuple[float, ...]]) -> None:
    """Axial slice ``z`` of the image in grey with each mask label in its own colour."""
    ax.imshow(np.asarray(img[z], np.float32).T[::-1], cmap="gray", vmin=-1, vmax=1)
    lab = np.rint(mask[z].T[::-1]).astype(int)
    rgba = np.zeros((*lab.shape, 4))
    for v in range(1, lab.max(initial=0) + 1):
        rgba[lab == v] = (*colours[(v - 1) % len(colours)], 0.55)
    ax.imshow(rgba)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=6)


def slice_through(mask: np.ndarray, key: str | None) -> int:
    """The axial slice with the most voxels of label ``key`` (else of any label, else the middle)."""
    m = np.rint(mask).astype(int)
    for sel in ([m == int(key)] if key and key != "all" else []) + [m > 0]:
        area = sel.reshape(len(sel), -1).sum(1)
        if area.max() > 0:
            return int(area.argmax())
    return len(m) // 2


def conditional_overlay_figure(model: str, fig_dir: Path, s_img: np.ndarray, s_mask: np.ndarray, s_cond: Sequence[str], ref: Mapping[str, Any],
                               conditions: Sequence[str], cond: Mapping[str, Any], ccfg: ConditionalConfig) -> None:
    """Per condition (the rare one first): synthetic cases beside real ones, the mask over the image, on
    the axial slice through the most voxels of the rare condition's (first) defining label. ``ref``: the
    real cases, ``x`` (N, 2, D, H, W) and ``y`` their condition indices."""
    _agg()
    import matplotlib.pyplot as plt

    colours = label_colours()
    n = ccfg.figure_cases
    defining = [d["label"] for d in cond["defining_labels"] if d["defined_by"] in ("presence", "volume")]
    key = defining[0] if defining else None
    order = cond["conditions"]
    fig, axes = plt.subplots(len(order), 2 * n, figsize=(1.7 * 2 * n, 1.95 * len(order)), squeeze=False)
    for row, c in enumerate(order):
        syn = [i for i, sc in enumerate(s_cond) if sc == c][:n]
        real = np.flatnonzero(ref["y"] == conditions.index(c))[:n]
        cases: list[tuple[np.ndarray, np.ndarray, str] | None] = [(s_img[i], s_mask[i], f"synthetic {c}") for i in syn] + [None] * (n - len(syn))
        cases += [(ref["x"][i, 0], ref["x"][i, 1], f"real {c}") for i in real] + [None] * (n - len(real))
        for j, case in enumerate(cases):
            ax = axes[row, j]
            if case is None:
                ax.axis("off")
                continue
            z = slice_through(case[1], key)
            _overlay(ax, case[0], case[1], z, f"{case[2]} (slice {z})", colours)
    names = cond.get("label_names", {})
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[(v - 1) % len(colours)], alpha=0.7) for v in range(1, cond["n_labels"] + 1)]
    fig.legend(handles, [f"label {v}" + (f" ({names[str(v)]})" if str(v) in names else "") for v in range(1, cond["n_labels"] + 1)],
               loc="lower center", ncol=min(6, cond["n_labels"]), fontsize=7, frameon=False)
    fig.suptitle(f"{model}: synthetic (left) and real (right) cases per condition, {cond['rare_condition']} first; mask labels in colour",
                 fontsize=9)
    _savefig(fig, fig_dir / f"{model}_conditional_overlay.png")


def label_volume_figure(model: str, fig_dir: Path, s_mask: np.ndarray, s_cond: Sequence[str], ref: Mapping[str, Any], conditions: Sequence[str],
                        cond: Mapping[str, Any], n_labels: int) -> None:
    """Per condition (rows, the rare one first) and label (columns): volumes of the cases that contain
    the label, synthetic vs real, with how many cases contain it."""
    _agg()
    import matplotlib.pyplot as plt

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
