"""The fast header reader answers as pydicom does, on every file it accepts, and leaves the rest to pydicom."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medsynth.io.dicom import discover_files, raw_little_endian_pixels
from medsynth.io.dicom_fast import TAGS, is_not_dicom, read_image_header
from tests.conftest import SHARED


def _dicom_files(root: Path) -> list[Path]:
    skip = (".txt", ".md", ".json", ".nii", ".png", ".log", ".gz", ".csv", ".py", ".pyc")
    return [p for p in discover_files(root) if not p.name.endswith(skip) and "LICENSE" not in p.name]


def _corpora() -> list[Path]:
    roots = [SHARED / "dicom", Path(pydicom.__file__).parent / "data" / "test_files"]
    try:
        import deid_data

        roots.append(Path(deid_data.__file__).parent)
    except ImportError:
        pass
    return [r for r in roots if r.exists()]


def _as_plain(value):
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [_as_plain(v) for v in value]
    if isinstance(value, (int, float)):
        return float(value)
    return str(value)


@pytest.mark.parametrize("root", _corpora(), ids=lambda p: p.name)
def test_every_accepted_file_reads_as_pydicom_reads_it(root):
    files = _dicom_files(root)
    accepted = 0
    for path in files:
        header = read_image_header(path)
        if header is None:
            continue
        accepted += 1
        full = pydicom.dcmread(path, force=True)
        for keyword in TAGS:
            assert _as_plain(header.get(keyword)) == _as_plain(full.get(keyword)), (path.name, keyword)
        np.testing.assert_array_equal(header.pixel_array(), raw_little_endian_pixels(full), err_msg=path.name)
    assert accepted > 0, f"{root}: the fast reader accepted no file"


def test_shared_corpus_is_mostly_read_fast():
    files = _dicom_files(SHARED / "dicom")
    if not files:
        pytest.skip("../shared/data/dicom is not present")
    fast = sum(read_image_header(p) is not None for p in files)
    assert fast / len(files) > 0.9  # single-frame uncompressed files: all but mosaics, enhanced, compressed


def _written(tmp_path: Path, **attrs) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = MRImageStorage, generate_uid(), generate_uid()
    ds.Modality, ds.Rows, ds.Columns = "MR", 4, 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 16, 16, 15, 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [0, 0, 0], [1, 0, 0, 0, 1, 0], [1, 1]
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = np.arange(16, dtype=np.uint16).tobytes()
    path = tmp_path / "f.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_utf8_text_is_decoded_and_iso2022_text_is_left_to_pydicom(tmp_path):
    path = _written(tmp_path, SpecificCharacterSet="ISO_IR 192", SeriesDescription="Schädel – axial")
    assert read_image_header(path).get("SeriesDescription") == pydicom.dcmread(path).SeriesDescription == "Schädel – axial"
    path = _written(tmp_path, SpecificCharacterSet=["ISO 2022 IR 6", "ISO 2022 IR 87"], SeriesDescription="axial")
    assert read_image_header(path) is None


def test_an_undefined_length_un_sequence_is_walked_as_implicit_vr(tmp_path):
    """A private sequence stored as UN of undefined length (its items implicit VR, PS3.5 6.2.2)."""
    path = _written(tmp_path, SeriesDescription="with a UN sequence")
    ds = pydicom.dcmread(path)
    ds.add_new((0x0009, 0x0010), "LO", "TEST")
    ds.add_new((0x0009, 0x1010), "OB", b"PLACEHOLDER!")
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    placeholder = b"\x09\x00\x10\x10OB\x00\x00" + struct.pack("<I", 12) + b"PLACEHOLDER!"
    assert raw.count(placeholder) == 1
    inner = struct.pack("<HHI", 0x0009, 0x1011, 4) + b"\x20\x00\x0d\x00"  # implicit; bytes that look like a tag
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    un = b"\x09\x00\x10\x10UN\x00\x00" + struct.pack("<I", 0xFFFFFFFF) + item + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    path.write_bytes(raw.replace(placeholder, un))
    header = read_image_header(path)
    assert header is not None and header.get("SeriesDescription") == "with a UN sequence"
    np.testing.assert_array_equal(header.pixel_array(), np.arange(16, dtype=np.uint16).reshape(4, 4))


def test_not_dicom_is_only_what_cannot_start_a_data_set(tmp_path):
    text = tmp_path / "README.txt"
    text.write_text("a series description\n" * 10)
    assert is_not_dicom(text)
    path = _written(tmp_path)
    without_preamble = tmp_path / "raw.dcm"
    without_preamble.write_bytes(path.read_bytes()[132:])  # starts with the file meta group
    assert not is_not_dicom(path) and not is_not_dicom(without_preamble)
    assert read_image_header(without_preamble) is None  # pydicom reads files without the preamble
