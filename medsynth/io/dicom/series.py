"""Series: one series' files (grouped by :mod:`medsynth.io.dicom.scan`) converted into volumes (mosaics,
each its own volume when they are not parallel; split by geometry and by the attributes dcm2niix splits a
series by; stacked; isotropic DWI volumes set apart; the volumes of a Philips enhanced object apart by
trigger delay time)."""

from __future__ import annotations

import filecmp
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medsynth.io.dicom.attributes import atof, atoi, merged_series, stack_key, with_instance_rules
from medsynth.io.dicom.geometry import Slice, dcm2niix_sort_key, split_slices, stack_slices
from medsynth.io.dicom.mosaics import SAME_ORIENTATION, _mosaic_volume, is_mosaic, mosaic_order, mosaics_not_parallel
from medsynth.io.dicom.philips import isotropic_split, philips_trigger_times, trigger_volumes
from medsynth.io.dicom.pixels import decode_pixels
from medsynth.io.dicom.slices import PARTIAL, classic_slice, enhanced_slices, is_enhanced
from medsynth.io.dicom_fast import FastHeader
from medsynth.io.quarantine import DEFAULT_MAX_VOXELS, QuarantineEntry, SeriesError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


@dataclass
class DicomVolume:
    """A converted series. ``data`` axes map to RAS mm through ``affine`` (3D or 4D)."""

    data: np.ndarray
    affine: np.ndarray
    header: Dataset | FastHeader  # header (no pixels) of a representative file, read by pydicom or the fast reader
    files: list[Path]
    split_suffix: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def modality(self) -> str:
        return str(self.header.get("Modality", "OT"))

    @property
    def series_uid(self) -> str:
        return str(self.header.get("SeriesInstanceUID", ""))

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(x) for x in np.linalg.norm(self.affine[:3, :3], axis=0))


