"""VAE-GAN: the conditional VAE plus a class-conditional patch discriminator and an adversarial loss
(the MONAI AutoencoderKL + PatchDiscriminator recipe, with projection conditioning). Manual
optimisation: one discriminator step, then one VAE step with L1 + mask CE + beta*KL + adv_weight*adv.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch.nn import functional as F

from medsynth.config import CVAEConfig
from medsynth.models.base import grad_norm, kl_anneal
from medsynth.models.blocks import ProjectionDiscriminator, compose_sample, one_hot_mask
from medsynth.models.cvae import CVAEModule


class VAEGANConfig(CVAEConfig):
    adv_weight: float = Field(0.05, ge=0)
    lr_d: float = Field(2e-4, gt=0)
    adv_start: int = Field(0, ge=0, description="step from which the adversarial loss is used")


class VAEGANModule(CVAEModule):
    name = "vaegan"
    config_class = VAEGANConfig

    def __init__(self, config: dict, data_info: dict, seed: int = 0, log_every: int = 10, image_every: int = 100):
        base = {k: v for k, v in config.items() if k in CVAEConfig.model_fields}
        super().__init__(base, data_info, seed, log_every, image_every)
        self.config = dict(config)
        self.vg = VAEGANConfig(**config)
        self.discriminator = ProjectionDiscriminator(2 + self.n_mask_labels, self.n_classes, self.vg.base_channels, self.roi[0], patch=True)
        self.automatic_optimization = False

    @classmethod
    def build_sampler(cls, config: dict, data_info: dict):
        return CVAEModule.build_sampler({k: v for k, v in config.items() if k in CVAEConfig.model_fields}, data_info)

    def configure_optimizers(self):
        fused = torch.cuda.is_available()
        vae = list(self.encoder.parameters()) + list(self.decoder.parameters())
        return [torch.optim.Adam(vae, lr=self.vg.lr, fused=fused), torch.optim.Adam(self.discriminator.parameters(), lr=self.vg.lr_d, betas=(0.5, 0.9), fused=fused)]

    def step(self):
        opt_vae, opt_d = self.optimizers()
        cfg = self.vg
        x, y = self.batch(cfg.batch_size)
        eps = self.noise(len(y), cfg.latent_dim)
        real = torch.cat([x[:, :1], one_hot_mask(x[:, 1:], self.n_mask_labels)], 1)
        out = self.losses(x, y, eps)
        fake = compose_sample(out["img"], out["logits"])
        use_adv = int(self.iteration) >= cfg.adv_start
        # discriminator (least squares, as in the MONAI recipe)
        d_real = self.discriminator(real, y)
        d_fake = self.discriminator(fake.detach(), y)
        loss_d = 0.5 * (F.mse_loss(d_real, torch.ones_like(d_real)) + F.mse_loss(d_fake, torch.zeros_like(d_fake)))
        self.check_finite(loss_d=loss_d)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        opt_d.step()
        # VAE
        beta = cfg.kl_weight * kl_anneal(int(self.iteration), cfg.kl_anneal_steps)
        adv = F.mse_loss(self.discriminator(fake, y), torch.ones_like(d_fake)) if use_adv else torch.zeros((), device=self.device)
        loss = out["rec"] + cfg.mask_weight * out["seg"] + beta * out["kl"] + cfg.adv_weight * adv
        self.check_finite(loss=loss)
        opt_vae.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        gn = grad_norm(list(self.encoder.parameters()) + list(self.decoder.parameters()))
        opt_vae.step()
        self.log_scalars(loss=loss.detach(), rec=out["rec"].detach(), seg=out["seg"].detach(), kl=out["kl"].detach(), adv=adv.detach(), loss_d=loss_d.detach(), grad_norm=gn)

    def on_before_optimizer_step(self, optimizer) -> None:
        pass
