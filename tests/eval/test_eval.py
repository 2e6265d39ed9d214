"""Evaluation on the real AdrenalMNIST3D cohort: feature metrics separate real from noise and copies,
the self-supervised encoder learns, MS-SSIM diversity, and the utility gate fails on useless data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth.eval.metrics import alpha_precision_beta_recall, feature_fidelity, fid, kid, ms_ssim_diversity, prdc
from tests.conftest import shared


@pytest.fixture(scope="module")
def adrenal():
    z = np.load(shared("shapes", "adrenalmnist3d_28.npz"))
    to = lambda a: a.astype(np.float32) / 127.5 - 1  # noqa: E731
    train, test = to(z["train_images"][:160]), to(z["test_images"][:80])
    return {"train": train, "test": test, "unseen": to(z["test_images"][80:160]),
            "train_y": z["train_labels"][:160].ravel(), "test_y": z["test_labels"][:80].ravel()}


def _cases(imgs: np.ndarray) -> np.ndarray:
    return np.stack([imgs, (imgs > 0).astype(np.float32)], 1)


@pytest.fixture(scope="module")
def encoder(adrenal):
    from medsynth.eval.encoder import train_encoder

    x = torch.from_numpy(_cases(adrenal["train"]))
    enc, losses = train_encoder(x, steps=80, batch_size=16, dim=32, width=8, seed=0)
    return enc, losses


def test_encoder_learns_on_the_real_train_split(encoder):
    _, losses = encoder
    # NT-Xent ends well below chance (log 31 for 16 pairs): the encoder tells cases apart
    assert np.mean(losses[-8:]) < np.log(31) - 0.3 and np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.3


def test_feature_metrics_rank_real_over_noise_and_flag_copies(adrenal, encoder):
    from medsynth.eval.encoder import embed, standardise

    enc, _ = encoder
    f = lambda imgs: embed(enc, _cases(imgs))  # noqa: E731
    rng = np.random.default_rng(0)
    feats = standardise({"train": f(adrenal["train"]), "unseen": f(adrenal["unseen"]),
                         "noise": f(rng.uniform(-1, 1, adrenal["unseen"].shape).astype(np.float32))})
    train, unseen, noise = feats["train"], feats["unseen"], feats["noise"]
    assert fid(unseen, train) < fid(noise, train)
    assert kid(unseen, train) < kid(noise, train)
    p_real, p_noise = prdc(train, unseen), prdc(train, noise)
    assert p_real["precision"] > 0.6 and p_noise["precision"] < p_real["precision"]
    assert p_real["coverage"] > p_noise["coverage"]
    ab_real, ab_noise = alpha_precision_beta_recall(train, unseen), alpha_precision_beta_recall(train, noise)
    assert ab_real["alpha_precision"] > ab_noise["alpha_precision"]
    full = feature_fidelity(noise, train, unseen, seed=0, n_boot=10)
    assert full["fid"]["value"] > full["fid"]["real_baseline"]
    assert full["fid"]["ci"][0] <= full["fid"]["value"] <= full["fid"]["ci"][1] * 1.5
    copies = feature_fidelity(train[:60], train, unseen, seed=0, n_boot=10)
    assert copies["density"]["value"] > full["density"]["value"]


def test_ms_ssim_diversity_drops_for_a_collapsed_generator(adrenal):
    diverse = ms_ssim_diversity(adrenal["unseen"][:40])
    collapsed = ms_ssim_diversity(np.repeat(adrenal["unseen"][:1], 40, 0))
    assert collapsed == pytest.approx(1.0, abs=1e-4) and diverse < 0.9


def test_privacy_in_learned_feature_space_flags_perturbed_copies(adrenal, encoder):
    """The second-opinion privacy tests on the encoder's features: lightly perturbed training cases are
    found (closer to training than unseen patients are, membership AUC), unseen real cases are not."""
    from medsynth.eval.encoder import embed, standardiser
    from medsynth.eval.privacy import privacy_metrics

    enc, _ = encoder
    f = lambda imgs: embed(enc, _cases(imgs))  # noqa: E731
    rng = np.random.default_rng(1)
    scale = standardiser(f(adrenal["train"]))
    train, holdout = scale(f(adrenal["train"])), scale(f(adrenal["unseen"]))
    leak = np.clip(adrenal["train"][:60] + rng.normal(0, 0.02, adrenal["train"][:60].shape), -1, 1).astype(np.float32)
    p_leak = privacy_metrics(scale(f(leak)), train, holdout, 0, 50)
    p_fair = privacy_metrics(scale(f(adrenal["test"][:60])), train, holdout, 0, 50)
    assert np.median(p_leak["dcr_values"]["synthetic_to_train"]) < np.percentile(p_fair["dcr_values"]["holdout_to_train"], 5)
    assert p_leak["membership_auc_blackbox"] > 0.6 > p_fair["membership_auc_blackbox"] - 0.05
    assert p_leak["dcr_share"] > p_fair["dcr_share"]


def test_feature_cache_computes_once_per_content(tmp_path):
    from medsynth.eval.features import cached_features

    calls = []

    def compute(v):
        calls.append(v)
        return np.full((3, 2), v, dtype=np.float32)

    a = cached_features(tmp_path, "learned-train", ["enc1", "case1", "case2"], lambda: compute(1.0))
    b = cached_features(tmp_path, "learned-train", ["enc1", "case1", "case2"], lambda: compute(2.0))
    assert calls == [1.0] and np.array_equal(a, b)  # served from the cache
    c = cached_features(tmp_path, "learned-train", ["enc2", "case1", "case2"], lambda: compute(3.0))  # another encoder
    assert calls == [1.0, 3.0] and c[0, 0] == 3.0
    assert len(list(tmp_path.glob("learned-train-*.npy"))) == 1  # the stale entry is gone
    assert cached_features(None, "x", [], lambda: compute(4.0))[0, 0] == 4.0
