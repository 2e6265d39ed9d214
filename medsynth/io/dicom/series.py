"""Series: every file under a folder classified (NIfTI, SEG, image series by key: one UID and number of
one patient, or what dcm2niix stacks across them; or quarantined with the reason; the fast
reader first, pydicom's partial read for the rest) and one series' files converted into volumes
(mosaics, each its own volume when they are not parallel; split by geometry and by the attributes
dcm2niix splits a series by; stacked; isotropic DWI volumes set apart; the volumes of a Philips enhanced
object apart by trigger delay time)."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medsynth.io.dicom.attributes import atof, atoi, merged_series, siemens_xa, stack_key, with_instance_rules
from medsynth.io.dicom.files import _check_file, discover_files, is_nifti, read_header
from medsynth.io.dicom.geometry import Slice, split_slices, stack_slices
from medsynth.io.dicom.mosaics import SAME_ORIENTATION, _mosaic_volume, is_mosaic, mosaic_order, mosaics_not_parallel
from medsynth.io.dicom.philips import isotropic_split, philips_trigger_times, trigger_volumes
from medsynth.io.dicom.slices import classic_slice, enhanced_slices, is_enhanced
from medsynth.io.dicom_fast import FastHeader, is_not_dicom, read_fast_header
from medsynth.io.quarantine import DEFAULT_MAX_VOXELS, QuarantineEntry, SeriesError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
NOT_DICOM = "not a DICOM file (no DICM preamble and no DICOM image attributes)"


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


@dataclass
class DicomScan:
    """Every file under a folder, sorted into image series (by SeriesInstanceUID, SeriesNumber and
    PatientID), SEG masks, NIfTI files and quarantine."""

    series: dict[str, list[Path]]
    segs: list[Path]
    quarantine: list[QuarantineEntry]
    nifti: list[Path]
    headers: dict[Path, FastHeader] = field(default_factory=dict)  # files the fast reader read whole

    @property
    def needs_pydicom(self) -> bool:
        """Whether a series holds a file the fast reader leaves to pydicom."""
        return bool(self.segs) or any(p not in self.headers for files in self.series.values() for p in files)


def _past_group_0028(tag, vr, length) -> bool:
    return tag.group > 0x0028


def read_scan_header(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> Dataset:
    """The attributes up to group 0028 (SOP class, series, image size) -- not the large private groups
    (Siemens CSA, GE) nor the pixel data that follow. SeriesError with the reason if unusable."""
    from pydicom.filereader import read_partial

    _check_file(path, max_voxels)
    try:
        with warnings.catch_warnings(), open(path, "rb") as fh:
            warnings.simplefilter("ignore")
            ds = read_partial(fh, stop_when=_past_group_0028, force=True)  # force: files without the preamble
    except Exception:
        return read_header(path)  # no preamble, or a broken header: the full reader gives the reason
    return ds


def classify_file(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[str, str]:
    """One file -> (kind, detail): ("nifti", ""), ("seg", ""), ("image", series key) or ("bad", reason)."""
    kind, detail, _header = _classify(path, max_voxels)
    return kind, detail


def _series_key(ds: Dataset | FastHeader, path: Path) -> str:
    # PACS exports reuse one UID for several series numbers, and anonymisers or broken exports one UID
    # for several patients' series: a series is one UID and number of one patient. Not the study UID:
    # dcm2niix (isSameSet) stacks files of several study UIDs whose study date/time is the same, and
    # stack_key splits them by that date/time.
    # an empty element is None to pydicom and absent to the fast reader: both are ''
    number, patient = ds.get("SeriesNumber"), ds.get("PatientID")
    merged = merged_series(ds)
    if merged is not None:  # dcm2niix stacks these across UIDs and numbers
        return f"{merged}#{patient or ''}"
    uid = str(ds.get("SeriesInstanceUID", "")) or f"no-series-uid:{path}"
    if number is not None and siemens_xa(ds)[0] and atoi(number) > 1000:
        number = f"{atoi(number) // 1000}xxx"  # early Siemens XA numbers a series' files 16001, 16002 ... (dcm2niix issue 236)
    return f"{uid}#{'' if number is None else number}#{patient or ''}"


def _classify(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[str, str, FastHeader | None]:
    """:func:`classify_file`, and the file's fast header when the fast reader could read it (then the
    series needs no second read of its header). Other files: only the attributes up to group 0028 are
    read here; whether their pixel data are complete is checked when the series is assembled."""
    return _classify_without_pydicom(path, max_voxels) or _classify_with_pydicom(path, max_voxels)


def _classify_without_pydicom(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[str, str, FastHeader | None] | None:
    """:func:`_classify` for NIfTI, non-DICOM and the files the fast reader reads (a compressed or
    big-endian file's header alone: its pixels are read by pydicom with its series); None for the rest."""
    if is_nifti(path):
        return "nifti", "", None
    header = read_fast_header(path)
    if header is not None:
        # over the size limit: classified here, and pydicom's read of the series quarantines it with the reason
        fits = int(header.Rows) * int(header.Columns) * header.frames() <= max_voxels
        return "image", _series_key(header, path), header if fits and not header.header_only else None
    if is_not_dicom(path):
        return "bad", NOT_DICOM, None
    return None


def _classify_with_pydicom(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[str, str, FastHeader | None]:
    try:
        ds = read_scan_header(path, max_voxels)
    except SeriesError as exc:
        return "bad", str(exc), None
    if "SOPClassUID" not in ds and "Rows" not in ds and "Modality" not in ds:
        return "bad", NOT_DICOM, None
    sop = ds.get("SOPClassUID")
    if str(sop or "") == SEG_SOP_CLASS:
        return "seg", "", None
    if "Rows" not in ds or "Columns" not in ds:
        return "bad", f"DICOM object without pixel data ({getattr(sop, 'name', '') or 'unknown SOP class'})", None
    return "image", _series_key(ds, path), None


def scan_folder(
    root: Path,
    files: Iterable[Path] | None = None,
    progress: Callable[[Path], None] | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> DicomScan:
    """Classify every file under ``root`` in this process (a header costs less to read than to send
    between processes); group image files into series. A deflated file that inflates past the limit for
    ``max_voxels`` is quarantined without being inflated."""
    root = Path(root)
    paths = list(files) if files is not None else discover_files(root)
    kinds = [_classify(p, max_voxels) for p in paths]
    series: dict[str, list[Path]] = defaultdict(list)
    segs: list[Path] = []
    quarantine: list[QuarantineEntry] = []
    nifti: list[Path] = []
    headers: dict[Path, FastHeader] = {}
    for path, (kind, detail, header) in zip(paths, kinds, strict=False):
        if header is not None:
            headers[path] = header
        if progress:
            progress(path)
        if kind == "nifti":
            nifti.append(path)
        elif kind == "seg":
            segs.append(path)
        elif kind == "bad":
            quarantine.append(QuarantineEntry(_rel(path, root), detail))
        else:
            series[detail].append(path)
    return DicomScan(dict(series), segs, quarantine, nifti, headers)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


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
            parts = [tiled]
            if len(tiled) > 1 and mosaics_not_parallel(tiled):
                parts = [[f] for f in sorted(tiled, key=lambda f: mosaic_order(f[1]))]
            for j, part in enumerate(parts):
                paths = [p for p, _ds in part]
                notes = [split_note] if split_note else []
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
        group = groups[key]
        paths = sorted({s.path for s in group})
        try:
            data, aff, notes, firsts = stack_slices(group, max_voxels=max_voxels)
        except SeriesError as exc:
            where = str(paths[0]) if len(paths) == 1 else _common_parent(paths)
            reason = str(exc)
            if len(groups) > 1:
                reason += f" (sub-series {i + 1} of {len(groups)}, split by {why})"
            quarantine.append(QuarantineEntry(where, reason))
            continue
        suffix = "" if len(groups) == 1 else f"_{i + 1}"
        hdr = next(ds for p, ds in files if p == paths[0])
        if len(groups) > 1:
            kind = " (derived image)" if dict(key[3]).get("derived") else ""
            notes.append(f"split {i + 1}/{len(groups)} of the series by {why}{kind}")
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


STUDY = "study date/time"


def _study_groups(files: list[tuple[Path, Dataset | FastHeader]], keys: dict[Path, tuple]) -> dict[Path, float] | None:
    """The study date/time each file of a series is stacked by, where a file's split key (``keys``) leaves
    its study date/time out (None: an early Siemens XA file with a study UID, whose study time dcm2niix
    ignores against a file of the same StudyInstanceUID, issue 236); None where no key leaves it out (then
    the keys' date/times split as dcm2niix splits). dcm2niix (``isSameSet``) stacks two files when their
    study date/time is the same or when both are such files of one StudyInstanceUID: the files linked so,
    directly or through others, get the earliest date/time among them."""
    exempt = {p for p, key in keys.items() for name, value in key if name == STUDY and value is None}
    if not exempt:
        return None
    parent: dict[Path, Path] = {}

    def root(p: Path) -> Path:
        while parent.get(p, p) != p:
            p = parent[p]
        return p

    times: dict[Path, float] = {}
    first: dict[tuple, Path] = {}
    for path, ds in files:
        if path not in keys:
            continue
        times[path] = atof(ds.get("StudyDate")) * 1e6 + atof(ds.get("StudyTime"))
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
