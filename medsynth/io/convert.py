"""Convert every series under a folder (DICOM and NIfTI) to RAS NIfTI volumes.

``convert_folder`` is what ``medsynth convert`` runs; the ingest stage uses ``iter_volumes`` with
de-identified input. Work runs one process per series; results come back in a stable order.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medsynth.io.dicom import DicomVolume, load_series, read_image_dataset
from medsynth.io.dicom.scan import DicomScan, PendingScan, start_scan
from medsynth.io.dicom_fast import FastHeader
from medsynth.io.nifti_write import compact_dtype, reorient_to_ras, write_nifti
from medsynth.io.pool import fork_inherits, process_pool
from medsynth.io.quarantine import DEFAULT_MAX_VOXELS, QuarantineEntry, SeriesError
from medsynth.io.writers import atomic_path, remove_stale_temps, write_csv_atomic

if TYPE_CHECKING:
    import nibabel as nib
    from pydicom.dataset import Dataset

    from medsynth.io.seg import SegMask

SERIES_FIELDS = ["file", "modality", "series_number", "series_description", "shape", "spacing", "n_source_files", "notes"]
QUARANTINE_FIELDS = ["path", "reason"]
WRITER_THREADS = 2
VOLUME_NAME = re.compile(r"series_\d{4,}(_seg)?\.nii\.gz")  # the names convert_folder gives its volumes


@dataclass
class ConvertedVolume:
    """One output volume: voxels on the closest RAS+ axes (int16 where the values fit, else float32)
    and their affine, with where they came from."""

    data: np.ndarray
    affine: np.ndarray
    source: str  # path relative to the input root (folder of the series or the NIfTI file)
    modality: str
    series_number: str = ""
    series_description: str = ""
    series_uid: str = ""
    patient_id: str = ""
    n_source_files: int = 1
    kind: str = "dicom"  # or "nifti"
    notes: list[str] = field(default_factory=list)
    source_files: list[str] = field(default_factory=list)

    @property
    def image(self) -> nib.Nifti1Image:
        """The volume as a nibabel image (sform/qform set, header clean)."""
        from medsynth.io.nifti import make_ras_image

        return make_ras_image(self.data, self.affine)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.data.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(round(float(x), 4) for x in np.sqrt(np.sum(self.affine[:3, :3] ** 2, axis=0)))


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _series_source(paths: list[Path], root: Path) -> str:
    parents = {p.parent for p in paths}
    if len(paths) == 1:
        return _rel(paths[0], root)
    if len(parents) == 1:
        return _rel(parents.pop(), root)
    return _rel(Path(os.path.commonpath([str(p) for p in paths])), root)


POOL_MIN_FILES = 1000  # by default, fewer image files are converted in one process (docs/benchmarks.md)


def default_workers(image_files: int) -> int:
    """Processes for a conversion whose ``workers`` is not given: one per core from POOL_MIN_FILES image
    files, else one. Below that a pool costs more than it saves: one process already compresses each
    volume in a writer thread while it reads the next (on 2 cores, the GE folder of 605 files and the
    shared corpus of 635 took 5% longer with two processes; 1,200 phantom CT files 9% less)."""
    return (os.cpu_count() or 1) if image_files >= POOL_MIN_FILES else 1


# the scan's fast-read headers, set before a pool is forked: its workers inherit them instead of
# receiving them pickled with each job (None in a job's header list: look the path up here)
_inherited_headers: dict[Path, FastHeader] = {}


def _convert_series_worker(args: tuple[str, list[str], int, list[FastHeader | None] | None]) -> tuple[list[dict], list[QuarantineEntry]]:
    """Process-pool worker: paths of one series (with the fast headers the scan read, or None: those this
    process inherited) -> serialisable volumes + quarantine entries."""
    root, paths, max_voxels = Path(args[0]), [Path(p) for p in args[1]], args[2]
    headers = args[3] if args[3] is not None else [_inherited_headers.get(p) for p in paths]
    files: list[tuple[Path, Dataset | FastHeader]] = []
    quarantine = []
    for p, header in zip(paths, headers, strict=True):
        if header is not None:
            files.append((p, header))
            continue
        try:
            files.append((p, read_image_dataset(p, max_voxels)))  # header and pixel bytes in one read
        except SeriesError as exc:
            quarantine.append(QuarantineEntry(_rel(p, root), str(exc)))
    if not files:
        return [], quarantine
    try:
        volumes, q = load_series(files, max_voxels)
    except SeriesError as exc:
        return [], quarantine + [QuarantineEntry(_series_source(paths, root), str(exc))]
    except Exception as exc:  # an unexpected failure in one series never stops the batch
        return [], quarantine + [QuarantineEntry(_series_source(paths, root), f"unexpected error: {type(exc).__name__}: {str(exc)[:120]}")]
    quarantine += [QuarantineEntry(_rel(Path(e.path), root) if os.path.isabs(e.path) else e.path, e.reason) for e in q]
    out = []
    for v in volumes:
        out.append(_volume_payload(v, root))
    return out, quarantine


def _volume_payload(v: DicomVolume, root: Path) -> dict:
    h = v.header
    data, affine = reorient_to_ras(compact_dtype(v.data), v.affine)  # here, in the worker: less to send back
    return {
        "data": np.ascontiguousarray(data),
        "affine": affine,
        "source": _series_source(v.files, root) + v.split_suffix,
        "modality": v.modality,
        "series_number": str(h.get("SeriesNumber", "") or ""),
        "series_description": str(h.get("SeriesDescription", "") or ""),
        "series_uid": v.series_uid,
        "patient_id": str(h.get("PatientID", "") or ""),
        "n_source_files": len(v.files),
        "notes": v.notes,
        "source_files": [_rel(p, root) for p in v.files],
    }


def iter_volumes(
    root: Path,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    pending: PendingScan | None = None,
) -> Iterator[ConvertedVolume | SegMask | QuarantineEntry]:
    """Yield every volume under ``root``, every DICOM SEG mask and every quarantine entry, in a stable
    order: SEG masks come before the volumes, so a caller can match each volume as it arrives. ``pending``:
    the scan of ``root`` already started (:func:`~medsynth.io.dicom.scan.start_scan`), else it starts here."""
    root = Path(root)
    # pool workers forked after the scan inherit its headers and every module this process imported
    scan = (pending if pending is not None else start_scan(root, max_voxels=max_voxels, workers=workers)).result()
    n_workers = workers if workers is not None else default_workers(sum(len(files) for files in scan.series.values()))
    yield from _scanned_volumes(root, scan, n_workers, progress, max_voxels)


def _scanned_volumes(root: Path, scan: DicomScan, n_workers: int, progress: Callable[[str], None] | None,
                     max_voxels: int) -> Iterator[ConvertedVolume | SegMask | QuarantineEntry]:
    yield from scan.quarantine
    if scan.segs:
        from medsynth.io.seg import read_seg_mask
    for seg_path in scan.segs:
        # SEG objects are masks, not images: the caller matches each to the series it references
        try:
            yield read_seg_mask(seg_path, _rel(seg_path, root), max_voxels)
        except SeriesError as exc:
            yield QuarantineEntry(_rel(seg_path, root), str(exc))
    series = sorted(scan.series.values(), key=lambda files: str(files[0]))
    pooled = n_workers > 1 and len(series) > 1
    inherited = pooled and fork_inherits()  # forked workers find the headers in _inherited_headers
    jobs = [(str(root), [str(p) for p in files], max_voxels, None if inherited else [scan.headers.get(p) for p in files]) for files in series]
    if pooled:
        fast = [all(p in scan.headers for p in files) for files in series]
        _inherited_headers.update(scan.headers if inherited else {})
        try:
            with process_pool(min(n_workers, len(jobs))) as pool:
                yield from _emit(_in_pool(pool, jobs, fast), jobs, progress)
        finally:
            _inherited_headers.clear()
    else:
        yield from _emit(map(_convert_series_worker, jobs), jobs, progress)
    if scan.nifti:
        from medsynth.io.nifti import load_nifti_checked, split_4d
    for path in scan.nifti:
        rel = _rel(path, root)
        if progress:
            progress(rel)
        try:
            img = load_nifti_checked(path, max_voxels)
        except SeriesError as exc:
            yield QuarantineEntry(rel, str(exc))
            continue
        parts = split_4d(img)
        for t, part in enumerate(parts):
            data, affine = reorient_to_ras(compact_dtype(np.asarray(part.dataobj)), part.affine)
            yield ConvertedVolume(
                data=data,
                affine=affine,
                source=rel if len(parts) == 1 else f"{rel}#t{t:03d}",
                modality="",
                kind="nifti",
                notes=[f"volume {t + 1} of a 4D NIfTI"] if len(parts) > 1 else [],
                source_files=[rel],
            )


def _in_pool(pool: Executor, jobs: list, fast: list[bool]) -> Iterator[tuple[list[dict], list[QuarantineEntry]]]:
    """Each job's result in job order. Series the fast reader could not read (``fast`` False) go first:
    their files are parsed by pydicom, the slowest part, while the others convert the plain series."""
    order = sorted(range(len(jobs)), key=lambda i: fast[i])
    futures: dict[int, Future] = {i: pool.submit(_convert_series_worker, jobs[i]) for i in order}
    for i in range(len(jobs)):
        yield futures.pop(i).result()


def _emit(results, jobs, progress) -> Iterator[ConvertedVolume | QuarantineEntry]:
    for (_root, paths, _limit, _headers), (payloads, quarantine) in zip(jobs, results, strict=False):
        if progress:
            progress(paths[0])
        yield from quarantine
        for p in payloads:
            yield ConvertedVolume(kind="dicom", **p)


@dataclass
class ConvertResult:
    series_rows: list[dict]
    quarantine: list[QuarantineEntry]

    def summary(self, output_dir: Path) -> str:
        """The line ``medsynth convert`` ends with."""
        return (f"convert: wrote {len(self.series_rows)} volume(s) to {output_dir}; {len(self.quarantine)} item(s) quarantined "
                f"({Path(output_dir) / 'quarantine.csv'})")


def convert_folder(
    input_dir: Path,
    output_dir: Path,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
    pending: PendingScan | None = None,
) -> ConvertResult:
    """``medsynth convert``: one RAS NIfTI per series + series.csv + quarantine.csv. ``pending``: the scan
    of ``input_dir`` already started (the command line starts it before it imports this module).

    The volumes are written into a hidden folder inside ``output_dir`` and moved into place when all are
    written, so a failed run leaves the previous outputs as they were. In a reused folder, the volumes the
    previous run listed in its series.csv that this run does not write are removed, and so are temporary files
    a killed run left (:func:`remove_stale_temps`); no other file is touched.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.exists():
        raise FileNotFoundError(f"{input_dir}: input folder does not exist")
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(output_dir)
    previous = _listed_volumes(output_dir / "series.csv")
    stage = Path(tempfile.mkdtemp(prefix=".convert-", dir=output_dir))
    try:
        rows, quarantine = _convert_into(input_dir, stage, workers, progress, pending)
        for r in rows:
            os.replace(stage / r["file"], output_dir / r["file"])
        for name in previous - {r["file"] for r in rows}:
            (output_dir / name).unlink(missing_ok=True)
        write_csv_atomic(output_dir / "series.csv", rows, SERIES_FIELDS + ["source"])
        write_csv_atomic(output_dir / "quarantine.csv", [q.__dict__ for q in quarantine], QUARANTINE_FIELDS)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return ConvertResult(rows, quarantine)


