"""Models: resume, divergence, registry and plug-ins, and each model's training behaviour, on the demo cohort."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from medsynth.config import Params
from tests.conftest import shared, train_tiny
from tests.conftest import train_tiny as _train  # noqa: E402


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.parametrize("name", ["cgan", "cvae"])
def test_resumed_training_reaches_the_same_weights(name, preprocessed, tmp_path):
    _train(name, preprocessed, tmp_path / "full", 4)
    _train(name, preprocessed, tmp_path / "cut", 4, stop_after=2)  # interrupted after 2 steps (checkpoint kept)
    assert (tmp_path / "cut" / "checkpoints" / "last.ckpt").is_file()
    before = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)["medsynth_train_seconds"]
    s = _train(name, preprocessed, tmp_path / "cut", 4)  # the rerun resumes
    assert s["steps"] == 4
    assert before > 0 and s["train_seconds"] > before  # the time of the interrupted run counts (report: "s of training")
    a, b = _weights(tmp_path / "full" / "model.pt"), _weights(tmp_path / "cut" / "model.pt")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_a_retrained_model_is_the_same_file(preprocessed, tmp_path):
    """Training is seeded and model.pt is written byte-reproducibly (torch names its archive records
    after the file it saves to: a random temporary name once), so a retrain with identical weights does
    not change DVC's hash and rerun every stage after it."""
    a = _train("cvae", preprocessed, tmp_path / "a", 2)
    b = _train("cvae", preprocessed, tmp_path / "b", 2)
    assert a["steps"] == b["steps"] == 2
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()


def test_divergence_guard_stops_with_a_clear_message(preprocessed, tmp_path, monkeypatch):
    from medsynth.models.base import DivergenceError
    from medsynth.models.cvae import CVAEModule

    real = CVAEModule.losses

    def poisoned(self, x, y, eps):
        out = real(self, x, y, eps)
        if int(self.iteration) >= 2:
            out["rec"] = out["rec"] * float("nan")
        return out

    monkeypatch.setattr(CVAEModule, "losses", poisoned)
    with pytest.raises(DivergenceError, match="became nan at step 2"):
        _train("cvae", preprocessed, tmp_path / "nan", 6)
    assert not (tmp_path / "nan" / "model.pt").exists()


def test_third_party_model_trains_through_the_registry(preprocessed, tmp_path):
    from medsynth.models import registry
    from medsynth.models.cvae import CVAEModule

    class ToyModule(CVAEModule):
        name = "toy"

    registry.register("toy", ToyModule)
    assert "toy" in registry.available()
    s = _train("toy", preprocessed, tmp_path / "toy", 2)
    assert s["model"] == "toy" and (tmp_path / "toy" / "model.pt").is_file()
    from medsynth.synth.sampler import load_sampler, sample_arrays

    imgs, masks, _ = sample_arrays(load_sampler(tmp_path / "toy"), "lesion", 3, seed=1)
    assert imgs.shape == (3, 16, 16, 16) and np.all(np.abs(imgs) <= 1)


PLUGIN = """
from pydantic import Field

from medsynth.config import CVAEConfig
from medsynth.models.cvae import CVAEModule


class ToyConfig(CVAEConfig):
    toy_scale: float = Field(1.0, gt=0)


class ToyModule(CVAEModule):
    name = "toy"
    config_class = ToyConfig

    def __init__(self, config, data_info, **kw):
        config = dict(config)
        scale = config.pop("toy_scale", 1.0)
        super().__init__(config, data_info, **kw)
        self.toy_scale = scale
"""


def test_plugin_model_installed_by_entry_point_runs_through_the_pipeline_scripts(preprocessed, tmp_path):
    """A plug-in package with a `medsynth.models` entry point: params.yaml holds its own section, checked
    by its config class at load (key, value, what is allowed), and the DVC stages' commands
    `pipelines/train.py toy` and `pipelines/synthesize.py toy` train and sample it."""
    import os
    import subprocess
    import sys

    import yaml

    from tests.conftest import ROOT

    site = tmp_path / "site"  # what `pip install toyplug` would leave: the package and its dist-info
    (site / "toyplug").mkdir(parents=True)
    (site / "toyplug" / "__init__.py").write_text(PLUGIN)
    (site / "toyplug-0.1.dist-info").mkdir()
    (site / "toyplug-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplug\nVersion: 0.1\n")
    (site / "toyplug-0.1.dist-info" / "entry_points.txt").write_text("[medsynth.models]\ntoy = toyplug:ToyModule\n")
    work = tmp_path / "project"
    (work / "data").mkdir(parents=True)
    (work / "data" / "preprocess").symlink_to(preprocessed)
    params = Params().model_dump(mode="json")
    params["preprocess"].update({"roi_size": [16, 16, 16], "spacing": [8.0, 8.0, 8.0]})
    params["train"].update({"models": ["toy"], "checkpoint_every": 2, "toy": {"steps": 2, "batch_size": 2, "base_channels": 4, "toy_scale": -1}})
    params["synthesize"].update({"per_condition": {"normal": 2, "lesion": 2}, "formats": ["nifti"]})
    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(script: str, name: str = "toy") -> subprocess.CompletedProcess:
        (work / "params.yaml").write_text(yaml.safe_dump(params))
        return subprocess.run([sys.executable, str(ROOT / "pipelines" / script), name], cwd=work, env=env, capture_output=True, text=True, timeout=600)

    bad = run("train.py")
    assert bad.returncode == 1 and "train.toy.toy_scale: -1 is not allowed" in " ".join(bad.stderr.split()), bad.stderr[-2000:]
    params["train"]["toy"]["toy_scale"] = 2.5
    res = run("train.py")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((work / "models" / "toy" / "train.json").read_text())
    assert summary["model"] == "toy" and summary["steps"] == 2 and summary["config"]["toy_scale"] == 2.5
    res = run("synthesize.py")
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list((work / "data" / "synth" / "toy" / "images").glob("*.nii.gz"))) == 4
    params["train"]["models"] = ["toy", "mygan"]  # not installed: named at load, with what is
    res = run("train.py")
    registered = "registered: cgan, counterfactual, cvae, toy, vaegan"
    assert res.returncode == 1 and f"train.models: 'mygan' is not a registered model; {registered}" in " ".join(res.stderr.split())


