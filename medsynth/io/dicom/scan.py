"""The folder scan: every file under a folder classified -- NIfTI, DICOM SEG, an image of a series (by
key: one UID and number of one patient, or what dcm2niix stacks across them), or quarantined with the
reason -- by the fast reader, else by pydicom's partial read. Nothing here imports numpy or the modules
that assemble volumes: ``medsynth convert`` starts the scan (:func:`start_scan`) before it imports them.

Scanning is reading headers, one file at a time: :func:`start_scan` forks child processes that each
classify a contiguous share of the files while the caller goes on (the command line: its imports), and
:meth:`PendingScan.result` gathers their classifications in file order. A child that fails, or a system
without ``fork``, leaves its share to the caller: the result is the same either way.
"""

from __future__ import annotations

import math
import os
import pickle
import threading
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medsynth.io.dicom.attributes import atoi, merged_series, siemens_xa
from medsynth.io.dicom.files import _check_file, discover_files, is_nifti, read_header
from medsynth.io.dicom_fast import FastHeader, is_not_dicom, read_fast_header
from medsynth.io.quarantine import DEFAULT_MAX_VOXELS, QuarantineEntry, SeriesError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
NOT_DICOM = "not a DICOM file (no DICM preamble and no DICOM image attributes)"
# a child process is forked for every this many files (up to the cores): below it, forking and sending the
# headers back cost more than reading them here
FILES_PER_SCAN_PROCESS = 200

Classified = tuple[str, str, FastHeader | None]  # (kind, series key or reason, fast header)


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


def scan_processes(n_files: int, workers: int | None = None) -> int:
    """The child processes a scan forks: ``workers`` when it is above 1 (``--workers``; 1: none), else by
    default one per :data:`FILES_PER_SCAN_PROCESS` files, at most one per core, and none below that."""
    if workers is not None:
        return workers if workers > 1 else 0
    if n_files < FILES_PER_SCAN_PROCESS:
        return 0
    return min(os.cpu_count() or 1, math.ceil(n_files / FILES_PER_SCAN_PROCESS))


@dataclass
class _Share:
    paths: list[Path]
    pid: int = 0  # 0: the caller classifies this share
    read_fd: int = -1


class PendingScan:
    """A scan under way (:func:`start_scan`); :meth:`result` returns the :class:`DicomScan`."""

    def __init__(self, root: Path, paths: list[Path], max_voxels: int, processes: int) -> None:
        self.root, self.paths, self.max_voxels = root, paths, max_voxels
        self._shares = [_Share(paths)]
        if processes > 0 and len(paths) > 1 and hasattr(os, "fork") and threading.active_count() == 1:  # no fork beside threads
            size = math.ceil(len(paths) / processes)
            self._shares = [self._fork(paths[i:i + size]) for i in range(0, len(paths), size)]

    def _fork(self, paths: list[Path]) -> _Share:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: classify, send, exit without running the parent's clean-up
            code = 1
            try:
                os.close(read_fd)
                data = pickle.dumps([_classify(p, self.max_voxels) for p in paths], protocol=pickle.HIGHEST_PROTOCOL)
                with os.fdopen(write_fd, "wb") as out:
                    out.write(data)
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        return _Share(paths, pid, read_fd)

    def _gather(self, share: _Share) -> list[Classified]:
        if share.pid == 0:
            return [_classify(p, self.max_voxels) for p in share.paths]
        with os.fdopen(share.read_fd, "rb") as src:
            data = src.read()
        _, status = os.waitpid(share.pid, 0)
        share.pid = 0
        if status == 0 and data:
            try:
                kinds = pickle.loads(data)
                if len(kinds) == len(share.paths):
                    return kinds
            except Exception:  # noqa: BLE001 - a child cut short: its share is classified here
                pass
        return [_classify(p, self.max_voxels) for p in share.paths]

    def result(self, progress: Callable[[Path], None] | None = None) -> DicomScan:
        """Wait for the children and group the classified files into series, in file order."""
        kinds = [k for share in self._shares for k in self._gather(share)]
        series: dict[str, list[Path]] = defaultdict(list)
        segs: list[Path] = []
        quarantine: list[QuarantineEntry] = []
        nifti: list[Path] = []
        headers: dict[Path, FastHeader] = {}
        for path, (kind, detail, header) in zip(self.paths, kinds, strict=True):
            if header is not None:
                headers[path] = header
            if progress:
                progress(path)
            if kind == "nifti":
                nifti.append(path)
            elif kind == "seg":
                segs.append(path)
            elif kind == "bad":
                quarantine.append(QuarantineEntry(_rel(path, self.root), detail))
            else:
                series[detail].append(path)
        return DicomScan(dict(series), segs, quarantine, nifti, headers)


def start_scan(root: Path, files: Iterable[Path] | None = None, max_voxels: int = DEFAULT_MAX_VOXELS,
               workers: int | None = None) -> PendingScan:
    """Start classifying every file under ``root`` (or ``files``) in the child processes
    :func:`scan_processes` gives for ``workers`` (none: the caller classifies them in
    :meth:`PendingScan.result`). A deflated file that inflates past the limit for ``max_voxels`` is
    quarantined without being inflated."""
    root = Path(root)
    paths = list(files) if files is not None else discover_files(root)
    return PendingScan(root, paths, max_voxels, scan_processes(len(paths), workers))


def scan_folder(root: Path, files: Iterable[Path] | None = None, progress: Callable[[Path], None] | None = None,
                max_voxels: int = DEFAULT_MAX_VOXELS, workers: int | None = None) -> DicomScan:
    """:func:`start_scan` and its result: every file classified, image files grouped into series."""
    return start_scan(root, files, max_voxels, workers).result(progress)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
