"""Differentially private training (DP-SGD) of the cVAE: per-case gradients clipped and noised as the
accountant assumes, the epsilon spent recorded, settings that would leak outside the guarantee refused."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from medsynth.config import ConfigError, parse_params
from medsynth.models.base import TrainingDataError
from medsynth.models.dp import epsilon_spent, noise_multiplier, poisson_batch, private_gradients


def test_each_case_is_clipped_before_the_sum_and_noise_is_added():
    torch.manual_seed(0)
    net = nn.Linear(3, 1, bias=False)
    x = torch.tensor([[10.0, 0, 0], [0, 0.1, 0], [0, 0, 0.2]])
    target = torch.zeros(3, 1)

    def loss(xb, tb):
        return ((net(xb) - tb) ** 2).mean() + 1.0  # d/dw of (w.x)^2 = 2 (w.x) x

    w = net.weight.detach().clone()
    per_case = [2 * (w @ xi) * xi for xi in x]
    clipped = sum(g * min(1.0, 0.5 / float(g.norm())) for g in per_case)
    private_gradients({"net": net}, loss, (x, target), max_grad_norm=0.5, noise=0.0, expected_batch=4, g=torch.Generator().manual_seed(1))
    assert torch.allclose(net.weight.grad[0], clipped / 4, atol=1e-6)
    assert float(per_case[0].norm()) > 0.5 and float((per_case[0] * min(1.0, 0.5 / float(per_case[0].norm()))).norm()) == pytest.approx(0.5)
    # noise: standard deviation noise x max_grad_norm / expected batch, also when no case joins the batch
    draws = []
    for s in range(400):
        private_gradients({"net": net}, loss, (x[:0], target[:0]), 0.5, 2.0, 4, torch.Generator().manual_seed(s))
        draws.append(net.weight.grad.flatten())
    assert float(torch.stack(draws).std()) == pytest.approx(2.0 * 0.5 / 4, rel=0.1)


def test_the_accountant_gives_more_noise_for_less_epsilon_and_spends_what_was_asked():
    q, steps, delta = 8 / 143, 300, 1e-3
    s10, s1 = noise_multiplier(10, delta, q, steps), noise_multiplier(1, delta, q, steps)
    assert s1 > s10 > 0
    assert epsilon_spent(s10, q, steps, delta) == pytest.approx(10, rel=0.02)
    assert epsilon_spent(s1, q, steps, delta) == pytest.approx(1, rel=0.02)
    assert epsilon_spent(s10, q, steps // 2, delta) < 10  # fewer steps spend less
    sizes = [len(poisson_batch(143, q, torch.Generator().manual_seed(i))) for i in range(300)]
    assert np.mean(sizes) == pytest.approx(8, rel=0.1) and min(sizes) < 8 < max(sizes)  # Poisson, not a fixed batch


@pytest.mark.parametrize("section,why", [
    ({"cvae": {"dp": {"epsilon": 1}, "latent_prior": "fitted"}}, "latent_prior: fitted"),
    ({"cvae": {"dp": {"epsilon": 1}, "latent_prior": "standard", "mask_label_weighting": "rarity"}}, "mask_label_weighting: rarity"),
    ({"models": ["vaegan"], "vaegan": {"dp": {"epsilon": 1}, "latent_prior": "standard"}}, "minibatch_std: True (allowed with dp: False)"),
    ({"models": ["vaegan"], "vaegan": {"dp": {"epsilon": 1}, "latent_prior": "standard", "minibatch_std": False, "backbone": "autoencoderkl"}},
     "backbone: autoencoderkl (allowed with dp: conv)"),
    ({"cgan": {"dp": {"epsilon": 1}, "minibatch_std": False, "ada_target": 0}}, "label_volume_weight: 1.0 (allowed with dp: 0.0)"),
    ({"cgan": {"dp": {"epsilon": 1}, "minibatch_std": False, "label_volume_weight": 0}}, "ada_target: 0.6 (allowed with dp: 0.0)"),
    ({"precision": "16-mixed", "cvae": {"dp": {"epsilon": 1}, "latent_prior": "standard"}}, "train.precision: 16-mixed with train.cvae.dp"),
    ({"devices": 2, "cvae": {"dp": {"epsilon": 1}, "latent_prior": "standard"}}, "train.devices x train.num_nodes: 2"),
    ({"cvae": {"dp": {"epsilon": 0, "latent_prior": "standard"}}}, "train.cvae.dp.epsilon"),
])
def test_settings_that_would_leak_outside_the_guarantee_are_refused(section, why):
    with pytest.raises(ConfigError, match=re.escape(why)):
        parse_params({"train": section})


def test_a_private_cvae_trains_and_records_the_epsilon_it_spent(preprocessed, tmp_path):
    from tests.conftest import train_tiny

    extra = {"latent_prior": "standard", "dp": {"epsilon": 8.0, "delta": 1e-3, "max_grad_norm": 1.0}}
    summary = train_tiny("cvae", preprocessed, tmp_path / "cvae", 4, extra=extra)
    dp = summary["dp"]
    assert dp["steps"] == 4 and 0 < dp["epsilon"] <= 8.0 * 1.01 and dp["noise_multiplier"] > 0
    assert json.loads((tmp_path / "cvae" / "train.json").read_text())["dp"] == dp
    with pytest.raises(TrainingDataError, match="delta 0.5 is not below 1"):
        train_tiny("cvae", preprocessed, tmp_path / "cvae2", 2, extra={**extra, "dp": {"epsilon": 8.0, "delta": 0.5}})


PRIVATE_CGAN = {"minibatch_std": False, "ada_target": 0.0, "label_volume_weight": 0.0}
PRIVATE_VAEGAN = {"latent_prior": "standard", "minibatch_std": False}


def _module(name: str, preprocessed, **cfg):
    from medsynth.cohort import data_info_from, load_bank, read_preprocess_info
    from medsynth.config import Params
    from medsynth.models import registry

    x, y, _ = load_bank(preprocessed, ("train",))
    m = registry.get(name)({**getattr(Params().train, name).model_dump(), "base_channels": 4, **cfg},
                           data_info_from(read_preprocess_info(preprocessed)), seed=3)
    m.attach_bank(x, y)
    m.on_fit_start()
    m.manual_backward = lambda loss: loss.backward()  # no trainer here: what Lightning does at 32-true
    return m, x, y


@pytest.mark.parametrize("loss", ["hinge", "nonsaturating", "wgan-gp"])
def test_the_private_discriminator_gradient_is_the_ordinary_one_before_clipping_and_noise(preprocessed, loss):
    """With a clip no case reaches and no noise, the DP-SGD discriminator gradient (real cases' terms per
    case, R1 / WGAN-GP penalty included, generated cases' term ordinary) equals the plain batch gradient;
    with a small clip it differs, and no case's contribution exceeds the clip."""
    m, x, y = _module("cgan", preprocessed, loss=loss, r1_every=1, diffaugment=False, dp={"epsilon": 10, "delta": 1e-3, "max_grad_norm": 1e6},
                      **PRIVATE_CGAN)
    m.dp_noise_multiplier.fill_(0.0)
    d, cfg = m.discriminator, m.cfg
    real, y_real = m.joint(x[:5].float()), y[:5]
    fake, y_fake = torch.tanh(torch.randn(4, *real.shape[1:], generator=torch.Generator().manual_seed(2))), torch.tensor([0, 1, 0, 1])
    paired = torch.tanh(torch.randn(real.shape, generator=torch.Generator().manual_seed(4)))
    a = torch.rand(5, 1, 1, 1, 1, generator=torch.Generator().manual_seed(5))
    d.zero_grad()
    m.private_discriminator_gradient(real, real, y_real, fake, y_fake, paired, a, r1=loss != "wgan-gp")
    private = {k: v.grad.clone() for k, v in d.named_parameters()}
    d.zero_grad()
    d.eval()  # as private_discriminator_gradient evaluates it: spectral norm with its stored vectors
    if loss == "wgan-gp":
        inter = (a * real + (1 - a) * paired).requires_grad_(True)
        g = torch.autograd.grad(d(inter, y_real).sum(), inter, create_graph=True)[0]
        penalty = cfg.gp_weight * ((g.flatten(1).norm(dim=1) - 1) ** 2).sum()
    else:
        r = real.detach().requires_grad_(True)
        g = torch.autograd.grad(d(r, y_real).sum(), r, create_graph=True)[0]
        penalty = cfg.r1_gamma / 2 * g.flatten(1).pow(2).sum()
    ordinary = (m._real_term(d(real, y_real)).sum() + penalty) / cfg.batch_size + m._fake_term(d(fake, y_fake)).mean()
    ordinary.backward()
    for k, v in d.named_parameters():
        assert torch.allclose(private[k], v.grad, rtol=1e-3, atol=1e-4 * float(v.grad.abs().max())), k
    # a clip every case exceeds: the real cases' part is at most (cases x clip) / expected batch
    m.cfg = m.cfg.model_copy(update={"dp": m.cfg.dp.model_copy(update={"max_grad_norm": 1e-3})})
    d.zero_grad()
    m.private_step(lambda r, yy: m._real_term(d(r, yy)).sum(), (real, y_real), 31)
    clipped = torch.sqrt(sum(p.grad.pow(2).sum() for p in d.parameters()))
    assert 0.5 * 1e-3 / cfg.batch_size < float(clipped) <= 5 * 1e-3 / cfg.batch_size * 1.001


def test_a_private_cgan_trains_only_its_discriminator_on_cases_and_records_epsilon(preprocessed, tmp_path):
    from tests.conftest import train_tiny

    extra = {**PRIVATE_CGAN, "dp": {"epsilon": 8.0, "delta": 1e-3, "max_grad_norm": 1.0}}
    summary = train_tiny("cgan", preprocessed, tmp_path / "cgan", 4, extra=extra)
    dp = summary["dp"]
    assert dp["steps"] == 4 and dp["networks"] == ["discriminator"] and dp["noised_gradients_per_step"] == 1
    assert 0 < dp["epsilon"] <= 8.0 * 1.01 and dp["noise_multiplier"] > 0
    assert dp["epsilon"] == pytest.approx(epsilon_spent(dp["noise_multiplier"], dp["sample_rate"], 4, 1e-3), rel=1e-3)
    assert json.loads((tmp_path / "cgan" / "train.json").read_text())["dp"] == dp
    assert (tmp_path / "cgan" / "model.pt").exists()


def test_a_private_vaegan_spends_two_noised_gradients_per_step(preprocessed, tmp_path):
    """Both of its updates see training cases: the accountant counts two releases per step, so the noise is
    that of 2 x steps releases and the epsilon spent is that of 2 x the steps taken."""
    from tests.conftest import train_tiny

    extra = {**PRIVATE_VAEGAN, "adv_start": 0, "prior_adversarial": True, "mode_seeking": 0.001,
             "dp": {"epsilon": 8.0, "delta": 1e-3, "max_grad_norm": 1.0}}
    dp = train_tiny("vaegan", preprocessed, tmp_path / "vaegan", 3, extra=extra)["dp"]
    assert dp["steps"] == 3 and dp["noised_gradients_per_step"] == 2 and dp["networks"] == ["encoder", "decoder", "discriminator"]
    q, sigma = dp["sample_rate"], dp["noise_multiplier"]
    assert sigma == pytest.approx(noise_multiplier(8.0, 1e-3, q, 6), rel=1e-3) and sigma > noise_multiplier(8.0, 1e-3, q, 3)
    assert dp["epsilon"] == pytest.approx(epsilon_spent(sigma, q, 6, 1e-3), rel=1e-3) and dp["epsilon"] <= 8.0 * 1.01


def test_a_private_step_advances_spectral_norm_like_an_ordinary_forward_pass(preprocessed):
    """The per-case pass cannot update spectral norm's singular vectors in place, so private_step advances
    them once itself: a discriminator whose every pass is private (the VAE-GAN without prior_adversarial)
    would otherwise keep the random vectors of its initialisation."""
    m, x, y = _module("vaegan", preprocessed, dp={"epsilon": 10, "delta": 1e-3}, **PRIVATE_VAEGAN)
    m.dp_noise_multiplier.fill_(1.0)
    # (a layer with one output has a one-element u, always +-1: its v moves instead)
    vectors = {k: v.clone() for k, v in m.discriminator.named_buffers() if k.endswith(("weight_u", "weight_v")) and v.numel() > 1}
    assert vectors
    d = m.discriminator
    m.private_step(lambda r, yy: d(r, yy).sum(), (m.joint(x[:3].float()), y[:3]), 31, networks=("discriminator",))
    assert all(not torch.equal(v, dict(d.named_buffers())[k]) for k, v in vectors.items())
    assert m.training  # restored
