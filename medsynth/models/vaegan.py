"""VAE-GAN: a conditional VAE plus a class-conditional patch discriminator and an adversarial loss.

Two backbones (``train.vaegan.backbone``):

* ``conv`` (default): the cVAE's encoder/decoder with a vector latent (samples well from the prior)
  and a projection-conditioned patch discriminator with spectral norm.
* ``autoencoderkl``: the MONAI recipe — ``monai.networks.nets.AutoencoderKL`` with a spatial latent
  and ``PatchDiscriminator`` — with class conditioning added: one-hot class channels at the encoder
  and discriminator inputs, and a learned per-class latent offset at the bottleneck. Attention uses
  PyTorch's fused scaled-dot-product kernel.

Manual optimisation: one discriminator step (least squares, as in the MONAI recipe), then one VAE
step with L1 + mask CE + beta*KL + adv_weight*adv (+ perceptual_weight*perceptual when a local feature
network is given, :mod:`medsynth.models.perceptual`). No host synchronisation inside the step.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from medsynth.config import CVAEConfig, VAEGANConfig
from medsynth.models.base import grad_norm, kl_anneal, mode_seeking_loss
from medsynth.models.blocks import ProjectionDiscriminator, Sampler, compose_sample, split_output
from medsynth.models.cvae import CVAEModule
from medsynth.models.perceptual import PerceptualLoss3d


def class_channels(y: torch.Tensor, n_classes: int, like: torch.Tensor) -> torch.Tensor:
    """One-hot class as constant channels the size of ``like`` (conditioning by concatenation)."""
    return F.one_hot(y, n_classes).to(like.dtype)[:, :, None, None, None].expand(-1, -1, *like.shape[2:])


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over each case's latent -> (N,)."""
    mu, sigma = mu.float(), sigma.float()
    return (0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1)).flatten(1).sum(1)


