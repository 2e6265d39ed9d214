"""Conditional fidelity: do each condition's synthetic cases show what defines that condition?

Measured per condition and per mask label (plus ``"all"``: every foreground label together), on label
maps only:

* presence: the share of cases that contain the label, with a Wilson 95% interval;
* volume (voxels, over the cases that contain the label): median and mean with bootstrap intervals, the
  synthetic/real median ratio, and the Wasserstein distance between the volume distributions divided by
  the real median volume;
* location: the mean centroid (voxel coordinates) and the spread of case centroids around it (RMS
  distance), and the distance between the synthetic and real mean centroids in units of the real spread.

"Real" is every real case of the condition, whatever its split: presence and size are properties of the
condition in the cohort, and more cases give tighter intervals. Each distance has its real-vs-real
baseline: the same distance between the real cases outside the train split and the real train cases,
what "as good as real" looks like at this cohort's size.

The rare condition's **defining labels** are read off the real train cases: a label the rare condition's
cases contain (or lack) far more often than the other conditions' (``presence`` / ``absence``), or one
whose volume differs clearly between them (``volume``: median ratio and rank separation both past their
thresholds; the hippocampus cohort's ``small`` is of this kind).

A classifier trained on real train cases only (image + one-hot mask, class-balanced batches) is asked the
condition of the real cases outside the train split and of the synthetic cases; per-condition recall
and balanced accuracy on both say whether synthetic cases carry their intended condition as visibly as
real ones.

:func:`condition_fidelity_gate` turns these into one gate per model. Its checks, on the rare
condition's synthetic cases: every label's presence share against the real share; every label's median
volume ratio against an allowed range (for a volume-defining label narrowed to half way, on a log scale,
to the other conditions' median), a ratio outside it that medians of as many real cases reach by
sampling alone only warning; and the classifier's recall on synthetic against real held-out rare cases.
The gate is the worst of its checks (fail > inconclusive > warn > pass, as :func:`gates.overall` ranks
them): a check that cannot be made (too few real rare cases, a classifier that does not tell real
conditions apart) is inconclusive, so the gate never passes on a check whose baseline did not work.
"""

from __future__ import annotations

import math

import numpy as np

from medsynth.config import ConditionalConfig, GatesConfig
from medsynth.eval.fidelity import _w1
from medsynth.eval.stats import percentile_interval, roc_auc

ALL = "all"
SEVERITY = {"pass": 0, "warn": 1, "inconclusive": 2, "fail": 3}


def label_keys(n_labels: int) -> list[str]:
    """``"1"`` .. ``"n"``, then ``"all"`` (all foreground labels together) when there are several labels."""
    keys = [str(v) for v in range(1, n_labels + 1)]
    return keys + [ALL] if n_labels > 1 else keys


def label_name(key: str, names: dict[int, str] | None = None) -> str:
    if key == ALL:
        return "all labels together"
    name = (names or {}).get(int(key))
    return f"label {key} ({name})" if name else f"label {key}"


def label_measures(masks: np.ndarray, n_labels: int) -> dict[str, dict[str, np.ndarray]]:
    """Per label key: ``present`` (N,) bool, ``volume`` (N,) voxels, ``centroid`` (N, 3) voxel
    coordinates (NaN where the label is absent). ``masks``: (N, D, H, W) integer label maps."""
    m = np.rint(np.asarray(masks)).astype(np.int16)
    n, shape = len(m), m.shape[1:]
    flat = m.reshape(n, -1)
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1).T  # (V, 3)
    out = {}
    for key in label_keys(n_labels):
        sel = flat > 0 if key == ALL else flat == int(key)
        vol = sel.sum(1).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cent = (sel.astype(np.float32) @ grid) / vol[:, None]
        out[key] = {"present": vol > 0, "volume": vol, "centroid": np.where(vol[:, None] > 0, cent, np.nan)}
    return out


