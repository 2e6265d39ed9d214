"""Downstream utility: does synthetic data help a model trained on it?

Three arms, each trained ``seeds`` times from scratch with the same budget, evaluated on the real
test split only:

* ``real``: the real train split;
* ``real+synthetic``: the real train split plus ``synthetic_ratio`` synthetic cases per real case;
* ``synthetic``: synthetic cases only.

Segmentation (cohorts with masks): a MONAI UNet, Dice + cross-entropy loss; reported as the mean Dice
over real test cases whose mask is not empty, overall and for the rare condition. Classification
(cohorts whose "masks" are the shapes themselves, e.g. AdrenalMNIST3D, or without masks): a small 3D
CNN on the image; reported as ROC AUC of the rare condition against the rest. Intervals are bootstrap
95% intervals over (seed, test case) pairs. Sized by ``evaluate.utility`` so the CPU demo stays small
and a GPU run can go full size.

Every arm's run ``s`` starts from the same initial weights and batch order (``seed * 100 + s``), so the
arms differ only by their data. The ``real`` arm does not depend on the synthetic set: an evaluation of
several models trains it once and passes it to the others as ``real_arm``, so every model is compared
with the same baseline (on a small cohort a retrained baseline alone moves Dice by 0.1 or more).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medsynth.config import UtilityConfig
from medsynth.eval.stats import roc_auc

ARMS = ("real", "real+synthetic", "synthetic")


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


def _arm_data(arm: str, real_x, real_y, syn_x, syn_y, ratio: float, rng: np.random.Generator):
    if arm == "real":
        return real_x, real_y
    if arm == "synthetic":
        return syn_x, syn_y
    n = min(len(syn_x), max(1, int(round(ratio * len(real_x)))))
    pick = rng.choice(len(syn_x), n, replace=False)
    return np.concatenate([real_x, syn_x[pick]]), np.concatenate([real_y, syn_y[pick]])


def _train(net: nn.Module, x: np.ndarray, target: np.ndarray, loss_fn, cfg: UtilityConfig, seed: int) -> nn.Module:
    dev = _device()
    net = net.to(dev).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    xt, tt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(target)
    for _ in range(cfg.steps):
        idx = torch.randint(0, len(xt), (min(cfg.batch_size, len(xt)),), generator=g)
        xb = xt[idx].to(dev)
        flip = torch.rand(3, generator=g) < 0.5  # light augmentation: flips
        dims = [d + 2 for d in range(3) if flip[d]]
        tb = tt[idx].to(dev)
        if dims:
            xb = xb.flip(dims)
            tb = tb.flip([d - 1 for d in dims]) if tb.dim() == 4 else tb
        loss = loss_fn(net(xb), tb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


def _dice_per_case(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    p, g = pred > 0, gt > 0
    inter = (p & g).reshape(len(p), -1).sum(1)
    denom = p.reshape(len(p), -1).sum(1) + g.reshape(len(g), -1).sum(1)
    return 2 * inter / np.maximum(denom, 1)


def _ci(values: np.ndarray, seed: int, n_boot: int = 500) -> list[float]:
    if len(values) < 2:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    boots = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(n_boot)]
    return [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]


def segmentation_utility(train: tuple, test: tuple, synthetic: tuple, n_labels: int, rare_index: int, cfg: UtilityConfig, seed: int,
                         real_arm: dict | None = None) -> dict:
    """train/test: (x (N,2,D,H,W) model space, y (N,) condition); synthetic: (images, masks, conditions).
    ``real_arm``: the ``real`` arm of an earlier call with the same train/test/cfg/seed, reused as is."""
    real_x, real_m = train[0][:, :1], train[0][:, 1].astype(np.int64).clip(0, n_labels)
    syn_x, syn_m = synthetic[0][:, None], synthetic[1].astype(np.int64).clip(0, n_labels)
    test_x, test_m, test_y = test[0][:, :1], test[0][:, 1].astype(np.int64).clip(0, n_labels), test[1]
    has_fg = test_m.reshape(len(test_m), -1).max(1) > 0
    if has_fg.sum() == 0:
        return {"task": "segmentation", "measured": False, "reason": "no real test case has a non-empty mask"}
    from monai.losses import DiceCELoss

    loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def loss_fn(logits, target):
        return loss(logits, target[:, None])

    out = {"task": "segmentation", "measured": True, "metric": "Dice", "test_cases": int(has_fg.sum()), "arms": {}}
    rng = np.random.default_rng(seed)
    for arm in ARMS:
        if arm == "real" and real_arm is not None:
            out["arms"]["real"] = real_arm
            continue
        per_case = []
        for s in range(cfg.seeds):
            x, m = _arm_data(arm, real_x, real_m, syn_x, syn_m, cfg.synthetic_ratio, rng)
            torch.manual_seed(seed * 100 + s)
            net = _train(_segmenter(n_labels + 1, cfg.channels), x, m, loss_fn, cfg, seed * 100 + s)
            with torch.no_grad():
                pred = torch.cat([net(torch.from_numpy(test_x[i : i + 8].astype(np.float32)).to(_device())).argmax(1).cpu()
                                  for i in range(0, len(test_x), 8)]).numpy()
            per_case.append(_dice_per_case(pred, test_m))
        d = np.stack(per_case)  # (seeds, cases)
        overall = d[:, has_fg].ravel()
        rare = d[:, has_fg & (test_y == rare_index)].ravel()
        out["arms"][arm] = {
            "value": float(overall.mean()), "ci": _ci(overall, seed),
            "rare": float(rare.mean()) if rare.size else None, "rare_ci": _ci(rare, seed) if rare.size > 1 else None,
            "per_seed": [float(v) for v in d[:, has_fg].mean(1)],
        }
    return out


def classification_utility(train: tuple, test: tuple, synthetic: tuple, n_classes: int, rare_index: int, cfg: UtilityConfig, seed: int,
                           real_arm: dict | None = None) -> dict:
    real_x, real_y = train[0][:, :1], train[1].astype(np.int64)
    syn_x, syn_y = synthetic[0][:, None], synthetic[2].astype(np.int64)
    test_x, test_y = test[0][:, :1], test[1].astype(np.int64)
    if len(set(test_y.tolist())) < 2:
        return {"task": "classification", "measured": False, "reason": "the real test split holds one condition only"}
    out = {"task": "classification", "measured": True, "metric": "ROC AUC (rare vs rest)", "test_cases": int(len(test_y)), "arms": {}}
    rng = np.random.default_rng(seed)
    for arm in ARMS:
        if arm == "real" and real_arm is not None:
            out["arms"]["real"] = real_arm
            continue
        aucs, scores_all = [], []
        for s in range(cfg.seeds):
            x, y = _arm_data(arm, real_x, real_y, syn_x, syn_y, cfg.synthetic_ratio, rng)
            torch.manual_seed(seed * 100 + s)
            net = _train(_Classifier(n_classes, cfg.channels), x, y, F.cross_entropy, cfg, seed * 100 + s)
            with torch.no_grad():
                logits = torch.cat([net(torch.from_numpy(test_x[i : i + 32].astype(np.float32)).to(_device())).float().cpu()
                                    for i in range(0, len(test_x), 32)])
            score = torch.softmax(logits, 1)[:, rare_index].numpy()
            scores_all.append(score)
            aucs.append(roc_auc(score[test_y == rare_index], score[test_y != rare_index]))
        # interval: bootstrap over test cases of the seed-averaged score
        mean_score = np.mean(scores_all, 0)
        boot_rng = np.random.default_rng(seed)
        boots = []
        for _ in range(300):
            i = boot_rng.integers(0, len(test_y), len(test_y))
            pos, neg = mean_score[i][test_y[i] == rare_index], mean_score[i][test_y[i] != rare_index]
            if len(pos) and len(neg):
                boots.append(roc_auc(pos, neg))
        out["arms"][arm] = {"value": float(np.mean(aucs)), "ci": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))],
                            "per_seed": [float(a) for a in aucs]}
    return out


def utility_gate(model: str, util: dict, cfg: UtilityConfig, margin: float) -> dict:
    base = {"gate": f"{model}: utility (real + synthetic vs real)", "area": "utility", "rule": ">=", "threshold": None, "value": None}
    if not util.get("measured"):
        return {**base, "state": "not measured", "sentence": util.get("reason", "utility was not measured (evaluate.utility.enabled is false)")}
    real, mixed = util["arms"]["real"]["value"], util["arms"]["real+synthetic"]["value"]
    threshold = real - cfg.max_dice_drop
    delta = mixed - real
    state = "pass" if mixed >= threshold + margin * cfg.max_dice_drop else ("warn" if mixed >= threshold else "fail")
    return {**base, "value": mixed, "threshold": threshold, "state": state,
            "sentence": (f"A {util['task']} model trained on real + synthetic data scores {util['metric']} {mixed:.3f} on real test "
                         f"cases, {delta:+.3f} against real data alone ({real:.3f}); allowed loss {cfg.max_dice_drop:.2f}.")}
