"""Differentially private training (DP-SGD) of the cVAE: per-case gradients clipped and noised as the
accountant assumes, the epsilon spent recorded, settings that would leak outside the guarantee refused."""

from __future__ import annotations

import json

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
    ({"models": ["vaegan"], "vaegan": {"dp": {"epsilon": 1}, "latent_prior": "standard"}}, "not available for vaegan"),
    ({"cvae": {"dp": {"epsilon": 0, "latent_prior": "standard"}}}, "train.cvae.dp.epsilon"),
])
def test_settings_that_would_leak_outside_the_guarantee_are_refused(section, why):
    with pytest.raises(ConfigError, match=why.replace("(", r"\(")):
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