def wilson_interval(k: int, n: int, z: float = 1.959964) -> list[float] | None:
    """Wilson score 95% interval of a proportion k / n (sound at small n and at 0 or n)."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _boot_ci(values: np.ndarray, stat, n_boot: int, seed: int) -> list[float] | None:
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    boots = [stat(values[rng.integers(0, len(values), len(values))]) for _ in range(n_boot)]
    return percentile_interval(boots, stat(values))


def _f(v) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _sub(measures: dict, sel: np.ndarray) -> dict:
    return {k: {q: a[sel] for q, a in d.items()} for k, d in measures.items()}


def _volume_summary(vol: np.ndarray, n_boot: int, seed: int) -> dict:
    if not len(vol):
        return {"n": 0, "median": None, "median_ci": None, "mean": None, "mean_ci": None}
    return {"n": int(len(vol)), "median": float(np.median(vol)), "median_ci": _boot_ci(vol, np.median, n_boot, seed),
            "mean": float(vol.mean()), "mean_ci": _boot_ci(vol, np.mean, n_boot, seed + 1)}


def _centre(cent: np.ndarray) -> tuple[np.ndarray | None, float | None]:
    """Mean centroid and RMS distance of the case centroids around it."""
    if not len(cent):
        return None, None
    mean = cent.mean(0)
    return mean, float(np.sqrt(((cent - mean) ** 2).sum(1).mean()))


def _median_ratio_range(real: np.ndarray, n: int, n_boot: int, seed: int) -> list[float] | None:
    """95% range of the median of ``n`` real volumes (drawn with replacement) over the real median: how
    far a synthetic median may stray by sampling alone at this number of synthetic cases."""
    if n < 1 or len(real) < 2 or not np.median(real):
        return None
    rng = np.random.default_rng(seed)
    r = np.median(real[rng.integers(0, len(real), (n_boot, n))], axis=1) / np.median(real)
    return [float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))]


def compare_label(syn: dict, real: dict, train: dict, heldout: dict, n_boot: int, seed: int) -> dict:
    """One label of one condition: synthetic vs real presence, volume and location (see module doc).
    Each argument is one label's :func:`label_measures` entry restricted to that set of cases."""
    def present(d):
        return d["volume"][d["present"]], d["centroid"][d["present"]]

    (sv, sc), (rv, rc), (tv, tc), (hv, hc) = present(syn), present(real), present(train), present(heldout)
    n_s, n_r = len(syn["present"]), len(real["present"])
    k_s, k_r = int(syn["present"].sum()), int(real["present"].sum())
    presence = {"synthetic": k_s, "synthetic_n": n_s, "synthetic_share": k_s / n_s if n_s else None,
                "synthetic_ci": wilson_interval(k_s, n_s),
                "real": k_r, "real_n": n_r, "real_share": k_r / n_r if n_r else None, "real_ci": wilson_interval(k_r, n_r)}
    vs, vr = _volume_summary(sv, n_boot, seed), _volume_summary(rv, n_boot, seed + 2)
    t_med = float(np.median(tv)) if len(tv) else None
    w = lambda a, b: _f(_w1(a, b) / t_med) if len(a) and len(b) and t_med else None  # noqa: E731
    volume = {"synthetic": vs, "real": vr, "median_ratio": _ratio(vs["median"], vr["median"]),
              "median_ratio_real_baseline": _ratio(float(np.median(hv)) if len(hv) else None, t_med),
              "median_ratio_real_range": _median_ratio_range(rv, len(sv), n_boot, seed + 3),
              "wasserstein": w(sv, tv), "wasserstein_real_baseline": w(hv, tv),
              "wasserstein_note": "W1 of the volumes over the real train median volume: synthetic vs real train; "
                                  "baseline real outside train vs real train"}
    ms, ss = _centre(sc)
    mr, sr = _centre(rc)
    mt, st = _centre(tc)
    mh, _ = _centre(hc)
    dist = float(np.linalg.norm(ms - mr)) if ms is not None and mr is not None else None
    base = float(np.linalg.norm(mh - mt)) if mh is not None and mt is not None else None
    centroid = {"synthetic_mean": ms.tolist() if ms is not None else None, "real_mean": mr.tolist() if mr is not None else None,
                "synthetic_spread": ss, "real_spread": sr, "distance": dist,
                "distance_relative": _ratio(dist, sr), "distance_relative_real_baseline": _ratio(base, st)}
    return {"presence": presence, "volume": volume, "centroid": centroid}