def test_synth_cli_uses_the_models_own_intensity_settings(demo_ingested, tmp_path, monkeypatch):
    import nibabel as nib
    from typer.testing import CliRunner

    from medsynth.cli import app
    from medsynth.data.preprocess import preprocess_cohort
    from medsynth.synth.sampler import load_sampler, sample_arrays

    cfg = Params().preprocess.model_copy(update={"roi_size": (16, 16, 16), "spacing": (8.0, 8.0, 8.0), "ct_window": (-100.0, 100.0)})
    preprocess_cohort(demo_ingested, tmp_path / "pre", cfg, 1, "lesion")
    _train("cvae", tmp_path / "pre", tmp_path / "m", 2)
    monkeypatch.chdir(tmp_path)  # no data/preprocess here: the window must come from the export
    res = CliRunner().invoke(app, ["synth", str(tmp_path / "m"), str(tmp_path / "out"), "-c", "lesion", "-n", "1", "--seed", "3"])
    assert res.exit_code == 0, res.output
    written = np.asarray(nib.load(tmp_path / "out" / "images" / "SYN-cvae-lesion-0000.nii.gz").dataobj)
    # synthesize() seeds case i of its first condition with seed * 100000 + i
    model_space, _, _ = sample_arrays(load_sampler(tmp_path / "m"), "lesion", 1, seed=300_000)
    assert np.allclose(written, (model_space[0] + 1) / 2 * 200.0 - 100.0, atol=1e-3)




def test_mask_conditioned_cgan_paints_the_given_masks(preprocessed, tmp_path):
    """cgan conditioning: mask (SPADE): trains on real (image, mask) pairs, resumes exactly, and samples one
    image per given mask -- the output mask is the given one, and a different mask gives a different image."""
    from medsynth.cohort import load_bank
    from medsynth.synth.sampler import load_sampler, sample_arrays, synthesize

    extra = {"conditioning": "mask"}
    train_tiny("cgan", preprocessed, tmp_path / "full", 4, extra=extra)
    train_tiny("cgan", preprocessed, tmp_path / "cut", 4, stop_after=2, extra=extra)
    train_tiny("cgan", preprocessed, tmp_path / "cut", 4, extra=extra)
    a, b = _weights(tmp_path / "full" / "model.pt"), _weights(tmp_path / "cut" / "model.pt")
    assert any("gamma" in k for k in a) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    s = load_sampler(tmp_path / "full")
    with pytest.raises(ValueError, match="conditioned on masks"):
        sample_arrays(s, "lesion", 2, seed=0)
    x, y, _ = load_bank(preprocessed, ("train",))
    masks = x[:, 1].round().to(torch.uint8).numpy()
    lesion = masks[(y == s.conditions.index("lesion")).numpy()]
    assert lesion.max() > 0
    img, out, _ = sample_arrays(s, "lesion", len(lesion), seed=3, masks=lesion)
    assert sorted(map(bytes, out)) == sorted(map(bytes, lesion))  # every given mask painted once
    empty = np.zeros_like(lesion[:1])
    img_empty, _, _ = sample_arrays(s, "lesion", 1, seed=3, masks=empty)
    img_mask, _, _ = sample_arrays(s, "lesion", 1, seed=3, masks=lesion[:1])
    assert not np.allclose(img_empty, img_mask)  # same noise, other mask: another image
    rows = synthesize(s, tmp_path / "syn", {"lesion": 2}, 0, 1.0, 4, masks={"lesion": lesion})
    sidecar = json.loads((tmp_path / "syn" / "sidecars" / f"{rows[0]['case_id']}.json").read_text())
    assert sidecar["mask_rule"] == "a given mask (mask-conditioned model)"


