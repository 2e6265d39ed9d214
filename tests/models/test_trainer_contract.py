"""The training contract (medsynth.models.contract): a plug-in that implements only TrainableModule trains;
one that does not is refused before training, naming what it lacks; the built-in models provide every
capability; the callbacks train_model attaches log the sample images and diversity at their cadence."""

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch import nn

from medsynth.config import Params


def _train(name, pre, out, model_cfg, logger=None, stop_after=None):
    from medsynth.models.training import train_model

    train_cfg = Params().train.model_copy(update={"checkpoint_every": 2})
    return train_model(name, model_cfg, train_cfg, pre, out, seed=5, logger=logger, progress=False, stop_after=stop_after)


class _Lightning(L.LightningModule):
    """A LightningModule with an iteration counter and nothing of medsynth."""

    def __init__(self, config, data_info, *, seed, log_every, image_every):
        super().__init__()
        self.net = nn.Linear(1, 1)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.bank = None

    def training_step(self, batch, batch_idx):
        self.iteration += 1
        return (self.net(self.bank.to(self.device)) - 1).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class MinimalModule(_Lightning):
    """A plug-in with nothing of GenerativeModule: only what TrainableModule names, plus Lightning's own."""

    @property
    def sampler(self):
        return self.net

    def attach_bank(self, x, y):
        self.bank = x[:, :1].float().flatten(1).mean(1, keepdim=True)

    def export(self):
        return {"kind": "minimal", "iteration": int(self.iteration), "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}}


class WithoutBankAndExport(_Lightning):
    @property
    def sampler(self):
        return self.net


class WithoutSampler(_Lightning):
    def attach_bank(self, x, y):
        pass

    def export(self):
        return {}


class NotLightning(nn.Module):
    def __init__(self, config, data_info, **kw):
        super().__init__()


def test_a_plugin_with_only_the_trainable_contract_trains_exports_and_resumes(preprocessed, tmp_path):
    from medsynth.models import registry

    registry.register("minimal", MinimalModule)
    s = _train("minimal", preprocessed, tmp_path / "m", {"steps": 3})
    assert s["model"] == "minimal" and s["steps"] == 3 and s["sampler_parameters"] == 2
    assert s["train_seconds"] == s["wall_seconds"]  # no TimedTraining: this run's time
    assert "final_diversity" not in s and "diversity_alarms" not in s  # not DiversityMonitored: no alarm
    exported = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert exported["kind"] == "minimal" and exported["iteration"] == 3
    assert (tmp_path / "m" / "checkpoints" / "last.ckpt").is_file()
    s = _train("minimal", preprocessed, tmp_path / "m", {"steps": 5})  # no run signature: resumed because the weights fit
    assert s["steps"] == 5 and "fresh_start" not in s
    assert torch.load(tmp_path / "m" / "model.pt", weights_only=True)["iteration"] == 5


@pytest.mark.parametrize(("cls", "message"), [
    (WithoutBankAndExport, r"model 'incomplete' \(.*WithoutBankAndExport\) lacks attach_bank, export of medsynth.models.contract.TrainableModule"),
    (WithoutSampler, r"lacks sampler of medsynth.models.contract.TrainableModule"),
    (NotLightning, r"model 'incomplete' \(.*NotLightning\) is not a lightning.LightningModule"),
])
def test_a_plugin_that_lacks_part_of_the_contract_is_refused_before_training(cls, message, preprocessed, tmp_path):
    from medsynth.models import registry
    from medsynth.models.contract import ModelContractError

    registry.register("incomplete", cls)
    with pytest.raises(ModelContractError, match=message):
        _train("incomplete", preprocessed, tmp_path / "x", {"steps": 2})
    assert not (tmp_path / "x" / "checkpoints").exists() and not (tmp_path / "x" / "model.pt").exists()


def test_every_built_in_model_provides_every_capability(preprocessed):
    from medsynth.cohort import data_info_from, read_preprocess_info
    from medsynth.models import contract, registry

    info = data_info_from(read_preprocess_info(preprocessed))
    capabilities = [contract.TrainableModule, contract.Accelerable, contract.SignedRun, contract.TimedTraining, contract.PreparesExport,
                    contract.ReportsSummary, contract.DiversityMonitored, contract.DrawsSampleImages]
    for name in ("cgan", "cvae"):
        cfg = {**getattr(Params().train, name).model_dump(), "base_channels": 4}
        m = registry.get(name)(cfg, info, seed=0, log_every=1, image_every=2)
        assert [c.__name__ for c in capabilities if not isinstance(m, c)] == [], name
    assert contract.missing_members(MinimalModule({}, info, seed=0, log_every=1, image_every=1), contract.DiversityMonitored) == [
        "diversity", "diversity_alarms", "export_sampling", "name", "step_index"]


class RecordingLogger(Logger):
    """A Lightning logger whose experiment takes images, as DVCLive's does."""

    def __init__(self):
        super().__init__()
        self.images, self.metrics = [], []

    name = "recording"
    version = 0

    @property
    def experiment(self):
        return self

    def log_image(self, name, val):
        self.images.append((name, val))

    def log_metrics(self, metrics, step=None):
        self.metrics.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_sample_images_and_diversity_are_logged_every_checkpoint_step(preprocessed, tmp_path, monkeypatch):
    from medsynth.models.base import GenerativeModule

    monkeypatch.setattr(GenerativeModule, "diversity", lambda self, n=8: 0.5)
    rec = RecordingLogger()
    cfg = {**Params().train.cgan.model_dump(), "steps": 4, "batch_size": 2, "base_channels": 4}
    _train("cgan", preprocessed, tmp_path / "cgan", cfg, logger=lambda resume: rec)
    assert [n for n, _ in rec.images] == ["samples/step_000002.png", "samples/step_000004.png"]
    img = rec.images[0][1]
    assert img.dtype == np.uint8 and img.shape == (16, 2 * 16)  # one 16^3 case's middle slice per condition
    assert {m["diversity"] for m in rec.metrics if "diversity" in m} == {0.5}  # logged as the metric "diversity"


def test_a_resumed_run_keeps_the_alarm_raised_at_its_checkpoint_step(preprocessed, tmp_path, monkeypatch):
    """The alarm runs before the checkpoint of its step is written, so a run interrupted there and resumed
    lists the same alarms as one that was not."""
    from medsynth.models.base import GenerativeModule

    monkeypatch.setattr(GenerativeModule, "diversity", lambda self, n=8: 0.01)
    cfg = {**Params().train.cvae.model_dump(), "steps": 4, "batch_size": 2, "base_channels": 4}
    with pytest.warns(UserWarning, match="possible mode collapse at step 2"):
        _train("cvae", preprocessed, tmp_path / "cut", cfg, stop_after=2)
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)["medsynth_diversity_alarms"] == [
        {"step": 2, "diversity": 0.01}]
    with pytest.warns(UserWarning, match="possible mode collapse at step 4"):
        s = _train("cvae", preprocessed, tmp_path / "cut", cfg)
    assert [a["step"] for a in s["diversity_alarms"] if "at" not in a] == [2, 4]
