"""Quality of the three generators on the real AdrenalMNIST3D cohort (issue 6), per condition.

Trains cGAN, cVAE and VAE-GAN on the official train split with medsynth's own trainer, samples each
condition, and scores the samples against the real **test** split of the same condition:

* MMD^2 on the weight-free volume features (as the evaluate stage), with its real train-vs-test baseline;
* FID on a contrastive 3D encoder trained on the real train split only (features as the evaluate stage);
* diversity: MS-SSIM between random pairs of one condition (lower = more diverse), real vs synthetic;
* conditional fidelity: the evaluate stage's condition classifier (image + one-hot mask), trained on real train cases, is asked which condition each
  synthetic case shows; accuracy per condition beside its accuracy on the real test split.

Sample images (mid slices, one row per condition) go to ``--figures``. Run on a GPU at 64^3::

    python benchmarks/quality_adrenal.py --npz ../shared/data/shapes/adrenalmnist3d_64.npz --roi 64 \\
        --steps 4000 --batch 16 --channels 32 --samples 200 --accelerator gpu \\
        --out benchmarks/results/quality-adrenal64-gpu.json --figures docs/figures/quality64

and as a smoke test on CPU (28^3 padded to 32^3, a few steps: proves the harness, not quality)::

    python benchmarks/quality_adrenal.py --npz ../shared/data/shapes/adrenalmnist3d_28.npz --roi 32 --steps 40 --samples 24
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402


def prepare(npz: Path, work: Path, roi: int, seed: int, max_cases: int | None) -> Path:
    from medsynth.config import Params
    from medsynth.data.preprocess import preprocess_cohort
    from medsynth.io.ingest import ingest_npz

    p = Params()
    data = p.data.model_copy(update={"input": str(npz), "npz_max_cases": max_cases})
    ingest_npz(npz, work / "ingest", data, seed)
    pre = p.preprocess.model_copy(update={"roi_size": (roi, roi, roi), "spacing": (1.0, 1.0, 1.0)})
    preprocess_cohort(work / "ingest", work / "pre", pre, seed, "lesion")
    return work / "pre"


def mid_slices_figure(path: Path, rows: dict[str, np.ndarray], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.7 * len(rows)), squeeze=False)
    for r, (name, vols) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(vols):
                v = vols[c]
                ax.imshow(v[:, :, v.shape[2] // 2].T[::-1], cmap="gray", vmin=-1, vmax=1)
        axes[r][0].set_title(name, fontsize=8, loc="left")
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    from medsynth.cohort import load_bank
    from medsynth.config import ConditionalConfig, Params
    from medsynth.eval.conditional import fit_condition_classifier, predict_conditions
    from medsynth.eval.encoder import embed, standardiser, train_encoder
    from medsynth.eval.features import volume_features
    from medsynth.eval.metrics import fid, ms_ssim_diversity
    from medsynth.eval.privacy import dcr_share
    from medsynth.eval.stats import mmd2_unbiased
    from medsynth.models.training import train_model
    from medsynth.synth.sampler import load_sampler, sample_arrays

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--npz", type=Path, required=True)
    ap.add_argument("--roi", type=int, default=32)
    ap.add_argument("--models", nargs="+", default=["cgan", "cvae", "vaegan"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--channels", type=int, default=8, help="base_channels of every model")
    ap.add_argument("--samples", type=int, default=24, help="synthetic cases per condition")
    ap.add_argument("--max-cases", type=int, default=None, help="use at most this many cases of the npz")
    ap.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--classifier-steps", type=int, default=400)
    ap.add_argument("--encoder-steps", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--figures", type=Path, default=None)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    device = "cuda" if args.accelerator == "gpu" else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        pre = prepare(args.npz, work, args.roi, args.seed, args.max_cases)
        banks = {s: load_bank(pre, (s,)) for s in ("train", "test")}
        conditions = __import__("json").loads((pre / "preprocess.json").read_text())["conditions"]
        real = {s: (b[0][:, 0].float().numpy(), b[0][:, 1].float().numpy(), b[1].numpy()) for s, b in banks.items()}
        # the judges, trained on real train cases only
        enc, _ = train_encoder(banks["train"][0].float(), steps=args.encoder_steps, batch_size=16, dim=32, width=8, seed=args.seed)
        scale = standardiser(embed(enc, banks["train"][0].float().numpy()))
        ccfg = ConditionalConfig(classifier_steps=args.classifier_steps, classifier_batch_size=16, classifier_channels=(8, 16, 32))
        train_x = np.stack([real["train"][0], real["train"][1]], 1)
        clf = fit_condition_classifier(train_x, real["train"][2], np.ones(len(train_x), bool), len(conditions), 1, ccfg, args.seed)

        def predict(imgs: np.ndarray, masks: np.ndarray) -> np.ndarray:
            return predict_conditions(clf, np.stack([imgs, masks.astype(np.float32)], 1), 1)

        def score(imgs: np.ndarray, masks: np.ndarray, ci: int, test_sel: np.ndarray, synthetic: bool = True) -> dict:
            te_img, te_mask = real["test"][0][test_sel], real["test"][1][test_sel]
            fv = lambda i, m: volume_features(i, m, 1)  # noqa: E731
            feats = scale(embed(enc, np.stack([imgs, masks.astype(np.float32)], 1)))
            te_feats = scale(embed(enc, np.stack([te_img, te_mask], 1)))
            return {
                "n": int(len(imgs)),
                "mmd2_vs_test": float(mmd2_unbiased(fv(imgs, masks), fv(te_img, te_mask))),
                "fid_vs_test": float(fid(feats, te_feats)),
                "ms_ssim": ms_ssim_diversity(imgs, seed=args.seed),
                "classifier_accuracy": float(np.mean(predict(imgs, masks) == ci)),
                # the evaluate stage's DCR share (train subsampled to the test set's size, 50 times; 0.5: samples
                # no closer to the cases the model learnt from than to unseen ones), here on raw voxels
                **({"dcr_share_voxels": dcr_share(imgs.reshape(len(imgs), -1), real["train"][0][real["train"][2] == ci].reshape(-1, imgs[0].size),
                                                  te_img.reshape(len(te_img), -1), np.random.default_rng(args.seed))} if synthetic else {}),
            }

        results: dict = {"real_train_vs_test": {}, "models": {}}
        for ci, cond in enumerate(conditions):
            tr = real["train"][2] == ci
            te = real["test"][2] == ci
            results["real_train_vs_test"][cond] = score(real["train"][0][tr][: max(args.samples, 2)], real["train"][1][tr][: max(args.samples, 2)], ci, te,
                                                        synthetic=False)
            results["real_train_vs_test"][cond]["classifier_accuracy_on_test"] = float(np.mean(predict(real["test"][0][te], real["test"][1][te]) == ci))
        p = Params()
        train_cfg = p.train.model_copy(update={"accelerator": args.accelerator, "checkpoint_every": max(10, args.steps // 4)})
        figures = {}
        for name in args.models:
            cfg = getattr(p.train, name).model_dump()
            cfg.update({"steps": args.steps, "batch_size": args.batch, "base_channels": args.channels})
            t = time.perf_counter()
            summary = train_model(name, cfg, train_cfg, pre, work / "models" / name, seed=args.seed, progress=False)
            sampler = load_sampler(work / "models" / name, device)
            per_cond, rows = {}, {}
            for ci, cond in enumerate(conditions):
                imgs, masks, _ = sample_arrays(sampler, cond, args.samples, seed=args.seed * 1000 + ci * 100_000, device=device)
                per_cond[cond] = score(imgs, masks, ci, real["test"][2] == ci)
                rows[f"{name} {cond}"] = imgs[:8]
            results["models"][name] = {"train_seconds": round(time.perf_counter() - t, 1), "steps": summary.get("steps"),
                                       "parameters": summary.get("parameters"), "final_diversity": summary.get("final_diversity"),
                                       "diversity_alarms": summary.get("diversity_alarms"), "per_condition": per_cond,
                                       **{k: summary[k] for k in ("latent_prior", "diversity_standard_prior") if k in summary}}
            figures.update(rows)
            print(f"{name}: {per_cond}", file=sys.stderr)
        if args.figures:
            real_rows = {f"real {c}": real["test"][0][real["test"][2] == i][:8] for i, c in enumerate(conditions)}
            mid_slices_figure(args.figures / "samples.png", {**real_rows, **figures},
                              f"AdrenalMNIST3D {args.roi}^3: real test cases, then each model's samples (mid axial slice)")
        results["wall_seconds"] = round(time.perf_counter() - t0, 1)
    write_results(args.out, "quality-adrenalmnist3d", [], {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "conditions": conditions, **results,
        "reading": "per condition vs the real test split of that condition; real_train_vs_test is the baseline "
                   "(what real data scores); classifier_accuracy: share of samples a real-trained classifier "
                   "assigns to the intended condition (compare with classifier_accuracy_on_test)",
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
