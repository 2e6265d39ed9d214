"""Multi-process training: two DDP processes on CPU (gloo), launched the way `dvc repro` launches a
train stage with `train.devices: 2, train.strategy: ddp` -- one script that Lightning re-executes per rank."""

import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

DRIVER = textwrap.dedent('''
    import sys
    from pathlib import Path
    from medsynth.config import Params
    from medsynth.models.training import train_model

    name, pre, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    p = Params()
    cfg = getattr(p.train, name).model_dump()
    cfg.update({"steps": 4, "batch_size": 2, "base_channels": 4})
    tc = p.train.model_copy(update={"checkpoint_every": 2, "devices": 2, "strategy": "ddp", "accelerator": "cpu"})
    train_model(name, cfg, tc, pre, out, seed=5, progress=False)
''')


@pytest.mark.integration
@pytest.mark.parametrize("name", ["cgan", "cvae", "vaegan"])
def test_two_process_ddp_on_cpu(name, preprocessed, tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(DRIVER)
    out = tmp_path / name
    r = subprocess.run([sys.executable, str(script), name, str(preprocessed), str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((out / "train.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 4
    assert summary["ddp_replicas_identical"] is True  # all_gather of every parameter's checksum
    assert (out / "model.pt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()


def _module_at_rank(rank: int | None):
    from medsynth.models.base import GenerativeModule

    m = GenerativeModule.__new__(GenerativeModule)
    torch.nn.Module.__init__(m)
    m.seed, m._step = 5, 3
    m._trainer = None if rank is None else SimpleNamespace(global_rank=rank)
    return m


def test_each_rank_draws_its_own_batches_and_rank0_matches_a_single_process():
    single, r0, r1 = (_module_at_rank(r).step_generator(1).initial_seed() for r in (None, 0, 1))
    assert single == r0 != r1


def test_diverged_replicas_stop_the_run():
    from medsynth.models.training import _check_replicas

    module = torch.nn.Linear(2, 2)
    strategy = SimpleNamespace(all_gather=lambda t: torch.stack([t, t + 1e-3]))
    with pytest.raises(RuntimeError, match="DDP replicas ended with different weights"):
        _check_replicas(SimpleNamespace(world_size=2, strategy=strategy), SimpleNamespace(parameters=module.parameters, device="cpu"))
    same = SimpleNamespace(all_gather=lambda t: torch.stack([t, t.clone()]))
    assert _check_replicas(SimpleNamespace(world_size=2, strategy=same), SimpleNamespace(parameters=module.parameters, device="cpu")) is True