def load_series(files: list[tuple[Path, Dataset | FastHeader]], max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[list[DicomVolume], list[QuarantineEntry]]:
    """Convert one series' files into volumes (split where needed) of at most ``max_voxels`` each.

    Returns the volumes and the quarantine entries of sub-series or files that failed.
    """
    volumes: list[DicomVolume] = []
    quarantine: list[QuarantineEntry] = []
    header = files[0][1]
    merged = _merge_note(files)
    mosaics = [(p, ds) for p, ds in files if is_mosaic(ds)]
    if mosaics:
        by_key: dict[tuple, list[tuple[Path, Dataset | FastHeader]]] = defaultdict(list)
        mosaic_keys_of = {p: stack_key(ds) for p, ds in mosaics}
        studies = _study_groups(mosaics, mosaic_keys_of)
        for p, ds in mosaics:
            by_key[_with_study(mosaic_keys_of[p], studies, p)].append((p, ds))
        mosaic_keys = sorted(by_key, key=_sortable)
        for i, key in enumerate(mosaic_keys):
            tiled = by_key[key]
            split_note = "" if len(by_key) == 1 else f"split {i + 1}/{len(by_key)} of the series by {_differing(mosaic_keys)}"
            suffix = "" if len(by_key) == 1 else f"_{i + 1}"
            duplicates = ""
            if len(tiled) > 1 and mosaics_not_parallel(tiled):  # each written on its own, duplicates too (issue 481)
                parts = [[f] for f in sorted(tiled, key=lambda f: mosaic_order(f[1]))]
            else:
                tiled, duplicates = _mosaics_without_duplicates(tiled)
                parts = [tiled]
            for j, part in enumerate(parts):
                paths = [p for p, _ds in part]
                notes = [split_note] if split_note else []
                if duplicates:
                    notes.append(duplicates)
                if len(parts) > 1:
                    notes.append(f"mosaic {j + 1}/{len(parts)}: the mosaics of the series are not parallel (ImageOrientationPatient differs by "
                                 f"more than {SAME_ORIENTATION:g}), so each is its own 3D volume, as dcm2niix writes them")
                try:
                    data, aff, mosaic_notes = _mosaic_volume(part)
                    volumes.append(DicomVolume(data, aff, part[0][1] if len(parts) > 1 else header, paths,
                                               suffix + (f"_{j + 1}" if len(parts) > 1 else ""), [*mosaic_notes, *notes]))
                except SeriesError as exc:
                    quarantine.append(QuarantineEntry(_common_parent(paths), f"{exc} ({'; '.join(notes)})" if notes else str(exc)))
        files = [(p, ds) for p, ds in files if not is_mosaic(ds)]
        if not files:
            return _with_note(volumes, merged), quarantine
    slices: list[Slice] = []
    triggers: dict[tuple[Path, int | None], float] = {}  # Philips enhanced frames' trigger delay times
    for path, ds in files:
        try:
            if is_enhanced(ds):
                slices.extend(enhanced_slices(path, ds))
                triggers.update(((path, i), t) for i, t in enumerate(philips_trigger_times(ds) or []))
            else:
                s = classic_slice(path, ds)
                s.split_key = with_instance_rules(ds, s.split_key)
                slices.append(s)
        except SeriesError as exc:
            quarantine.append(QuarantineEntry(str(path), str(exc)))
    studies = _study_groups(files, {s.path: s.split_key for s in slices})
    if studies is not None:
        for s in slices:
            s.split_key = _with_study(s.split_key, studies, s.path)
    numbers = {p: atoi(ds.get("SeriesNumber")) for p, ds in files}
    if len(set(numbers.values())) > 1:  # merged across series numbers (merged_series): dcm2niix orders by series number first
        for s in slices:
            s.time_key = (numbers[s.path], *s.time_key)
    groups = split_slices(slices)
    ordered_keys = sorted(groups, key=lambda k: (_sortable(k[3]), str(k[0]), k[1], k[2]))
    why = _differing([k[3] for k in ordered_keys], orientation={k[0] for k in ordered_keys}, size={k[1:3] for k in ordered_keys})
    for i, key in enumerate(ordered_keys):
        group, duplicates = _slices_without_duplicates(groups[key])
        paths = sorted({s.path for s in group})
        try:
            data, aff, notes, firsts = stack_slices(group, max_voxels=max_voxels)
        except SeriesError as exc:
            where = str(paths[0]) if len(paths) == 1 else _common_parent(paths)
            reason = str(exc)
            if len(groups) > 1:
                reason += f" (sub-series {i + 1} of {len(groups)}, split by {why})"
            if duplicates:
                reason += f" ({duplicates})"
            quarantine.append(QuarantineEntry(where, reason))
            continue
        if duplicates:
            notes.append(duplicates)
        suffix = "" if len(groups) == 1 else f"_{i + 1}"
        hdr = next(ds for p, ds in files if p == paths[0])
        if len(groups) > 1:
            kind = " (derived image)" if dict(key[3]).get("derived") else ""
            notes.append(f"split {i + 1}/{len(groups)} of the series by {why}{kind}")
        partial = dict(key[3]).get(PARTIAL)
        if partial:
            number = atoi(hdr.get("SeriesNumber"))
            notes.append(f"Series {number} includes partial volume (issue 742): {partial[0]} slices acquired but ICE dims (0021,118E) specifies "
                         f"{partial[1]}; written apart as a derived image (series {number + 1000}), as dcm2niix writes it")
        by_trigger = trigger_volumes(firsts, triggers) if triggers else None
        if by_trigger is not None:
            for j, idx in enumerate(by_trigger):
                trigger = triggers[(firsts[idx[0]].path, firsts[idx[0]].frame)]
                note = (f"trigger delay time {trigger:g} ms: {len(idx)} of {len(firsts)} volumes, written apart from the volumes of the "
                        f"other {len(by_trigger) - 1} trigger time(s) as dcm2niix writes a Philips enhanced object")
                kept = [n for n in notes if not n.startswith("4D series")] + ([f"4D series: {len(idx)} volumes"] if len(idx) > 1 else [])
                volumes.append(DicomVolume(data[..., idx] if len(idx) > 1 else data[..., idx[0]], aff, hdr, paths, f"{suffix}_trigger{j + 1}",
                                           [*kept, note]))
            continue
        split = isotropic_split(data, firsts)
        if split is None:
            volumes.append(DicomVolume(data, aff, hdr, paths, suffix, notes))
            continue
        acquired, with_isotropic, note = split
        volumes.append(DicomVolume(acquired, aff, hdr, paths, suffix, [*notes, note]))
        volumes.append(DicomVolume(with_isotropic, aff, hdr, paths, suffix + "_ADC", [*notes, note + "; this volume: all of them, those last"]))
    return _with_note(volumes, merged), quarantine


def _duplicates(keys: dict[Path, tuple]) -> list[tuple[Path, Path]]:
    """(duplicate, the file it duplicates) for each file of one output whose dcm2niix sort key
    (:func:`~medsynth.io.dicom.geometry.dcm2niix_sort_key`) an earlier file's equals, ``keys`` in file
    order (by path). dcm2niix sorts an output's files by that key and drops each whose key equals the
    previous one's (nii_dicom_batch.cpp ``removeDuplicates``); its sort is stable, so of equal keys it
    keeps the first its directory listing gives (the file system's order); here the first by path."""
    first: dict[tuple, Path] = {}
    found = []
    for path, key in keys.items():
        kept = first.setdefault(key, path) if key else path
        if kept != path:
            found.append((path, kept))
    return found


def _same_image(a: Path, b: Path, pixels: Callable[[Path], list[np.ndarray]]) -> bool:
    """Whether two files hold the same image: the same bytes, else the same rescaled pixels (an image that
    cannot be read counts as other pixel data)."""
    try:
        if filecmp.cmp(a, b, shallow=False):
            return True
        pa, pb = pixels(a), pixels(b)
    except Exception:  # noqa: BLE001 - the kept file's own conversion names what is wrong with it
        return False
    return len(pa) == len(pb) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(pa, pb, strict=True))


