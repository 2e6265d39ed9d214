"""Shared machinery of the privacy tests: real DICOM sources, table-driven canary planting, and a
byte-level scan of output files for canaries and original identifiers."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.conftest import SHARED

# identifying values that are long enough to be searched for without chance matches
ORIGINAL_ATTRIBUTES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
                       "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "PatientBirthDate")


def ct_dataset() -> Dataset:
    """An empty CT Image Storage dataset with its file meta and a new SOP Instance UID (explicit VR little endian)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def deid_data_dir() -> Path:
    """The real DICOM of the PyPI package deid-data (CT, ultrasound with burned-in text, fake PHI)."""
    try:
        import deid_data
    except ImportError:
        pytest.skip("deid-data is not installed (pip install -e '.[test]' installs it)")
    return Path(deid_data.__file__).parent / "data"


def real_dicom_files(per_folder: int = 3) -> list[Path]:
    """A few files of every shared dcm_qa folder plus every deid-data file: real scanners, real headers."""
    if not (SHARED / "dicom").is_dir():
        pytest.skip(f"{SHARED / 'dicom'} not present: the shared real-data folder is needed")
    by_folder: dict[Path, list[Path]] = {}
    for f in sorted((SHARED / "dicom").glob("*/In/**/*.dcm")):
        by_folder.setdefault(f.parent, []).append(f)
    files = [f for fs in by_folder.values() for f in fs[:per_folder]]
    return files + sorted(deid_data_dir().rglob("*.dcm"))


def walk_elements(ds: pydicom.Dataset, prefix: tuple = ()) -> Iterator[tuple[tuple, pydicom.DataElement]]:
    """Every non-sequence element, nested sequences included, with its path (tags and item indices)."""
    for elem in ds:
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                yield from walk_elements(item, prefix + (elem.tag, i))
        else:
            yield prefix + (elem.tag,), elem


def element_at(ds: pydicom.Dataset, path: tuple) -> pydicom.DataElement | None:
    cur = ds
    for step in path[:-1]:
        if isinstance(step, int):
            if step >= len(cur):
                return None
            cur = cur[step]
        else:
            if step not in cur:
                return None
            cur = cur[step].value
    return cur.get(path[-1])


def originals_of(ds: pydicom.Dataset) -> set[str]:
    out = set()
    for name in ORIGINAL_ATTRIBUTES:
        v = str(ds.get(name, "") or "")
        if len(v) >= 8:
            out.add(v)
    return out


def plant_canaries(ds: pydicom.Dataset, canary: str, counter: list[int]) -> None:
    """A unique canary in every text attribute that the shipped PS3.15 E.1-1 table (with the options in
    use) removes, replaces or cleans -- in nested sequences and private tags too -- plus a private block
    and the classic identifying attributes."""
    from medsynth.config import DeidConfig
    from medsynth.io.deid import Deidentifier, DeidKey

    d = Deidentifier(DeidConfig(retain_safe_private=True), DeidKey(b"planting-only-key-0123", "file", True))
    _plant(ds, canary, counter, d)
    blk = ds.private_block(0x0011, "CANARY PACS", create=True)
    counter[0] += 1
    blk.add_new(0x01, "LO", f"{canary}{counter[0]:05d}")
    ds.InstitutionName = f"{canary}INST"
    ds.PatientName = f"{canary}^NAME"
    ds.OtherPatientIDsSequence = [pydicom.Dataset()]
    ds.OtherPatientIDsSequence[0].PatientID = f"{canary}OTHERID"


def _plant(ds, canary, counter, d) -> None:
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _plant(item, canary, counter, d)
            continue
        text = elem.VR in ("LO", "SH", "PN", "LT", "ST", "UT", "UC")
        if text and (elem.tag.is_private and not elem.tag.is_private_creator or (d.action_for(f"{int(elem.tag):08x}") or "K") != "K"):
            counter[0] += 1
            elem.value = f"{canary}{counter[0]:05d}"


def output_bytes(root: Path, skip_prefixes: tuple[str, ...] = ()) -> Iterator[tuple[Path, bytes]]:
    """Every file under ``root`` as bytes (gzip decompressed; base64 images of HTML left out: random
    letters, not identifiers)."""
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel.startswith(skip_prefixes):
            continue
        data = p.read_bytes()
        if p.name.endswith(".gz"):
            data = gzip.decompress(data)
        if p.suffix == ".html":
            data = re.sub(rb"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", b"", data)
        yield p, data