def _listed_volumes(series_csv: Path) -> set[str]:
    """Volume file names an earlier run listed in its series.csv (only names convert_folder gives)."""
    try:
        with open(series_csv, newline="") as f:
            return {r["file"] for r in csv.DictReader(f) if VOLUME_NAME.fullmatch(r.get("file") or "")}
    except (OSError, csv.Error, UnicodeDecodeError):
        return set()


def _convert_into(input_dir: Path, output_dir: Path, workers: int | None, progress: Callable[[str], None] | None,
                  pending: PendingScan | None) -> tuple[list[dict], list[QuarantineEntry]]:
    """Write one NIfTI per volume and SEG mask into ``output_dir``; return the series.csv rows and the quarantine."""
    rows: list[dict] = []
    quarantine: list[QuarantineEntry] = []
    segs: list[SegMask] = []
    written: dict[str, list[tuple[str, tuple[int, ...], np.ndarray]]] = {}  # series UID -> (name, shape, affine)
    # gzip releases the GIL: volumes are compressed in threads while the next series are read
    with ThreadPoolExecutor(max_workers=WRITER_THREADS) as writer:
        writes: list[Future] = []
        for item in iter_volumes(input_dir, workers=workers, progress=progress, pending=pending):
            if isinstance(item, QuarantineEntry):
                quarantine.append(item)
                continue
            if not isinstance(item, ConvertedVolume):
                segs.append(item)  # a DICOM SEG mask
                continue
            name = f"series_{len(rows) + 1:04d}.nii.gz"
            while len([f for f in writes if not f.done()]) >= 2 * WRITER_THREADS:  # bounded: at most this many volumes in memory
                wait(writes, return_when=FIRST_COMPLETED)
            writes.append(writer.submit(_write_volume, output_dir / name, item.data, item.affine))
            if item.series_uid and item.ndim == 3:
                written.setdefault(item.series_uid, []).append((name, item.shape, item.affine))
            rows.append({
                "file": name, "modality": item.modality, "series_number": item.series_number,
                "series_description": item.series_description, "shape": "x".join(str(s) for s in item.shape),
                "spacing": "x".join(f"{s:g}" for s in item.spacing), "n_source_files": item.n_source_files,
                "notes": "; ".join(item.notes), "source": item.source,
            })
        for f in writes:
            f.result()  # a failed write raises here
    if segs:
        _write_seg_masks(output_dir, segs, written, rows, quarantine)
    return rows, quarantine


