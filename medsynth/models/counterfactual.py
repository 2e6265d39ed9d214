"""Counterfactual generator: a real case of the common condition -> the same case with the rare condition.

Two parts, exported together as the sampler:

* :class:`StructurePrior`, fitted to the train split's label maps at the start of training: which labels
  define the rare condition and how. A label present in the rare condition's cases and absent from the
  others (presence gap >= ``defining_presence_gap``, e.g. a lesion) is *inserted*: its volume
  (log-normal), its place (the offset of its centre from the centre of the label around it, Gaussian)
  and whether it lies inside that label are fitted to the rare training cases, and a drawn structure is
  a blob of the drawn volume grown around the drawn centre. Labels present in both whose median volume
  differs by ``defining_volume_ratio`` (e.g. a smaller hippocampus) are *rescaled* together about their
  centre to a volume drawn from the rare cases' volumes of those labels together (log-normal). The look
  of each changed label -- its mean intensity -- is drawn from 19 quantiles of that in the rare cases
  (a lesion that is bright in some patients and dark in others stays one or the other). Only these aggregates are stored: no training mask or image is copied.
* :class:`Inpainter`, a 3D U-Net (MONAI) that repaints an *edit region* of a real case -- the changed
  structure and ``margin`` voxels around it -- for a given label map, from the image outside the region,
  the region, the label map (one-hot), the condition, the look and a noise channel. Outside the region
  the output is the real case, voxel for voxel.

Training, on real cases of every condition: each case's defining structure (or, in a case without it, a
drawn region in the label that would hold it) is blanked with a margin of 1..``margin`` voxels and
painted back from the case's own label map: L1 on the region (``rec_weight``) plus a projection
discriminator that judges the composite image with its label map and the region -- the painted
structure and its surround -- (hinge loss, lazy R1; ``adv_weight`` after ``adv_start`` steps). The
generator is averaged (EMA) for sampling.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.nn import functional as F

from medsynth.config import CounterfactualConfig
from medsynth.models.base import GenerativeModule, TrainingDataError, ema_update, frozen_copy, grad_norm
from medsynth.models.blocks import ProjectionDiscriminator, Sampler, one_hot_mask

KEEP, INSERT, RESCALE = 0, 1, 2
MODES = {KEEP: "keep", INSERT: "insert", RESCALE: "rescale"}
MIN_STRUCTURE_CASES = 2  # fewer rare training cases holding a structure: it cannot be fitted
LOOK_LEVELS = np.linspace(0.05, 0.95, 19)  # quantile levels of a changed label's mean intensity (its look) kept in the prior


def _centroid(sel: np.ndarray) -> np.ndarray:
    return np.argwhere(sel).mean(0) if sel.any() else (np.array(sel.shape, float) - 1) / 2


def dilate(sel: np.ndarray, voxels: int) -> np.ndarray:
    """Binary dilation by ``voxels`` (26-connectivity), within the volume."""
    return ndimage.binary_dilation(sel, structure=np.ones((3, 3, 3), bool), iterations=int(voxels)) if voxels > 0 else sel.copy()


class StructurePrior(nn.Module):
    """Per label (index 0 unused): its mode (keep / insert / rescale) and, for an inserted label, the
    fitted statistics of where and how large it is; for the rescaled labels, the fitted volume factor.
    Buffers, so they travel in the exported state_dict."""

    mode: torch.Tensor
    host: torch.Tensor
    inside: torch.Tensor
    log_volume: torch.Tensor
    offset_mean: torch.Tensor
    offset_tril: torch.Tensor
    rescale_log_volume: torch.Tensor
    intensity_quantiles: torch.Tensor

    def __init__(self, n_mask_labels: int):
        super().__init__()
        k = n_mask_labels + 1
        self.register_buffer("mode", torch.zeros(k, dtype=torch.long))
        self.register_buffer("host", torch.zeros(k, dtype=torch.long))
        self.register_buffer("inside", torch.zeros(k))
        self.register_buffer("log_volume", torch.zeros(k, 4))  # mean, std, min, max of log voxels
        self.register_buffer("offset_mean", torch.zeros(k, 3))
        self.register_buffer("offset_tril", torch.zeros(k, 3, 3))
        self.register_buffer("rescale_log_volume", torch.zeros(4))  # mean, std, min, max of log voxels of the rescaled labels together
        self.register_buffer("intensity_quantiles", torch.zeros(k, len(LOOK_LEVELS)))  # of the label's mean intensity in rare cases

    @property
    def modes(self) -> dict[int, str]:
        return {k: MODES[int(m)] for k, m in enumerate(self.mode.tolist()) if k > 0}

    def changed_labels(self) -> list[int]:
        return [k for k, m in self.modes.items() if m != "keep"]

    def has_change(self) -> bool:
        return bool(self.changed_labels())

    @torch.no_grad()
    def fit(self, images: np.ndarray, masks: np.ndarray, y: np.ndarray, rare_index: int, presence_gap: float, volume_ratio: float) -> dict:
        """Fit to images and label maps (N, D, H, W) and conditions (N,); returns what was fitted, per label."""
        masks, y = np.asarray(masks).astype(np.int64), np.asarray(y)
        rare, other = masks[y == rare_index], masks[y != rare_index]
        rare_images = np.asarray(images)[y == rare_index]
        report: dict[str, Any] = {"rare_cases": int(len(rare)), "other_cases": int(len(other)), "labels": {}}
        self.mode.zero_()
        if len(rare) < MIN_STRUCTURE_CASES or len(other) == 0:
            report["reason"] = (f"{len(rare)} rare-condition and {len(other)} other training cases: at least "
                                f"{MIN_STRUCTURE_CASES} and 1 are needed to learn what the condition changes")
            return report
        vol = lambda ms, k: (ms == k).reshape(len(ms), -1).sum(1)  # noqa: E731
        rescale = []
        for k in range(1, len(self.mode)):
            v_rare, v_other = vol(rare, k), vol(other, k)
            p_rare, p_other = float((v_rare > 0).mean()), float((v_other > 0).mean())
            entry = {"presence_rare": round(p_rare, 3), "presence_other": round(p_other, 3)}
            if p_rare - p_other >= presence_gap and (v_rare > 0).sum() >= MIN_STRUCTURE_CASES:
                entry.update(self._fit_insert(k, rare[v_rare > 0]))
            elif p_rare > 0 and p_other > 0:
                m_rare, m_other = np.median(v_rare[v_rare > 0]), np.median(v_other[v_other > 0])
                ratio = float(m_rare / m_other)
                entry["median_volume_ratio"] = round(ratio, 3)
                if ratio >= volume_ratio or ratio <= 1 / volume_ratio:
                    rescale.append(k)
            report["labels"][str(k)] = entry
        if rescale:
            group = lambda ms: np.isin(ms, rescale).reshape(len(ms), -1).sum(1)  # noqa: E731
            g_rare, g_other = group(rare), group(other)
            logv = np.log(g_rare[g_rare > 0])
            self.rescale_log_volume.copy_(torch.tensor([logv.mean(), max(logv.std(), 1e-3), logv.min(), logv.max()]))
            for k in rescale:
                self.mode[k] = RESCALE
                report["labels"][str(k)]["mode"] = "rescale"
            report["rescale"] = {"labels": rescale, "median_volume_rare": round(float(np.exp(np.median(logv))), 1),
                                 "median_volume_other": round(float(np.median(g_other[g_other > 0])), 1),
                                 "volume_factor_median": round(float(np.exp(np.median(logv)) / np.median(g_other[g_other > 0])), 3)}
        for k, e in report["labels"].items():
            e.setdefault("mode", MODES[int(self.mode[int(k)])])
            if e["mode"] != "keep":
                means = [img[m == int(k)].mean() for img, m in zip(rare_images, rare, strict=False) if (m == int(k)).any()]
                self.intensity_quantiles[int(k)] = torch.tensor(np.quantile(means, LOOK_LEVELS))
                e["mean_intensity_quantiles_5_50_95"] = [round(float(v), 3) for v in np.quantile(means, [0.05, 0.5, 0.95])]
        return report

    def _fit_insert(self, k: int, cases: np.ndarray) -> dict:
        hosts, inside, offsets, logv = [], [], [], []
        for m in cases:
            sel = m == k
            ring = dilate(sel, 1) & ~sel
            around = m[ring]
            labels, counts = np.unique(around, return_counts=True)
            h = int(labels[counts.argmax()])
            hosts.append(h)
            logv.append(np.log(sel.sum()))
        host = max(set(hosts), key=hosts.count)
        for m in cases:
            sel = m == k
            around = m[dilate(sel, 1) & ~sel]
            inside.append(float((around == host).mean()) if host > 0 else 0.0)
            base = (m == host) | sel if host > 0 else (m > 0)
            offsets.append(_centroid(sel) - _centroid(base))
        offsets_a, logv_a = np.array(offsets), np.array(logv)
        cov = np.cov(offsets_a.T) if len(offsets_a) > 2 else np.diag(np.full(3, 1.0))
        cov = 0.9 * cov + 0.1 * np.diag(np.diag(cov)) + 0.25 * np.eye(3)  # full rank, at least half a voxel of spread
        self.mode[k] = INSERT
        self.host[k] = host
        self.inside[k] = float(np.mean(inside) >= 0.5)
        self.log_volume[k] = torch.tensor([logv_a.mean(), max(logv_a.std(), 0.05), logv_a.min(), logv_a.max()])
        self.offset_mean[k] = torch.tensor(offsets_a.mean(0))
        self.offset_tril[k] = torch.tensor(np.linalg.cholesky(cov))
        return {"mode": "insert", "cases": int(len(cases)), "host_label": host, "inside_host": bool(self.inside[k]),
                "median_volume": round(float(np.exp(np.median(logv_a))), 1)}

    # ------------------------------------------------------------------ drawing
    def draw(self, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """A target label map with the rare condition for the label map ``mask`` (D, H, W) of a case
        without it, and what was drawn. Raises ValueError when the case cannot hold the structure (e.g.
        it lacks the label an inserted structure lies in)."""
        if not self.has_change():
            raise ValueError("the structure prior found nothing that the rare condition changes (no label to insert or rescale)")
        target = np.asarray(mask).astype(np.int64).copy()
        drawn: dict = {}
        rescale = [k for k, m in self.modes.items() if m == "rescale"]
        if rescale:
            target, drawn["rescale"] = self._draw_rescale(target, rescale, rng)
        for k, m in self.modes.items():
            if m == "insert":
                target, drawn[f"insert_label_{k}"] = self._draw_insert(target, k, rng)
        # the look of each changed label: its mean intensity, one of the rare cases' quantiles
        drawn["mean_intensity"] = {str(k): round(float(self.intensity_quantiles[k, rng.integers(len(LOOK_LEVELS))]), 4)
                                   for k in self.changed_labels()}
        return target.astype(np.uint8), drawn

    def look_channel(self, mask: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) labels and (B, K + 1) mean intensity per label -> (B, 2, D, H, W): where the changed
        labels are (1) and there each one's mean intensity (0 elsewhere)."""
        where = torch.zeros(mask.shape, dtype=intensity.dtype, device=mask.device)
        value = torch.zeros_like(where)
        for k in self.changed_labels():
            sel = mask == k
            where = torch.where(sel, torch.ones_like(where), where)
            value = torch.where(sel, intensity[:, k, None, None, None], value)
        return torch.stack([where, value], 1)

    def _draw_rescale(self, mask: np.ndarray, labels: list[int], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        sel = np.isin(mask, labels)
        if not sel.any():
            raise ValueError(f"the case has none of the labels {labels} that the rare condition rescales")
        mean, std, lo, hi = self.rescale_log_volume.tolist()
        wanted = float(np.exp(np.clip(rng.normal(mean, std), lo, hi)))  # a volume rare cases have
        factor = wanted / float(sel.sum())
        linear = factor ** (1 / 3)
        c = _centroid(sel)
        for _ in range(3):  # nearest-neighbour resampling about the centre, out(p) = mask(c + (p - c) / linear), corrected to the volume
            scaled = ndimage.affine_transform(np.where(sel, mask, 0), np.eye(3) / linear, offset=c - c / linear, order=0, mode="constant")
            got = int(np.isin(scaled, labels).sum())
            if got == 0 or abs(got / wanted - 1) < 0.03:
                break
            linear *= (wanted / got) ** (1 / 3)
        out = np.where(sel, 0, mask)
        out = np.where(np.isin(scaled, labels) & (out == 0), scaled, out)  # other labels keep their voxels
        return out, {"volume_factor": round(linear**3, 4), "source_voxels": int(sel.sum()), "target_voxels": int(np.isin(out, labels).sum())}

    def _draw_insert(self, mask: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        host = int(self.host[k])
        region = (mask == host) if host > 0 else np.ones(mask.shape, bool)
        if not region.any():
            raise ValueError(f"the case has no label {host}, which the inserted label {k} lies in")
        mean, std, lo, hi = self.log_volume[k].tolist()
        volume = int(round(np.exp(np.clip(rng.normal(mean, std), lo, hi))))
        inside = bool(self.inside[k]) and host > 0
        candidates = region if inside else np.ones(mask.shape, bool)
        volume = max(1, min(volume, int(candidates.sum() // 2) if inside else volume))
        base = region if host > 0 else mask > 0
        centre = _centroid(base) + self.offset_mean[k].numpy() + self.offset_tril[k].numpy() @ rng.standard_normal(3)
        centre = np.clip(centre, 0, np.array(mask.shape) - 1)
        if inside and not region[tuple(np.rint(centre).astype(int))]:
            # the nearest voxel of the host label: a structure that lies inside it is centred inside it
            _, idx = ndimage.distance_transform_edt(~region, return_indices=True)
            centre = idx[(slice(None), *np.rint(centre).astype(int))].astype(float)
        axes = np.exp(rng.uniform(-0.25, 0.25, 3))  # an ellipsoid of random proportions ...
        grids = np.indices(mask.shape, dtype=np.float64)
        dist = np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre, axes, strict=False)))
        rough = ndimage.gaussian_filter(rng.standard_normal(mask.shape), 1.5)  # ... with an irregular border
        dist = dist + 0.6 * rough / (rough.std() + 1e-8)
        dist[~candidates] = np.inf
        order = np.argsort(dist, axis=None)[:volume]
        blob = np.zeros(mask.shape, bool)
        blob.flat[order] = True
        lab, n = ndimage.label(blob, structure=np.ones((3, 3, 3), bool))
        if n > 1:  # one structure: its largest piece
            blob = lab == (np.bincount(lab.ravel())[1:].argmax() + 1)
        out = mask.copy()
        out[blob] = k
        return out, {"voxels": int(blob.sum()), "centre": [round(float(v), 2) for v in _centroid(blob)], "host_label": host}

    def edit_region(self, source: np.ndarray, target: np.ndarray, margin: int) -> np.ndarray:
        """Voxels to repaint: where the label maps differ and the changed labels of either, dilated by ``margin``."""
        changed = self.changed_labels()
        core = (source != target) | np.isin(source, changed) | np.isin(target, changed)
        return dilate(core, margin)


class Inpainter(nn.Module):
    """(image outside the region, region, one-hot label map, condition, noise, look) -> image; the composite
    keeps the real image outside the region. ``look`` (B, 2, ...): where the changed labels are, and there
    the mean intensity each is to have (in training the real case's own, in synthesis one drawn from the
    prior). The surround is painted freely; a changed structure is painted as its mean intensity plus a
    texture the network draws (within +-``TEXTURE``), so a bright or a dark lesion comes out as asked
    instead of the average of the two."""

    TEXTURE = 0.25

    def __init__(self, n_classes: int, n_mask_labels: int, base: int, size: int):
        super().__init__()
        from monai.networks.nets import UNet

        levels = 3 if size >= 32 else 2
        self.n_classes, self.n_mask_labels = n_classes, n_mask_labels
        self.net = UNet(spatial_dims=3, in_channels=5 + (n_mask_labels + 1) + n_classes, out_channels=2,
                        channels=tuple(base * 2**i for i in range(levels + 1)), strides=(2,) * levels, num_res_units=1)

    def forward(self, image: torch.Tensor, region: torch.Tensor, mask_onehot: torch.Tensor, y: torch.Tensor,
                noise: torch.Tensor, look: torch.Tensor) -> torch.Tensor:
        cond = F.one_hot(y, self.n_classes).float()[:, :, None, None, None].expand(-1, -1, *image.shape[2:])
        kept = image * (1 - region) - region  # the region blanked to the background value
        out = self.net(torch.cat([kept, region, mask_onehot, cond, noise * region, look], 1))
        inside = look[:, :1] * region
        structure = (look[:, 1:] + self.TEXTURE * torch.tanh(out[:, 1:])).clamp(-1, 1)
        painted = inside * structure + (1 - inside) * torch.tanh(out[:, :1])
        return image * (1 - region) + painted * region


class CounterfactualSampler(Sampler):
    """The exported generator: the structure prior and the (EMA) inpainter. ``needs_source``: synthesis
    gives it real cases to change, not noise."""

    needs_source = True
    z_dim = 1  # one noise channel, per voxel

    def __init__(self, n_classes: int, n_mask_labels: int, base: int, size: int, margin: int):
        super().__init__()
        self.n_mask_labels = n_mask_labels
        self.margin = int(margin)
        self.prior = StructurePrior(n_mask_labels)
        self.inpainter = Inpainter(n_classes, n_mask_labels, base, size)

    @torch.no_grad()
    def paint(self, image: torch.Tensor, target_mask: torch.Tensor, region: torch.Tensor, y: torch.Tensor,
              noise: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        """image (B, 1, ...) in [-1, 1], target_mask (B, 1, ...) labels, region (B, 1, ...) 0/1, intensity
        (B, K + 1) the mean intensity of each changed label -> image."""
        look = self.prior.look_channel(target_mask[:, 0].long(), intensity.to(image.dtype))
        return self.inpainter(image, region.float(), one_hot_mask(target_mask, self.n_mask_labels), y, noise, look)

    @torch.no_grad()
    def counterfactual(self, image: np.ndarray, mask: np.ndarray, condition: int, rng: np.random.Generator,
                       device: str | torch.device = "cpu") -> dict:
        """One real case (image (D, H, W) in model space, label map) -> the case with condition
        ``condition``: image, label map, edit region and what was drawn."""
        target, drawn = self.prior.draw(mask, rng)
        region = self.prior.edit_region(np.asarray(mask).astype(np.int64), target.astype(np.int64), self.margin)
        t = lambda a, dt=torch.float32: torch.as_tensor(np.ascontiguousarray(a), dtype=dt)[None, None].to(device)  # noqa: E731
        noise = t(rng.standard_normal(image.shape).astype(np.float32))
        intensity = torch.zeros(1, self.n_mask_labels + 1, device=device)
        for k, v in drawn["mean_intensity"].items():
            intensity[0, int(k)] = v
        out = self.paint(t(image), t(target, torch.long), t(region), torch.tensor([condition], device=device), noise, intensity)
        return {"image": out[0, 0].float().cpu().numpy(), "mask": target, "region": region.astype(np.uint8), "drawn": drawn}


class CounterfactualModule(GenerativeModule):
    name = "counterfactual"
    sampler_network = "g_ema"
    config_class = CounterfactualConfig
    compile_targets = ("generator",)

    def __init__(self, config: dict, data_info: dict, seed: int = 0, log_every: int = 10, image_every: int = 100):
        super().__init__(config, data_info, seed, log_every, image_every)
        cfg = CounterfactualConfig(**config)
        self.cfg = cfg
        size = self.roi[0]
        conditions = list(data_info["conditions"])
        rare = data_info.get("rare_condition")
        self.rare_index = conditions.index(rare) if rare in conditions else len(conditions) - 1
        self.generator = CounterfactualSampler(self.n_classes, self.n_mask_labels, cfg.base_channels, size, cfg.margin)
        self.discriminator = ProjectionDiscriminator(3 + self.n_mask_labels, self.n_classes, cfg.base_channels, size, minibatch_std=True)
        self.g_ema = frozen_copy(self.generator)
        self.automatic_optimization = False
        self.prior_report: dict = {}

    @classmethod
    def build_sampler(cls, config: dict, data_info: dict) -> CounterfactualSampler:
        cfg = CounterfactualConfig(**config)
        return CounterfactualSampler(len(data_info["conditions"]), int(data_info["n_mask_labels"]), cfg.base_channels,
                                     int(data_info["roi_size"][0]), cfg.margin)

    def configure_optimizers(self):
        fused = torch.cuda.is_available()
        opt_g = torch.optim.Adam(self.generator.inpainter.parameters(), lr=self.cfg.lr_g, betas=(0.5, 0.99), fused=fused)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.cfg.lr_d, betas=(0.0, 0.99), fused=fused)
        return [opt_g, opt_d]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        assert self.bank_x is not None and self.bank_y is not None, "attach_bank() before training"
        masks = self.bank_x[:, 1].float().cpu().numpy().round().astype(np.int64)
        self.prior_report = self.generator.prior.fit(self.bank_x[:, 0].float().cpu().numpy(), masks, self.bank_y.cpu().numpy(), self.rare_index,
                                                     self.cfg.defining_presence_gap, self.cfg.defining_volume_ratio)
        self.g_ema.prior.load_state_dict(self.generator.prior.state_dict())
        if not self.generator.prior.has_change():
            rep = self.prior_report
            found = rep.get("reason") or "; ".join(
                f"label {k}: present in {e['presence_rare']:.0%} of rare vs {e['presence_other']:.0%} of other cases"
                + (f", median volume ratio {e['median_volume_ratio']}" if "median_volume_ratio" in e else "") for k, e in rep["labels"].items())
            raise TrainingDataError(
                f"counterfactual: the train split shows nothing the rare condition changes ({found}); a label is inserted when its "
                "presence differs by train.counterfactual.defining_presence_gap, rescaled when its volume differs by "
                "defining_volume_ratio (check the masks, or the grid: a small structure can vanish at a coarse preprocess.spacing)")

    def regions(self, labels: torch.Tensor) -> torch.Tensor:
        """Training edit regions for label maps (B, D, H, W): each case's changed structure, or (a case
        without it) a drawn ball in the label that would hold an inserted structure, dilated by a random
        1..margin voxels."""
        prior = self.generator.prior
        changed = prior.changed_labels()
        g = self.step_generator(21)
        out = torch.zeros_like(labels, dtype=torch.float32)
        grids = torch.stack(torch.meshgrid(*[torch.arange(s, device=labels.device, dtype=torch.float32) for s in labels.shape[1:]],
                                           indexing="ij"))
        for i, lab in enumerate(labels):
            core = torch.isin(lab, torch.tensor(changed, device=lab.device))
            if not core.any():
                inserted = [k for k in changed if prior.modes[k] == "insert"]
                host = (lab == int(prior.host[inserted[0]])) if inserted and int(prior.host[inserted[0]]) > 0 else (lab > 0)
                where = torch.nonzero(host) if host.any() else torch.nonzero(torch.ones_like(lab, dtype=torch.bool))
                centre = where[int(torch.randint(0, len(where), (1,), generator=g))].float()
                radius = float(np.exp(float(prior.log_volume[inserted[0], 0])) * 3 / (4 * np.pi)) ** (1 / 3) if inserted else 3.0
                core = ((grids - centre[:, None, None, None]) ** 2).sum(0) <= radius ** 2
            r = int(torch.randint(1, self.cfg.margin + 1, (1,), generator=g))
            out[i] = F.max_pool3d(core[None, None].float(), 2 * r + 1, stride=1, padding=r)[0, 0]
        return out[:, None]

    def real_look(self, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The look channel of real cases: each changed label's voxels hold that label's mean intensity in the case."""
        prior = self.generator.prior
        intensity = torch.zeros(len(labels), self.n_mask_labels + 1, device=image.device, dtype=image.dtype)
        for k in prior.changed_labels():
            sel = (labels == k).to(image.dtype)
            intensity[:, k] = (image[:, 0] * sel).flatten(1).sum(1) / sel.flatten(1).sum(1).clamp(min=1)
        return prior.look_channel(labels, intensity)

    def _joint(self, image: torch.Tensor, onehot: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        return self.layout(torch.cat([image, onehot, region], 1))

    def step(self):
        opts = self.optimizers()
        assert isinstance(opts, list)  # configure_optimizers returns two: Lightning gives them as a list
        opt_g, opt_d = opts
        cfg = self.cfg
        x, y = self.batch(cfg.batch_size)
        image = x[:, :1]
        onehot = one_hot_mask(x[:, 1:], self.n_mask_labels)
        labels = x[:, 1].round().long()
        region = self.regions(labels)
        noise = self.noise(len(y) * int(np.prod(self.roi)), 1, purpose=3).view(len(y), 1, *self.roi)
        look = self.real_look(image, labels)
        adversarial = cfg.adv_weight > 0 and self.step_index >= cfg.adv_start
        real = self._joint(image, onehot, region)
        # D learns from the first step (one step of each optimizer per iteration); G hears it from adv_start
        penalty = torch.zeros((), device=self.device)
        with torch.no_grad():
            fake = self.generator.inpainter(image, region, onehot, y, noise, look)
        d_real = self.discriminator(real, y)
        d_fake = self.discriminator(self._joint(fake, onehot, region), y)
        loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        if cfg.r1_gamma > 0 and self.step_index % cfg.r1_every == 0:
            r = real.detach().requires_grad_(True)
            grad = torch.autograd.grad(self.discriminator(r, y).sum(), r, create_graph=True)[0]
            penalty = cfg.r1_gamma / 2 * grad.flatten(1).pow(2).sum(1).mean() * cfg.r1_every
        self.check_finite(loss_d=loss_d, penalty=penalty)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d + penalty)
        opt_d.step()
        painted = self.generator.inpainter(image, region, onehot, y, noise, look)
        # L1 on the changed structure and on its surround, each averaged over its own voxels: a lesion of a
        # few dozen voxels in a region of hundreds counts as much as the tissue around it
        err = (painted - image).abs()
        changed = torch.tensor(self.generator.prior.changed_labels(), device=labels.device)
        structure = region * torch.isin(labels, changed)[:, None].to(region.dtype)
        ring = region - structure
        rec = 0.5 * ((err * structure).sum() / structure.sum().clamp(min=1) + (err * ring).sum() / ring.sum().clamp(min=1))
        loss_g = cfg.rec_weight * rec
        adv = torch.zeros((), device=self.device)
        if adversarial:
            adv = -self.discriminator(self._joint(painted, onehot, region), y).mean()
            loss_g = loss_g + cfg.adv_weight * adv
        self.check_finite(loss_g=loss_g)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        gn = grad_norm(self.generator.inpainter.parameters()) if self.logging_step else None
        opt_g.step()
        ema_update(self.g_ema.inpainter, self.generator.inpainter, cfg.ema_decay)
        self.log_scalars(loss_g=loss_g.detach(), rec_region_l1=rec.detach(), adv_g=adv.detach(), loss_d=loss_d.detach(),
                         penalty=penalty.detach(), grad_norm_g=gn, d_real=d_real.mean().detach(), d_fake=d_fake.mean().detach())

    # ------------------------------------------------------------------ monitoring
    def _monitor_cases(self, n: int) -> list[dict]:
        """Counterfactuals of the first ``n`` training cases without the rare condition (fixed seed)."""
        assert self.bank_x is not None, "attach_bank() before training"
        others = [i for c, idx in self._members.items() if c != self.rare_index for i in idx][:n]
        rng = np.random.default_rng(self.seed + 17)
        out = []
        for i in others:
            case = self.bank_x[i].float().cpu().numpy()
            try:
                cf = self.g_ema.counterfactual(case[0], case[1].round().astype(np.int64), self.rare_index, rng, self.device)
            except ValueError:
                continue
            out.append({"source": case[0], **cf})
        return out

    @torch.no_grad()
    def diversity(self, per_class: int = 6) -> float:
        """How varied the counterfactuals of different patients are inside their edit regions (mean pairwise
        L1 of the region's voxels, each case's region over the union), over the same for real cases of the
        rare condition in their own structure regions: 1 = as varied as real patients."""
        cases = self._monitor_cases(per_class)
        rare = list(self._members.get(self.rare_index, []))[:per_class]
        if len(cases) < 2 or len(rare) < 2:
            return 1.0
        assert self.bank_x is not None, "attach_bank() before training"
        fake = torch.tensor(np.stack([c["image"] * c["region"] for c in cases])).flatten(1)
        labels = self.bank_x[torch.tensor(rare, device=self.bank_x.device), 1].round().long().cpu()
        regions = self.regions(labels).cpu()[:, 0]
        real = (self.bank_x[torch.tensor(rare, device=self.bank_x.device), 0].float().cpu() * regions).flatten(1)
        pair = lambda v: torch.cdist(v, v, p=1).sum() / (len(v) * (len(v) - 1))  # noqa: E731
        return float(pair(fake) / (pair(real) + 1e-8))

    @torch.no_grad()
    def sample_image(self) -> np.ndarray | None:
        """Source and counterfactual of up to three monitoring cases side by side, each at its edit region's centre slice."""
        cases = self._monitor_cases(3)
        if not cases:
            return None
        tiles = []
        for c in cases:
            z = int(np.argwhere(c["region"]).mean(0)[2]) if c["region"].any() else c["image"].shape[2] // 2
            tiles += [c["source"][:, :, z].T[::-1], c["image"][:, :, z].T[::-1]]
        return ((np.concatenate(tiles, axis=1) + 1) * 127.5).clip(0, 255).astype(np.uint8)

    def prepare_export(self) -> dict:
        return {"structure_prior": self.prior_report}

    def export_sampling(self) -> dict:
        return {"source": "real cases without the rare condition"}

    @torch.no_grad()
    def discriminator_score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """D's score of real cases with their own structure region."""
        x, y = x.to(self.device).float(), y.to(self.device)
        region = self.regions(x[:, 1].round().long())
        return self.discriminator(self._joint(x[:, :1], one_hot_mask(x[:, 1:], self.n_mask_labels), region), y)
