"""The train stages' Lightning logger: DVCLive, writing ``dvclive/<model>/`` (metrics.json, the curves'
TSV files under plots/metrics). It lives in the pipeline layer: the library's ``train_model`` takes a
logger factory and imports nothing of DVC or DVCLive.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn


def git_without_commit() -> bool:
    """The working directory is in a git repository whose HEAD names no commit yet."""
    from scmrepo.exceptions import SCMError
    from scmrepo.git import Git

    try:
        scm = Git()
    except SCMError:
        return False
    try:
        return scm.no_commits
    finally:
        scm.close()


@contextlib.contextmanager
def _no_dvc_repo():
    """DVCLive sees no DVC repository (it then logs plain files, as outside git)."""
    import dvclive.live

    found = dvclive.live.get_dvc_repo
    dvclive.live.get_dvc_repo = lambda: None
    try:
        yield
    finally:
        dvclive.live.get_dvc_repo = found


def dvclive_logger(live_dir: Path, resume: bool):
    """DVCLive's Lightning logger, with one row per step in every curve. In a git repository without a
    commit DVCLive would fail asking for the HEAD revision: there it logs as outside git, with a warning.
    Two mends, both found by the resume test in tests/test_pipeline.py:

    * dvclive 3.x reads ``step=0`` as "no step given" (``if step:`` in ``dvclive.fabric``) and files it
      under the previous step + 1: steps 0 and 1 both appeared as step 1;
    * a run resumed from a checkpoint first replays the last metrics Lightning restored with it, and a
      run resumed after an interruption logs again the steps between its checkpoint and the
      interruption: both repeated rows already in the curves. A step at or below the last one logged
      (in this process or, on resume, in the curves' metrics.json) is dropped; training is exactly
      resumable (tests/test_core.py), so those rows hold the same values.

    ``resume``: training continues from a checkpoint, so the curves are appended to (else they restart)."""
    from dvclive.lightning import DVCLiveLogger

    without_commit = git_without_commit()
    if without_commit:
        rank_zero_warn("git repository without a commit: DVCLive logs without a baseline revision (commit to compare runs "
                       "with dvc exp show)")

    class _Logger(DVCLiveLogger):
        _last_step: int | None = None

        @property
        def experiment(self):
            if self._experiment is None and without_commit:
                with _no_dvc_repo():  # DVCLive asks git for the HEAD revision, which an empty repository lacks
                    return super().experiment
            return super().experiment

        def log_metrics(self, metrics, step=None, sync=False):
            if self._last_step is None:
                self._last_step = int((self.experiment.read_latest() if resume else {}).get("step", -1))
            if step is not None:
                if step <= self._last_step:
                    return
                self._last_step = step
            if step == 0:
                self.experiment.step = -1  # the parent advances a missing step by one: to 0
                step = None
            super().log_metrics(metrics, step, sync)

    return _Logger(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None, resume=resume)
