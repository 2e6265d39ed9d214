"""Training speed: the MONAI 3d_autoencoderkl tutorial loop versus medsynth's VAE-GAN trainer.

Both train the same networks on the same data shape on the same device in one run:
MONAI ``AutoencoderKL`` (channels 32,64,64, latent 3, one residual block, attention at the last level,
16 norm groups) + ``PatchDiscriminator`` (3 layers, 32 channels), L1 + KL + least-squares adversarial
loss, Adam. Both networks take medsynth's input (image + one-hot mask + one-hot class channels) and
decode image + mask logits, so only the first and last convolutions differ from the tutorial's
single-channel version.

* baseline ``tutorial``: the tutorial's loop as written — fp16 autocast + GradScaler, eager, ``.item()``
  every step, the attention as MONAI computes it by default.
* ``medsynth``: :class:`medsynth.models.vaegan.VAEGANModule` with ``backbone: autoencoderkl`` run by a
  Lightning Trainer as ``dvc repro`` runs it — bf16-mixed, channels-last 3D, ``torch.compile``, fused
  Adam, fused SDPA attention, no host syncs in the step, optional activation checkpointing.

Also: medsynth's cGAN at the given sizes, optimised versus the same trainer with the GPU speed-ups off,
and the data wait share (time spent fetching a batch from the cached bank over step time).

Useful FLOPs per iteration are counted once with ``torch.utils.flop_counter`` on the tutorial step (the
recomputation of activation checkpointing is not counted). Run::

    python benchmarks/bench_train.py --sizes 96x96x64:2 128x128x128:2 64x64x64:8 --out bench-train.json
    python benchmarks/bench_train.py --sizes 32x32x32:2 --steps 2 --warmup 1   # CPU smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
import traceback
from pathlib import Path

import lightning as L
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_gib, reset_peak, sync, write_results  # noqa: E402

N_CLASSES = 2
N_MASK = 1
IN_CH = 2 + N_MASK + N_CLASSES  # image + one-hot mask (bg, fg) + one-hot class
OUT_CH = 2 + N_MASK  # image + mask logits


def parse_size(text: str) -> tuple[tuple[int, int, int], int]:
    shape, _, batch = text.partition(":")
    dims = tuple(int(v) for v in shape.split("x"))
    return dims, int(batch or 2)


def fake_bank(shape, n: int = 16, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 2, *shape, generator=g) * 2 - 1
    x[:, 1] = (x[:, 1] > 0.6).float()
    return x.half().to(device), (torch.arange(n) % N_CLASSES).to(device)


# ----------------------------------------------------------------------------- tutorial baseline
def tutorial_networks(device):
    from monai.networks.nets import AutoencoderKL, PatchDiscriminator

    ae = AutoencoderKL(spatial_dims=3, in_channels=IN_CH, out_channels=OUT_CH, channels=(32, 64, 64), latent_channels=3,
                       num_res_blocks=1, norm_num_groups=16, attention_levels=(False, False, True)).to(device)
    d = PatchDiscriminator(spatial_dims=3, num_layers_d=3, channels=32, in_channels=IN_CH, out_channels=1).to(device)
    return ae, d


def tutorial_inputs(bank_x, bank_y, batch: int, step: int):
    idx = torch.arange(step * batch, (step + 1) * batch, device=bank_x.device) % len(bank_x)
    x, y = bank_x[idx].float(), bank_y[idx]
    onehot = F.one_hot(x[:, 1].long(), N_MASK + 1).permute(0, 4, 1, 2, 3).float()
    cond = F.one_hot(y, N_CLASSES).float()[:, :, None, None, None].expand(-1, -1, *x.shape[2:])
    return torch.cat([x[:, :1], onehot, cond], 1), x, cond


def make_tutorial_step(device):
    from monai.losses import PatchAdversarialLoss

    ae, d = tutorial_networks(device)
    adv_loss = PatchAdversarialLoss(criterion="least_squares")
    opt_g = torch.optim.Adam(ae.parameters(), lr=1e-4)
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-4)
    use_amp = torch.device(device).type == "cuda"
    scaler_g = torch.amp.GradScaler(enabled=use_amp)
    scaler_d = torch.amp.GradScaler(enabled=use_amp)
    kl_weight, adv_weight = 1e-6, 0.01
    totals = {"recons": 0.0, "gen": 0.0, "disc": 0.0}

    def step(inp, x, cond):
        opt_g.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=torch.float16, enabled=use_amp):
            reconstruction, z_mu, z_sigma = ae(inp)
            kl = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1, dim=[1, 2, 3, 4])
            kl = torch.sum(kl) / kl.shape[0]
            recons = F.l1_loss(reconstruction.float()[:, :1], x[:, :1])
            fake = torch.cat([torch.tanh(reconstruction[:, :1]), torch.softmax(reconstruction[:, 1:].float(), 1), cond], 1)
            logits_fake = d(fake.contiguous().float())[-1]
            gen = adv_loss(logits_fake, target_is_real=True, for_discriminator=False)
            loss_g = recons + kl_weight * kl + adv_weight * gen
        scaler_g.scale(loss_g).backward()
        scaler_g.step(opt_g)
        scaler_g.update()
        with torch.autocast(torch.device(device).type, dtype=torch.float16, enabled=use_amp):
            opt_d.zero_grad(set_to_none=True)
            loss_fake = adv_loss(d(fake.contiguous().detach())[-1], target_is_real=False, for_discriminator=True)
            loss_real = adv_loss(d(inp.contiguous().detach())[-1], target_is_real=True, for_discriminator=True)
            loss_d = adv_weight * (loss_fake + loss_real) * 0.5
        scaler_d.scale(loss_d).backward()
        scaler_d.step(opt_d)
        scaler_d.update()
        totals["recons"] += recons.item()  # as the tutorial does: a host sync every step
        totals["gen"] += gen.item()
        totals["disc"] += loss_d.item()

    return step, (ae, d, opt_g, opt_d)


def count_flops(step, inputs) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(*inputs)
    return float(counter.get_total_flops())


def run_tutorial(shape, batch, device, warmup, steps) -> dict:
    bank_x, bank_y = fake_bank(shape, device=device)
    step, keep = make_tutorial_step(device)
    for i in range(warmup):
        step(*tutorial_inputs(bank_x, bank_y, batch, i))
    flops = count_flops(step, tutorial_inputs(bank_x, bank_y, batch, warmup))
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(*tutorial_inputs(bank_x, bank_y, batch, warmup + 1 + i))
    sync(device)
    seconds = time.perf_counter() - t0
    del keep
    return {"seconds_per_step": seconds / steps, "flops_per_step": flops, "peak_gib": peak_gib(device)}


# ----------------------------------------------------------------------------- medsynth trainer
class StepTimer(L.Callback):
    """Times steps ``warmup .. warmup+steps`` and collects the batch-fetch time (see instrument_fetch)."""

    def __init__(self, warmup: int, steps: int, device: str):
        self.warmup, self.steps, self.device = warmup, steps, device
        self.t0 = self.seconds = 0.0
        self.fetch_seconds = 0.0
        self.fetch_gpu_ms = 0.0
        self.events: list = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if module.step_index == self.warmup:
            reset_peak(self.device)
            sync(self.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.step_index == self.warmup + self.steps:
            sync(self.device)
            self.seconds = time.perf_counter() - self.t0
            self.fetch_gpu_ms = sum(a.elapsed_time(b) for a, b in self.events) if self.events else 0.0
            trainer.should_stop = True


def instrument_fetch(module, timer) -> None:
    """Wrap ``module.batch`` to add its host time (and GPU time, with CUDA events) to ``timer``."""
    original = module.batch
    cuda = timer.device == "cuda"

    def timed_batch(batch_size):
        inside = timer.warmup <= module.step_index < timer.warmup + timer.steps
        t = time.perf_counter()
        if cuda and inside:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
        out = original(batch_size)
        if inside:
            if cuda:
                b.record()
                timer.events.append((a, b))
            timer.fetch_seconds += time.perf_counter() - t
        return out

    module.batch = timed_batch


def run_medsynth(model: str, shape, batch, device, warmup, steps, compile_: bool, channels_last: bool, checkpointing: bool,
                 precision: str | None = None) -> dict:
    import warnings

    from torch.utils.data import DataLoader

    from medsynth.models.registry import get
    from medsynth.models.training import _StepIndex

    info = {"conditions": ["normal", "lesion"], "n_mask_labels": N_MASK, "roi_size": list(shape)}
    if model == "vaegan":
        cfg = {"steps": warmup + steps, "batch_size": batch, "backbone": "autoencoderkl", "lr": 1e-4, "lr_d": 1e-4,
               # the tutorial's 1e-6 x KL sum; medsynth divides the KL by the voxels, hence the factor
               "kl_weight": 1e-6 * math.prod(shape), "adv_weight": 0.01, "kl_anneal_steps": 0}
    else:
        cfg = {"steps": warmup + steps, "batch_size": batch, "base_channels": 32, "z_dim": 128}
    module = get(model)(cfg, info, seed=0, log_every=10, image_every=10**9)
    module.accelerate(compile=compile_, channels_last=channels_last, checkpointing=checkpointing)
    bank_x, bank_y = fake_bank(shape, device="cpu")
    module.attach_bank(bank_x, bank_y)
    gpu = device == "cuda"
    timer = StepTimer(warmup, steps, device)
    instrument_fetch(module, timer)
    n_opt = len(module.configure_optimizers()) if not module.automatic_optimization else 1
    trainer = L.Trainer(
        max_steps=(warmup + steps + 1) * n_opt, accelerator="gpu" if gpu else "cpu", devices=1,
        precision=precision or ("bf16-mixed" if gpu else "32-true"), logger=False, callbacks=[timer],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, benchmark=gpu,
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, DataLoader(_StepIndex(warmup + steps + 1), batch_size=None))
    step_s = timer.seconds / steps
    row = {
        "seconds_per_step": step_s,
        "peak_gib": peak_gib(device),
        "data_wait_share_host": round(timer.fetch_seconds / timer.seconds, 4) if timer.seconds else None,
        "data_wait_share_gpu": round(timer.fetch_gpu_ms / 1000 / timer.seconds, 4) if timer.seconds and gpu else None,
    }
    del module, trainer
    return row


def cleanup():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["96x96x64:2", "128x128x128:2", "64x64x64:8"], help="DxHxW:batch")
    ap.add_argument("--models", nargs="+", default=["vaegan"], choices=["vaegan", "cgan"])
    ap.add_argument("--variants", nargs="+", default=["full"], choices=["full", "no-channels-last", "checkpointing", "plain"],
                    help="medsynth variants: full = compile + channels-last; no-channels-last = compile only; checkpointing = compile + "
                    "activation checkpointing; "
                    "plain = the same trainer with compile and channels-last off")
    ap.add_argument("--no-tutorial", action="store_true", help="skip the tutorial baseline")
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    gpu = args.device == "cuda"
    rows = _Rows(args.out)
    for text in args.sizes:
        shape, batch = parse_size(text)
        flops = None
        base = None
        if "vaegan" in args.models and not args.no_tutorial:
            try:
                r = run_tutorial(shape, batch, args.device, args.warmup, args.steps)
                flops, base = r["flops_per_step"], r
                rows.append({"model": "vaegan", "loop": "tutorial (fp16 autocast + GradScaler, eager)", "shape": list(shape),
                             "batch": batch, **_rates(r, batch, flops)})
            except Exception as exc:  # e.g. out of memory: recorded, the run goes on
                rows.append({"model": "vaegan", "loop": "tutorial", "shape": list(shape), "batch": batch, "error": repr(exc)[:300]})
            cleanup()
        for model in args.models:
            plain = None
            for variant in args.variants:
                kw = {"full": (gpu, gpu, False), "no-channels-last": (gpu, False, False), "checkpointing": (gpu, False, True),
                      "plain": (False, False, False)}[variant]
                t0 = time.perf_counter()
                try:
                    r = run_medsynth(model, shape, batch, args.device, args.warmup, args.steps, *kw)
                except Exception as exc:
                    traceback.print_exc()
                    rows.append({"model": model, "loop": f"medsynth {variant}", "shape": list(shape), "batch": batch, "error": repr(exc)[:300]})
                    cleanup()
                    continue
                row = {"model": model, "loop": f"medsynth {variant}", "shape": list(shape), "batch": batch,
                       "wall_incl_compile_s": round(time.perf_counter() - t0, 1), **_rates(r, batch, flops if model == "vaegan" else None)}
                ref = base if model == "vaegan" else plain
                if ref and "seconds_per_step" in ref:
                    row["speedup_vs_baseline"] = round(ref["seconds_per_step"] / r["seconds_per_step"], 2)
                    if ref.get("peak_gib") and r.get("peak_gib"):
                        row["memory_ratio_vs_baseline"] = round(r["peak_gib"] / ref["peak_gib"], 3)
                if model == "cgan" and variant == "plain":
                    plain = r
                rows.append(row)
                cleanup()
    write_results(args.out, "train", list(rows), {"warmup": args.warmup, "steps": args.steps})
    return 0


class _Rows(list):
    """Result rows, also written to ``path`` after each one so a run cut off keeps what it measured."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def append(self, row):
        super().append(row)
        print(json.dumps(row), flush=True)
        if self.path:
            Path(self.path).write_text(json.dumps({"partial": True, "rows": list(self)}, indent=2))


def _rates(r: dict, batch: int, flops: float | None) -> dict:
    out = {k: v for k, v in r.items() if k != "flops_per_step"}
    out["volumes_per_s"] = round(batch / r["seconds_per_step"], 3)
    if flops:
        out["tflops_achieved"] = round(flops / r["seconds_per_step"] / 1e12, 2)
    out["seconds_per_step"] = round(r["seconds_per_step"], 5)
    return out


if __name__ == "__main__":
    sys.exit(main())
