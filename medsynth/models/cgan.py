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
from torch.nn import functional as F

from medsynth.config import CGANConfig
from medsynth.models.base import GenerativeModule, ema_update, frozen_copy, grad_norm, mode_seeking_loss, to_device
from medsynth.models.blocks import (
    ConditionalDecoder,
    MaskConditionalDecoder,
    ProjectionDiscriminator,
    Sampler,
    compose_sample,
    one_hot_mask,
    random_cutout,
)
from medsynth.models.dp import PrivateTraining
from medsynth.models.losses import label_volume_loss


def build_generator(cfg: CGANConfig, n_classes: int, n_mask_labels: int, size: int) -> Sampler:
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


class CGANModule(PrivateTraining, GenerativeModule):
    name = "cgan"
    sampler_network = "g_ema"
    dp_networks = ("discriminator",)
    dp_covers = ("the discriminator's weights and the generator's (which sees training cases only through the discriminator), "
                 "so the exported generator; not the logged losses, the diversity monitor or other values computed on training "
                 "cases without noise (train.json, DVCLive): keep those inside")
    config_class = CGANConfig  # validates train.cgan (and a plug-in subclass's section, unless it names its own)
    # the discriminator's spectral norm updates its power-iteration vector in place, which torch.compile
    # rejects under the R1 double backward: only the generator is compiled
    compile_targets = ("generator",)
    augment_p: torch.Tensor  # buffers (registered in __init__)
    ada_signs: torch.Tensor
    ada_count: torch.Tensor
    ada_rt: torch.Tensor

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
        if cfg.dp is not None:
            self.init_dp()

    @classmethod
    def build_sampler(cls, config: dict, data_info: dict) -> Sampler:
        cfg = CGANConfig(**config)
        return build_generator(cfg, len(data_info["conditions"]), int(data_info["n_mask_labels"]), int(data_info["roi_size"][0]))

    def configure_optimizers(self):
        fused = torch.cuda.is_available()
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.cfg.lr_g, betas=(0.0, 0.99), fused=fused)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.cfg.lr_d, betas=(0.0, 0.99), fused=fused)
        return [opt_g, opt_d]

    def _d_loss(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        return self._real_term(d_real).mean() + self._fake_term(d_fake).mean()

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

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.cfg.dp is not None:
            self.setup_dp()

    def step(self):
        cfg = self.cfg
        if cfg.dp is not None:
            return self.dp_step()
        opt_d = self.optimizer_list()[1]
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
        loss_g, extras = self._generator_step(z, y, given, x[:, 1], y)
        self.log_scalars(
            loss_d=loss_d.detach(), loss_g=loss_g.detach(), penalty=penalty.detach(), grad_norm_d=gn_d,
            d_real=d_real.mean().detach(), d_fake=d_fake.mean().detach(), dg_balance=(d_real.mean() - d_fake.mean()).detach(),
            **({"augment_p": self.augment_p, "ada_rt": self.ada_rt} if cfg.diffaugment else {}), **extras,
        )

    def _generator_step(self, z: torch.Tensor, y: torch.Tensor, given: tuple[torch.Tensor, ...],
                        real_labels: torch.Tensor | None, y_real: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """One generator update against the discriminator (plus mode seeking, and the label-volume term when
        ``real_labels`` of the batch's cases ``y_real`` are given); the loss and the values to log."""
        opt_g = self.optimizer_list()[0]
        cfg = self.cfg
        h = len(y) // 2 if cfg.mode_seeking > 0 else 0
        if h:  # the second half repeats the first half's conditions (and masks) with other noise
            y = torch.cat([y[:h], y[:h], y[2 * h :]])
            given = tuple(torch.cat([g[:h], g[:h], g[2 * h :]]) for g in given)
        img, logits = self.generator(z, y, *given)
        fake = compose_sample(img, logits)
        d_fake_g = self.discriminator(self._augment(fake, 12), y)
        loss_g = self._g_loss(d_fake_g)
        extras: dict[str, torch.Tensor | None] = {}
        if real_labels is not None and y_real is not None and cfg.label_volume_weight > 0 and cfg.conditioning == "class":
            volume = label_volume_loss(logits, y, real_labels, y_real, self.n_mask_labels)
            loss_g = loss_g + cfg.label_volume_weight * volume
            extras["label_volume"] = volume.detach()
        if h:
            seek, sensitivity = mode_seeking_loss(fake[:h], fake[h : 2 * h], z[:h], z[h : 2 * h], cfg.mode_seeking)
            loss_g = loss_g + seek
            extras["noise_sensitivity"] = sensitivity.detach()
        self.check_finite(loss_g=loss_g)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        extras["grad_norm_g"] = grad_norm(self.generator.parameters()) if self.logging_step else None
        opt_g.step()
        ema_update(self.g_ema, self.generator, cfg.ema_decay)
        return loss_g, extras

    def _real_term(self, d_real: torch.Tensor) -> torch.Tensor:
        """The discriminator loss's real-case part, per case (see :meth:`_d_loss`)."""
        if self.cfg.loss == "hinge":
            return F.relu(1 - d_real)
        if self.cfg.loss == "nonsaturating":
            return F.softplus(-d_real)
        return -d_real

    def _fake_term(self, d_fake: torch.Tensor) -> torch.Tensor:
        if self.cfg.loss == "hinge":
            return F.relu(1 + d_fake)
        if self.cfg.loss == "nonsaturating":
            return F.softplus(d_fake)
        return d_fake

    def dp_step(self) -> None:
        """One step with a differentially private discriminator (DP-GAN, Xie et al. 2018). Of the
        discriminator's loss, only the terms of real cases depend on the training data: each Poisson-sampled
        case's term (score, R1 penalty on it, WGAN-GP penalty between it and a generated case of its
        condition) gets its own gradient, clipped and noised (:mod:`medsynth.models.dp`); the generated
        cases' term adds its ordinary gradient. The generator then learns from the discriminator alone, on
        conditions drawn uniformly: its weights are post-processing of the private discriminator's."""
        opt_d = self.optimizer_list()[1]
        cfg = self.cfg
        real_x, y_real = self.dp_batch(1)
        real = self.joint(real_x)
        y = self.uniform_conditions(cfg.batch_size, 13)
        z = self.noise(len(y), cfg.z_dim)
        with torch.no_grad():
            fake = compose_sample(*self.generator(z, y))
            paired = compose_sample(*self.generator(self.noise(len(y_real), cfg.z_dim, purpose=14), y_real)) if cfg.loss == "wgan-gp" else real
        a = to_device(torch.rand(len(y_real), 1, 1, 1, 1, generator=self.step_generator(11)), self.device)
        r1 = cfg.loss != "wgan-gp" and cfg.r1_gamma > 0 and self.step_index % cfg.r1_every == 0
        opt_d.zero_grad(set_to_none=True)
        d_fake = self.private_discriminator_gradient(self._augment(real, 10), real, y_real, self._augment(fake, 15), y, paired, a, r1)
        gn_d = grad_norm(self.discriminator.parameters()) if self.logging_step else None
        opt_d.step()
        loss_g, extras = self._generator_step(self.noise(len(y), cfg.z_dim, purpose=16), y, (), None, None)
        self.log_scalars(loss_g=loss_g.detach(), grad_norm_d=gn_d, d_fake=d_fake.mean().detach(), dp_batch=len(y_real),
                         **({"augment_p": self.augment_p} if cfg.diffaugment else {}), **extras)

    def private_discriminator_gradient(self, real_aug: torch.Tensor, real: torch.Tensor, y_real: torch.Tensor, fake_aug: torch.Tensor,
                                       y_fake: torch.Tensor, paired: torch.Tensor, a: torch.Tensor, r1: bool) -> torch.Tensor:
        """Set the discriminator's gradient: DP-SGD over the real cases' terms (their score on ``real_aug``;
        with ``r1`` the R1 penalty on ``real``; with WGAN-GP the penalty at ``a`` between each real case
        and its ``paired`` generated case), plus the ordinary gradient of the generated cases' term.
        Returns the generated cases' scores."""
        cfg = self.cfg

        def real_loss_of_one(aug: torch.Tensor, r: torch.Tensor, f: torch.Tensor, w: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
            loss = self._real_term(self.discriminator(aug, yy)).sum()
            if r1:
                gx = torch.func.grad(lambda t: self.discriminator(t, yy).sum())(r)
                loss = loss + cfg.r1_gamma / 2 * gx.pow(2).sum() * cfg.r1_every
            elif cfg.loss == "wgan-gp":
                gx = torch.func.grad(lambda t: self.discriminator(t, yy).sum())(w * r + (1 - w) * f)
                loss = loss + cfg.gp_weight * (gx.flatten().norm() - 1) ** 2
            return loss

        self.private_step(real_loss_of_one, (real_aug, real, paired, a, y_real), 31)
        # the generated cases' term with the singular vectors the private pass used (eval: not advanced again)
        was_training = self.discriminator.training
        self.discriminator.eval()
        try:
            d_fake = self.discriminator(fake_aug, y_fake)
        finally:
            self.discriminator.train(was_training)
        loss_fake = self._fake_term(d_fake).mean()
        self.check_finite(loss_d=loss_fake)
        self.manual_backward(loss_fake)  # adds to the private gradient of the real cases
        return d_fake

    def prepare_export(self) -> dict:
        return {"dp": self.dp_record()} if self.cfg.dp is not None else {}

    @torch.no_grad()
    def discriminator_score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """White-box membership signal: D's score of real cases (image + label map)."""
        return self.discriminator(self.joint(x.to(self.device)), y.to(self.device))