def test_pipeline_synthesize_stage_paints_train_masks_for_a_mask_conditioned_cgan(preprocessed, tmp_path, monkeypatch):
    import shutil
    import sys

    import yaml

    from tests.conftest import ROOT

    train_tiny("cgan", preprocessed, tmp_path / "models" / "cgan", 2, extra={"conditioning": "mask"})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "preprocess").symlink_to(preprocessed)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synthesize"].update({"per_condition": {"normal": 1, "lesion": 2}, "formats": ["nifti"]})
    params["preprocess"].update({"roi_size": [16, 16, 16], "spacing": [8.0, 8.0, 8.0]})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT / "pipelines"))
    sys.modules.pop("synthesize", None)
    import synthesize as stage

    typo = {**params, "synthesize": {**params["synthesize"], "per_condition": {"normal": 1, "lesions": 2}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(typo))
    assert stage.main(["cgan"]) == 1 and not (tmp_path / "data" / "synth").exists()  # named before any sampling
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert stage.main(["cgan"]) == 0
    out = tmp_path / "data" / "synth" / "cgan"
    written = sorted((out / "masks").glob("*lesion*.nii.gz"))
    assert len(written) == 2 and len(list((out / "masks").glob("*.nii.gz"))) == 3
    from medsynth.cohort import load_bank

    x, y, _ = load_bank(preprocessed, ("train",))
    lesion = json.loads((preprocessed / "preprocess.json").read_text())["conditions"].index("lesion")
    train_lesion = {bytes(m) for m in x[y == lesion, 1].round().to(torch.uint8).numpy()}
    import nibabel as nib

    assert all(bytes(np.asarray(nib.load(f).dataobj).astype(np.uint8)) in train_lesion for f in written)
    # medsynth synth --masks: another model's synthetic masks (here this stage's); only the asked condition's
    from typer.testing import CliRunner

    from medsynth.cli import app

    res = CliRunner().invoke(app, ["synth", str(tmp_path / "models" / "cgan"), str(tmp_path / "painted"), "-c", "lesion", "-n", "4",
                                   "--masks", str(out / "masks")])
    assert res.exit_code == 0, res.output
    lesion_masks = {bytes(np.asarray(nib.load(f).dataobj).astype(np.uint8)) for f in written}
    painted = sorted((tmp_path / "painted" / "masks").glob("*.nii.gz"))
    assert len(painted) == 4 and all(bytes(np.asarray(nib.load(f).dataobj).astype(np.uint8)) in lesion_masks for f in painted)
    for f in written:
        f.unlink()  # only normal masks left beside the manifest: nothing to paint a lesion case for
    res = CliRunner().invoke(app, ["synth", str(tmp_path / "models" / "cgan"), str(tmp_path / "p2"), "-c", "lesion", "-n", "1", "--masks", str(out / "masks")])
    assert res.exit_code == 2 and "no mask of condition 'lesion'" in " ".join(res.output.split())
    shutil.rmtree(out)


def test_vaegan_perceptual_loss_from_a_local_network_only(preprocessed, tmp_path):
    """perceptual_weight > 0 needs a local network (a clear error otherwise); with medsynth's own encoder or
    a TorchScript file it changes what the VAE-GAN learns, and the network stays out of the checkpoint."""
    from pydantic import ValidationError

    from medsynth.cohort import load_bank
    from medsynth.config import VAEGANConfig
    from medsynth.eval.encoder import save_encoder, train_encoder

    with pytest.raises(ValidationError, match="perceptual_network is not set"):
        VAEGANConfig(perceptual_weight=0.1)
    with pytest.raises(FileNotFoundError, match="train.vaegan.perceptual_network: .*missing.pt not found"):
        train_tiny("vaegan", preprocessed, tmp_path / "bad", 2, extra={"perceptual_weight": 0.1, "perceptual_network": str(tmp_path / "missing.pt")})
    x, _, _ = load_bank(preprocessed, ("train",))
    enc, _ = train_encoder(x.float(), steps=2, batch_size=4, dim=8, width=4, seed=0)
    save_encoder(enc, tmp_path / "encoder.pt", {})
    ts = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, stride=2), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten())
    torch.jit.trace(ts.eval(), torch.zeros(1, 1, 16, 16, 16)).save(str(tmp_path / "net.ts"))
    shutil.copy(tmp_path / "net.ts", tmp_path / "traced.pt")  # TorchScript is told by content, not by suffix
    train_tiny("vaegan", preprocessed, tmp_path / "plain", 3)
    plain = _weights(tmp_path / "plain" / "model.pt")
    pin = hashlib.sha256((tmp_path / "net.ts").read_bytes()).hexdigest()  # TorchScript is code: loaded only when pinned
    for net in ("encoder.pt", "net.ts", "traced.pt"):
        out = tmp_path / net.replace(".", "_")
        extra = {"perceptual_weight": 1.0, "perceptual_network": str(tmp_path / net),
                 "perceptual_sha256": None if net == "encoder.pt" else pin}
        train_tiny("vaegan", preprocessed, out, 3, extra=extra)
        w = _weights(out / "model.pt")
        assert any(not torch.allclose(w[k], plain[k]) for k in w), net
        ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
        assert not any("perceptual" in k for k in ckpt["state_dict"]), net


