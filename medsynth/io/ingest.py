"""Ingest: raw DICOM / NIfTI / MedMNIST npz -> de-identified RAS NIfTI cases + manifest + quarantine.

Order of work, so that nothing downstream ever sees identifying data:

1. every DICOM file is de-identified in memory and written to ``dicom/`` under pseudonymous folders;
2. conversion reads only those de-identified copies;
3. NIfTI inputs get their free-text header fields cleared;
4. labels (condition, mask) are matched to cases by the original relative path, PatientID or
   SeriesInstanceUID -- that look-up lives in memory only and is never written;
5. outputs name cases by keyed pseudonyms; quarantine rows name input files, series and labels CSV
   rows by keyed ids (``medsynth locate`` maps an id back on the machine that holds the raw data).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medsynth import __version__
from medsynth.cohort import write_manifest
from medsynth.config import DEFAULT_MAX_VOXELS, DataConfig, DeidConfig
from medsynth.io.convert import ConvertedVolume, iter_volumes
from medsynth.io.deid import BurnedInTextError, Deidentifier, DeidKey, Pseudonymizer
from medsynth.io.dicom import QuarantineEntry, SeriesError, discover_files, is_nifti, read_image_dataset
from medsynth.io.labels import LabelRow, LabelsError
from medsynth.io.labels import read_labels as read_labels_csv
from medsynth.io.nifti import clean_header, load_nifti_checked, make_ras_image, nifti_on_grid, resample_mask_to
from medsynth.io.phi_scan import IdentifierSet, identifiers_of, scan_outputs
from medsynth.io.pool import process_pool
from medsynth.io.seg import SegMask, mask_on_image
from medsynth.io.writers import remove_stale_temps, write_csv_atomic, write_json_atomic, write_nifti_atomic

QUARANTINE_FIELDS = ["file_id", "kind", "reason"]
DEID_LOG_FIELDS = ["patient", "study", "series", "instance", "removed", "emptied", "dummied", "cleaned", "uids_replaced", "kept",
                   "unlisted_removed"]


class IngestError(RuntimeError):
    pass


@dataclass
class IngestResult:
    cases: list[dict]
    quarantine: list[dict]
    summary: dict = field(default_factory=dict)


def read_labels(path: Path) -> dict[str, LabelRow]:
    """The labels CSV's rows by case (:func:`medsynth.io.labels.read_labels`); an IngestError naming the file and the line for one ingest cannot use."""
    try:
        return read_labels_csv(path)
    except LabelsError as exc:
        raise IngestError(str(exc)) from None


def check_mask_paths(labels: dict[str, LabelRow], input_dir: Path, labels_path: Path | None) -> set[Path]:
    """The resolved paths of the masks the labels name; an IngestError with the line for a mask that is
    absolute, lies outside ``input_dir`` (``../``, a link out) or is missing."""
    root = Path(input_dir).resolve()
    paths = set()
    for r in labels.values():
        if not r.mask:
            continue
        p = (root / r.mask).resolve()
        if Path(r.mask).is_absolute() or not p.is_relative_to(root):
            raise IngestError(f"{labels_path}:{r.line}: mask {r.mask!r} lies outside data.input: name masks by their path "
                              "relative to data.input, inside it")
        if not p.is_file():
            raise IngestError(f"{labels_path}:{r.line}: mask file {r.mask!r} not found under data.input")
        paths.add(p)
    return paths


def _sanitize_reason(reason: str, roots: list[Path], file: Path | None = None) -> str:
    """A quarantine reason that names no input path: the file's path, any path under a root (also one a
    message cut short) and the file's name become <file>; a root becomes <input>."""
    if file is not None:
        f = Path(file).resolve()
        forms = {str(file), str(f)} | {str(f.relative_to(r.resolve())) for r in roots if f.is_relative_to(r.resolve())}
        for form in sorted(forms, key=len, reverse=True):  # the longest first: a path before its tail
            reason = reason.replace(form, "<file>")
    for r in roots:
        for form in {str(Path(r).resolve()), str(r)}:
            reason = re.sub(r"(?<![\w.-])" + re.escape(form.rstrip("/") + "/") + r"[^\s'\"]*", "<file>", reason)
    if file is not None and len(Path(file).name) >= 4:
        reason = reason.replace(Path(file).name, "<file>")
    for r in roots:
        reason = reason.replace(str(Path(r).resolve()), "<input>")
    return reason


