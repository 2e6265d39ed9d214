"""Downstream utility: does synthetic data help a model trained on it, above all for the rare condition?

Five arms, each trained ``seeds`` times from scratch with the same budget and selection rule, scored on
the real test split only:

* ``real``: the real train split, as is;
* ``real+augmentation``: the real train split with standard augmentation on the fly (MONAI random
  affine: rotation up to 10 degrees, scale +-10%; left-right flip; intensity scale and shift +-0.1),
  image and mask transformed together, the mask with nearest interpolation: the comparator a reviewer
  asks for first, since synthetic cases are only worth the trouble if they beat it;
* ``real+synthetic``: the real train split plus ``synthetic_ratio`` synthetic cases per real case;
* ``real+synthetic_rare``: the real train split plus as many synthetic cases, of the rare condition only
  (fewer when fewer were synthesised);
* ``synthetic``: synthetic cases only.

Training: Adam at ``lr`` for at most ``steps`` steps; every ``eval_every`` steps the model is scored on
the real val split, the best weights are kept, and training stops after ``patience`` scorings without
improvement. The val split is never trained on; without one, a fifth of the train split is held back
for it (and the result says so). Every run ``s`` of every arm starts from the same initial weights
(``seed * 100 + s``), so the arms differ by their data.

The budget matters more than anything else: on hippocampus MR (32^3, 143 train cases) this UNet scores
val Dice ~0.45 after 50 steps at lr 1e-3, ~0.75 after 75 at lr 3e-3, 0.80 after 250-300.

Segmentation (cohorts with masks): a MONAI UNet, Dice + cross-entropy loss, the Dice term over the
foreground labels only (the background's Dice is ~1 whatever the structures do). Score per case: the
mean over foreground labels of the per-label Dice, a label absent from both prediction and ground truth
of a case skipped for that case; real test cases with an empty mask are left out. Classification
(cohorts whose "masks" are the shapes themselves, e.g. AdrenalMNIST3D, or without masks): a small 3D
CNN on the image, scored by ROC AUC of the rare condition against the rest.

Intervals: per test case, the score is averaged over the seeds; 95% intervals are percentile
bootstraps over test cases, left out under ``MIN_CI_CASES`` cases. The difference of two arms is
paired: the same test cases (and seed indices) in both, resampled together, so the case-to-case spread
that both arms share cancels.

``real`` and ``real+augmentation`` do not depend on the synthetic set: an evaluation of several models
trains them once and passes them to the others as ``shared_arms``, so every model is compared with the
same baselines (on a small cohort a retrained baseline alone moves Dice by 0.1 or more).

If the ``real`` arm does not reach ``min_baseline`` (Dice or AUC) on the test split, the model that the
comparison rests on did not learn the task, and any difference between arms measures noise: the gate
is then inconclusive, never pass.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medsynth.config import UtilityConfig
from medsynth.eval.stats import percentile_interval, roc_auc

ARMS = ("real", "real+augmentation", "real+synthetic", "real+synthetic_rare", "synthetic")
SHARED_ARMS = ("real", "real+augmentation")  # independent of the synthetic set: trained once per evaluation
BASELINES = ("real", "real+augmentation")  # every other arm's paired difference is taken against these
N_BOOT = 2000
MIN_GAIN = 1e-3  # a val score must beat the best by this much to count as an improvement
MIN_CI_CASES = 5  # fewer cases: no interval (a bootstrap over 2-4 cases is far narrower than the truth)
ROTATE_DEG, SCALE, FLIP_AXES, INTENSITY_SCALE, INTENSITY_SHIFT = 10.0, 0.1, (0,), 0.1, 0.1


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _segmenter(n_classes: int, channels: tuple[int, ...]) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=n_classes, channels=tuple(channels), strides=(2,) * (len(channels) - 1), num_res_units=1)


class _Classifier(nn.Module):
    def __init__(self, n_classes: int, channels: tuple[int, ...]):
        super().__init__()
        layers, c = [], 1
        for w in channels:
            layers += [nn.Conv3d(c, w, 3, stride=2, padding=1), nn.GroupNorm(min(8, w), w), nn.LeakyReLU(0.2)]
            c = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_classes)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3, 4)))


def standard_augmentation(seed: int, with_mask: bool):
    """The ``real+augmentation`` arm's transform of one case: dict with "image" (1,D,H,W) and, for
    segmentation, "mask" (1,D,H,W), transformed with the same parameters (the mask nearest-neighbour).
    Flips only along the first (left-right, RAS) axis: mirroring anterior-posterior or head-feet makes
    anatomy that does not occur and swaps labels that differ by position (anterior/posterior hippocampus)."""
    from monai.transforms import Compose, RandAffined, RandFlipd, RandScaleIntensityd, RandShiftIntensityd

    keys = ["image", "mask"] if with_mask else ["image"]
    rot = np.deg2rad(ROTATE_DEG)
    chain = Compose([
        RandAffined(keys, prob=1.0, rotate_range=(rot, rot, rot), scale_range=(SCALE,) * 3, mode=["bilinear", "nearest"][: len(keys)],
                    padding_mode=["border", "zeros"][: len(keys)]),
        *[RandFlipd(keys, prob=0.5, spatial_axis=a) for a in FLIP_AXES],
        RandScaleIntensityd("image", factors=INTENSITY_SCALE, prob=1.0),
        RandShiftIntensityd("image", offsets=INTENSITY_SHIFT, prob=1.0),
    ])
    chain.set_random_state(seed)
    return chain


def _augment_batch(chain, xb: torch.Tensor, tb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seg = tb.dim() == 4
    xs, ts = [], []
    for i in range(len(xb)):
        d = {"image": xb[i]}
        if seg:
            d["mask"] = tb[i][None].float()
        d = chain(d)
        xs.append(torch.as_tensor(d["image"]).float())
        if seg:
            ts.append(torch.as_tensor(d["mask"])[0].round().long())
    return torch.stack(xs), (torch.stack(ts) if seg else tb)


def _fit(make_net, x: np.ndarray, target: np.ndarray, loss_fn, score_val, cfg: UtilityConfig, seed: int,
         augment: bool) -> tuple[nn.Module, dict]:
    """Train from ``seed``'s initial weights; keep the weights that score best on the val set (checked
    every ``eval_every`` steps and at the last), stop after ``patience`` checks without improvement."""
    dev = _device()
    torch.manual_seed(seed)
    net = make_net().to(dev).train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(seed)
    chain = standard_augmentation(seed, target.ndim == 4) if augment else None
    xt, tt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(target)
    best, best_step, best_state, bad, step = -np.inf, 0, None, 0, 0
    curve = []
    while step < cfg.steps:
        step += 1
        idx = torch.randint(0, len(xt), (min(cfg.batch_size, len(xt)),), generator=g)
        xb, tb = xt[idx], tt[idx]
        if chain is not None:
            xb, tb = _augment_batch(chain, xb, tb)
        loss = loss_fn(net(xb.to(dev)), tb.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            net.eval()
            with torch.no_grad():
                v = float(score_val(net))
            net.train()
            curve.append([step, round(v, 4)])
            if v > best + MIN_GAIN or best_state is None:
                best, best_step, bad = v, step, 0
                best_state = {k: t.detach().clone() for k, t in net.state_dict().items()}
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
    net.load_state_dict(best_state)
    return net.eval(), {"best_step": best_step, "steps_run": step, "val_score": best, "val_curve": curve}


def _predict(net: nn.Module, x: np.ndarray, chunk: int = 16) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net(torch.from_numpy(x[i : i + chunk].astype(np.float32)).to(_device())).float().cpu() for i in range(0, len(x), chunk)])


def label_dice(pred: np.ndarray, gt: np.ndarray, n_labels: int) -> np.ndarray:
    """(cases, n_labels) Dice per case and foreground label; NaN where the label is in neither."""
    out = np.full((len(pred), n_labels), np.nan)
    p, g = pred.reshape(len(pred), -1), gt.reshape(len(gt), -1)
    for k in range(1, n_labels + 1):
        pk, gk = p == k, g == k
        denom = pk.sum(1) + gk.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, k - 1] = np.where(denom > 0, 2 * (pk & gk).sum(1) / denom, np.nan)
    return out


def case_dice(per_label: np.ndarray) -> np.ndarray:
    """Per case: the mean over the labels present in prediction or ground truth."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a case with no label anywhere: NaN
        return np.nanmean(per_label, axis=1)