def test_mode_collapse_alarm_warns_and_is_recorded(preprocessed, tmp_path, monkeypatch):
    """A generator whose samples barely differ (diversity forced to 0.01 of real pairs) trips the alarm:
    a warning naming the step, and the alarms in train.json; a healthy value does not."""
    from medsynth.models.base import GenerativeModule

    monkeypatch.setattr(GenerativeModule, "diversity", lambda self, n=8: 0.01)
    with pytest.warns(UserWarning, match="possible mode collapse at step 2"):
        s = train_tiny("cgan", preprocessed, tmp_path / "collapsed", 4)
    assert [a["step"] for a in s["diversity_alarms"]] == [2, 4]  # the last step's alarm is not repeated at export
    with pytest.warns(UserWarning, match="what synthesis draws is 0.01x"):  # export judges the final weights too
        s = train_tiny("cgan", preprocessed, tmp_path / "collapsed5", 5)
    assert s["diversity_alarms"][-1] == {"step": 5, "diversity": 0.01, "at": "export"} and s["final_diversity"] == 0.01
    monkeypatch.setattr(GenerativeModule, "diversity", lambda self, n=8: 0.9)
    assert train_tiny("cgan", preprocessed, tmp_path / "healthy", 4)["diversity_alarms"] == []


def test_diversity_is_measured_within_a_condition_and_sees_collapse(preprocessed):
    """The alarm's signal: one case for every noise gives ~0 (even though the conditions differ from each
    other); real cases of the condition give ~1."""
    from medsynth.cohort import data_info_from, load_bank, read_preprocess_info
    from medsynth.models.cgan import CGANModule

    info = read_preprocess_info(preprocessed)
    x, y, _ = load_bank(preprocessed, ("train",))
    m = CGANModule({**Params().train.cgan.model_dump(), "base_channels": 4}, data_info_from(info), seed=1)
    m.attach_bank(x, y)
    m.on_fit_start()

    def one_case_per_condition(yy, z, *masks):
        first = [m._members[int(c)][0] for c in yy]
        return x[first, :1].float(), None

    def real_cases(yy, z, *masks):
        members = m._members[int(yy[0])][::-1]  # the condition's real cases, another order
        return x[[members[i % len(members)] for i in range(len(yy))], :1].float(), None

    m.g_ema.sample = one_case_per_condition
    assert m.diversity() < 0.01
    m.g_ema.sample = real_cases
    assert 0.6 < m.diversity() < 1.6


@pytest.fixture(scope="module")
def adrenal_32(tmp_path_factory):
    """200 real AdrenalMNIST3D cases (28^3 padded to 32^3), official splits, preprocessed."""
    from medsynth.data.preprocess import preprocess_cohort
    from medsynth.io.ingest import ingest_npz

    npz = shared("shapes", "adrenalmnist3d_28.npz")
    work = tmp_path_factory.mktemp("adrenal32")
    p = Params()
    ingest_npz(npz, work / "ingest", p.data.model_copy(update={"input": str(npz), "npz_max_cases": 200}), 0)
    pre = p.preprocess.model_copy(update={"roi_size": (32, 32, 32), "spacing": (1.0, 1.0, 1.0)})
    preprocess_cohort(work / "ingest", work / "pre", pre, 0, "lesion")
    return work / "pre"


def test_cvae_uses_its_latent_at_the_default_kl_weight(adrenal_32, tmp_path):
    """Posterior collapse (AdrenalMNIST3D at 32^3): with the KL weighted per case the encoder gives the
    prior and every sample looks alike. Per voxel (the default), prior samples are as
    diverse as real cases; the per-case weighting (an effective 1e-3 x 32^3 per voxel) collapses within 60 steps."""
    from medsynth.models.training import train_model

    p = Params()

    def diversity(kl_weight):
        # the standard prior: this is about the KL weighting (a 60-step encoder barely separates the cases yet,
        # so the fitted prior would draw near-copies of its few codes either way)
        # and lr 1e-3, at which the per-case weight collapses within 60 steps
        cfg = {**p.train.cvae.model_dump(), "steps": 60, "batch_size": 8, "base_channels": 4, "kl_weight": kl_weight,
               "latent_prior": "standard", "lr": 1e-3}
        return train_model("cvae", cfg, p.train.model_copy(update={"checkpoint_every": 1000}), adrenal_32,
                           tmp_path / str(kl_weight), seed=0, progress=False)["final_diversity"]

    default, old = diversity(p.train.cvae.kl_weight), diversity(1e-3 * 32**3)
    assert default > 1.0 and old < 0.5 and default > 3 * old, (default, old)