def defining_labels(train_measures: dict, train_y: np.ndarray, rare_index: int, cfg: ConditionalConfig,
                    names: dict[int, str] | None = None) -> list[dict]:
    """What tells the rare condition from the others among real train cases, per label key: presence
    shares, median volumes (when present), their ratio and the rank separation (ROC AUC of the rare
    cases' volumes against the others'). ``defined_by``: ``presence`` / ``absence`` / ``volume`` / None."""
    rare, other = train_y == rare_index, train_y != rare_index
    out = []
    for key, d in train_measures.items():
        pr, po = d["present"][rare], d["present"][other]
        row = {"label": key, "name": label_name(key, names), "rare_cases": int(rare.sum()), "other_cases": int(other.sum()),
               "rare_share": float(pr.mean()) if len(pr) else None, "other_share": float(po.mean()) if len(po) else None,
               "rare_median": None, "other_median": None, "volume_ratio": None, "volume_auc": None, "defined_by": None}
        if len(pr) < 2 or len(po) < 2:
            out.append(row)
            continue
        gap = row["rare_share"] - row["other_share"]
        vr, vo = d["volume"][rare][pr], d["volume"][other][po]
        row["rare_median"] = float(np.median(vr)) if len(vr) else None
        row["other_median"] = float(np.median(vo)) if len(vo) else None
        if len(vr) >= 2 and len(vo) >= 2:
            row.update(volume_ratio=_ratio(row["rare_median"], row["other_median"]), volume_auc=float(roc_auc(vr, vo)))
        if gap >= cfg.defining_presence_gap:
            row["defined_by"] = "presence"
        elif gap <= -cfg.defining_presence_gap:
            row["defined_by"] = "absence"
        elif (row["volume_ratio"] is not None
              and max(row["volume_ratio"], 1 / row["volume_ratio"]) >= cfg.defining_volume_ratio
              and abs(row["volume_auc"] - 0.5) >= cfg.defining_volume_separation - 0.5):
            row["defined_by"] = "volume"
        out.append(row)
    return out


def conditional_fidelity(syn_masks: np.ndarray, syn_conditions: list[str], real_masks: np.ndarray, real_y: np.ndarray,
                         real_is_train: np.ndarray, conditions: list[str], rare_index: int, n_labels: int, cfg: ConditionalConfig,
                         seed: int, n_boot: int = 200) -> dict:
    """Presence, volume and location of every label per condition, synthetic vs real, and the rare
    condition's defining labels. ``real_y``: condition index per real case; ``real_is_train``: the real
    cases of the train split (the rest are the real-vs-real baseline's held-out side)."""
    names = cfg.label_names
    real_y, real_is_train = np.asarray(real_y), np.asarray(real_is_train, bool)
    syn_y = np.array([conditions.index(c) if c in conditions else -1 for c in syn_conditions])
    m_syn, m_real = label_measures(syn_masks, n_labels), label_measures(real_masks, n_labels)
    order = [rare_index] + [i for i in range(len(conditions)) if i != rare_index]  # the rare condition first
    per_condition = {}
    for ci in order:
        s_sel, r_sel = syn_y == ci, real_y == ci
        t_sel, h_sel = r_sel & real_is_train, r_sel & ~real_is_train
        s, r, t, h = _sub(m_syn, s_sel), _sub(m_real, r_sel), _sub(m_real, t_sel), _sub(m_real, h_sel)
        per_condition[conditions[ci]] = {
            "n_synthetic": int(s_sel.sum()), "n_real": int(r_sel.sum()),
            "n_real_train": int(t_sel.sum()), "n_real_heldout": int(h_sel.sum()),
            "labels": {key: {"name": label_name(key, names), **compare_label(s[key], r[key], t[key], h[key], n_boot, seed + 7 * ci)}
                       for key in label_keys(n_labels)},
        }
    defining = defining_labels(_sub(m_real, real_is_train), real_y[real_is_train], rare_index, cfg, names)
    return {"rare_condition": conditions[rare_index], "conditions": [conditions[i] for i in order], "n_labels": n_labels,
            "label_names": {str(k): v for k, v in names.items()}, "defining_labels": defining, "per_condition": per_condition,
            "real_reference": "every real case of the condition (all splits); baselines: real outside the train split vs real train",
            "volume_unit": "voxels of the model grid"}


def classifier_inputs(x: np.ndarray, n_labels: int) -> np.ndarray:
    """(N, 2, D, H, W) image + label map -> (N, 1 + n_labels, D, H, W): image and one channel per label."""
    x = np.asarray(x, dtype=np.float32)
    lab = np.rint(x[:, 1]).astype(np.int16)
    return np.concatenate([x[:, :1]] + [(lab == v)[:, None].astype(np.float32) for v in range(1, n_labels + 1)], 1)


