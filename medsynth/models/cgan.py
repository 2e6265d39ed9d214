"""3D conditional GAN: image + mask generated together.

* Generator (``conditioning: class``): noise + class embedding -> 4^3 seed -> residual up-blocks with
  class-conditional normalisation -> tanh image and mask logits (background + K labels).
* Generator (``conditioning: mask``): the same trunk with SPADE normalisation on a given label map ->
  an image for that mask; trained on real (image, mask) pairs, the discriminator judging the pair.
* Discriminator: spectral norm, projection conditioning, sees image + (soft) one-hot mask.
* Losses: hinge (default), non-saturating, WGAN-GP; lazy R1 penalty on reals; an EMA generator
  for sampling; DiffAugment (flip, translation, cutout, intensity) applied to real and fake alike
  so a few dozen rare cases are not memorised by the discriminator, with an adaptive probability
  (ADA): augmentation on a cohort the discriminator does not memorise only slows learning, so it is
  only as strong as needed.
* Label volumes (``label_volume_weight``, class conditioning): the generator also pays the distance between
  each label's volume distribution among its cases of a condition and among real cases of that condition
  (:func:`~medsynth.models.losses.label_volume_loss`): a discriminator shown a lesion of a few dozen voxels
  in a few rare cases otherwise lets the generator leave it out.
* Mode seeking (MSGAN): the generator pays 1 / (how much its samples of one condition change with the
  noise); without it the generator drew one case per condition on AdrenalMNIST3D (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from medsynth.config import CGANConfig
from medsynth.models.base import GenerativeModule, ema_update, frozen_copy, grad_norm, mode_seeking_loss, to_device
from medsynth.models.blocks import (
    ConditionalDecoder,
    MaskConditionalDecoder,
    ProjectionDiscriminator,
    compose_sample,
    one_hot_mask,
    random_cutout,
)
from medsynth.models.losses import label_volume_loss


def build_generator(cfg: CGANConfig, n_classes: int, n_mask_labels: int, size: int) -> nn.Module:
    cls = MaskConditionalDecoder if cfg.conditioning == "mask" else ConditionalDecoder
    return cls(cfg.z_dim, n_classes, n_mask_labels, cfg.base_channels, size, upsample=cfg.upsample)


ADA_INTERVAL = 4  # steps between updates of the adaptive augmentation probability


def diff_augment(x: torch.Tensor, g: torch.Generator, p: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Differentiable 3D augmentation (DiffAugment) applied in the same way to real and fake batches before
    the discriminator, each operation to each case with probability ``p`` (ADA): a random flip along each
    axis, a translation (one shift per batch, up to 1/8 of the size), brightness and contrast of the image
    channel, and cutout of a quarter-size cube filled with background (image -1, background label).
    ``p`` may be a tensor on x's device: nothing here waits for the GPU."""
    b = x.shape[0]
    dev = x.device
    shape = (b, 1, 1, 1, 1)

    def draw() -> torch.Tensor:
        return to_device(torch.rand(b, generator=g), dev).view(shape)

    def chosen() -> torch.Tensor:
        return draw() < p

    for axis in (2, 3, 4):
        x = torch.where(chosen() & (draw() < 0.5), x.flip(axis), x)
    shifts = [int(torch.randint(-s // 8, s // 8 + 1, (1,), generator=g)) for s in x.shape[2:]]
    x = torch.where(chosen(), torch.roll(x, shifts=shifts, dims=(2, 3, 4)), x)
    on, bright, contrast = chosen(), (draw() - 0.5) * 0.2, draw() * 0.4 + 0.8
    img = x[:, :1]
    mean = img.mean(dim=(2, 3, 4), keepdim=True)
    x = torch.cat([torch.where(on, (img - mean) * contrast + mean + bright, img), x[:, 1:]], 1)
    keep = torch.where(chosen(), random_cutout(torch.ones_like(x[:, :1]), g), 1.0)
    background = torch.zeros_like(x[:1])
    background[:, :2] = torch.tensor([-1.0, 1.0], dtype=x.dtype, device=dev).view(1, 2, 1, 1, 1)
    return x * keep + background * (1 - keep)


class CGANModule(GenerativeModule):
    name = "cgan"
    config_class = CGANConfig  # validates train.cgan (and a plug-in subclass's section, unless it names its own)
    # the discriminator's spectral norm updates its power-iteration vector in place, which torch.compile
    # rejects under the R1 double backward: only the generator is compiled
    compile_targets = ("generator",)

    def __init__(self, config: dict, data_info: dict, seed: int = 0, log_every: int = 10, image_every: int = 100):
        super().__init__(config, data_info, seed, log_every, image_every)
        cfg = CGANConfig(**config)
        self.cfg = cfg
        size = self.roi[0]
        self.generator = build_generator(cfg, self.n_classes, self.n_mask_labels, size)
        self.discriminator = ProjectionDiscriminator(2 + self.n_mask_labels, self.n_classes, cfg.base_channels, size, minibatch_std=cfg.minibatch_std)
        self.g_ema = frozen_copy(self.generator)
        self.automatic_optimization = False
        # adaptive augmentation state, in the checkpoint so a resumed run continues exactly
        self.adaptive_augmentation = cfg.diffaugment and cfg.ada_target > 0
        self.register_buffer("augment_p", torch.tensor(0.0 if self.adaptive_augmentation else 1.0))
        self.register_buffer("ada_signs", torch.tensor(0.0))  # sum of sign(D(real)) since the last update
        self.register_buffer("ada_count", torch.tensor(0.0))
        self.register_buffer("ada_rt", torch.tensor(0.0))  # the last overfitting measure r_t

    @property
    def sampler(self) -> nn.Module:
        return self.g_ema

    @classmethod
    def build_sampler(cls, config: dict, data_info: dict) -> nn.Module:
        # a model exported before `upsample` existed was trained with nearest upsampling: sample it that way
        cfg = CGANConfig(**{"upsample": "nearest", **config})
        return build_generator(cfg, len(data_info["conditions"]), int(data_info["n_mask_labels"]), int(data_info["roi_size"][0]))

    def configure_optimizers(self):
        fused = torch.cuda.is_available()
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.cfg.lr_g, betas=(0.0, 0.99), fused=fused)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.cfg.lr_d, betas=(0.0, 0.99), fused=fused)
        return [opt_g, opt_d]

    def _d_loss(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        if self.cfg.loss == "hinge":
            return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        if self.cfg.loss == "nonsaturating":
            return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        return d_fake.mean() - d_real.mean()

    def _g_loss(self, d_fake: torch.Tensor) -> torch.Tensor:
        if self.cfg.loss == "nonsaturating":
            return F.softplus(-d_fake).mean()
        return -d_fake.mean()

    def _augment(self, x: torch.Tensor, purpose: int) -> torch.Tensor:
        return diff_augment(x, self.step_generator(purpose), self.augment_p) if self.cfg.diffaugment else x

    @torch.no_grad()
    def _adapt_augmentation(self, d_real: torch.Tensor) -> None:
        """ADA (Karras et al. 2020): r_t = mean sign(D(real)) over the last ADA_INTERVAL steps measures how
        much D memorises the training cases (1: it scores every real case as real); p moves towards more
        augmentation while r_t > ada_target and towards less otherwise, by (cases seen) / ada_images.
        On device, no host sync; under DDP the counts of all processes are summed so p stays identical."""
        cfg = self.cfg
        self.ada_signs += torch.sign(d_real.float()).sum()
        self.ada_count += d_real.numel()
        if (self._step + 1) % ADA_INTERVAL:
            return
        stats = torch.stack([self.ada_signs, self.ada_count])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        rt = stats[0] / stats[1].clamp(min=1)
        self.augment_p.copy_((self.augment_p + torch.sign(rt - cfg.ada_target) * stats[1] / cfg.ada_images).clamp(0, 1))
        self.ada_rt.copy_(rt)
        self.ada_signs.zero_()
        self.ada_count.zero_()

    def summary_extras(self) -> dict:
        return {"augment_p": round(float(self.augment_p), 4)} if self.cfg.diffaugment else {}

    def step(self):
        opt_g, opt_d = self.optimizers()
        cfg = self.cfg
        x, y = self.batch(cfg.batch_size)
        real = self.joint(x)
        z = self.noise(len(y), cfg.z_dim)
        # mask conditioning: the generator paints the real case's mask, D judges the (image, mask) pair
        given = (self.layout(one_hot_mask(x[:, 1:], self.n_mask_labels)),) if cfg.conditioning == "mask" else ()
        # ---- discriminator
        with torch.no_grad():
            fake = compose_sample(*self.generator(z, y, *given))
        d_real = self.discriminator(self._augment(real, 10), y)
        d_fake = self.discriminator(self._augment(fake, 10), y)
        loss_d = self._d_loss(d_real, d_fake)
        if self.adaptive_augmentation:
            self._adapt_augmentation(d_real.detach())
        penalty = torch.zeros((), device=self.device)
        if cfg.loss == "wgan-gp":
            a = to_device(torch.rand(len(y), 1, 1, 1, 1, generator=self.step_generator(11)), self.device)
            inter = (a * real + (1 - a) * fake).requires_grad_(True)
            grad = torch.autograd.grad(self.discriminator(inter, y).sum(), inter, create_graph=True)[0]
            penalty = cfg.gp_weight * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        elif cfg.r1_gamma > 0 and self.step_index % cfg.r1_every == 0:
            r = real.detach().requires_grad_(True)
            grad = torch.autograd.grad(self.discriminator(r, y).sum(), r, create_graph=True)[0]
            penalty = cfg.r1_gamma / 2 * grad.flatten(1).pow(2).sum(1).mean() * cfg.r1_every
        self.check_finite(loss_d=loss_d, penalty=penalty)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d + penalty)
        gn_d = grad_norm(self.discriminator.parameters()) if self.logging_step else None  # only logged values are computed
        opt_d.step()
        # ---- generator
        h = len(y) // 2 if cfg.mode_seeking > 0 else 0
        y_real = y
        if h:  # the second half repeats the first half's conditions (and masks) with other noise
            y = torch.cat([y[:h], y[:h], y[2 * h :]])
            given = tuple(torch.cat([g[:h], g[:h], g[2 * h :]]) for g in given)
        img, logits = self.generator(z, y, *given)
        fake = compose_sample(img, logits)
        d_fake_g = self.discriminator(self._augment(fake, 12), y)
        loss_g = self._g_loss(d_fake_g)
        volume = torch.zeros((), device=self.device)
        if cfg.label_volume_weight > 0 and cfg.conditioning == "class":
            volume = label_volume_loss(logits, y, x[:, 1], y_real, self.n_mask_labels)
            loss_g = loss_g + cfg.label_volume_weight * volume
        sensitivity = torch.zeros((), device=self.device)
        if h:
            seek, sensitivity = mode_seeking_loss(fake[:h], fake[h : 2 * h], z[:h], z[h : 2 * h], cfg.mode_seeking)
            loss_g = loss_g + seek
        self.check_finite(loss_g=loss_g)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        gn_g = grad_norm(self.generator.parameters()) if self.logging_step else None
        opt_g.step()
        ema_update(self.g_ema, self.generator, cfg.ema_decay)
        self.log_scalars(
            loss_d=loss_d.detach(), loss_g=loss_g.detach(), penalty=penalty.detach(), grad_norm_d=gn_d, grad_norm_g=gn_g,
            d_real=d_real.mean().detach(), d_fake=d_fake.mean().detach(), dg_balance=(d_real.mean() - d_fake.mean()).detach(),
            **({"augment_p": self.augment_p, "ada_rt": self.ada_rt} if cfg.diffaugment else {}),
            **({"noise_sensitivity": sensitivity.detach()} if h else {}),
            **({"label_volume": volume.detach()} if cfg.label_volume_weight > 0 and cfg.conditioning == "class" else {}),
        )

    @torch.no_grad()
    def discriminator_score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """White-box membership signal: D's score of real cases (image + label map)."""
        return self.discriminator(self.joint(x.to(self.device)), y.to(self.device))