def test_adaptive_augmentation_is_identity_at_p0_and_follows_discriminator_overfitting(preprocessed):
    """ADA: p = 0 leaves batches untouched; p = 1 flips/shifts/cuts out (cutout fills with background, not
    a grey cube); p rises by (cases seen) / ada_images while D scores more than ada_target of real cases
    positive, falls otherwise, stays in [0, 1]; ada_target 0 is plain DiffAugment (p = 1, never adapted)."""
    from medsynth.cohort import data_info_from, load_bank, read_preprocess_info
    from medsynth.models.cgan import ADA_INTERVAL, CGANModule, diff_augment

    info = data_info_from(read_preprocess_info(preprocessed))
    x, y, _ = load_bank(preprocessed, ("train",))
    m = CGANModule({**Params().train.cgan.model_dump(), "base_channels": 4, "ada_images": 64}, info, seed=1)
    m.attach_bank(x, y)
    m.on_fit_start()
    real = m.joint(x[:6].float())
    assert torch.equal(diff_augment(real, torch.Generator().manual_seed(0), 0.0), real)
    aug = diff_augment(real, torch.Generator().manual_seed(0), torch.tensor(1.0))
    assert not torch.equal(aug, real)
    assert torch.allclose(aug[:, 1:].sum(1), torch.ones_like(aug[:, 1])), "every voxel keeps exactly one label"
    full = m.joint(torch.ones_like(x[:6]).float())  # all foreground: the cutout cube is the only background
    cut = diff_augment(full, torch.Generator().manual_seed(0), 1.0)
    side = x.shape[2] // 4
    assert ((cut[:, 1] == 1) & (cut[:, 0] == -1)).flatten(1).sum(1).tolist() == [side**3] * len(full)
    assert float(m.augment_p) == 0.0

    def run(d_real_value: float, iterations: int) -> list[float]:
        ps = []
        for _ in range(iterations):
            m._adapt_augmentation(torch.full((8,), d_real_value))
            m._step += 1
            ps.append(float(m.augment_p))
        return ps

    ps = run(2.0, 3 * ADA_INTERVAL)  # D scores every real case positive: memorising
    assert ps[ADA_INTERVAL - 1] == pytest.approx(8 * ADA_INTERVAL / 64) and ps[-1] == pytest.approx(1.0)
    assert float(m.ada_rt) == 1.0
    assert run(-1.0, 4 * ADA_INTERVAL)[-1] == 0.0  # a D that no longer tells reals apart: augmentation off
    fixed = CGANModule({**Params().train.cgan.model_dump(), "base_channels": 4, "ada_target": 0}, info, seed=1)
    assert float(fixed.augment_p) == 1.0


def test_noise_sensitivity_is_zero_for_a_generator_that_ignores_its_noise():
    """The mode-seeking term's measure: 0 when every noise gives the same case (the term 1/(s + eps) is then
    huge), the sample change per unit of noise change otherwise."""
    from medsynth.models.base import mode_seeking_loss, noise_sensitivity

    same = torch.zeros(4, 3, 8, 8, 8)
    za, zb = torch.zeros(4, 16), torch.ones(4, 16)
    assert float(noise_sensitivity(same, same, za, zb)) == 0.0
    assert float(noise_sensitivity(same, same + 0.5, za, zb * 2)) == pytest.approx(0.25)
    loss, s = mode_seeking_loss(same, same + 0.5, za, zb * 2, weight=0.01)
    assert float(s) == pytest.approx(0.25) and float(loss) == pytest.approx(0.01 / (0.25 + 1e-5))
    assert float(mode_seeking_loss(same, same, za, zb, weight=0.01)[0]) == pytest.approx(1000.0)  # bounded by the floor


def test_a_checkpoint_of_other_settings_is_not_resumed(preprocessed, tmp_path):
    """dvc repro after a params change reruns train with the persisted checkpoints still there: a checkpoint
    written under another learning rate (or by another version of the network) must not be continued;
    the run starts afresh and says why. Raising ``steps`` alone still resumes; lowering it retrains."""
    cut = tmp_path / "cut"
    _train("cgan", preprocessed, cut, 4, stop_after=2)
    s = _train("cgan", preprocessed, cut, 6)  # only steps changed: resumed
    assert "fresh_start" not in s
    with pytest.warns(UserWarning, match=r"not resumed, written under other settings \(lr_g: 0.0002 -> 0.0001\)"):
        s = _train("cgan", preprocessed, cut, 6, extra={"lr_g": 1e-4})
    assert "lr_g" in s["fresh_start"] and s["steps"] == 6
    _train("cgan", preprocessed, tmp_path / "fresh", 6, extra={"lr_g": 1e-4})
    a, b = _weights(cut / "model.pt"), _weights(tmp_path / "fresh" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a), "the fresh start equals a run that never saw the other settings' checkpoint"
    blob = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)  # another version of the network
    blob["state_dict"] = {k: v for k, v in blob["state_dict"].items() if "head" not in k}
    torch.save(blob, cut / "checkpoints" / "last.ckpt")
    with pytest.warns(UserWarning, match="another version of the network"):
        assert _train("cgan", preprocessed, cut, 7, extra={"lr_g": 1e-4})["steps"] == 7
    # fewer steps than the checkpoint holds (its last one: step 6, dvc exp run -S train.cgan.steps=4): retrained, not exported at step 6
    with pytest.warns(UserWarning, match=r"not resumed, at step 6, beyond steps = 4 \(steps was lowered\)"):
        s = _train("cgan", preprocessed, cut, 4, extra={"lr_g": 1e-4})
    assert s["steps"] == 4 and "steps was lowered" in s["fresh_start"] and s["config"]["steps"] == 4
    _train("cgan", preprocessed, tmp_path / "fresh4", 4, extra={"lr_g": 1e-4})
    a, b = _weights(cut / "model.pt"), _weights(tmp_path / "fresh4" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a), "retrained: the very weights of a 4-step run from scratch"