def fit_condition_classifier(real_x: np.ndarray, real_y: np.ndarray, real_is_train: np.ndarray, n_classes: int, n_labels: int,
                             cfg: ConditionalConfig, seed: int):
    """The utility stage's 3D CNN with a 1 + n_labels channel input, trained on the real train cases
    only for ``cfg.classifier_steps`` steps. Batches are class-balanced (a condition drawn uniformly,
    then one of its cases), so the rare condition is seen as often as the common one; the only
    augmentation is a left-right flip (other mirrorings swap labels that differ by position). Returns
    the network, or None when a condition has no train case."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    from medsynth.eval.utility import _Classifier, _device

    real_is_train = np.asarray(real_is_train, bool)
    y = np.asarray(real_y, np.int64)[real_is_train]
    by_class = [np.flatnonzero(y == c) for c in range(n_classes)]
    if any(len(i) == 0 for i in by_class):
        return None
    x = torch.from_numpy(classifier_inputs(np.asarray(real_x)[real_is_train], n_labels))
    dev = _device()
    torch.manual_seed(seed)
    net = _Classifier(n_classes, cfg.classifier_channels)
    net.body[0] = nn.Conv3d(1 + n_labels, cfg.classifier_channels[0], 3, stride=2, padding=1)
    net = net.to(dev).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    for _ in range(cfg.classifier_steps):
        cls = rng.integers(0, n_classes, cfg.classifier_batch_size)
        idx = np.array([by_class[c][rng.integers(len(by_class[c]))] for c in cls])
        xb = x[idx]
        if rng.random() < 0.5:
            xb = xb.flip(2)
        loss = F.cross_entropy(net(xb.to(dev)), torch.from_numpy(y[idx]).to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


def predict_conditions(net, x: np.ndarray, n_labels: int, batch: int = 32) -> np.ndarray:
    import torch

    from medsynth.eval.utility import _device

    with torch.no_grad():
        return np.concatenate([net(torch.from_numpy(classifier_inputs(x[i:i + batch], n_labels)).to(_device())).argmax(1).cpu().numpy()
                               for i in range(0, len(x), batch)]) if len(x) else np.zeros(0, np.int64)


def recall_summary(pred: np.ndarray, y: np.ndarray, conditions: list[str]) -> dict:
    """Per-condition recall (Wilson interval) and balanced accuracy over the conditions present."""
    recall, ci, n = {}, {}, {}
    for c, name in enumerate(conditions):
        sel = y == c
        n[name] = int(sel.sum())
        k = int((pred[sel] == c).sum())
        recall[name] = k / n[name] if n[name] else None
        ci[name] = wilson_interval(k, n[name])
    present = [r for r in recall.values() if r is not None]
    return {"n": n, "recall": recall, "recall_ci": ci, "balanced_accuracy": float(np.mean(present)) if present else None}


def classifier_check(net, real_x: np.ndarray, real_y: np.ndarray, real_is_train: np.ndarray, syn_x: np.ndarray,
                     syn_conditions: list[str], conditions: list[str], n_labels: int, steps: int) -> dict:
    """The real-trained classifier on the real cases outside the train split and on the synthetic cases
    (with their intended condition). ``syn_x``: (N, 2, D, H, W) image + label map."""
    if net is None:
        return {"measured": False, "reason": "a condition has no real train case to train the classifier on"}
    held = ~np.asarray(real_is_train, bool)
    syn_y = np.array([conditions.index(c) if c in conditions else -1 for c in syn_conditions])
    real = recall_summary(predict_conditions(net, np.asarray(real_x)[held], n_labels), np.asarray(real_y)[held], conditions)
    syn = recall_summary(predict_conditions(net, syn_x, n_labels), syn_y, conditions)
    return {"measured": True, "inputs": "image + one-hot mask", "trained_on": "real train split (class-balanced batches)", "steps": steps,
            "train_cases": {c: int(((np.asarray(real_y) == i) & ~held).sum()) for i, c in enumerate(conditions)},
            "real_heldout": real, "synthetic": syn}


def _state(bad: bool, near: bool, severity: str = "fail") -> str:
    return severity if bad else ("warn" if near else "pass")


def condition_fidelity_gate(model: str, cond: dict, clf: dict, cfg: GatesConfig) -> dict:
    """One gate per model on the rare condition's synthetic cases (see the module doc). Keeps the list
    of its checks under ``checks``; value / threshold / rule are those of the decisive check."""
    rare = cond["rare_condition"]
    pc = cond["per_condition"][rare]
    n_s, n_r = pc["n_synthetic"], pc["n_real"]
    base = {"gate": f"{model}: condition fidelity", "area": "fidelity"}
    if n_s == 0:
        return {**base, "state": "inconclusive", "value": None, "threshold": None, "rule": "", "checks": [],
                "sentence": f"{model} has no synthetic {rare} case: the rare condition cannot be checked."}
    if n_r < cfg.condition_min_real_cases:
        return {**base, "state": "inconclusive", "value": None, "threshold": cfg.condition_min_real_cases, "rule": ">=", "checks": [],
                "sentence": f"Only {n_r} real {rare} case(s) (at least {cfg.condition_min_real_cases} needed): too few to say what "
                            f"the condition looks like, so {model}'s {n_s} synthetic {rare} cases cannot be checked against it."}
    rank = {"presence": 0, "absence": 0, "volume": 1}
    defining = {d["label"]: d for d in sorted((d for d in cond["defining_labels"] if d["defined_by"]), key=lambda d: rank[d["defined_by"]])}
    keys = list(defining) + [k for k in pc["labels"] if k not in defining]  # defining labels first, by presence before by volume
    checks = []
    for key in keys:
        lab, d = pc["labels"][key], defining.get(key)
        checks.append(_presence_check(key, lab, d, rare, n_s, n_r, cfg))
        volume = _volume_check(key, lab, d, rare, cfg)
        if volume is not None:
            checks.append(volume)
    checks.append(_classifier_gate_check(clf, rare, cfg))
    worst = max(checks, key=lambda c: SEVERITY[c["state"]])
    return {**base, "state": worst["state"], "value": worst["value"], "threshold": worst["threshold"], "rule": worst["rule"], "checks": checks,
            "defining_labels": [d["name"] + f" ({d['defined_by']})" for d in defining.values()],
            "sentence": _gate_sentence(f"{model}'s {n_s} synthetic {rare} cases: ", checks, defining, rare, worst["state"])}


def _presence_check(key: str, lab: dict, d: dict | None, rare: str, n_s: int, n_r: int, cfg: GatesConfig) -> dict:
    """The share of the rare condition's synthetic cases that contain label ``key`` against the real share
    (``d``: the label's defining-label record, None when it does not define the condition)."""
    name, p = lab["name"], lab["presence"]
    gap = p["synthetic_share"] - p["real_share"]
    gmax = cfg.condition_presence_gap_max
    state = _state(abs(gap) > gmax, abs(gap) > gmax * (1 - cfg.warn_margin))
    if state != "pass":
        if gap < 0:
            why = ("the condition's defining structure is missing" if d and d["defined_by"] == "presence"
                   else f"a structure real {rare} cases have is missing")
        else:
            why = (f"drawn where real {rare} cases lack it, and the condition is defined by its absence"
                   if d and d["defined_by"] == "absence" else f"drawn more often than in real {rare} cases")
    else:
        why = ""
    return {"check": "presence", "label": key, "state": state, "value": p["synthetic_share"], "rule": "within",
            "threshold": [round(max(0.0, p["real_share"] - gmax), 3), round(min(1.0, p["real_share"] + gmax), 3)],
            "text": f"{p['synthetic']} of {n_s} contain {name}, real {rare} cases {p['real']} of {n_r}" + (f"; {why}" if why else "")}


def _volume_check(key: str, lab: dict, d: dict | None, rare: str, cfg: GatesConfig) -> dict | None:
    """Label ``key``'s synthetic/real median volume ratio against the allowed range (for a volume-defining
    label narrowed to half way, log scale, to the other conditions'); None without a ratio or with too few
    real cases containing the label."""
    name, v = lab["name"], lab["volume"]
    ratio = v["median_ratio"]
    if ratio is None or v["real"]["n"] < cfg.condition_min_real_cases:
        return None
    m = cfg.warn_margin
    by_volume = d if d and d["defined_by"] == "volume" else None  # the label defines the condition by its volume
    lo, hi = cfg.condition_volume_ratio_min, cfg.condition_volume_ratio_max
    if by_volume:  # half way (log scale) to the other conditions' median volume
        h = math.sqrt(by_volume["volume_ratio"])
        lo, hi = max(lo, min(h, 1 / h)), min(hi, max(h, 1 / h))
    text = (f"{name} median volume {v['synthetic']['median']:.0f} voxels, real {rare} cases {v['real']['median']:.0f} "
            f"({ratio:.2f}x; allowed {lo:.2f}-{hi:.2f}x")
    text += (f": half way to the other conditions' {1 / by_volume['volume_ratio']:.2f}x)" if by_volume else ")")
    spread = v["median_ratio_real_range"]
    outside = not lo <= ratio <= hi
    if outside and spread and spread[0] <= ratio <= spread[1]:
        # outside the range, but as far as medians of as many real cases stray by sampling alone
        state = "warn"
        text += (f"; outside the allowed range, but medians of {v['synthetic']['n']} real {rare} cases range "
                 f"{spread[0]:.2f}-{spread[1]:.2f}x by sampling alone")
    else:
        state = _state(outside, not lo * (1 + m) <= ratio <= hi * (1 - m))
        if state != "pass":
            text += "; drawn too " + ("small" if ratio < 1 else "large")
            if by_volume:
                text += f" for a condition defined by its {'smaller' if by_volume['volume_ratio'] < 1 else 'larger'} volume"
    return {"check": "volume", "label": key, "state": state, "value": ratio, "rule": "within", "threshold": [round(lo, 3), round(hi, 3)], "text": text}


def _gate_sentence(head: str, checks: list[dict], defining: dict, rare: str, state: str) -> str:
    """The gate's sentence: its failing and warning checks, worst first (else the defining labels' checks
    and the classifier's), then the inconclusive ones."""
    problems = [c["text"] for c in sorted(checks, key=lambda c: -SEVERITY[c["state"]]) if c["state"] in ("fail", "warn")]
    notes = [c["text"] for c in checks if c["state"] == "inconclusive"]
    if problems:
        sentence = head + "; ".join(problems) + "."
    else:
        first = [c["text"] for c in checks if c["label"] in defining][:2] or [c["text"] for c in checks if c["check"] == "presence"][:1]
        clf_ok = [c["text"] for c in checks if c["check"] == "classifier" and c["state"] == "pass"]
        sentence = head + "; ".join(first + clf_ok) + f". Every label is present and sized as in real {rare} cases."
    if notes:
        sentence += " Inconclusive: " + "; ".join(notes) + "."
    if state == "inconclusive":
        sentence += " A check whose baseline did not work does not pass."
    return sentence


def _classifier_gate_check(clf: dict, rare: str, cfg: GatesConfig) -> dict:
    out = {"check": "classifier", "label": None, "value": None, "rule": ">=", "threshold": None}
    if not clf or not clf.get("measured"):
        return {**out, "state": "inconclusive",
                "text": "the real-only classifier was not run: " + (clf or {}).get("reason", "not measured")}
    real, syn = clf["real_heldout"], clf["synthetic"]
    if real["n"].get(rare, 0) < cfg.condition_min_real_cases:
        return {**out, "state": "inconclusive",
                "text": f"only {real['n'].get(rare, 0)} real {rare} case(s) outside the train split to test the real-only classifier on "
                        f"(at least {cfg.condition_min_real_cases} needed)"}
    ba = real["balanced_accuracy"]
    if ba is None or ba < cfg.condition_classifier_balanced_accuracy_min:
        return {**out, "state": "inconclusive", "value": ba, "threshold": cfg.condition_classifier_balanced_accuracy_min,
                "text": f"the classifier trained on real data only tells real held-out cases' conditions apart at balanced accuracy "
                        f"{ba:.2f} (at least {cfg.condition_classifier_balanced_accuracy_min:.2f} needed), "
                        "so it cannot judge synthetic cases"}
    r_real, r_syn = real["recall"][rare], syn["recall"][rare]
    drop, dmax = r_real - r_syn, cfg.condition_classifier_recall_drop_max
    state = _state(drop > dmax, drop > dmax * (1 - cfg.warn_margin), cfg.condition_classifier_failure)
    text = (f"a classifier trained on real data only recognises {r_syn:.0%} of them as {rare}, against {r_real:.0%} of "
            f"{real['n'][rare]} real held-out {rare} cases (balanced accuracy on real {ba:.2f})")
    if state != "pass":
        text += f"; they do not look like the condition (allowed drop {dmax:.2f})"
    return {**out, "state": state, "value": r_syn, "threshold": r_real - dmax, "text": text}