class ConditionalAutoencoderKL(Sampler):
    """MONAI AutoencoderKL with the condition at the input (one-hot channels) and at the bottleneck
    (a learned per-class offset of the spatial latent). Decodes image + mask logits."""

    def __init__(self, cfg: VAEGANConfig, n_classes: int, n_mask_labels: int, roi: tuple[int, ...]):
        super().__init__()
        from monai.networks.nets import AutoencoderKL

        self.n_classes = n_classes
        self.n_mask_labels = n_mask_labels
        down = 2 ** (len(cfg.kl_channels) - 1)
        if any(s % down for s in roi):
            raise ValueError(f"ROI {list(roi)} must be divisible by {down} for kl_channels {list(cfg.kl_channels)}")
        self.ae = AutoencoderKL(
            spatial_dims=3, in_channels=2 + n_mask_labels + n_classes, out_channels=2 + n_mask_labels,
            channels=tuple(cfg.kl_channels), latent_channels=cfg.latent_channels, num_res_blocks=cfg.num_res_blocks,
            norm_num_groups=cfg.norm_num_groups, attention_levels=tuple(cfg.attention_levels), use_flash_attention=True,
        )
        self.class_latent = nn.Embedding(n_classes, cfg.latent_channels)
        nn.init.zeros_(self.class_latent.weight)
        self.latent_shape = (cfg.latent_channels, *(s // down for s in roi))
        self.z_dim = math.prod(self.latent_shape)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ae.encode(torch.cat([x, class_channels(y, self.n_classes, x)], 1))

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = z.view(-1, *self.latent_shape) + self.class_latent(y)[:, :, None, None, None].to(z.dtype)
        return split_output(self.ae.decode(z), self.n_mask_labels)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(z, y)

    @torch.no_grad()
    def sample(self, y: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img, logits = self.decode(z, y)
        return img, logits.argmax(1, keepdim=True)


class ConditionalPatchDiscriminator(nn.Module):
    """MONAI PatchDiscriminator seeing image + soft mask + one-hot class channels; mean patch score."""

    def __init__(self, in_channels: int, n_classes: int, layers: int, channels: int):
        super().__init__()
        from monai.networks.nets import PatchDiscriminator

        self.n_classes = n_classes
        self.net = PatchDiscriminator(spatial_dims=3, num_layers_d=layers, channels=channels, in_channels=in_channels + n_classes, out_channels=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, class_channels(y, self.n_classes, x)], 1))[-1].flatten(1).float().mean(1)


class VAEGANModule(CVAEModule):
    name = "vaegan"
    dp_networks: tuple[str, ...] = ("encoder", "decoder", "discriminator")
    dp_releases_per_step = 2  # the discriminator's gradient and the VAE's, each on its own Poisson batch
    dp_covers = ("the exported weights (encoder, decoder and the discriminator that trained them); not the logged losses, the "
                 "diversity monitor or other values computed on training cases without noise (train.json, DVCLive): keep those inside")
    config_class = VAEGANConfig  # validates train.vaegan (and a plug-in subclass's section, unless it names its own)

    def __init__(self, config: dict, data_info: dict, seed: int = 0, log_every: int = 10, image_every: int = 100):
        base = {k: v for k, v in config.items() if k in CVAEConfig.model_fields}
        self.vg = VAEGANConfig(**config)
        kl = self.vg.backbone == "autoencoderkl"
        super().__init__(base, data_info, seed, log_every, image_every, build_networks=not kl)
        self.config = dict(config)
        in_ch = 2 + self.n_mask_labels
        self.discriminator: nn.Module
        if kl:
            self.kl = ConditionalAutoencoderKL(self.vg, self.n_classes, self.n_mask_labels, self.roi)
            self.discriminator = ConditionalPatchDiscriminator(in_ch, self.n_classes, self.vg.disc_layers, self.vg.disc_channels)
            self.compile_targets = ("kl.ae.encoder", "kl.ae.decoder", "discriminator")
        else:
            self.discriminator = ProjectionDiscriminator(in_ch, self.n_classes, self.vg.base_channels, self.roi[0], patch=True,
                                                         minibatch_std=self.vg.minibatch_std)
            self.compile_targets = ("encoder", "decoder")  # spectral-norm discriminator: see cgan.py
        self.automatic_optimization = False
        self.perceptual: PerceptualLoss3d | None = None
        if self.vg.perceptual_weight > 0:
            assert self.vg.perceptual_network is not None  # VAEGANConfig refuses a weight without a network
            self.perceptual = PerceptualLoss3d(self.vg.perceptual_network, self.vg.perceptual_sha256)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.perceptual is not None:
            self.perceptual.to(self.device)

    @property
    def sampler(self) -> Sampler:
        return self.kl if self.vg.backbone == "autoencoderkl" else self.decoder

    @property
    def latent_dim(self) -> int:
        return self.sampler.z_dim

    @classmethod
    def build_sampler(cls, config: dict, data_info: dict) -> Sampler:
        cfg = VAEGANConfig(**config)
        if cfg.backbone == "autoencoderkl":
            roi = tuple(int(s) for s in data_info["roi_size"])
            return ConditionalAutoencoderKL(cfg, len(data_info["conditions"]), max(1, int(data_info["n_mask_labels"])), roi)
        return CVAEModule.build_sampler({k: v for k, v in config.items() if k in CVAEConfig.model_fields}, data_info)

    def vae_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("discriminator.")]

    def enable_checkpointing(self) -> None:
        if self.vg.backbone == "autoencoderkl":
            self.kl.ae.use_checkpoint = True
        else:
            super().enable_checkpointing()

    def configure_optimizers(self):
        fused = torch.cuda.is_available()
        return [
            torch.optim.Adam(self.vae_parameters(), lr=self.vg.lr, fused=fused),
            torch.optim.Adam(self.discriminator.parameters(), lr=self.vg.lr_d, betas=(0.5, 0.9), fused=fused),
        ]

    def losses(self, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.vg.backbone != "autoencoderkl":
            return super().losses(x, y, eps)
        inp = self.joint(x)
        mu, sigma = self.kl.encode(inp, y)
        z = mu + eps.view_as(mu).to(mu.dtype) * sigma
        img, logits = self.kl.decode(z, y)
        rec = F.l1_loss(img.float(), x[:, :1])
        seg = self.mask_loss(logits, x)
        kl = gaussian_kl(mu, sigma).mean()
        # free bits are a conv-encoder setting (per latent dimension): the spatial latent's KL is penalised whole
        return {"rec": rec, "seg": seg, "kl": kl, "kl_penalised": kl, "img": img, "logits": logits}

    def dp_step(self) -> None:
        """One step with DP-SGD for both updates that see training cases, each on its own Poisson batch.
        Discriminator: each case's term (its score and that of its reconstruction) gets its own clipped
        gradient, plus noise; the prior samples' term (no training case in it) its ordinary gradient. VAE:
        each case's reconstruction, mask, KL and adversarial terms likewise; the prior samples' adversarial
        and mode-seeking terms, on conditions drawn uniformly, their ordinary gradient."""
        opt_vae, opt_d = self.optimizer_list()
        cfg = self.vg
        use_adv = self.step_index >= cfg.adv_start
        n = cfg.batch_size
        # ---- discriminator (least squares)
        x, y = self.dp_batch(1)
        with torch.no_grad():
            out = self.losses(x, y, self.noise(len(y), self.latent_dim))
            recon = self.layout(compose_sample(out["img"], out["logits"]))
        d = self.discriminator

        def d_loss_of_one(r: torch.Tensor, f: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
            return 0.5 * ((d(r, yy) - 1).pow(2) + d(f, yy).pow(2)).sum()

        opt_d.zero_grad(set_to_none=True)
        self.private_step(d_loss_of_one, (self.joint(x), recon, y), 31, networks=("discriminator",))
        y_prior = self.uniform_conditions(n, 13)
        prior = None
        if cfg.prior_adversarial and use_adv:
            prior = self.layout(compose_sample(*self.sampler(self.noise(n, self.sampler.z_dim, purpose=3), y_prior)))
            loss_prior = 0.5 * d(prior.detach(), y_prior).pow(2).mean()
            self.check_finite(loss_d=loss_prior)
            self.manual_backward(loss_prior)
        opt_d.step()
        # ---- VAE
        x, y = self.dp_batch(21)
        eps = self.noise(len(y), self.latent_dim, purpose=22)
        beta = cfg.kl_weight * kl_anneal(self.step_index, cfg.kl_anneal_steps)

        def vae_loss_of_one(xx: torch.Tensor, yy: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
            loss, o = self.loss_of(xx, yy, e, beta)
            if use_adv:
                loss = loss + cfg.adv_weight * (d(self.layout(compose_sample(o["img"], o["logits"])), yy) - 1).pow(2).sum()
            return loss

        opt_vae.zero_grad(set_to_none=True)
        self.private_step(vae_loss_of_one, (x, y, eps), 32, networks=("encoder", "decoder"))
        public = torch.zeros((), device=self.device)  # terms without a training case: ordinary gradients
        if prior is not None:
            public = public + cfg.adv_weight * (d(prior, y_prior) - 1).pow(2).mean()
        h = n // 2
        if cfg.mode_seeking > 0 and h:
            za, zb = self.noise(h, self.sampler.z_dim, purpose=4), self.noise(h, self.sampler.z_dim, purpose=5)
            fa, fb = compose_sample(*self.sampler(za, y_prior[:h])), compose_sample(*self.sampler(zb, y_prior[:h]))
            public = public + mode_seeking_loss(fa.float(), fb.float(), za, zb, cfg.mode_seeking)[0]
        if public.requires_grad:
            self.check_finite(loss=public)
            self.manual_backward(public)
        gn = grad_norm(self.vae_parameters())
        self.check_finite(grad_norm=gn)
        opt_vae.step()
        if self.logging_step:
            self.log_scalars(grad_norm=gn, dp_batch=len(y), beta=beta)

    def step(self):
        if self.cfg.dp is not None:
            return self.dp_step()
        opt_vae, opt_d = self.optimizer_list()
        cfg = self.vg
        x, y = self.batch(cfg.batch_size)
        eps = self.noise(len(y), self.latent_dim)
        real = self.joint(x)
        out = self.losses(x, y, eps)
        fake = self.layout(compose_sample(out["img"], out["logits"]))
        use_adv = self.step_index >= cfg.adv_start
        # samples from the prior, judged too (Larsen et al. 2016): reconstructions alone never show the
        # discriminator what the sampler draws, and the prior samples collapsed on AdrenalMNIST3D
        prior = None
        if cfg.prior_adversarial and use_adv:
            prior = self.layout(compose_sample(*self.sampler(self.noise(len(y), self.sampler.z_dim, purpose=3), y)))
        # discriminator (least squares, as in the MONAI recipe)
        d_real = self.discriminator(real, y)
        d_fake = self.discriminator(fake.detach(), y)
        loss_d = 0.5 * (F.mse_loss(d_real, torch.ones_like(d_real)) + F.mse_loss(d_fake, torch.zeros_like(d_fake)))
        if prior is not None:
            d_prior = self.discriminator(prior.detach(), y)
            loss_d = loss_d + 0.5 * F.mse_loss(d_prior, torch.zeros_like(d_prior))
        self.check_finite(loss_d=loss_d)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        opt_d.step()
        # VAE
        beta = cfg.kl_weight * kl_anneal(self.step_index, cfg.kl_anneal_steps)
        adv = F.mse_loss(self.discriminator(fake, y), torch.ones_like(d_fake)) if use_adv else torch.zeros((), device=self.device)
        if prior is not None:
            adv = adv + F.mse_loss(self.discriminator(prior, y), torch.ones_like(d_fake))
        perc = self.perceptual(out["img"], x) if self.perceptual is not None else torch.zeros((), device=self.device)
        loss = out["rec"] + cfg.mask_weight * out["seg"] + beta * out["kl_penalised"] / self.voxels + cfg.adv_weight * adv + cfg.perceptual_weight * perc
        sensitivity = None
        h = len(y) // 2
        if cfg.mode_seeking > 0 and h:
            # two prior draws per condition of the first half: samples that ignore the latent cost (MSGAN)
            za, zb = self.noise(h, self.sampler.z_dim, purpose=4), self.noise(h, self.sampler.z_dim, purpose=5)
            fa = compose_sample(*self.sampler(za, y[:h]))
            fb = compose_sample(*self.sampler(zb, y[:h]))
            seek, sensitivity = mode_seeking_loss(fa.float(), fb.float(), za, zb, cfg.mode_seeking)
            loss = loss + seek
        self.check_finite(loss=loss)
        opt_vae.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        gn = grad_norm(self.vae_parameters()) if self.logging_step else None
        opt_vae.step()
        if self.logging_step:
            self.log_scalars(loss=loss.detach(), rec=out["rec"].detach(), seg=out["seg"].detach(), kl=out["kl"].detach(),
                             adv=adv.detach(), loss_d=loss_d.detach(), grad_norm=gn, **({"perceptual": perc.detach()} if self.perceptual is not None else {}),
                             **({"noise_sensitivity": sensitivity.detach()} if sensitivity is not None else {}))

    def on_before_optimizer_step(self, optimizer) -> None:
        pass

    @torch.no_grad()
    def elbo_score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.vg.backbone != "autoencoderkl":
            return super().elbo_score(x, y)
        x, y = x.to(self.device).float(), y.to(self.device)
        inp = self.joint(x)
        mu, sigma = self.kl.encode(inp, y)
        img, logits = self.kl.decode(mu, y)
        rec = (img - x[:, :1]).abs().flatten(1).mean(1)
        seg = F.cross_entropy(logits, x[:, 1].long().clamp(0, self.n_mask_labels), reduction="none").flatten(1).mean(1)
        kl = gaussian_kl(mu, sigma)
        return -(rec + self.vg.mask_weight * seg + self.vg.kl_weight * kl / self.voxels)