def test_vaegan_prior_adversarial_shows_prior_samples_to_the_discriminator(preprocessed, tmp_path, monkeypatch):
    """With prior_adversarial the discriminator judges samples decoded from the prior as well as
    reconstructions (2 more calls per step: one in its own step, one in the VAE step), and training runs."""
    from medsynth.models.blocks import ProjectionDiscriminator

    calls = []
    forward = ProjectionDiscriminator.forward
    monkeypatch.setattr(ProjectionDiscriminator, "forward", lambda self, x, y: calls.append(len(x)) or forward(self, x, y))
    train_tiny("vaegan", preprocessed, tmp_path / "plain", 2, extra={"prior_adversarial": False, "adv_start": 0})
    plain, calls[:] = len(calls), []
    s = train_tiny("vaegan", preprocessed, tmp_path / "prior", 2, extra={"prior_adversarial": True, "adv_start": 0})
    assert s["steps"] == 2 and len(calls) == plain + 2 * 2


def test_cvae_encoder_log_variance_is_bounded_but_never_stuck():
    """A log-variance that overshoots (e.g. before the KL weight has annealed in) must still feel the KL
    gradient: a hard clamp at +-10 leaves such latent dimensions at sigma = e^5 for good, which on
    AdrenalMNIST3D holds the KL at 22,000 nats while the decoder ignores the latent."""
    from medsynth.models.cvae import Encoder

    enc = Encoder(3, 2, latent=4, base=4, size=16)
    torch.nn.init.constant_(enc.logvar.bias, 40.0)  # far beyond the bound
    x, y = torch.randn(2, 3, 16, 16, 16), torch.tensor([0, 1])
    mu, logvar = enc(x, y)
    assert float(logvar.max()) <= 10.0 and float(logvar.min()) > 9.0  # bounded
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum()
    kl.backward()
    assert float(enc.logvar.bias.grad.min()) > 0  # and the KL still pulls every dimension back


def test_vaegan_mode_seeking_and_minibatch_std(preprocessed, tmp_path, monkeypatch):
    """mode_seeking > 0: every step decodes two prior draws for the first half's conditions and pays
    1 / their noise sensitivity; minibatch_std adds the batch-spread channel to the discriminator."""
    import medsynth.models.vaegan as vaegan

    seen = []
    real = vaegan.mode_seeking_loss
    monkeypatch.setattr(vaegan, "mode_seeking_loss",
                        lambda fa, fb, za, zb, w: seen.append((fa.shape, float((za - zb).abs().mean()))) or real(fa, fb, za, zb, w))
    s = train_tiny("vaegan", preprocessed, tmp_path / "ms", 2, extra={"mode_seeking": 0.001, "minibatch_std": True})
    assert s["steps"] == 2 and len(seen) == 2
    assert set(s["latent_prior"]) == {"normal", "lesion"}  # the conv VAE-GAN fits its latent prior as the cVAE does
    assert all(shape[0] == 1 and dz > 0.1 for shape, dz in seen)  # batch 2 in the tiny config: half = 1 case, two draws
    seen.clear()
    train_tiny("vaegan", preprocessed, tmp_path / "plain", 1, extra={"mode_seeking": 0.0})
    assert not seen
    m = vaegan.VAEGANModule({**Params().train.vaegan.model_dump(), "minibatch_std": True, "base_channels": 4},
                            {"conditions": ["normal", "lesion"], "n_mask_labels": 1, "roi_size": [16, 16, 16]})
    assert m.discriminator.minibatch_std


