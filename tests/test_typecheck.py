"""medsynth/ passes mypy under the project's configuration (pyproject.toml [tool.mypy]: the pydantic plugin,
check_untyped_defs, and the modules still to be typed listed there). The cache is mypy's own, ``.mypy_cache``
in the repository (git-ignored): a first run takes about a minute and a half on 2 cores, later ones seconds."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.timeout(600)
def test_mypy_finds_nothing():
    res = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
