"""De-identification self-check: after ingest has written its outputs, search them for the original
direct identifiers it saw (in memory only) and refuse to hand the outputs on if one is found.

What is searched for, per DICOM file, before de-identification, at any depth of its sequences: the
patient's name and every person name (whole, and each name part of 4+ characters, split on ^, = and
spaces, unless the part is a word that cleaned descriptors keep: "Post", "Head"), IDs, the birth date
(as YYYYMMDD, YYYY-MM-DD, DD.MM.YYYY, DD/MM/YYYY, MM/DD/YYYY, "22 Nov 1958", "22 November 1958",
"November 22, 1958"), accession number, institution names, and every UID (study, series, instance,
frame of reference, referenced instances...); per input file, the parts of its path
that look like identifiers (8+ characters, letters and digits: ``DOE_JANE_MRN555123``) and the input
folder itself. Every value is searched for, also where the de-identified data keep the same text on
purpose (an MRN copied into a kept acquisition parameter): a hit is a finding, never exempted.

Where: every output file of the stage -- CSV, JSON, the de-identified DICOM copies (header bytes, pixel
data excluded) and the NIfTI headers and extensions (not the voxels). Matching ignores ASCII case and is
by whole tokens (UIDs: digits and dots; names and IDs: letters, digits, ^ _ -; dates in the renderings
above), which is linear in the bytes scanned; values with other characters (spaces, non-ASCII letters)
are searched as substrings.

A finding names the kind of identifier and the file, never the value.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from medsynth.io.deid import VENDOR_VOCABULARY, element_values

DIRECT_IDENTIFIERS = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "PatientBirthDate", "IssuerOfPatientID", "AccessionNumber", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "RequestingPhysician", "ResponsiblePerson", "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator",
    "StudyID",
)
_UID_TOKEN = re.compile(rb"[0-9]+(?:\.[0-9]+){3,}")
_WORD_TOKEN = re.compile(rb"[a-z0-9^_\-]{4,}")
_WORD = re.compile(rb"[a-z0-9^_\-]+")
_MONTH = rb"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
_DATE_TOKEN = re.compile(rb"\d{1,4}[./-]\d{1,2}[./-]\d{2,4}|\d{1,2}[ -]" + _MONTH + rb"[ ,-]+\d{4}|" + _MONTH + rb" \d{1,2},? \d{4}")
_MIN_LEN = 6
_MONTHS = "January February March April May June July August September October November December".split()
# what the de-identifier itself writes: an original equal to one of these identifies nobody
PLACEHOLDERS = {b"anonymous", b"anonymized", b"19000101", b"19000101000000"}


def _norm_date(token: bytes) -> bytes:
    return re.sub(rb"[ ,.-]+", b" ", token) if re.search(rb"[a-z]", token) else token


def date_renderings(value: str) -> list[str]:
    """A DICOM date (YYYYMMDD) as people and programs write it."""
    try:
        d = _dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return []
    month = _MONTHS[d.month - 1]
    mon = month[:3]
    return [d.strftime(f) for f in ("%Y-%m-%d", "%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y")] + [
        f"{d.day} {mon} {d.year}", f"{d.day:02d} {mon} {d.year}", f"{d.day} {month} {d.year}", f"{month} {d.day} {d.year}"]


@dataclass
class IdentifierSet:
    """Original identifying values (in memory only, lower case) -> the kind of identifier, for messages."""

    tokens: dict[bytes, str] = field(default_factory=dict)
    phrases: dict[bytes, str] = field(default_factory=dict)  # values with other characters: substring search

    def __len__(self) -> int:
        return len(self.tokens) + len(self.phrases)

    def _put(self, value: str, kind: str, min_len: int = _MIN_LEN) -> None:
        v = value.strip()
        b = v.lower().encode("utf-8", "ignore")
        if len(b) < min_len or b in PLACEHOLDERS:
            return
        if _WORD.fullmatch(b) or _UID_TOKEN.fullmatch(b):
            self.tokens[b] = kind
            return
        # the scan lowers ASCII letters only: a non-ASCII value is searched in lower and in upper case,
        # in UTF-8 and in Latin-1 (ISO_IR 100)
        for enc in ("utf-8", "latin-1"):
            for form in (v.lower(), v.upper()):
                p = form.encode(enc, "ignore").lower()
                if len(p) >= min_len:
                    self.phrases[p] = kind

    def add(self, value: str, kind: str, vr: str = "") -> None:
        v = value.strip()
        self._put(v, kind)
        if vr == "PN":
            for part in re.split(r"[\^= ,.]+", v):
                if part.lower() not in VENDOR_VOCABULARY:  # words cleaned descriptors keep by design ("Post", "Head")
                    self._put(part, kind, 4)
        elif vr == "DA" and re.fullmatch(r"\d{8}", v) and v.encode() not in PLACEHOLDERS:
            for r in date_renderings(v):
                self.tokens[_norm_date(r.lower().encode())] = kind

    def add_path(self, rel: str) -> None:
        """The identifier-like parts of an input file's path (relative to the input folder)."""
        for part in Path(rel).parts:
            stem = re.sub(r"(\.(dcm|ima|nii|gz|img|hdr))+$", "", part, flags=re.IGNORECASE)
            b = stem.lower().encode("utf-8", "surrogateescape")  # a name that is not valid UTF-8: its bytes
            if len(stem) >= 8 and re.search(r"[A-Za-z]", stem) and re.search(r"\d", stem) and _WORD.fullmatch(b):
                self.tokens.setdefault(b, "input path")

    def update(self, other: IdentifierSet) -> None:
        self.tokens.update(other.tokens)
        self.phrases.update(other.phrases)


def identifiers_of(ds: Dataset, out: IdentifierSet | None = None) -> IdentifierSet:
    """Direct identifiers and person names of ``ds`` and every UID in it, nested sequences included."""
    out = out if out is not None else IdentifierSet()
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                identifiers_of(item, out)
        elif not elem.value:
            continue
        elif elem.keyword in DIRECT_IDENTIFIERS or elem.VR == "PN":
            for v in element_values(elem):
                out.add(str(v), elem.keyword or "person name", elem.VR)
        elif elem.VR == "UI":
            for v in element_values(elem):  # standard SOP class / transfer syntax UIDs are not identifiers
                if str(v).count(".") >= 3 and not str(v).startswith("1.2.840.10008."):
                    out.add(str(v), f"UID ({elem.keyword or 'private'})")
    return out


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
    tokens = identifiers.tokens
    for path in paths if paths is not None else sorted(p for p in root.rglob("*") if p.is_file()):
        data = _searchable_bytes(path).lower()
        scanned += 1
        rel = path.relative_to(root).as_posix()
        kinds = set()
        for tok in _UID_TOKEN.findall(data):
            if tok in tokens:
                kinds.add(tokens[tok])
        for tok in _WORD_TOKEN.findall(data):
            if tok in tokens:
                kinds.add(tokens[tok])
            elif b"^" in tok:
                kinds.update(tokens[p] for p in tok.split(b"^") if p in tokens)
        for tok in _DATE_TOKEN.findall(data):
            if _norm_date(tok) in tokens:
                kinds.add(tokens[_norm_date(tok)])
        for phrase, kind in identifiers.phrases.items():
            if phrase in data:
                kinds.add(kind)
        findings += [(rel, k) for k in sorted(kinds)]
    return scanned, findings
