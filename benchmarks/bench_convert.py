"""DICOM -> NIfTI conversion: ``medsynth convert`` versus the reference converter ``dcm2niix`` (the
PyPI wheel's binary, the baseline) on the same DICOM corpus, in one run.

The corpus is every ``In/`` folder of ``../shared/data/dicom`` (GE, Siemens, Philips; classic, enhanced
multi-frame, mosaic, 12-bit, nine transfer syntaxes), copied into one temporary folder so both tools see
the same files. Both write gzipped NIfTI (``dcm2niix -z y``; medsynth writes ``.nii.gz``), both are run
as the command a user types (process start-up included), ``--repeats`` times; the median counts.

    python benchmarks/bench_convert.py --out benchmarks/results/convert-cpu.json

``--demo-patients N`` adds medsynth's generated phantom CT cohort (N patients, two series each, real
DICOM files written by pydicom) to the corpus: more series and files per run.

``--workers`` sets medsynth's processes (default: not given, as a user types it: all cores from 1,000 image
files, else one); dcm2niix converts on one core. Run it with ``--workers 1`` as well to see the single-core ratio.

medsynth's bytecode is compiled before the runs, as ``pip install`` compiles an installed package: where
PYTHONDONTWRITEBYTECODE is set (this project's machines set it) an editable checkout would otherwise compile
its modules from source on every run (about 0.03 s), which no installed copy does.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"


def build_corpus(dest: Path, demo_patients: int = 0, only: str | None = None) -> tuple[int, int]:
    n_files = n_bytes = 0
    if only and only != "none":
        shutil.copytree(SHARED / only, dest / Path(only).name)
    for ds in [] if only else sorted(SHARED.glob("*/In")):
        shutil.copytree(ds, dest / ds.parent.name)
    if demo_patients:
        from medsynth.config import DemoConfig
        from medsynth.data.demo import generate_demo_cohort

        generate_demo_cohort(dest / "demo", DemoConfig(patients=demo_patients, nifti_cases=0, compressed_cases=0, bad_files=False), seed=1)
        (dest / "demo" / "labels.csv").unlink(missing_ok=True)
        for mask in (dest / "demo").rglob("*.nii*"):  # the phantoms' NIfTI masks: dcm2niix reads DICOM only
            mask.unlink()
    for f in dest.rglob("*"):
        if f.is_file():
            n_files += 1
            n_bytes += f.stat().st_size
    return n_files, n_bytes


def timed(cmd: list[str], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode not in (0,):
        raise SystemExit(f"{cmd[0]} failed ({r.returncode}): {r.stderr[-2000:]}")
    return dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--demo-patients", type=int, default=0, help="add a generated phantom CT cohort of this size")
    ap.add_argument("--workers", type=int, default=None, help="medsynth processes (default: medsynth's own default)")
    ap.add_argument("--only", default=None, help="one folder under ../shared/data/dicom instead of every In/ "
                    "(e.g. dcm_qa_nih/In/20180918GE); none: only the phantom series of --demo-patients")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dcm2niix = shutil.which("dcm2niix")
    if dcm2niix is None:
        raise SystemExit("dcm2niix not found: pip install dcm2niix (the test extra has it)")
    medsynth = [sys.executable, "-m", "medsynth.launcher"]  # what the medsynth command runs
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "medsynth", quiet=1)
    load_before = os.getloadavg()  # other people's work on the machine: recorded with the results
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_files, n_bytes = build_corpus(tmp / "corpus", args.demo_patients, args.only)
        runs = {
            "dcm2niix": [dcm2niix, "-z", "y", "-b", "n", "-o", str(tmp / "out_dcm2niix"), str(tmp / "corpus")],
            "medsynth": medsynth + ["convert", str(tmp / "corpus"), str(tmp / "out_medsynth")]
            + ([] if args.workers is None else ["--workers", str(args.workers)]),
        }
        for name, cmd in runs.items():  # warm the page cache and the imports once
            timed(cmd, tmp / f"out_{name}")
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):
            for name, cmd in runs.items():  # interleaved, so drift hits both alike
                times[name].append(timed(cmd, tmp / f"out_{name}"))
        outputs = {k: len(list((tmp / f"out_{k}").rglob("*.nii.gz"))) for k in runs}
    rows = []
    for name, ts in times.items():
        rows.append({"tool": name, "median_s": round(statistics.median(ts), 3), "runs_s": [round(t, 3) for t in ts],
                     "nifti_written": outputs[name], "files_per_s": round(n_files / statistics.median(ts), 1)})
    ratio = statistics.median(times["medsynth"]) / statistics.median(times["dcm2niix"])
    return 0 if write_results(args.out, "convert", rows, {
        "corpus": {"dicom_files": n_files, "mib": round(n_bytes / 2**20, 1), "demo_patients": args.demo_patients, "only": args.only},
        "baseline": "dcm2niix (PyPI wheel) -z y -b n",
        "wall_time_ratio_medsynth_over_dcm2niix": round(ratio, 2),
        "goal": "<= 1.5",
        "medsynth_bytecode": "compiled before the runs (as pip install compiles an installed package)",
        "medsynth_workers": args.workers if args.workers is not None else "default",
        "load_average_1_5_15min": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
    }) else 1


if __name__ == "__main__":
    raise SystemExit(main())