def test_cgan_upsamples_trilinearly_and_old_exports_keep_nearest(tmp_path):
    """The generator upsamples trilinearly by default (nearest left a background speckle); a model exported
    in format 1, before the setting existed, was trained with nearest and is rebuilt that way for sampling;
    a format newer than this medsynth reads is refused, naming the file."""
    from medsynth.models.cgan import CGANModule
    from medsynth.models.export_format import EXPORT_FORMAT, ExportFormatError
    from medsynth.synth.sampler import load_sampler

    cfg = Params().train.cgan.model_dump(mode="json")
    info = {"conditions": ["normal", "lesion"], "n_mask_labels": 1, "roi_size": [16, 16, 16]}
    new = CGANModule.build_sampler(cfg, info)
    old_cfg = {k: v for k, v in cfg.items() if k != "upsample"}
    torch.save({"kind": "cgan", "config": old_cfg, "data_info": info, "state_dict": new.state_dict()}, tmp_path / "old.pt")
    old = load_sampler(tmp_path / "old.pt")
    assert [b.upsample for b in new.ups] == ["trilinear"] * 2 and [b.upsample for b in old.net.ups] == ["nearest"] * 2
    assert old.config["upsample"] == "nearest"
    torch.save({"format": EXPORT_FORMAT + 1, "kind": "cgan", "config": cfg, "data_info": info, "state_dict": new.state_dict()}, tmp_path / "new.pt")
    with pytest.raises(ExportFormatError, match=rf"new.pt: exported in model format {EXPORT_FORMAT + 1}; this medsynth reads up to format"):
        load_sampler(tmp_path / "new.pt")
    x = torch.zeros(1, 1, 2, 2, 2)
    x[0, 0, 0, 0, 0] = 1.0
    from medsynth.models.blocks import upsample2

    assert upsample2(x, "nearest")[0, 0, :2, :2, :2].eq(1).all() and 0 < float(upsample2(x, "trilinear")[0, 0, 2, 2, 2]) < 1


def test_latent_prior_fits_each_condition_and_keeps_rare_ones_standard():
    """The fitted prior reproduces a condition's code distribution (mean, covariance shrunk towards its
    diagonal); a condition with fewer than min_cases gets the fit of all codes (pooled), and N(0, I) only when
    all codes together are fewer than min_cases; sampling maps noise through it."""
    from medsynth.models.blocks import LatentPrior

    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g)
    true_cov = a @ a.T + torch.eye(4)
    codes0 = torch.tensor([3.0, -1.0, 0.5, 2.0]) + torch.randn(4000, 4, generator=g) @ torch.linalg.cholesky(true_cov).T
    codes = torch.cat([codes0, torch.randn(5, 4, generator=g) * 7])  # condition 1: five cases only
    y = torch.tensor([0] * 4000 + [1] * 5)
    prior = LatentPrior(2, 4)
    report = prior.fit(codes, y, shrinkage=0.1, min_cases=10)
    assert report[0]["prior"] == "fitted" and report[0]["cases"] == 4000
    assert report[1]["prior"].startswith("pooled") and report[1]["cases"] == 5
    assert torch.allclose(prior.mean[0], codes0.mean(0), atol=1e-5)
    fitted_cov = prior.scale_tril[0] @ prior.scale_tril[0].T
    emp = torch.cov(codes0.T)
    assert torch.allclose(fitted_cov, 0.9 * emp + 0.1 * torch.diag(torch.diag(emp)), rtol=1e-3, atol=1e-3)
    assert torch.allclose(prior.mean[1], codes.mean(0), atol=1e-5)  # the rare condition: all codes' distribution
    e = torch.randn(20000, 4, generator=g)
    z = prior(e, torch.zeros(20000, dtype=torch.long))
    assert torch.allclose(torch.cov(z.T), fitted_cov, rtol=0.1, atol=0.1)
    report = prior.fit(codes, y, shrinkage=0.1, min_cases=5000)  # fewer codes than min_cases in all: N(0, I)
    assert all(r["prior"].startswith("standard") for r in report.values())
    assert prior.mean.eq(0).all() and torch.equal(prior.scale_tril[1], torch.eye(4))
    assert torch.equal(prior(e[:3], torch.ones(3, dtype=torch.long)), e[:3])  # standard: the noise itself
    prior.fit(codes, y, shrinkage=1.0, min_cases=10)  # full shrinkage: independent dimensions
    off = prior.scale_tril[0] - torch.diag(torch.diag(prior.scale_tril[0]))
    assert float(off.abs().max()) == 0.0


