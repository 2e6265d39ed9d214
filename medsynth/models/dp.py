"""Differentially private training (DP-SGD, Abadi et al. 2016) for a model's networks that see real cases.

Each step: every training case joins the batch independently with probability ``q = batch_size / N``
(Poisson sampling, which the accountant assumes; the class balancing of ordinary training is off, as it
would sample rare cases more often than the guarantee allows); each case's gradient is computed alone
(``torch.func``: ``vmap`` of ``grad`` over the cases), clipped to L2 norm ``max_grad_norm``, summed,
Gaussian noise of standard deviation ``noise_multiplier x max_grad_norm`` added, and the sum divided by
the expected batch size. The noise multiplier is the smallest that keeps the whole run within
(``epsilon``, ``delta``) under opacus's RDP accountant for ``steps`` steps at rate ``q``; the epsilon spent
is computed by the same accountant from the steps actually taken.

What the guarantee covers: the weights these steps update. It does not cover values computed on the
training cases without noise (logged losses, the diversity monitor, anything fitted to the data after
training): models refuse settings that would export such a value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils.spectral_norm import SpectralNorm

if TYPE_CHECKING:
    from medsynth.models.base import GenerativeModule as _Module
else:
    _Module = object


def noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant="rdp"))


def epsilon_spent(noise: float, sample_rate: float, steps: int, delta: float) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(noise, sample_rate, int(steps))]
    return float(acc.get_epsilon(delta)) if steps > 0 else 0.0


def poisson_batch(n: int, sample_rate: float, g: torch.Generator) -> torch.Tensor:
    """Indices of the cases that join this step's batch: each independently with probability ``sample_rate``."""
    return torch.nonzero(torch.rand(n, generator=g) < sample_rate).flatten()


class _LossOfOne(nn.Module):
    """The networks under one roof, so ``functional_call`` can swap their parameters for per-case ones while
    the model's own code (which refers to the same network objects) computes the loss."""

    def __init__(self, nets: dict[str, nn.Module], loss_of_one: Callable[..., torch.Tensor]):
        super().__init__()
        self.nets = nn.ModuleDict(nets)
        self.loss_of_one = loss_of_one

    def forward(self, *case: torch.Tensor) -> torch.Tensor:
        return self.loss_of_one(*[c.unsqueeze(0) for c in case])


def private_gradients(nets: dict[str, nn.Module], loss_of_one: Callable[..., torch.Tensor], batch: tuple[torch.Tensor, ...],
                      max_grad_norm: float, noise: float, expected_batch: float, g: torch.Generator) -> None:
    """Set ``.grad`` of every parameter of ``nets`` to the DP-SGD gradient: per-case gradients of
    ``loss_of_one(*case)`` (each case given with a leading batch dimension of 1), each clipped to
    ``max_grad_norm``, summed, plus N(0, (noise x max_grad_norm)^2), over ``expected_batch``. ``batch``
    may hold no case: the step then adds noise only."""
    wrapper = _LossOfOne(nets, loss_of_one)
    params = {k: v.detach() for k, v in wrapper.named_parameters()}
    buffers = {k: v for k, v in wrapper.named_buffers()}
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    if len(batch[0]):
        def loss(p, *case):
            return functional_call(wrapper, (p, buffers), case)

        per_case = vmap(grad(loss), in_dims=(None, *([0] * len(batch))), randomness="different")(params, *batch)
        norms = torch.sqrt(sum(v.flatten(1).pow(2).sum(1) for v in per_case.values()))
        scale = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        total = {k: (v * scale.view(-1, *[1] * (v.dim() - 1))).sum(0) for k, v in per_case.items()}
    for name, param in wrapper.named_parameters():
        z = torch.randn(param.shape, generator=g).to(param.device, param.dtype)
        param.grad = (total[name] + noise * max_grad_norm * z) / expected_batch