def _duplicate_note(found: list[tuple[Path, Path]], pixels: Callable[[Path], list[np.ndarray]], paths: list[Path]) -> str:
    """The note on the duplicates removed from one output ('' for none): how many, how many of them hold
    other pixel data than the file kept (dcm2niix removes by key only), and the first pair."""
    if not found:
        return ""
    other = sum(not _same_image(dup, kept, pixels) for dup, kept in found)
    root = os.path.commonpath([str(p.parent) for p in paths])
    dup, kept = (os.path.relpath(p, root) for p in found[0])
    example = f"{dup} duplicates {kept}" + (", ..." if len(found) > 1 else "")
    key = "each with the dcm2niix sort key (series and instance number, SOPInstanceUID, series UID) of another file of this volume"
    if not other:
        return f"{len(found)} duplicate image file(s) removed: {key}, the first by path kept, as dcm2niix removes them ({example})"
    return (f"{len(found)} identical-key image file(s) removed as duplicates: {key}, {other} of them with other pixel data than the file "
            f"kept, the first by path (dcm2niix keeps the first its directory listing gives; {example})")


def _slices_without_duplicates(slices: list[Slice]) -> tuple[list[Slice], str]:
    """The slices of one output without those of duplicate files (:func:`_duplicates`; every frame of an
    enhanced object), and the note on them."""
    by_file: dict[Path, list[Slice]] = {}
    for s in slices:
        by_file.setdefault(s.path, []).append(s)
    found = _duplicates({path: frames[0].file_key for path, frames in by_file.items()})
    if not found:
        return slices, ""
    note = _duplicate_note(found, lambda p: [s.pixels() for s in by_file[p]], list(by_file))
    removed = {dup for dup, _kept in found}
    return [s for s in slices if s.path not in removed], note


def _mosaics_without_duplicates(files: list[tuple[Path, Dataset | FastHeader]]) -> tuple[list[tuple[Path, Dataset | FastHeader]], str]:
    """The parallel mosaics of one output without the duplicate files (:func:`_duplicates`), and the note."""
    found = _duplicates({p: dcm2niix_sort_key(ds) for p, ds in files}) if len(files) > 1 else []
    if not found:
        return files, ""
    headers = dict(files)

    def pixels(path: Path) -> list[np.ndarray]:
        ds = headers[path]
        arr = ds.pixel_array() if isinstance(ds, FastHeader) else decode_pixels(path, ds)
        return [arr * float(ds.get("RescaleSlope", 1.0) or 1.0) + float(ds.get("RescaleIntercept", 0.0) or 0.0)]

    note = _duplicate_note(found, pixels, [p for p, _ds in files])
    removed = {dup for dup, _kept in found}
    return [(p, ds) for p, ds in files if p not in removed], note


STUDY = "study date/time"
# dcm2niix's tolerance for the study date/time (isSameSet: isSameFloatDouble, on StudyDate * 1e6 + StudyTime);
# below the spacing of doubles where a StudyDate is given, so it only joins study times of files without one
STUDY_TOLERANCE = 0.0001


def _tolerant_times(times) -> dict[float, float]:
    """Each study date/time -> the one it is stacked by: ascending, a value within STUDY_TOLERANCE of the
    first of its run takes that first one (dcm2niix compares each file with the first of an output; where
    values drift in steps below the tolerance its outputs overlap, which is not ported)."""
    seeds: dict[float, float] = {}
    seed = None
    for t in sorted(set(times)):
        if seed is None or abs(t - seed) > STUDY_TOLERANCE:
            seed = t
        seeds[t] = seed
    return seeds