# --------------------------------------------------------------------------- DICOM de-identification


@dataclass
class _SeriesKeys:
    """What identifies one (de-identified) series in the labels CSV. In memory only."""

    rel_files: set[str] = field(default_factory=set)
    patient_id: str = ""
    series_uid: str = ""
    patient: str = ""


@dataclass
class DeidTree:
    """What :func:`deidentify_tree` found: series keys by (patient pseudonym, de-identified SeriesInstanceUID), quarantine rows,
    de-identification log rows, NIfTI files, the original identifiers (memory only) for the
    self-check of the outputs, and ``origins`` (memory only): for each de-identified file and each folder
    above it (relative to the output folder), the first input file (relative to the input folder) it holds."""

    keys: dict[tuple[str, str], _SeriesKeys]
    quarantine: list[dict]
    log: list[dict]
    niftis: list[Path]
    identifiers: IdentifierSet
    origins: dict[str, str] = field(default_factory=dict)

    def first_original(self, deid_paths: list[str]) -> str | None:
        """The first input file behind the de-identified files or folders ``deid_paths``; None if none is known."""
        found = [self.origins[p] for p in deid_paths if p in self.origins]
        return min(found) if found else None


class DeidSelfCheckError(IngestError):
    pass


INGEST_OUTPUTS = ("images", "masks", "dicom", "manifest.csv", "quarantine.csv", "deid_log.csv", "ingest.json")


def self_check(out_dir: Path, identifiers: IdentifierSet, delete: tuple[str, ...] = (), only: list[Path] | None = None) -> dict:
    """Search every output under ``out_dir`` for the original identifiers. On a finding, delete the
    outputs named in ``delete`` and raise; the message names the kind of identifier and the file, never
    the value."""
    scanned, findings = scan_outputs(out_dir, identifiers, only)
    if findings:
        for name in delete:
            target = Path(out_dir) / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        by_kind: dict[str, list[str]] = defaultdict(list)
        for rel, kind in findings:
            by_kind[kind].append(rel)
        listed = "; ".join(f"{kind}: {len(files)} file(s), e.g. {files[0]}" for kind, files in sorted(by_kind.items()))
        raise DeidSelfCheckError(
            f"de-identification self-check failed: original identifiers found in the outputs ({listed}). "
            + (f"The outputs under {out_dir} were deleted. " if delete else "Do not share these outputs. ")
            + "This is a bug: please report it with the kinds and files above."
        )
    return {"files_scanned": scanned, "identifiers_searched": len(identifiers), "findings": 0}


_NOT_IMAGES = (".csv", ".txt", ".md", ".json", ".xml", ".html", ".pdf")
_WORKER_DEID: Deidentifier | None = None


def _init_worker(cfg: DeidConfig, key: DeidKey, version: str) -> None:
    global _WORKER_DEID
    _WORKER_DEID = Deidentifier(cfg, key, version=version)


def _deid_files(input_dir: Path, out_dir: Path, rels: list[str], deid: Deidentifier | None = None,
                max_voxels: int = DEFAULT_MAX_VOXELS) -> list[dict]:
    """De-identify and write each file of ``rels``; one result per file, in order (worker or in-process)."""
    deid = deid or _WORKER_DEID
    assert deid is not None
    out: list[dict[str, Any]] = []
    for rel in rels:
        path = input_dir / rel
        if path.suffix.lower() in _NOT_IMAGES and path.name.lower() != "dicomdir":
            out.append({"rel": rel, "reason": f"not an image file ({path.suffix.lower()})"})
            continue
        try:
            ds = read_image_dataset(path, max_voxels)  # the one full read: checked, then de-identified in memory
            orig_pid = str(ds.get("PatientID", "") or "")
            orig_series = str(ds.get("SeriesInstanceUID", "") or "")
            before = identifiers_of(ds)
            res = deid.deidentify(ds)
        except (SeriesError, BurnedInTextError) as exc:
            out.append({"rel": rel, "reason": _sanitize_reason(str(exc), [input_dir], path)})
            continue
        except Exception as exc:
            out.append({"rel": rel, "reason": f"cannot de-identify: {type(exc).__name__}"})
            continue
        dest = out_dir / res.patient / res.study / res.series / f"{res.instance}.dcm"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res.dataset.save_as(dest, enforce_file_format=True)
        a = res.actions
        out.append({
            "rel": rel, "dest": str(dest.relative_to(out_dir)),
            "series_uid": str(res.dataset.get("SeriesInstanceUID", "")), "orig_pid": orig_pid, "orig_series": orig_series,
            "patient": res.patient, "originals": before,
            "log": {"patient": res.patient, "study": res.study, "series": res.series, "instance": res.instance,
                    "removed": a["X"], "emptied": a["Z"], "dummied": a["D"], "cleaned": a["C"], "uids_replaced": a["U"], "kept": a["K"],
                    "unlisted_removed": a["unlisted"]},
        })
    return out


