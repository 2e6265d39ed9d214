"""3D conditional VAE: the condition enters at the encoder input (one-hot channels) and at the
bottleneck (class embedding with the latent); image and mask are decoded together.

Loss: L1 image reconstruction + label-aware mask loss (``mask_weight``: cross-entropy weighted by label
rarity + soft Dice per label, :mod:`medsynth.models.losses`) + KL with linear annealing
(``kl_weight``, ``kl_anneal_steps``). Sampling draws the latent from the prior: by default
(``latent_prior: fitted``) a Gaussian per condition fitted after training to the encoder's codes of the
training cases (:class:`~medsynth.models.blocks.LatentPrior`), else N(0, I); the noise is scaled by the
temperature either way.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from medsynth.config import CVAEConfig
from medsynth.models.base import GenerativeModule, grad_norm, kl_anneal
from medsynth.models.blocks import ConditionalDecoder, DownBlock, Sampler, n_levels, one_hot
from medsynth.models.dp import PrivateTraining
from medsynth.models.losses import label_rarity_weights, mask_loss

Decoder = ConditionalDecoder  # latent + class -> image + mask


class Encoder(nn.Module):
    def __init__(self, in_channels: int, n_classes: int, latent: int, base: int, size: int):
        super().__init__()
        levels = n_levels(size)
        self.n_classes = n_classes
        blocks, cin = [], in_channels + n_classes
        for i in range(levels):
            c = base * min(2 ** (i + 1), 8)
            blocks.append(DownBlock(cin, c, sn=False, norm=True))
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.mu = nn.Linear(cin * 64, latent)
        self.logvar = nn.Linear(cin * 64, latent)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond = one_hot(y, self.n_classes)[:, :, None, None, None].expand(-1, -1, *x.shape[2:])
        h = self.blocks(torch.cat([x, cond], 1)).flatten(1)
        # bounded to [-10, 10] softly: a hard clamp has no gradient outside the range, so a dimension whose
        # log-variance overshot (before the KL weight has annealed in) stayed at e^10 for good
        return self.mu(h), 10.0 * torch.tanh(self.logvar(h) / 10.0)


class CVAEModule(PrivateTraining, GenerativeModule):
    name = "cvae"
    sampler_network = "decoder"
    dp_networks: tuple[str, ...] = ("encoder", "decoder")
    dp_covers = ("the exported weights; not the logged losses, the diversity monitor or other values computed on training "
                 "cases without noise (train.json, DVCLive): keep those inside")
    export_settings = ("prior_shrinkage", "prior_min_cases")  # used at export only: a change refits, no retraining
    config_class = CVAEConfig  # validates train.cvae (and a plug-in subclass's section, unless it names its own)
    compile_targets: tuple[str, ...] = ("encoder", "decoder")

    def __init__(self, config: dict, data_info: dict, seed: int = 0, log_every: int = 10, image_every: int = 100,
                 build_networks: bool = True):
        super().__init__(config, data_info, seed, log_every, image_every)
        cfg = CVAEConfig(**config)
        self.cfg = cfg
        size = self.roi[0]
        if build_networks:  # a subclass with its own backbone skips these
            self.encoder = Encoder(2 + self.n_mask_labels, self.n_classes, cfg.latent_dim, cfg.base_channels, size)
            self.decoder = Decoder(cfg.latent_dim, self.n_classes, self.n_mask_labels, cfg.base_channels, size,
                                   latent_prior=cfg.latent_prior == "fitted")
        if cfg.dp is not None:  # DP-SGD steps (models/dp.py): per-case gradients, clipped and noised, one manual step each
            self.init_dp()

    @classmethod
    def build_sampler(cls, config: dict, data_info: dict) -> Sampler:
        cfg = CVAEConfig(**config)
        return Decoder(cfg.latent_dim, len(data_info["conditions"]), int(data_info["n_mask_labels"]), cfg.base_channels, int(data_info["roi_size"][0]),
                       latent_prior=cfg.latent_prior == "fitted")

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.cfg.lr, fused=torch.cuda.is_available())
        return [opt] if self.cfg.dp is not None else opt

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.cfg.dp is not None:
            self.setup_dp()
        assert self.bank_x is not None, "attach_bank() before training"
        self.label_weights = (label_rarity_weights(self.bank_x[:, 1], self.n_mask_labels)
                              if self.cfg.mask_label_weighting == "rarity" else None)

    def mask_loss(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The training mask loss of label maps ``x[:, 1]`` (weights from the training bank, set at fit start)."""
        return mask_loss(logits, x[:, 1], self.n_mask_labels, getattr(self, "label_weights", None), self.cfg.mask_dice_weight)

    def losses(self, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
        inp = self.joint(x)
        mu, logvar = self.encoder(inp, y)
        z = mu + eps * torch.exp(0.5 * logvar)
        img, logits = self.decoder(z, y)
        rec = F.l1_loss(img, x[:, :1])
        seg = self.mask_loss(logits, x)
        kl_dim = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean(0)  # per latent dimension, batch mean
        kl = kl_dim.sum()
        # free bits (Kingma et al. 2016): a dimension carrying less than free_bits nats is not pushed further
        penalised = kl_dim.clamp(min=self.cfg.free_bits).sum() if self.cfg.free_bits > 0 else kl
        return {"rec": rec, "seg": seg, "kl": kl, "kl_penalised": penalised, "img": img, "logits": logits}

    def loss_of(self, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict]:
        out = self.losses(x, y, eps)
        return out["rec"] + self.cfg.mask_weight * out["seg"] + beta * out["kl_penalised"] / self.voxels, out

    def dp_step(self) -> None:
        """One DP-SGD step: a Poisson batch of the training cases, per-case clipped gradients plus noise."""
        cfg, opt = self.cfg, self.optimizer_list()[0]
        x, y = self.dp_batch(1)
        eps = self.noise(len(y), cfg.latent_dim)
        beta = cfg.kl_weight * kl_anneal(self.step_index, cfg.kl_anneal_steps)
        opt.zero_grad(set_to_none=True)
        self.private_step(lambda a, b, c: self.loss_of(a, b, c, beta)[0], (x, y, eps), 31)
        self.check_finite(grad_norm=grad_norm(self.parameters()))
        opt.step()
        if self.logging_step:
            self.log("grad_norm", grad_norm(self.parameters()), on_step=True)
            if len(y):
                with torch.no_grad():
                    loss, out = self.loss_of(x, y, eps, beta)
                self.log_scalars(loss=loss, rec=out["rec"], seg=out["seg"], kl=out["kl"], beta=beta, dp_batch=len(y))

    def step(self):
        cfg = self.cfg
        if cfg.dp is not None:
            return self.dp_step()
        x, y = self.batch(cfg.batch_size)
        eps = self.noise(len(y), cfg.latent_dim)
        out = self.losses(x, y, eps)
        beta = cfg.kl_weight * kl_anneal(self.step_index, cfg.kl_anneal_steps)
        loss = out["rec"] + cfg.mask_weight * out["seg"] + beta * out["kl_penalised"] / self.voxels
        self.check_finite(loss=loss)
        self.log_scalars(loss=loss.detach(), rec=out["rec"].detach(), seg=out["seg"].detach(), kl=out["kl"].detach(), beta=beta)
        return loss

    @torch.no_grad()
    def prepare_export(self) -> dict:
        """Fit the latent prior (``latent_prior: fitted``) to the posterior means of the training cases; the
        figures go to train.json. ``final_diversity`` (and its alarm) is then that of what synthesis draws;
        the diversity of the standard prior at the end of training is kept beside it."""
        prior = getattr(self.sampler, "prior", None)
        if prior is None:
            return {"dp": self.dp_record()} if self.cfg.dp is not None else {}
        assert self.bank_x is not None and self.bank_y is not None, "attach_bank() before training"
        was_training = self.training
        self.eval()
        before = round(self.diversity(), 4)
        codes = torch.cat([
            self.encoder(self.joint(self.bank_x[i : i + 32].to(self.device).float()), self.bank_y[i : i + 32].to(self.device))[0].float()
            for i in range(0, len(self.bank_y), 32)
        ])
        fitted = prior.fit(codes, self.bank_y, self.cfg.prior_shrinkage, self.cfg.prior_min_cases)
        self.train(was_training)
        return {"latent_prior": {self.data_info["conditions"][c]: v for c, v in fitted.items()}, "diversity_standard_prior": before}

    def export_sampling(self) -> dict:
        return {"prior": "fitted"} if getattr(self.sampler, "prior", None) is not None else {}

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.logging_step and self.cfg.dp is None:
            self.log("grad_norm", grad_norm(self.parameters()), on_step=True)

    @torch.no_grad()
    def elbo_score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """White-box membership signal: negative per-case loss (higher = better explained)."""
        x, y = x.to(self.device).float(), y.to(self.device)
        inp = self.joint(x)
        mu, logvar = self.encoder(inp, y)
        img, logits = self.decoder(mu, y)
        rec = (img - x[:, :1]).abs().flatten(1).mean(1)
        seg = F.cross_entropy(logits, x[:, 1].long().clamp(0, self.n_mask_labels), reduction="none").flatten(1).mean(1)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
        return -(rec + self.cfg.mask_weight * seg + self.cfg.kl_weight * kl / self.voxels)