def test_cvae_fits_its_latent_prior_at_export_and_old_exports_sample_the_standard_prior(preprocessed, tmp_path):
    """Training ends by fitting the decoder's latent prior to the encoder's codes of the training cases:
    train.json says per condition how, model.pt carries it, sampling uses it; a model exported before
    the setting existed (no prior tensors) loads and samples N(0, I); latent_prior: standard exports none."""
    from medsynth.synth.sampler import load_sampler, sample_arrays

    s = train_tiny("cvae", preprocessed, tmp_path / "fitted", 2, extra={"prior_min_cases": 2})
    assert set(s["latent_prior"]) == set(s["train_by_condition"])
    for c, v in s["latent_prior"].items():  # the demo's training split: 4 normal cases, 1 lesion case
        assert v["cases"] == s["train_by_condition"][c] and (v["prior"] == "fitted") == (v["cases"] >= 2)
    assert s["latent_prior"]["normal"]["prior"] == "fitted" and s["latent_prior"]["lesion"]["prior"].startswith("pooled")
    assert "diversity_standard_prior" in s
    # the alarm also judges what synthesis draws: the fitted prior's diversity at export
    fitted_alarms = [a for a in s["diversity_alarms"] if a.get("at") == "export"]
    assert all(a["prior"] == "fitted" for a in fitted_alarms)
    assert bool(fitted_alarms) == (s["final_diversity"] < Params().train.diversity_alarm)
    assert all(a["diversity"] == s["final_diversity"] and a["step"] == 2 for a in fitted_alarms)
    blob = torch.load(tmp_path / "fitted" / "model.pt", weights_only=True)
    assert blob["config"]["latent_prior"] == "fitted" and not blob["state_dict"]["prior.mean"].eq(0).all()
    sampler = load_sampler(tmp_path / "fitted")
    assert sampler.net.prior is not None and torch.equal(sampler.net.prior.mean, blob["state_dict"]["prior.mean"])
    imgs, _, _ = sample_arrays(sampler, "lesion", 2, seed=0)
    assert np.isfinite(imgs).all()
    # the prior's settings are read at export only: changing one refits it from the same weights, no retraining
    before = {k: v for k, v in blob["state_dict"].items() if not k.startswith("prior.")}
    s2 = train_tiny("cvae", preprocessed, tmp_path / "fitted", 2, extra={"prior_min_cases": 2, "prior_shrinkage": 1.0})
    assert "fresh_start" not in s2 and s2["steps"] == 2
    blob2 = torch.load(tmp_path / "fitted" / "model.pt", weights_only=True)
    assert all(torch.equal(v, blob2["state_dict"][k]) for k, v in before.items())
    normal = sampler.conditions.index("normal")  # the fitted condition
    tril = blob2["state_dict"]["prior.scale_tril"][normal]
    assert torch.equal(tril, torch.diag(torch.diag(tril))) and not torch.equal(tril, blob["state_dict"]["prior.scale_tril"][normal])  # shrunk to its diagonal
    # an export from before latent_prior (format 1): no key in the config, no prior tensors
    assert blob["format"] == 2
    old_cfg = {k: v for k, v in blob["config"].items() if k not in ("latent_prior", "prior_shrinkage", "prior_min_cases")}
    torch.save({"kind": "cvae", "config": old_cfg, "data_info": blob["data_info"],
                "state_dict": {k: v for k, v in blob["state_dict"].items() if not k.startswith("prior.")}}, tmp_path / "old.pt")
    old = load_sampler(tmp_path / "old.pt")
    assert old.net.prior is None and old.config["latent_prior"] == "standard"
    assert np.isfinite(sample_arrays(old, "lesion", 2, seed=0)[0]).all()
    s = train_tiny("cvae", preprocessed, tmp_path / "standard", 1, extra={"latent_prior": "standard"})
    assert "latent_prior" not in s
    assert not any(k.startswith("prior.") for k in torch.load(tmp_path / "standard" / "model.pt", weights_only=True)["state_dict"])


def test_cvae_free_bits_stop_the_kl_pushing_dimensions_below_the_floor():
    """free_bits: the penalised KL is sum_d max(KL_d, free_bits) with KL_d the batch mean per latent
    dimension, so a dimension under the floor gets no KL gradient; 0 (the default) is the plain KL."""
    from medsynth.models.cvae import CVAEModule

    info = {"conditions": ["normal", "lesion"], "n_mask_labels": 1, "roi_size": [16, 16, 16]}
    x = torch.cat([torch.rand(4, 1, 16, 16, 16) * 2 - 1, (torch.rand(4, 1, 16, 16, 16) > 0.7).float()], 1)
    y, eps = torch.tensor([0, 1, 0, 1]), torch.randn(4, 8)
    for free_bits in (0.0, 1e6):
        torch.manual_seed(0)
        m = CVAEModule({**Params().train.cvae.model_dump(), "base_channels": 4, "latent_dim": 8, "free_bits": free_bits}, info)
        out = m.losses(x, y, eps)
        if free_bits == 0:
            assert torch.equal(out["kl_penalised"], out["kl"])
        else:
            assert float(out["kl_penalised"]) == pytest.approx(8 * free_bits) and float(out["kl"]) < 8 * free_bits
            out["kl_penalised"].backward()
            assert m.encoder.mu.weight.grad is None or float(m.encoder.mu.weight.grad.abs().max()) == 0.0


def test_vaegan_autoencoderkl_backbone_trains_and_keeps_the_standard_prior(preprocessed, tmp_path):
    """The MONAI-recipe backbone (spatial latent) goes through the same VAE step as the conv one (its KL is
    penalised whole: free bits are per latent dimension of the conv encoder) and exports no fitted prior."""
    s = train_tiny("vaegan", preprocessed, tmp_path / "akl", 2, extra={
        "backbone": "autoencoderkl", "kl_channels": (8, 16), "attention_levels": (False, False), "norm_num_groups": 4,
        "disc_channels": 8, "disc_layers": 1})
    assert s["steps"] == 2 and "latent_prior" not in s and np.isfinite(s["final_diversity"])
    blob = torch.load(tmp_path / "akl" / "model.pt", weights_only=True)
    assert not any(k.startswith("prior.") for k in blob["state_dict"])