def deidentify_tree(
    input_dir: Path,
    out_dir: Path,
    deid: Deidentifier,
    progress: Callable[[str], None] | None = None,
    skip: set[Path] | None = None,  # resolved paths to leave alone (masks, the labels CSV)
    workers: int | None = 1,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> DeidTree:
    """De-identify every DICOM file under ``input_dir`` into ``out_dir/<patient>/<study>/<series>/``,
    in ``workers`` processes (None: all cores); results are merged in file order, so the outputs do not
    depend on the number of processes. A file declaring more than ``max_voxels`` is quarantined unread."""
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    keys: dict[tuple[str, str], _SeriesKeys] = defaultdict(_SeriesKeys)
    quarantine: list[dict] = []
    log: list[dict] = []
    niftis: list[Path] = []
    originals = IdentifierSet()
    origins: dict[str, str] = {}
    for root in {str(input_dir.absolute()), str(input_dir.resolve())}:
        originals.add(root, "input path")
    rels: list[str] = []
    for path in discover_files(input_dir):
        originals.add_path(str(path.relative_to(input_dir)))
        if skip and path.resolve() in skip:
            continue
        if is_nifti(path):
            niftis.append(path)
        else:
            rels.append(str(path.relative_to(input_dir)))
    workers = workers if workers is not None else (os.cpu_count() or 1)
    chunk = max(16, len(rels) // (max(workers, 1) * 8) or 1)
    chunks = [rels[i : i + chunk] for i in range(0, len(rels), chunk)]

    def results():  # in file order, as the chunks complete
        if workers > 1 and len(chunks) > 1:
            with process_pool(workers, initializer=_init_worker, initargs=(deid.cfg, deid.key, deid.version)) as pool:
                n = len(chunks)
                for part in pool.map(_deid_files, [input_dir] * n, [out_dir] * n, chunks, [None] * n, [max_voxels] * n):
                    yield from part
        else:
            for c in chunks:
                yield from _deid_files(input_dir, out_dir, c, deid, max_voxels)

    for r in results():
        if progress:
            progress(r["rel"])
        if "reason" in r:
            quarantine.append({"file_id": deid.pseudo.file_id(r["rel"]), "kind": "file", "reason": r["reason"]})
            continue
        dest = Path(r["dest"])
        for d in (dest, *dest.parents[:-1]):  # the file and every folder above it, up to the output folder
            if str(d) not in origins or r["rel"] < origins[str(d)]:
                origins[str(d)] = r["rel"]
        k = keys[(r["patient"], r["series_uid"])]  # one UID reused for two patients' series: two series
        k.rel_files.add(r["rel"])
        k.patient_id, k.series_uid, k.patient = r["orig_pid"], r["orig_series"], r["patient"]
        originals.update(r["originals"])
        log.append(r["log"])
    return DeidTree(dict(keys), quarantine, log, niftis, originals, origins)


# --------------------------------------------------------------------------- label matching


class LabelConflict(Exception):
    """Rows of the labels CSV that name one case under different keys and disagree; the message gives their lines."""

    def __init__(self, lines: list[int]):
        super().__init__(f"labels CSV lines {' and '.join(map(str, lines))} name this series under different keys (path, "
                         "PatientID, SeriesInstanceUID) with a different condition, mask or patient: keep one row")


def _match_label(labels: dict[str, LabelRow], candidates: list[str], used: set[str]) -> tuple[str, LabelRow] | None:
    """The row of the first candidate (the most specific first) the labels name; a :class:`LabelConflict`
    when another candidate's row disagrees with it. Every matching key is added to ``used``."""
    found = {c.strip("/"): labels[c.strip("/")] for c in candidates if c.strip("/") in labels}
    used.update(found)
    if not found:
        return None
    (key, row), *others = found.items()
    clash = [(k, r) for k, r in others if (r.condition, r.mask, r.patient) != (row.condition, row.mask, row.patient)]
    if clash:
        raise LabelConflict([row.line] + [r.line for _, r in clash])
    return key, row


_MASK_NAME = re.compile(r"(^|[_.\-])(mask|masks|seg|segmentation|label|labels|labelmap)([_.\-]|$)", re.IGNORECASE)


def _looks_like_mask(path: Path, img: nib.Nifti1Image) -> bool:
    """A NIfTI file named like a mask (``segmentation_mask.nii.gz``) that holds at most 32 integer labels."""
    if not _MASK_NAME.search(path.name):
        return False
    data = np.asarray(img.dataobj)
    return bool(np.all(data == np.round(data))) and np.unique(data).size <= 32


def _dicom_candidates(k: _SeriesKeys) -> list[str]:
    cands = []
    parents: set[str] = set()
    for rel in sorted(k.rel_files):
        cands.append(rel)
        p = Path(rel).parent
        while str(p) not in ("", "."):
            parents.add(str(p))
            p = p.parent
    # deepest folders first so a series folder wins over its patient folder
    cands += sorted(parents, key=lambda s: (-s.count("/"), s))
    cands += [k.series_uid, k.patient_id]
    return [c for c in cands if c]


# --------------------------------------------------------------------------- main entry


@dataclass(frozen=True)
class _Inputs:
    """What ingest reads besides the images: the labels CSV rows by case and the files to leave out of the
    image search (the masks the rows name, the labels CSV itself), as resolved paths."""

    labels: dict[str, LabelRow]
    skip: set[Path]


@dataclass(frozen=True)
class _Run:
    """What every conversion step of one ingest reads and none changes."""

    input_dir: Path
    out_dir: Path
    data_cfg: DataConfig
    labels: dict[str, LabelRow]
    pseudo: Pseudonymizer
    tree: DeidTree

    # Quarantine ids name what medsynth locate finds in the input with the key: a file by its path
    # (file_id), a series by the path of its first file (series_id), a labels CSV row by its case
    # (label_id). Conversion sees only the de-identified copies; tree.origins leads back to the input.
    def series_qid(self, deid_paths: list[str]) -> str:
        first = self.tree.first_original(deid_paths)
        return self.pseudo.series_id(first) if first is not None else self.pseudo.file_id(deid_paths[0])

    def file_qid(self, deid_path: str) -> str:
        first = self.tree.first_original([deid_path])
        return self.pseudo.file_id(first if first is not None else deid_path)


@dataclass
class _Collected:
    """What the conversion steps gather: manifest rows, quarantine rows (in the order met) and the keys of
    the labels CSV rows matched to a case."""

    cases: list[dict] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)
    used_labels: set[str] = field(default_factory=set)

    def quarantined(self, file_id: str, kind: str, reason: str) -> None:
        self.quarantine.append({"file_id": file_id, "kind": kind, "reason": reason})


def _discover_inputs(input_dir: Path, out_dir: Path, labels_path: Path | None) -> _Inputs:
    """The labels CSV rows and the files they name; an IngestError for a missing input folder, an output
    folder inside it (or holding it), an unusable labels CSV or a mask it names that is outside or missing."""
    if not input_dir.is_dir():
        raise IngestError(f"{input_dir}: data.input folder not found")
    if out_dir.resolve().is_relative_to(input_dir.resolve()) or input_dir.resolve().is_relative_to(out_dir.resolve()):
        raise IngestError(f"{out_dir}: the output folder lies inside data.input {input_dir} (or holds it): the raw input is "
                          "only read, never written")
    labels = read_labels(labels_path) if labels_path else {}
    mask_paths = check_mask_paths(labels, input_dir, labels_path)
    return _Inputs(labels, mask_paths | ({Path(labels_path).resolve()} if labels_path else set()))


def _clear_outputs(out_dir: Path) -> None:
    """Empty image, mask and DICOM folders, and no temporary file of a run killed while writing."""
    for sub in ("images", "masks", "dicom"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)  # left by a run killed while writing manifest.csv, ingest.json, ...


def _add_case(run: _Run, got: _Collected, img: nib.Nifti1Image, patient: str, case_id: str, modality: str,
              label: tuple[str, LabelRow] | None, source: str, qid: str, seg: SegMask | None = None) -> None:
    """Write one converted volume (and its mask) as a case, or quarantine it: not 3D, a modality not
    selected, or a mask that does not fit the image."""
    data_cfg = run.data_cfg
    if img.ndim != 3:
        got.quarantined(qid, "series", f"{img.ndim}D volume {img.shape}: the cohort takes 3D volumes only")
        return
    if data_cfg.modality and modality != data_cfg.modality:
        got.quarantined(qid, "series", f"modality {modality} not selected (data.modality: {data_cfg.modality})")
        return
    condition = label[1].condition if label is not None else data_cfg.default_condition
    mask_arr = None
    try:
        if label is not None and label[1].mask:  # a mask named in the labels CSV wins over a DICOM SEG
            mask_img = load_nifti_checked(run.input_dir / label[1].mask, data_cfg.max_voxels)
            mask_arr = resample_mask_to(nib.as_closest_canonical(mask_img), img)
        elif seg is not None:
            mask_arr = mask_on_image(seg, img)
    except SeriesError as exc:
        mask_name = label[1].mask if label is not None and label[1].mask else None
        mask_path = run.input_dir / mask_name if mask_name else None
        mask_qid = run.pseudo.file_id(os.path.normpath(mask_name)) if mask_name else run.file_qid(seg.source) if seg else qid
        got.quarantined(mask_qid, "mask", _sanitize_reason(f"mask unusable: {exc}", [run.input_dir], mask_path))
        return
    write_nifti_atomic(run.out_dir / "images" / f"{case_id}.nii.gz", clean_header(img, descrip=f"medsynth {case_id} de-identified"))
    if mask_arr is not None:
        write_nifti_atomic(run.out_dir / "masks" / f"{case_id}.nii.gz", nifti_on_grid(mask_arr, img.affine, f"medsynth {case_id} mask"))
    got.cases.append({
        "case_id": case_id, "patient": patient, "condition": condition, "modality": modality,
        "shape": "x".join(str(s) for s in img.shape),
        "spacing": "x".join(f"{float(z):.4g}" for z in img.header.get_zooms()[:3]),
        "source": source, "has_mask": int(mask_arr is not None), "split": "",
    })


def _convert_dicom(run: _Run, got: _Collected, workers: int | None, progress: Callable[[str], None] | None) -> None:
    """Every series of the de-identified copies (never the input) -> a case. SEG masks arrive first; each
    is matched to the series it references (the keyed UID replacement keeps those references intact)."""
    segs: dict[str, SegMask] = {}
    matched_segs: set[str] = set()
    for item in iter_volumes(run.out_dir / "dicom", workers=workers, progress=progress, max_voxels=run.data_cfg.max_voxels):
        if isinstance(item, QuarantineEntry):
            got.quarantined(run.series_qid([item.path]), "series", _sanitize_reason(item.reason, [run.out_dir]))
            continue
        if isinstance(item, SegMask):
            for uid in item.referenced_series:
                segs.setdefault(uid, item)
            continue
        assert isinstance(item, ConvertedVolume)
        k = run.tree.keys.get((item.patient_id, item.series_uid), _SeriesKeys())
        patient = item.patient_id or k.patient
        case_id = f"{patient}-{run.pseudo.short_id('case', item.series_uid + item.source, 8)}"
        seg = segs.get(item.series_uid)
        if seg is not None:
            matched_segs.add(seg.source)
        qid = run.series_qid(item.source_files or [item.source])
        try:
            label = _match_label(run.labels, _dicom_candidates(k), got.used_labels)
        except LabelConflict as exc:
            got.quarantined(qid, "label", str(exc))
            continue
        _add_case(run, got, item.image, patient, case_id, item.modality or "OT", label, "dicom", qid, seg)
    for source in sorted({s.source for s in segs.values()} - matched_segs):
        got.quarantined(run.file_qid(source), "mask", "DICOM SEG: the image series it references is not in the input")


def _convert_niftis(run: _Run, got: _Collected) -> None:
    """Every NIfTI input -> a RAS case with a cleared header; one named and shaped like a mask that no labels
    CSV row names is quarantined instead of becoming a patient."""
    for path in run.tree.niftis:
        rel = str(path.relative_to(run.input_dir))
        try:
            img = load_nifti_checked(path, run.data_cfg.max_voxels)
        except SeriesError as exc:
            got.quarantined(run.pseudo.file_id(rel), "file", _sanitize_reason(str(exc), [run.input_dir], path))
            continue
        label = _match_label(run.labels, [rel], got.used_labels)
        if label is None and _looks_like_mask(path, img):
            got.quarantined(run.pseudo.file_id(rel), "mask", "looks like a mask (named so, at most 32 integer labels) that no labels "
                            "CSV row names in 'mask': name it there, or move it out of data.input")
            continue
        patient_key = (label[1].patient if label and label[1].patient else None) or f"nifti:{rel}"
        patient = run.pseudo.patient("id:" + patient_key if label and label[1].patient else patient_key)
        ras = make_ras_image(np.asarray(img.dataobj), img.affine)
        _add_case(run, got, ras, patient, f"{patient}-{run.pseudo.short_id('case', rel, 8)}", run.data_cfg.nifti_modality, label, "nifti",
                  run.pseudo.file_id(rel))


def _quarantine_unmatched_labels(run: _Run, got: _Collected) -> None:
    for key_ in sorted(set(run.labels) - got.used_labels):
        got.quarantined(run.pseudo.label_id(key_), "label", "labels CSV row matched no converted case")


def _write_tables(out_dir: Path, got: _Collected, deid_log: list[dict]) -> None:
    write_manifest(out_dir / "manifest.csv", got.cases)
    write_csv_atomic(out_dir / "quarantine.csv", got.quarantine, QUARANTINE_FIELDS)
    write_csv_atomic(out_dir / "deid_log.csv", deid_log, DEID_LOG_FIELDS)


def _summary(got: _Collected, deid_log: list[dict], deid: Deidentifier, key: DeidKey) -> dict:
    """ingest.json but its self-check: counts of cases, patients, conditions, modalities, masks and
    quarantine reasons; what de-identification did; condition spelling warnings."""
    cases, quarantine = got.cases, got.quarantine
    totals: Counter[str] = Counter()
    for row in deid_log:
        for f in DEID_LOG_FIELDS[4:]:
            totals[f] += int(row[f])
    summary = {
        "cases": len(cases),
        "patients": len({c["patient"] for c in cases}),
        "by_condition": dict(sorted(Counter(c["condition"] for c in cases).items())),
        "by_modality": dict(sorted(Counter(c["modality"] for c in cases).items())),
        "with_mask": sum(c["has_mask"] for c in cases),
        "quarantined": len(quarantine),
        "quarantine_by_reason": dict(sorted(Counter(_reason_class(q["reason"]) for q in quarantine).items())),
        "deid": {
            "profile": "DICOM PS3.15 Table E.1-1 Basic Application Confidentiality Profile",
            "options": sorted(deid.options),
            "codes": _codes(deid),
            "dicom_files_deidentified": len(deid_log),
            "actions": dict(totals),
            "key_source": key.source,
            "pseudonyms_stable": key.stable,
            "nifti_header_fields_cleared": ["descrip", "aux_file", "db_name", "intent_name", "extensions"],
        },
    }
    summary["warnings"] = condition_spelling_warnings(summary["by_condition"])
    return summary


def _write_summary(out_dir: Path, summary: dict, identifiers: IdentifierSet) -> None:
    """ingest.json with the self-check's result. Every output written before it is searched for the original
    identifiers (all outputs deleted on a finding); ingest.json itself is searched after it is written."""
    summary["deid"]["self_check"] = self_check(out_dir, identifiers, INGEST_OUTPUTS)
    summary["deid"]["self_check"]["files_scanned"] += 1
    write_json_atomic(out_dir / "ingest.json", summary)
    self_check(out_dir, identifiers, INGEST_OUTPUTS, only=[out_dir / "ingest.json"])


def ingest(
    input_dir: Path,
    out_dir: Path,
    data_cfg: DataConfig,
    deid_cfg: DeidConfig,
    key: DeidKey,
    labels_path: Path | None = None,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> IngestResult:
    """De-identify and convert a folder of DICOM/NIfTI into ``out_dir`` (images/, masks/, dicom/, CSVs)."""
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    inputs = _discover_inputs(input_dir, out_dir, labels_path)
    deid = Deidentifier(deid_cfg, key, version=__version__)
    _clear_outputs(out_dir)
    tree = deidentify_tree(input_dir, out_dir / "dicom", deid, progress=progress, skip=inputs.skip, workers=workers,
                           max_voxels=data_cfg.max_voxels)
    run = _Run(input_dir, out_dir, data_cfg, inputs.labels, deid.pseudo, tree)
    got = _Collected(quarantine=list(tree.quarantine))
    _convert_dicom(run, got, workers, progress)
    _convert_niftis(run, got)
    _quarantine_unmatched_labels(run, got)
    got.cases.sort(key=lambda c: c["case_id"])
    if not got.cases:
        raise IngestError(f"{input_dir}: no usable volume found ({len(got.quarantine)} item(s) quarantined; see quarantine.csv)")
    _write_tables(out_dir, got, tree.log)
    summary = _summary(got, tree.log, deid, key)
    _write_summary(out_dir, summary, tree.identifiers)
    return IngestResult(got.cases, got.quarantine, summary)


def condition_spelling_warnings(by_condition: dict[str, int]) -> list[str]:
    """Conditions that differ only in case or spaces ("Normal" beside "normal"): a labels CSV typo that
    would otherwise surface as a tiny extra condition, or as preprocess refusing to split it."""
    groups: dict[str, list[str]] = {}
    for name in by_condition:
        groups.setdefault(" ".join(name.split()).casefold(), []).append(name)
    return [f"conditions {' and '.join(f'{n!r} ({by_condition[n]} case(s))' for n in sorted(names))} differ only in case "
            "or spaces: a typo in the labels CSV?" for names in groups.values() if len(names) > 1]


def _codes(deid: Deidentifier) -> list[dict]:
    from medsynth.io.deid import CID7050

    return [{"code": CID7050[n][0], "meaning": CID7050[n][1], "scheme": "DCM"} for n in ["basic"] + sorted(deid.options)]


def _reason_class(reason: str) -> str:
    return reason.split(":")[0].split("(")[0].strip()[:60]


# --------------------------------------------------------------------------- npz (MedMNIST) source


def ingest_npz(npz_path: Path, out_dir: Path, data_cfg: DataConfig, seed: int) -> IngestResult:
    """A MedMNIST-style ``.npz`` (``{split}_images``, ``{split}_labels``) -> cases with official splits.

    The images are binary shape masks (AdrenalMNIST3D), so each case's mask is ``image > 0``. The
    official test split is divided (stratified, seeded) into ``test`` and the privacy ``holdout``.
    MedMNIST data hold no identifiers; case ids are still pseudonymous.
    """
    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise IngestError(f"{npz_path}: data.input .npz not found")
    z = np.load(npz_path)
    missing = [k for k in ("train_images", "train_labels", "test_images", "test_labels") if k not in z.files]
    if missing:
        raise IngestError(f"{npz_path}: not a MedMNIST-style npz: missing arrays {missing}")
    names = list(data_cfg.npz_class_names)
    shutil.rmtree(out_dir / "dicom", ignore_errors=True)  # an npz holds no DICOM: a stale folder of an earlier input goes
    for sub in ("images", "masks"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)
    rng = np.random.default_rng(seed)
    cases = []
    for split in ("train", "val", "test"):
        if f"{split}_images" not in z.files:
            continue
        imgs, labs = z[f"{split}_images"], z[f"{split}_labels"].reshape(-1)
        idx = np.arange(len(imgs))
        if data_cfg.npz_max_cases:  # 30 % test, 10 % val (at least 4 each), the rest train: n in all
            n = data_cfg.npz_max_cases
            keep = {"test": max(4, round(0.3 * n)), "val": max(4, round(0.1 * n))}
            keep["train"] = n - keep["test"] - keep["val"]
            idx = _stratified_take(labs, keep[split], rng)
        holdout = set()
        if split == "test":
            for c in np.unique(labs[idx]):
                members = idx[labs[idx] == c]
                perm = rng.permutation(members)
                holdout |= set(perm[: len(perm) // 2].tolist())
        for i in idx:
            lab = int(labs[i])
            if lab >= len(names):
                raise IngestError(f"{npz_path}: label {lab} has no name in data.npz_class_names {names}")
            case_id = f"NPZ{split[:2].upper()}{i:05d}"
            vol = imgs[i].astype(np.float32)
            if vol.max() > 1:
                vol = vol / 255.0
            img = nib.Nifti1Image(vol.astype(np.float32), np.eye(4))
            write_nifti_atomic(out_dir / "images" / f"{case_id}.nii.gz", clean_header(img, descrip=f"medsynth {case_id}"))
            m = nib.Nifti1Image((vol > 0.5).astype(np.uint8), np.eye(4))
            write_nifti_atomic(out_dir / "masks" / f"{case_id}.nii.gz", clean_header(m, descrip=f"medsynth {case_id} mask"))
            cases.append({
                "case_id": case_id, "patient": case_id, "condition": names[lab], "modality": "SEG",
                "shape": "x".join(str(s) for s in vol.shape), "spacing": "1x1x1", "source": "npz", "has_mask": 1,
                "split": ("holdout" if i in holdout else split),
            })
    write_manifest(out_dir / "manifest.csv", cases)
    write_csv_atomic(out_dir / "quarantine.csv", [], QUARANTINE_FIELDS)
    write_csv_atomic(out_dir / "deid_log.csv", [], DEID_LOG_FIELDS)
    summary = {
        "cases": len(cases), "patients": len(cases),
        "by_condition": dict(sorted(Counter(c["condition"] for c in cases).items())),
        "by_modality": {"SEG": len(cases)}, "with_mask": len(cases), "quarantined": 0, "quarantine_by_reason": {},
        "deid": {"profile": "not applicable: MedMNIST npz holds no identifiers", "options": [], "codes": [],
                 "dicom_files_deidentified": 0, "actions": {}, "key_source": "none", "pseudonyms_stable": True,
                 "nifti_header_fields_cleared": []},
        "official_splits": True,
    }
    write_json_atomic(out_dir / "ingest.json", summary)
    return IngestResult(cases, [], summary)


def _stratified_take(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """About ``n`` cases in the classes' proportions, at least 2 of each, never more than ``n`` in all
    (rounding and the minimum of 2 once gave 61 of "at most 60")."""
    out = []
    classes, counts = np.unique(labels, return_counts=True)
    takes = [min(max(2, int(round(n * cnt / len(labels)))), cnt) for cnt in counts]
    while sum(takes) > n and max(takes) > 2:
        takes[int(np.argmax(takes))] -= 1  # the largest class gives way
    for c, take in zip(classes, takes, strict=False):
        out.extend(rng.choice(np.flatnonzero(labels == c), size=take, replace=False).tolist())
    return np.array(sorted(out))


def with_demo_input(data_cfg: DataConfig, seed: int, progress=None):
    """Context manager: a temporary folder holding the demo cohort and its labels CSV."""
    from contextlib import contextmanager

    from medsynth.data.demo import generate_demo_cohort

    @contextmanager
    def _ctx():
        tmp = Path(tempfile.mkdtemp(prefix="medsynth-demo-"))
        try:
            generate_demo_cohort(tmp / "raw", data_cfg.demo, seed=seed, progress=progress)
            yield tmp / "raw", tmp / "raw" / "labels.csv"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return _ctx()


__all__ = ["ingest", "ingest_npz", "read_labels", "with_demo_input", "IngestError"]
