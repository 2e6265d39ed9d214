from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def shared(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not present: the shared real-data folder (../shared/data) is needed for this test")
    return p


@pytest.fixture(scope="session")
def demo_cohort(tmp_path_factory) -> Path:
    """A small demo cohort written once per session (fake PHI, DICOM + NIfTI + bad files)."""
    from medsynth.config import DemoConfig
    from medsynth.data.demo import generate_demo_cohort

    out = tmp_path_factory.mktemp("demo") / "raw"
    generate_demo_cohort(out, DemoConfig(patients=12, rare_fraction=0.34, nifti_cases=2, compressed_cases=2), seed=7)
    return out


@pytest.fixture(scope="session")
def demo_ingested(demo_cohort, tmp_path_factory) -> Path:
    from medsynth.config import Params
    from medsynth.io.deid import load_key
    from medsynth.io.ingest import ingest

    p = Params()
    out = tmp_path_factory.mktemp("ingest")
    ingest(demo_cohort, out, p.data, p.deid, load_key(p.deid, demo=True), labels_path=demo_cohort / "labels.csv", workers=1)
    return out


def copy_series(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def preprocessed(demo_ingested, tmp_path_factory) -> Path:
    """The demo cohort preprocessed at 16^3 (8 mm) once per session."""
    from medsynth.config import Params
    from medsynth.data.preprocess import preprocess_cohort

    out = tmp_path_factory.mktemp("pre")
    cfg = Params().preprocess.model_copy(update={"roi_size": (16, 16, 16), "spacing": (8.0, 8.0, 8.0)})
    preprocess_cohort(demo_ingested, out, cfg, 1, "lesion")
    return out


def train_tiny(name, pre, out, steps, stop_after=None, extra=None):
    """Train ``name`` for a few steps at a tiny width on CPU (checkpoints every 2 steps)."""
    from medsynth.config import Params
    from medsynth.models.training import train_model

    p = Params()
    cfg = getattr(p.train, name, p.train.cvae).model_dump()
    cfg.update({"steps": steps, "batch_size": 2, "base_channels": 4}, **(extra or {}))
    return train_model(name, cfg, p.train.model_copy(update={"checkpoint_every": 2}), pre, out, seed=5, progress=False, stop_after=stop_after)


@pytest.fixture(scope="session")
def trained_cvae(preprocessed, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cvae")
    train_tiny("cvae", preprocessed, out, 3)
    return out
