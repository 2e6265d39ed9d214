"""The gates fail on generators that leak or draw noise, and pass unseen real cases, on real AdrenalMNIST3D volumes."""

import numpy as np

from medsynth.config import GatesConfig
from tests.conftest import shared


def test_gates_fail_on_leaking_and_noise_generators_on_adrenalmnist3d():
    from medsynth.eval.features import volume_features
    from medsynth.eval.fidelity import fidelity_metrics
    from medsynth.eval.gates import evaluate_gates
    from medsynth.eval.privacy import audit_privacy, privacy_reference

    z = np.load(shared("shapes", "adrenalmnist3d_28.npz"))
    rng = np.random.default_rng(0)
    cases = lambda a: np.stack([a, (a > 0).astype(np.float32)], 1)  # noqa: E731
    train = z["train_images"][:200].astype(np.float32) / 127.5 - 1
    test = z["test_images"][:100].astype(np.float32) / 127.5 - 1
    holdout = z["test_images"][100:200].astype(np.float32) / 127.5 - 1
    f = lambda x: volume_features(x, (x > 0).astype(np.uint8), 1)  # noqa: E731
    ft, fte, fh = f(train), f(test), f(holdout)
    ref = privacy_reference(cases(train), np.zeros(200, int), cases(holdout), np.zeros(100, int), ft, fh, 0)

    def gates(syn):
        fs = f(syn)
        fid = fidelity_metrics(fs, ft, fte, syn, train, (syn > 0), (train > 0), 0, 20)
        priv = audit_privacy(ref, cases(syn), fs, np.zeros(len(syn), int), "share", 0.5, 0, 50)
        return {g["gate"].split(": ", 1)[1]: g["state"] for g in evaluate_gates("m", fid, priv, GatesConfig())}, priv

    leak, p_leak = gates(np.clip(train[:60] + rng.normal(0, 0.02, train[:60].shape), -1, 1).astype(np.float32))
    assert leak["near-copies of training patients"] == "fail" and p_leak["copies"] == 60
    assert leak["membership inference AUC, all cases"] == "fail"
    fair, p_fair = gates(z["test_images"][200:260].astype(np.float32) / 127.5 - 1)  # unseen real cases
    assert p_fair["copies"] == 0
    assert fair["membership inference AUC, all cases"] == "pass"
    assert p_fair["dcr_share"] < p_leak["dcr_share"]
    noise, _ = gates(rng.uniform(-1, 1, size=(60, 28, 28, 28)).astype(np.float32))
    assert noise["realism (distance to real data vs unseen real)"] == "fail"