class PrivateTraining(_Module):
    """DP-SGD state and accounting of a generative module (mixed into :class:`GenerativeModule`).

    A subclass sets ``dp_networks`` (the networks whose gradients see training cases),
    ``dp_releases_per_step`` (noised gradients per training step, each on its own Poisson batch) and
    ``dp_covers`` (what the guarantee covers, for train.json and the model card), and calls
    :meth:`init_dp` in ``__init__`` when ``dp`` is set."""

    dp_networks: tuple[str, ...] = ()
    dp_releases_per_step: int = 1
    dp_covers: str = ""
    cfg: Any  # the model's settings, with dp, steps and batch_size
    dp_rate: float
    dp_noise_multiplier: torch.Tensor

    def init_dp(self) -> None:
        self.automatic_optimization = False
        self.register_buffer("dp_noise_multiplier", torch.zeros(()))  # set at the first fit start, kept through resumes

    def setup_dp(self) -> None:
        from medsynth.models.base import TrainingDataError

        assert self.bank_y is not None, "attach_bank() before training"
        dp, n = self.cfg.dp, len(self.bank_y)
        if dp.delta >= 1.0 / n:
            raise TrainingDataError(f"train.{self.name}.dp.delta {dp.delta:g} is not below 1 / {n} training cases: the guarantee would allow "
                                    f"one patient's data to leak whole; set delta below {1.0 / n:.2g} (e.g. {10 ** -len(str(n)) / 10:g})")
        self.dp_rate = min(1.0, self.cfg.batch_size / n)
        if float(self.dp_noise_multiplier) == 0.0:  # a resume keeps the noise the run started with
            releases = self.cfg.steps * self.dp_releases_per_step
            self.dp_noise_multiplier.fill_(noise_multiplier(dp.epsilon, dp.delta, self.dp_rate, releases))

    def dp_record(self) -> dict:
        """The privacy spent so far (train.json, the model card, the report)."""
        dp, sigma = self.cfg.dp, float(self.dp_noise_multiplier)
        releases = int(self.iteration) * self.dp_releases_per_step
        return {"epsilon": round(epsilon_spent(sigma, self.dp_rate, releases, dp.delta), 4), "epsilon_target": dp.epsilon, "delta": dp.delta,
                "noise_multiplier": round(sigma, 4), "max_grad_norm": dp.max_grad_norm, "sample_rate": round(self.dp_rate, 5),
                "steps": int(self.iteration), "noised_gradients_per_step": self.dp_releases_per_step, "networks": list(self.dp_networks),
                "accountant": "RDP (opacus)", "sampling": "Poisson, each training case with probability sample_rate per noised gradient",
                "covers": self.dp_covers}

    def dp_batch(self, purpose: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A Poisson batch of training cases (bank layout, on the module's device) and their conditions."""
        assert self.bank_x is not None and self.bank_y is not None, "attach_bank() before training"
        idx = poisson_batch(len(self.bank_y), self.dp_rate, self.step_generator(purpose)).to(self.bank_x.device)
        return self.layout(self.bank_x[idx].to(self.device).float()), self.bank_y[idx].to(self.device)

    def uniform_conditions(self, n: int, purpose: int) -> torch.Tensor:
        """Conditions for generated cases, uniform over the conditions: the training cases' condition counts
        are data, and drawing in their proportions would use them outside the guarantee."""
        return torch.randint(0, self.n_classes, (n,), generator=self.step_generator(purpose)).to(self.device)

    def private_step(self, loss_of_one: Callable[..., torch.Tensor], cases: tuple[torch.Tensor, ...], g_purpose: int,
                     networks: tuple[str, ...] | None = None) -> None:
        """Set the gradients of ``networks`` (default ``dp_networks``) to the DP-SGD gradient of ``loss_of_one``
        over ``cases`` (other networks ``loss_of_one`` calls are used as they are, not updated). Spectral norm's
        power iteration advances once first; the per-case pass then runs in eval mode, using those singular
        vectors without updating them in place, which per-case gradients cannot do."""
        nets = {name.replace(".", "_"): self.get_submodule(name) for name in (networks or self.dp_networks)}
        was_training = self.training
        if was_training:  # one power iteration, as an ordinary forward pass would do
            for m in self.modules():
                for hook in list(m._forward_pre_hooks.values()):
                    if isinstance(hook, SpectralNorm):
                        hook(m, ())
        self.eval()
        try:
            private_gradients(nets, loss_of_one, cases, self.cfg.dp.max_grad_norm, float(self.dp_noise_multiplier),
                              self.cfg.batch_size, self.step_generator(g_purpose))
        finally:
            self.train(was_training)