def _ci(values: np.ndarray, seed: int) -> list[float] | None:
    """95% percentile bootstrap interval of the mean over cases; None under MIN_CI_CASES cases."""
    values = np.asarray(values, float)
    if len(values) < MIN_CI_CASES:
        return None
    idx = np.random.default_rng(seed).integers(0, len(values), (N_BOOT, len(values)))
    return percentile_interval(values[idx].mean(1), values.mean())


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int) -> dict:
    """Mean of a - b over the same cases (each seed-averaged) and its 95% paired bootstrap interval."""
    d = np.asarray(a, float) - np.asarray(b, float)
    return {"mean": float(d.mean()), "ci95": _ci(d, seed), "cases": int(len(d))}


def _auc_boots(scores: list[np.ndarray], y: np.ndarray, rare_index: int, seed: int) -> np.ndarray | None:
    """(N_BOOT/4, len(scores)) AUCs of each score array on the same resamples of the cases, stratified
    so that every resample holds both classes; None under 3 cases of either class or MIN_CI_CASES in all."""
    pos, neg = np.flatnonzero(y == rare_index), np.flatnonzero(y != rare_index)
    if min(len(pos), len(neg)) < 3 or len(y) < MIN_CI_CASES:
        return None
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(N_BOOT // 4):
        p, n = rng.choice(pos, len(pos)), rng.choice(neg, len(neg))
        out.append([roc_auc(s[p], s[n]) for s in scores])
    return np.array(out)


def _auc_ci(score: np.ndarray, y: np.ndarray, rare_index: int, seed: int) -> list[float] | None:
    boots = _auc_boots([score], y, rare_index, seed)
    return None if boots is None else percentile_interval(boots[:, 0], roc_auc(score[y == rare_index], score[y != rare_index]))


def _paired_auc_difference(a: np.ndarray, b: np.ndarray, y: np.ndarray, rare_index: int, seed: int) -> dict:
    """AUC(a) - AUC(b) on the same cases, the cases resampled together."""
    pos, neg = y == rare_index, y != rare_index
    boots = _auc_boots([a, b], y, rare_index, seed)
    d = None if boots is None else boots[:, 0] - boots[:, 1]
    mean = roc_auc(a[pos], a[neg]) - roc_auc(b[pos], b[neg])
    return {"mean": mean, "ci95": None if d is None else percentile_interval(d, mean), "cases": int(len(y))}


def _arm_data(arm: str, real: tuple, syn: tuple, ratio: float, rare_index: int, rng: np.random.Generator) -> tuple:
    """(x, target) of an arm; real/syn: (x, target, condition)."""
    if arm in ("real", "real+augmentation"):
        return real[0], real[1]
    if arm == "synthetic":
        return syn[0], syn[1]
    n = min(len(syn[0]), max(1, int(round(ratio * len(real[0])))))
    pool = np.arange(len(syn[0])) if arm == "real+synthetic" else np.flatnonzero(syn[2] == rare_index)
    if not len(pool):
        return real[0], real[1]
    pick = rng.choice(pool, min(n, len(pool)), replace=False)
    return np.concatenate([real[0], syn[0][pick]]), np.concatenate([real[1], syn[1][pick]])


def _split_val(train: tuple, val: tuple | None, seed: int) -> tuple[tuple, tuple, str]:
    """The val split, or (without one) a fifth of the train split held back for model selection."""
    if val is not None and len(val[0]):
        return train, val, "val split"
    n = len(train[0])
    if n < 5:
        raise ValueError(f"utility: the val split is empty and the train split has {n} cases, too few to hold some back for model selection")
    held = np.zeros(n, bool)
    held[np.random.default_rng(seed).choice(n, max(1, n // 5), replace=False)] = True
    return ((train[0][~held], train[1][~held]), (train[0][held], train[1][held]),
            f"{int(held.sum())} cases held back from the train split (the val split is empty); the arms train on the other {int((~held).sum())}")


def _differences(arms: dict, per_case: str, difference) -> dict:
    """``"<arm> - <baseline>"`` -> ``difference(arm, baseline)`` on the per-case scores averaged over seeds:
    against real every other arm, against real+augmentation the synthetic ones."""
    diffs = {}
    for base in BASELINES:
        b = np.mean(arms[base][per_case], 0)
        for arm in ARMS:
            if arm not in BASELINES[: BASELINES.index(base) + 1]:
                diffs[f"{arm} - {base}"] = difference(np.mean(arms[arm][per_case], 0), b)
    return diffs


def _run_arms(shared_arms, real, syn, cfg, seed, rare_index, make_net, loss_fn, score_val, predict_test) -> dict:
    """Every arm's runs (seeds), or the summary of a shared arm as given."""
    out = {}
    for arm in ARMS:
        if arm in (shared_arms or {}) and arm in SHARED_ARMS:
            out[arm] = shared_arms[arm]
            continue
        runs, t0 = [], time.perf_counter()
        for s in range(cfg.seeds):
            rng = np.random.default_rng([seed, s, ARMS.index(arm)])
            x, t = _arm_data(arm, real, syn, cfg.synthetic_ratio, rare_index, rng)
            net, fit = _fit(make_net, x, t, loss_fn, score_val, cfg, seed * 100 + s, augment=arm == "real+augmentation")
            runs.append({**fit, "test": predict_test(net), "train_cases": int(len(x))})
        out[arm] = {"runs": runs, "seconds": round(time.perf_counter() - t0, 1)}
    return out


def _fit_summary(runs: list[dict]) -> dict:
    return {"val_score_per_seed": [round(r["val_score"], 4) for r in runs], "best_step_per_seed": [r["best_step"] for r in runs],
            "steps_run_per_seed": [r["steps_run"] for r in runs], "train_cases": runs[0]["train_cases"],
            "val_curve_per_seed": [r["val_curve"] for r in runs]}


def segmentation_utility(train: tuple, test: tuple, synthetic: tuple, n_labels: int, rare_index: int, cfg: UtilityConfig, seed: int,
                         shared_arms: dict | None = None, val: tuple | None = None) -> dict:
    """train/val/test: (x (N,2,D,H,W) model space, y (N,) condition); synthetic: (images, masks, conditions).
    ``shared_arms``: the ``real`` / ``real+augmentation`` arms of an earlier call with the same
    train/val/test/cfg/seed, reused as they are."""
    test_x, test_m, test_y = test[0][:, :1], test[0][:, 1].astype(np.int64).clip(0, n_labels), np.asarray(test[1])
    has_fg = test_m.reshape(len(test_m), -1).max(1) > 0
    if has_fg.sum() == 0:
        return {"task": "segmentation", "measured": False, "reason": "no real test case has a non-empty mask"}
    try:
        train, val, val_source = _split_val(train, val, seed)
    except ValueError as exc:
        return {"task": "segmentation", "measured": False, "reason": str(exc)}
    real = (train[0][:, :1], train[0][:, 1].astype(np.int64).clip(0, n_labels), np.asarray(train[1]))
    syn = (synthetic[0][:, None], synthetic[1].astype(np.int64).clip(0, n_labels), np.asarray(synthetic[2]))
    val_x, val_m = val[0][:, :1], val[0][:, 1].astype(np.int64).clip(0, n_labels)
    val_fg = val_m.reshape(len(val_m), -1).max(1) > 0
    val_x, val_m = (val_x[val_fg], val_m[val_fg]) if val_fg.any() else (val_x, val_m)
    test_x, test_m, test_y = test_x[has_fg], test_m[has_fg], test_y[has_fg]
    rare = test_y == rare_index

    from monai.losses import DiceCELoss

    loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)

    def loss_fn(logits, target):
        return loss(logits, target[:, None])

    def score_val(net):
        return np.nanmean(case_dice(label_dice(_predict(net, val_x).argmax(1).numpy(), val_m, n_labels)))

    def predict_test(net):
        return label_dice(_predict(net, test_x).argmax(1).numpy(), test_m, n_labels)  # (cases, labels)

    runs = _run_arms(shared_arms, real, syn, cfg, seed, rare_index,
                     lambda: _segmenter(n_labels + 1, cfg.channels), loss_fn, score_val, predict_test)
    arms = {}
    for arm, r in runs.items():
        if "runs" not in r:  # a shared arm, already summarised
            arms[arm] = r
            continue
        per_label = np.stack([run["test"] for run in r["runs"]])  # (seeds, cases, labels)
        per_case = np.stack([case_dice(p) for p in per_label])  # (seeds, cases)
        mean_case = per_case.mean(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a label in no test case: NaN
            lab = np.nanmean(per_label, axis=(0, 1))
            lab_rare = np.nanmean(per_label[:, rare], axis=(0, 1)) if rare.any() else np.full(n_labels, np.nan)
        arms[arm] = {
            "dice": float(mean_case.mean()), "dice_ci95": _ci(mean_case, seed),
            "rare_dice": float(mean_case[rare].mean()) if rare.any() else None, "rare_dice_ci95": _ci(mean_case[rare], seed),
            "per_label_dice": {str(k + 1): (None if np.isnan(v) else float(v)) for k, v in enumerate(lab)},
            "rare_per_label_dice": {str(k + 1): (None if np.isnan(v) else float(v)) for k, v in enumerate(lab_rare)},
            "dice_per_seed": [float(v) for v in per_case.mean(1)],
            "val_dice": float(np.mean([run["val_score"] for run in r["runs"]])),
            **_fit_summary(r["runs"]), "seconds": r["seconds"],
            "per_case_dice": [[round(float(v), 5) for v in row] for row in per_case],  # (seeds, test cases): the pairing of differences
        }
    diffs = _differences(arms, "per_case_dice", lambda a, b: {
        "overall": paired_difference(a, b, seed), "rare": paired_difference(a[rare], b[rare], seed) if rare.any() else None})
    return {"task": "segmentation", "measured": True, "metric": "Dice", "score": "dice", "test_cases": int(len(test_y)),
            "rare_test_cases": int(rare.sum()), "val_cases": int(len(val_x)), "val_source": val_source, "seeds": cfg.seeds,
            "labels": n_labels, "arms": arms, "differences": diffs, "test_is_rare": rare.astype(int).tolist()}


def classification_utility(train: tuple, test: tuple, synthetic: tuple, n_classes: int, rare_index: int, cfg: UtilityConfig, seed: int,
                           shared_arms: dict | None = None, val: tuple | None = None) -> dict:
    test_x, test_y = test[0][:, :1], np.asarray(test[1]).astype(np.int64)
    if len(set(test_y.tolist())) < 2:
        return {"task": "classification", "measured": False, "reason": "the real test split holds one condition only"}
    try:
        train, val, val_source = _split_val(train, val, seed)
    except ValueError as exc:
        return {"task": "classification", "measured": False, "reason": str(exc)}
    real = (train[0][:, :1], np.asarray(train[1]).astype(np.int64), np.asarray(train[1]))
    syn = (synthetic[0][:, None], np.asarray(synthetic[2]).astype(np.int64), np.asarray(synthetic[2]))
    val_x, val_y = val[0][:, :1], np.asarray(val[1]).astype(np.int64)
    val_both = len(set(val_y.tolist())) > 1

    def score_val(net):
        logits = _predict(net, val_x)
        if val_both:
            s = torch.softmax(logits, 1)[:, rare_index].numpy()
            return roc_auc(s[val_y == rare_index], s[val_y != rare_index])
        return -float(F.cross_entropy(logits, torch.from_numpy(val_y)))  # one condition in val: its likelihood

    def predict_test(net):
        return torch.softmax(_predict(net, test_x), 1)[:, rare_index].numpy()

    runs = _run_arms(shared_arms, real, syn, cfg, seed, rare_index, lambda: _Classifier(n_classes, cfg.channels),
                     F.cross_entropy, score_val, predict_test)
    pos, neg = test_y == rare_index, test_y != rare_index
    arms = {}
    for arm, r in runs.items():
        if "runs" not in r:
            arms[arm] = r
            continue
        scores = np.stack([run["test"] for run in r["runs"]])  # (seeds, cases): rare-condition probability
        mean_score = scores.mean(0)
        arms[arm] = {
            "auc": roc_auc(mean_score[pos], mean_score[neg]), "auc_ci95": _auc_ci(mean_score, test_y, rare_index, seed),
            "auc_per_seed": [roc_auc(s[pos], s[neg]) for s in scores],
            "val_auc" if val_both else "val_neg_cross_entropy": float(np.mean([run["val_score"] for run in r["runs"]])),
            **_fit_summary(r["runs"]), "seconds": r["seconds"],
            "per_case_score": [[round(float(v), 5) for v in row] for row in scores],
        }
    diffs = _differences(arms, "per_case_score", lambda a, b: {"overall": _paired_auc_difference(a, b, test_y, rare_index, seed)})
    return {"task": "classification", "measured": True, "metric": "ROC AUC (rare vs rest)", "score": "auc", "test_cases": int(len(test_y)),
            "rare_test_cases": int(pos.sum()), "val_cases": int(len(val_y)), "val_source": val_source, "seeds": cfg.seeds,
            "arms": arms, "differences": diffs, "test_is_rare": pos.astype(int).tolist()}


def cross_model_difference(util: dict, other: dict, arm: str, seed: int) -> dict | None:
    """Paired difference of ``arm`` between two models' results of one evaluation (the same real test cases,
    seeds and baselines), e.g. a counterfactual set's real+synthetic_rare against a whole-volume generator's;
    None when either was not measured."""
    if not (util.get("measured") and other.get("measured")) or util["task"] != other["task"]:
        return None
    key = "per_case_dice" if util["task"] == "segmentation" else "per_case_score"
    a, b = np.mean(util["arms"][arm][key], 0), np.mean(other["arms"][arm][key], 0)
    rare = np.asarray(util["test_is_rare"], bool)
    if util["task"] == "segmentation":
        return {"overall": paired_difference(a, b, seed), "rare": paired_difference(a[rare], b[rare], seed) if rare.any() else None}
    y = np.where(rare, 1, 0)
    return {"overall": _paired_auc_difference(a, b, y, 1, seed)}


def shared_part(util: dict) -> dict | None:
    """The arms of a result that later models reuse (``shared_arms``)."""
    if not util.get("measured"):
        return None
    return {a: util["arms"][a] for a in SHARED_ARMS if a in util["arms"]}


def baseline_floor(util: dict, cfg: UtilityConfig) -> float:
    return cfg.min_baseline["dice"] if util["task"] == "segmentation" else cfg.min_baseline["auc"]


def baseline_learned(util: dict, cfg: UtilityConfig) -> bool:
    return util["arms"]["real"][util["score"]] >= baseline_floor(util, cfg)


def _fmt_diff(d: dict | None, digits: int = 3) -> str:
    if d is None:
        return "not measured (no rare test case)"
    ci = d["ci95"]
    if not ci:
        return f"{d['mean']:+.{digits}f} ({d['cases']} {'case' if d['cases'] == 1 else 'cases'}: too few for an interval)"
    return f"{d['mean']:+.{digits}f} (95% CI {ci[0]:+.{digits}f} to {ci[1]:+.{digits}f})"


def _short(util: dict) -> str:
    return "Dice" if util["task"] == "segmentation" else "AUC"


def _not_learned(util: dict, cfg: UtilityConfig) -> str:
    real = util["arms"]["real"]
    best = ", ".join(str(s) for s in real["best_step_per_seed"])
    fix = "raise evaluate.utility.steps or lr" + (", or check the cohort's masks" if util["task"] == "segmentation" else "")
    score, floor = real[util["score"]], baseline_floor(util, cfg)
    return (f"inconclusive: the real-only model did not learn ({_short(util)} {score:.2f} < floor {floor:.2f} "
            f"on {util['test_cases']} real test cases; best val score at step {best} of at most {cfg.steps}), so a difference between "
            f"arms would measure noise, not the synthetic data; {fix}.")


def _verdict(d: dict) -> str:
    ci = d["ci95"]
    if ci is None:
        return "no conclusion"
    return "a gain" if ci[0] > 0 else ("a loss" if ci[1] < 0 else "no clear gain")


def utility_sentence(model: str, util: dict, cfg: UtilityConfig) -> str:
    """One sentence: did adding the model's synthetic cases help the rare condition, with the interval.
    When the real-only model learned the task overall but not on the rare cases (segmentation: rare-class
    Dice below the floor, e.g. a lesion label it never segments), the rare class is called inconclusive
    and the sentence falls back on all test cases."""
    if not util.get("measured"):
        return "Utility not measured: " + util.get("reason", "evaluate.utility.enabled is false")
    if not baseline_learned(util, cfg):
        return _not_learned(util, cfg)
    added = (f"{model}'s counterfactual rare cases (real cases with the rare condition painted in)"
             if util.get("synthetic_kind") == "counterfactual" else f"{model}'s synthetic cases")
    d = util["differences"]["real+synthetic - real"]
    aug = util["differences"]["real+synthetic - real+augmentation"]
    real, floor = util["arms"]["real"], baseline_floor(util, cfg)
    cases = f"{util.get('rare_test_cases', 0)} rare of {util['test_cases']} real test cases, {util['seeds']} seeds"
    if d.get("rare") and real.get("rare_dice") is not None and real["rare_dice"] < floor:
        labels = ", ".join(f"label {k} {v:.2f}" for k, v in real["rare_per_label_dice"].items() if v is not None)
        return (f"Rare class inconclusive: the real-only model scores rare-class Dice {real['rare_dice']:.2f} < floor {floor:.2f} "
                f"({labels}), so a rare-class difference would measure noise; over all test cases, adding {added} "
                f"changed Dice by {_fmt_diff(d['overall'])} against real data alone: {_verdict(d['overall'])} ({cases}).")
    which = d.get("rare") or d["overall"]
    what = f"rare-class {_short(util)}" if d.get("rare") else util["metric"]
    aw = aug.get("rare") or aug["overall"]
    return (f"Adding {added} changed {what} by {_fmt_diff(which)} against real data alone: {_verdict(which)} "
            f"(against real data with standard augmentation: {_fmt_diff(aw)}; {cases}).")


def utility_gate(model: str, util: dict, cfg: UtilityConfig, margin: float) -> dict:
    """Non-inferiority of real+synthetic against real, paired over the real test cases: fail when the
    mean difference is below -max_dice_drop, or when the whole rare-class interval is; warn when the
    overall interval reaches below -max_dice_drop (a loss larger than allowed is not ruled out) or the
    mean is within ``margin`` of it; inconclusive when the real-only model did not learn."""
    base = {"gate": f"{model}: utility (real + synthetic vs real)", "area": "utility", "rule": ">=", "threshold": None, "value": None}
    if not util.get("measured"):
        return {**base, "state": "not measured", "sentence": util.get("reason", "utility was not measured (evaluate.utility.enabled is false)")}
    real = util["arms"]["real"][util["score"]]
    if not baseline_learned(util, cfg):
        return {**base, "state": "inconclusive", "value": real, "threshold": baseline_floor(util, cfg), "sentence": _not_learned(util, cfg)}
    d = util["differences"]["real+synthetic - real"]
    overall, rare = d["overall"], d.get("rare")
    limit = -cfg.max_dice_drop
    lo = overall["ci95"][0] if overall["ci95"] else -np.inf  # no interval (too few test cases): a loss is never ruled out
    rare_bad = rare is not None and rare["ci95"] is not None and rare["ci95"][1] < limit
    if overall["mean"] < limit or rare_bad:
        state = "fail"
    elif lo < limit or overall["mean"] < limit + margin * cfg.max_dice_drop:
        state = "warn"
    else:
        state = "pass"
    metric = _short(util)
    mixed = util["arms"]["real+synthetic"][util["score"]]
    sentence = (f"Compared: a {util['task']} model trained on real + synthetic data against the same model on real data alone "
                f"({metric} {mixed:.3f} vs {real:.3f}), paired over {util['test_cases']} real test cases and {util['seeds']} seeds: "
                f"difference {_fmt_diff(overall)}; allowed loss {cfg.max_dice_drop:.2f}"
                + (f"; rare class ({util.get('rare_test_cases', 0)} test cases) {_fmt_diff(rare)}" if rare is not None else "") + ". "
                + {"fail": "Synthetic data cost more than allowed" + (" on the rare class." if rare_bad and overall["mean"] >= limit else "."),
                   "warn": "A loss larger than allowed is not ruled out" + (" by the interval." if overall["ci95"] else " (no interval)."),
                   "pass": "The interval rules out a loss larger than allowed."}[state])
    rare_real = util["arms"]["real"].get(f"rare_{util['score']}")
    if rare is not None and rare_real is not None and rare_real < baseline_floor(util, cfg):
        sentence += (f" The rare class is inconclusive: the real-only model scores {rare_real:.2f} on it, below the floor "
                     f"{baseline_floor(util, cfg):.2f}; this gate rests on all test cases.")
    return {**base, "value": overall["mean"], "threshold": limit, "state": state, "sentence": sentence}