def _write_volume(dest: Path, data: np.ndarray, affine: np.ndarray) -> None:
    with atomic_path(dest, suffix=".nii.gz") as tmp:
        write_nifti(tmp, data, affine)


def _write_seg_masks(output_dir: Path, segs: list[SegMask], written: dict[str, list[tuple[str, tuple[int, ...], np.ndarray]]],
                     rows: list[dict], quarantine: list[QuarantineEntry]) -> None:
    """Each SEG mask on the grid of every converted volume of the series it references."""
    import nibabel as nib

    from medsynth.io.nifti import nifti_on_grid
    from medsynth.io.seg import mask_on_image
    from medsynth.io.writers import write_nifti_atomic

    for seg in segs:
        rows_before = len(rows)
        targets = [t for uid in sorted(seg.referenced_series) for t in written.get(uid, [])]
        if not targets:
            quarantine.append(QuarantineEntry(seg.source, "DICOM SEG: the image series it references is not among the converted 3D volumes"))
            continue
        miss = None
        for name, shape, affine in targets:
            grid = nib.Nifti1Image(np.zeros(shape, dtype=np.uint8), affine)
            try:
                labels = mask_on_image(seg, grid)
            except SeriesError as exc:
                miss = str(exc)
                continue  # a split part of the series the SEG does not cover
            seg_name = name.replace(".nii.gz", "_seg.nii.gz")
            write_nifti_atomic(output_dir / seg_name, nifti_on_grid(labels, affine, "medsynth mask"))
            rows.append({
                "file": seg_name, "modality": "SEG", "series_number": "", "series_description": "",
                "shape": "x".join(str(s) for s in labels.shape), "spacing": "x".join(f"{s:g}" for s in grid.header.get_zooms()),
                "n_source_files": 1, "notes": f"mask of {name} on its grid; segments " + ", ".join(f"{k}={v}" for k, v in sorted(seg.segment_labels.items())),
                "source": seg.source,
            })
        if len(rows) == rows_before:
            assert miss is not None  # every target raised
            quarantine.append(QuarantineEntry(seg.source, miss))  # mask_on_image's reason: no overlap