def _study_groups(files: list[tuple[Path, Dataset | FastHeader]], keys: dict[Path, tuple]) -> dict[Path, float] | None:
    """The study date/time each file of a series is stacked by, where a file's split key (``keys``) leaves
    its study date/time out (None: an early Siemens XA file with a study UID, whose study time dcm2niix
    ignores against a file of the same StudyInstanceUID, issue 236) or where date/times differ within
    dcm2niix's tolerance (:func:`_tolerant_times`); None where neither holds (then the keys' date/times
    split as dcm2niix splits). dcm2niix (``isSameSet``) stacks two files when their study date/time is the
    same or when both are such files of one StudyInstanceUID: the files linked so, directly or through
    others, get the earliest date/time among them."""
    exempt = {p for p, key in keys.items() for name, value in key if name == STUDY and value is None}
    times = {path: atof(ds.get("StudyDate")) * 1e6 + atof(ds.get("StudyTime")) for path, ds in files if path in keys}
    seeds = _tolerant_times(times.values())
    if not exempt and all(seed == t for t, seed in seeds.items()):
        return None
    times = {path: seeds[t] for path, t in times.items()}
    parent: dict[Path, Path] = {}

    def root(p: Path) -> Path:
        while parent.get(p, p) != p:
            p = parent[p]
        return p

    first: dict[tuple, Path] = {}
    for path, ds in files:
        if path not in keys:
            continue
        links = [("time", times[path])] + ([("study", str(ds.get("StudyInstanceUID", "")))] if path in exempt else [])
        for link in links:
            other = first.setdefault(link, path)
            a, b = root(path), root(other)
            if a != b:
                parent[a] = b
    earliest: dict[Path, float] = {}
    for path, t in times.items():
        r = root(path)
        earliest[r] = min(earliest.get(r, t), t)
    return {path: earliest[root(path)] for path in times}


def _with_study(key: tuple, studies: dict[Path, float] | None, path: Path) -> tuple:
    """``key`` with the study date/time ``studies`` gives ``path`` (unchanged where it gives none)."""
    if studies is None or path not in studies:
        return key
    return tuple((name, studies[path]) if name == STUDY else (name, value) for name, value in key)


def _with_note(volumes: list[DicomVolume], note: str) -> list[DicomVolume]:
    if note:
        for v in volumes:
            v.notes.append(note)
    return volumes


def _merge_note(files: list[tuple[Path, Dataset | FastHeader]]) -> str:
    """What a series that dcm2niix stacks across series UIDs or numbers (:func:`merged_series`) was stacked
    by, or '' for a series of one UID and number."""
    uids = {str(ds.get("SeriesInstanceUID", "")) for _p, ds in files}
    numbers = {atoi(ds.get("SeriesNumber")) for _p, ds in files}
    if len(uids) == 1 and len(numbers) == 1:
        return ""
    how = merged_series(files[0][1]) or "Siemens early XA series number (thousands)"
    return f"stacked across {len(uids)} SeriesInstanceUID(s) and {len(numbers)} SeriesNumber(s) by {how}, as dcm2niix stacks them"


def _sortable(value) -> tuple:
    """A key of (name, value) pairs made comparable whatever its values' types (None, numbers, text,
    tuples): sub-series are numbered in this order (not derived first, then by echo time ...)."""
    if value is None:
        return (0,)
    if isinstance(value, (bool, int, float)):
        return (1, float(value))
    if isinstance(value, str):
        return (2, value)
    return (3, tuple(_sortable(v) for v in value))


def _differing(keys: list[tuple], orientation: set | None = None, size: set | None = None) -> str:
    """What tells the sub-series apart: 'orientation', 'size' and the names of the split attributes whose
    values differ between ``keys`` (each a tuple of (name, value) pairs)."""
    names = [name for name, values in (("orientation", orientation), ("size", size)) if values is not None and len(values) > 1]
    seen: dict[str, set] = defaultdict(set)
    for key in keys:
        for name, value in key:
            seen[name].add(value)
    names += [name for name, values in seen.items() if len(values) > 1]
    return "/".join(names) or "orientation/size"


def _common_parent(paths: list[Path]) -> str:
    parts = [Path(p).parts for p in paths]
    common = []
    for items in zip(*parts, strict=False):
        if len(set(items)) == 1:
            common.append(items[0])
        else:
            break
    return str(Path(*common)) if common else str(paths[0])
