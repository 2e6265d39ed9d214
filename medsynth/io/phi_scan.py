"""De-identification self-check: after ingest has written its outputs, search them for the original
direct identifiers it saw (in memory only) and refuse to hand the outputs on if one is found.

What is searched for, per DICOM file, before de-identification: the patient's name (and each name part of
4+ characters), IDs, birth date, accession number, institution and physician names, and every UID (study,
series, instance, frame of reference, referenced instances...). A value that the de-identified dataset
still holds legitimately (kept by the profile, e.g. "SIEMENS" elsewhere) is not a finding.

Where: every output file of the stage -- CSV, JSON, the de-identified DICOM copies (header bytes, pixel
data excluded) and the NIfTI headers and extensions (not the voxels). Matching is by whole tokens
(UIDs: digits and dots; names and IDs: letters, digits, ^ _ -), which is linear in the bytes scanned;
multi-word values (an institution's name) are searched as substrings.

A finding names the kind of identifier and the file, never the value.
"""

from __future__ import annotations

import gzip
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from medsynth.io.deid import element_values

DIRECT_IDENTIFIERS = (
    "PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "AccessionNumber", "InstitutionName",
    "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "RequestingPhysician", "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator", "StudyID",
)
_UID_TOKEN = re.compile(rb"[0-9]+(?:\.[0-9]+){3,}")
_WORD_TOKEN = re.compile(rb"[A-Za-z0-9^_\-]{4,}")
_MIN_LEN = 6


@dataclass
class IdentifierSet:
    """Original identifying values (in memory only) -> the kind of identifier, for messages."""

    tokens: dict[bytes, str] = field(default_factory=dict)
    phrases: dict[bytes, str] = field(default_factory=dict)  # values with spaces: substring search

    def __len__(self) -> int:
        return len(self.tokens) + len(self.phrases)

    def add(self, value: str, kind: str) -> None:
        v = value.strip()
        if len(v) < _MIN_LEN:
            return
        b = v.encode("utf-8", "ignore")
        (self.phrases if (b" " in b or b"," in b) else self.tokens)[b] = kind
        if kind in ("PatientName", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "RequestingPhysician"):
            for part in re.split(r"[\^ ,]+", v):
                if len(part) >= 4:
                    self.tokens[part.encode("utf-8", "ignore")] = kind

    def discard_present_in(self, kept: IdentifierSet) -> None:
        """Drop name/ID values that equal a value the profile keeps on purpose elsewhere (a removed private
        tag saying "SIEMENS" while Manufacturer keeps it). UIDs are never dropped: none is kept."""
        for b in list(self.tokens):
            if not self.tokens[b].startswith("UID") and (b in kept.tokens or b in kept.phrases):
                del self.tokens[b]
        for b in list(self.phrases):
            if b in kept.phrases or b in kept.tokens:
                del self.phrases[b]

    def update(self, other: IdentifierSet) -> None:
        self.tokens.update(other.tokens)
        self.phrases.update(other.phrases)


def identifiers_of(ds: Dataset) -> IdentifierSet:
    """Direct identifiers of ``ds`` (top level) and every UID in it (nested sequences included)."""
    out = IdentifierSet()
    for kw in DIRECT_IDENTIFIERS:
        elem = ds.data_element(kw) if kw in ds else None
        if elem is not None and elem.value:
            for v in element_values(elem):
                out.add(str(v), kw)
    _uids(ds, out)
    return out


_TEXT_VRS = ("LO", "SH", "CS", "ST", "LT", "UT", "UC", "AE", "DS", "IS")


def kept_values_of(ds: Dataset, out: IdentifierSet | None = None) -> IdentifierSet:
    """Text values of a de-identified dataset outside the identifier attributes: what the profile keeps on
    purpose (Manufacturer, cleaned descriptions...), nested sequences included."""
    out = out if out is not None else IdentifierSet()
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                kept_values_of(item, out)
        elif elem.VR in _TEXT_VRS and elem.value and elem.keyword not in DIRECT_IDENTIFIERS:
            for v in element_values(elem):
                out.add(str(v), "kept")
    return out


def _uids(ds: Dataset, out: IdentifierSet) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                _uids(item, out)
        elif elem.VR == "UI" and elem.value:
            for v in element_values(elem):
                if str(v).count(".") >= 3 and not str(v).startswith("1.2.840.10008."):  # standard SOP/transfer-syntax UIDs are not identifiers
                    out.add(str(v), f"UID ({elem.keyword or 'private'})")


def _searchable_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    if path.name.endswith((".nii", ".nii.gz")) and len(data) >= 352:
        vox_offset = int(struct.unpack("<f", data[108:112])[0]) or 352
        return data[: max(352, vox_offset)]  # header + extensions, not the voxels
    if path.suffix == ".dcm":
        cut = data.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
        return data[:cut] if cut > 0 else data
    return data


def scan_outputs(root: Path, identifiers: IdentifierSet, paths: list[Path] | None = None) -> tuple[int, list[tuple[str, str]]]:
    """(files scanned, findings as (file relative to root, kind of identifier)); every file under ``root``
    or only ``paths``."""
    root = Path(root)
    findings: list[tuple[str, str]] = []
    scanned = 0
    for path in paths if paths is not None else sorted(p for p in root.rglob("*") if p.is_file()):
        data = _searchable_bytes(path)
        scanned += 1
        rel = path.relative_to(root).as_posix()
        kinds = set()
        for tok in _UID_TOKEN.findall(data):
            if tok in identifiers.tokens:
                kinds.add(identifiers.tokens[tok])
        for tok in _WORD_TOKEN.findall(data):
            if tok in identifiers.tokens:
                kinds.add(identifiers.tokens[tok])
            elif b"^" in tok:
                kinds.update(identifiers.tokens[p] for p in tok.split(b"^") if p in identifiers.tokens)
        for phrase, kind in identifiers.phrases.items():
            if phrase in data:
                kinds.add(kind)
        findings += [(rel, k) for k in sorted(kinds)]
    return scanned, findings
