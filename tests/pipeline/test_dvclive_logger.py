"""The train stages' DVCLive logger (pipelines/dvclive_logger.py), and the library's train_model taking
a logger factory instead of knowing DVCLive."""

from __future__ import annotations

import importlib.util
import json

import pytest
from dvc.repo import Repo
from scmrepo.git import Git

from tests.conftest import ROOT


def _load(name: str):
    """A pipelines/ module by its file (the stage scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"medsynth_stage_{name}", ROOT / "pipelines" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


live = _load("dvclive_logger")


def test_logger_works_in_git_repository_without_commit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not live.git_without_commit()  # no repository at all
    Git.init(str(tmp_path)).close()
    Repo.init(str(tmp_path)).close()
    assert live.git_without_commit()
    live_dir = tmp_path / "dvclive" / "cgan"
    with pytest.warns(UserWarning, match="git repository without a commit"):
        logger = live.dvclive_logger(live_dir, resume=False)
    logger.log_metrics({"loss": 0.5}, step=0)
    logger.log_metrics({"loss": 0.25}, step=1)
    logger.finalize("success")
    assert json.loads((live_dir / "metrics.json").read_text()) == {"loss": 0.25, "step": 1}
    assert (live_dir / "plots/metrics/loss.tsv").read_text().splitlines() == ["step\tloss", "0\t0.5", "1\t0.25"]
    assert live.git_without_commit()  # nothing was committed or saved as an experiment


def test_train_model_logs_through_the_factory_it_is_given(preprocessed, tmp_path):
    """train_model calls the factory with whether it resumes (False on a first run, True after), logs the
    module's metrics through what it returns, and imports nothing of DVC itself."""
    import subprocess
    import sys

    from lightning.pytorch.loggers import CSVLogger

    from medsynth.config import Params
    from medsynth.models.training import train_model

    p = Params()
    cfg = {**p.train.cvae.model_dump(), "steps": 2, "batch_size": 2, "base_channels": 4}
    tc = p.train.model_copy(update={"checkpoint_every": 1, "log_every": 1})
    calls = []

    def factory(resume: bool):
        calls.append(resume)
        return CSVLogger(str(tmp_path / "logs"), name="cvae", version=len(calls))

    train_model("cvae", cfg, tc, preprocessed, tmp_path / "m", seed=5, logger=factory, progress=False)
    train_model("cvae", {**cfg, "steps": 3}, tc, preprocessed, tmp_path / "m", seed=5, logger=factory, progress=False)
    assert calls == [False, True]
    rows = (tmp_path / "logs/cvae/version_1/metrics.csv").read_text().splitlines()
    assert len(rows) >= 3 and "step" in rows[0]  # a header and one row per logged step
    code = "import sys, medsynth.models.training; print(sorted(m for m in sys.modules if m.split('.')[0] in ('dvc', 'dvclive', 'scmrepo')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    assert out == "[]", out
