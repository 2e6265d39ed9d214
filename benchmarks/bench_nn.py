"""Nearest-neighbour search at scale (the privacy metrics' core): medsynth's chunked search versus the
naive full distance matrix (``scipy.spatial.distance.cdist`` + argmin), same data, same run.

Reports wall time and peak resident memory growth of each. The chunked search holds one
``chunk x N`` block at a time, so 10,000 x 10,000 (or far more) never needs the full matrix. Run::

    python benchmarks/bench_nn.py --n 10000 --dim 128 --out bench-nn.json
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(mode: str, n: int, dim: int, chunk: int) -> dict:
    from scipy.spatial.distance import cdist

    from medsynth.eval.features import nearest, nearest_index

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(n, dim)), rng.normal(size=(n, dim))
    base = _rss_mib()
    t0 = time.perf_counter()
    if mode == "chunked":
        d, i = nearest(a, b, k=1, chunk=chunk)[:, 0], nearest_index(a, b, chunk=chunk)
    else:
        full = cdist(a, b)
        i = full.argmin(1)
        d = full[np.arange(n), i]
    return {"seconds": time.perf_counter() - t0, "rss_growth_mib": _rss_mib() - base, "checksum": float(d.sum()), "index": i}


def main(argv=None) -> int:
    import multiprocessing as mp

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    ctx = mp.get_context("spawn")  # a fresh process each, so peak memory is each method's own
    with ctx.Pool(1) as pool:
        chunked = pool.apply(run, ("chunked", args.n, args.dim, args.chunk))
    with ctx.Pool(1) as pool:
        naive = pool.apply(run, ("naive", args.n, args.dim, args.chunk))
    assert abs(chunked["checksum"] - naive["checksum"]) < 1e-6 * args.n, "chunked and naive distances differ"
    rows = [{
        "n": args.n, "dim": args.dim, "chunk": args.chunk,
        "chunked_s": round(chunked["seconds"], 2), "naive_cdist_s": round(naive["seconds"], 2),
        "speedup": round(naive["seconds"] / chunked["seconds"], 2),
        "rss_growth_chunked_mib": round(chunked["rss_growth_mib"], 1), "rss_growth_naive_mib": round(naive["rss_growth_mib"], 1),
        "full_matrix_mib": round(args.n * args.n * 8 / 2**20, 1),
        "index_agreement": float((chunked["index"] == naive["index"]).mean()),
    }]
    write_results(args.out, "nearest-neighbour", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
