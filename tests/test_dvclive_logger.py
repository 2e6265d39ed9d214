"""The training logger in a project whose git repository has no commit yet (``git init``, ``dvc init``)."""

from __future__ import annotations

import json

import pytest
from dvc.repo import Repo
from scmrepo.git import Git

from medsynth.models.training import _dvclive_logger, _git_without_commit


def test_logger_works_in_git_repository_without_commit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not _git_without_commit()  # no repository at all
    Git.init(str(tmp_path)).close()
    Repo.init(str(tmp_path)).close()
    assert _git_without_commit()
    live_dir = tmp_path / "dvclive" / "cgan"
    with pytest.warns(UserWarning, match="git repository without a commit"):
        logger = _dvclive_logger(live_dir, resume=False)
    logger.log_metrics({"loss": 0.5}, step=0)
    logger.log_metrics({"loss": 0.25}, step=1)
    logger.finalize("success")
    assert json.loads((live_dir / "metrics.json").read_text()) == {"loss": 0.25, "step": 1}
    assert (live_dir / "plots/metrics/loss.tsv").read_text().splitlines() == ["step\tloss", "0\t0.5", "1\t0.25"]
    assert _git_without_commit()  # nothing was committed or saved as an experiment
