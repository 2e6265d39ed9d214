"""The fast header reader answers as pydicom does, on every file it accepts (single-frame, enhanced multi-frame, and the
header alone of compressed and big-endian files), and leaves the rest to pydicom."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medsynth.io.dicom import discover_files, ge_diffusion, philips_diffusion, raw_little_endian_pixels, stack_key
from medsynth.io.dicom_fast import EXPLICIT_LE, IMPLICIT_LE, ITEM_TAGS, TAGS, FastHeader, is_not_dicom, read_fast_header, read_image_header
from medsynth.io.quarantine import SeriesError
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
        for derived in (stack_key, ge_diffusion, philips_diffusion):  # what the vendor private elements make of them
            assert derived(header) == derived(full), (path.name, derived.__name__)
        np.testing.assert_array_equal(header.pixel_array(), raw_little_endian_pixels(full), err_msg=path.name)
    assert accepted > 0, f"{root}: the fast reader accepted no file"


def test_shared_corpus_is_mostly_read_fast():
    files = _dicom_files(SHARED / "dicom")
    if not files:
        pytest.skip("../shared/data/dicom is not present")
    fast = sum(read_image_header(p) is not None for p in files)
    assert fast / len(files) > 0.9  # uncompressed files: all but the compressed and big-endian ones


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


@pytest.mark.parametrize("implicit", [False, True])
def test_the_private_elements_that_split_a_series_read_as_pydicom_reads_them(tmp_path, implicit):
    """GE diffusion and image type, Philips cardiac phase, dynamic scan time and ASL label: what
    ``stack_key`` and the diffusion readers make of them is the same through both readers."""
    from pydicom.uid import ImplicitVRLittleEndian

    for vendor, elements in {
        "GE MEDICAL SYSTEMS": [((0x0019, 0x0010), "LO", "GEMS_ACQU_01"), ((0x0019, 0x10BB), "DS", "0.57735"),
                               ((0x0019, 0x10BC), "DS", "-0.57735"), ((0x0019, 0x10BD), "DS", "0.57735"), ((0x0019, 0x10E0), "DS", "0.000000"),
                               ((0x0021, 0x0010), "LO", "GEMS_RELA_01"), ((0x0021, 0x105A), "SL", 0),
                               ((0x0043, 0x0010), "LO", "GEMS_PARM_01"), ((0x0043, 0x102F), "SS", 1), ((0x0043, 0x1030), "SS", 3),
                               ((0x0043, 0x1039), "IS", ["1000001000", "8", "0", "0"])],
        "Philips Medical Systems": [((0x2001, 0x0010), "LO", "Philips Imaging DD 001"), ((0x2001, 0x1003), "FL", 1000.0),
                                    ((0x2001, 0x1008), "IS", "3"), ((0x2005, 0x0010), "LO", "Philips MR Imaging DD 001"),
                                    ((0x2005, 0x10A0), "FL", 0.25), ((0x2005, 0x0014), "LO", "Philips MR Imaging DD 005"),
                                    ((0x2005, 0x1429), "CS", "LABEL")],
    }.items():
        path = _written(tmp_path, Manufacturer=vendor, TriggerTime="250", RepetitionTime="3000", EchoTime="30", FlipAngle="90",
                        ProtocolName="dwi", StudyDate="20180918", StudyTime="114023.5", ImageType=["ORIGINAL", "PRIMARY", "P", "ND"])
        ds = pydicom.dcmread(path)
        for tag, vr, value in elements:
            ds.add_new(tag, vr, value)
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
        header, full = read_image_header(path), pydicom.dcmread(path)
        assert header is not None
        key = dict(stack_key(header))
        assert stack_key(header) == stack_key(full) and key["real/imaginary/phase"] == (False, False, True)
        assert key["TR"] == 3000.0 and key["study date/time"] == 20180918114023.5
        if vendor.startswith("GE"):
            assert ge_diffusion(header) == ge_diffusion(full) == (1000.0, (0.57735, -0.57735, 0.57735))
        else:
            assert key["trigger time"] is None  # an ASL label image: its trigger time never splits
            assert philips_diffusion(header) == philips_diffusion(full)


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


def _items_equal(fast_items, full_items, where: str) -> int:
    """Every ITEM_TAGS value of every item (recursively) equal; the number of values compared."""
    assert len(fast_items) == len(full_items), where
    compared = 0
    for i, (fast, full) in enumerate(zip(fast_items, full_items, strict=True)):
        for keyword in ITEM_TAGS:
            assert (keyword in fast) == (keyword in full), (where, i, keyword)
            if keyword not in full:
                continue
            if full[keyword].VR == "SQ":
                compared += _items_equal(fast.get(keyword), list(full[keyword].value), f"{where}[{i}].{keyword}")
            else:
                assert _as_plain(fast.get(keyword)) == _as_plain(full.get(keyword)), (where, i, keyword)
                compared += 1
    return compared


@pytest.mark.parametrize("root", _corpora(), ids=lambda p: p.name)
def test_enhanced_objects_read_as_pydicom_reads_them(root):
    """An enhanced multi-frame object's functional groups answer as pydicom's, and the frames the
    converter makes of them (geometry, scaling, split and time keys, pixels) are the same."""
    from medsynth.io.dicom import enhanced_slices, is_enhanced

    enhanced = [(p, h) for p in _dicom_files(root) if (h := read_image_header(p)) is not None and h.frame_groups]
    if not enhanced:
        pytest.skip(f"{root.name}: no uncompressed enhanced object")
    for path, header in enhanced:
        full = pydicom.dcmread(path)
        assert is_enhanced(header) and is_enhanced(full)
        compared = 0
        for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            assert (keyword in header) == (keyword in full), (path.name, keyword)
            if keyword in full:
                compared += _items_equal(header.get(keyword), list(full[keyword].value), f"{path.name}:{keyword}")
        assert compared >= 3 * int(full.NumberOfFrames), path.name  # at least position, orientation and spacing a frame
        fast_slices, full_slices = enhanced_slices(path, header), enhanced_slices(path, full)
        assert len(fast_slices) == len(full_slices) == int(full.NumberOfFrames)
        for a, b in zip(fast_slices, full_slices, strict=True):
            np.testing.assert_array_equal(a.iop, b.iop)
            np.testing.assert_array_equal(a.ipp, b.ipp)
            assert (a.pixel_spacing, a.slope, a.intercept, a.split_key, a.time_key, a.rows, a.cols) == \
                (b.pixel_spacing, b.slope, b.intercept, b.split_key, b.time_key, b.rows, b.cols), (path.name, a.frame)
            np.testing.assert_array_equal(a.pixels(), b.pixels(), err_msg=f"{path.name} frame {a.frame}")


def test_the_shared_enhanced_objects_are_read_fast():
    files = _dicom_files(SHARED / "dicom" / "dcm_qa_enh" / "In")
    if not files:
        pytest.skip("../shared/data/dicom/dcm_qa_enh is not present")
    headers = [read_image_header(p) for p in files]
    assert all(h is not None and h.frame_groups for h in headers), [p.name for p, h in zip(files, headers, strict=True) if h is None]
    philips = next(h for h in headers if "PHILIPS" in h.get("Manufacturer").upper())
    per_frame = philips.get("PerFrameFunctionalGroupsSequence")
    assert len(per_frame) == philips.frames() == 64
    # the Philips private per-frame item the scale slope is read from, as pydicom shows it
    private = per_frame[0].get((0x2005, 0x140F))
    assert private is not None and private.VR == "SQ" and len(private.value) == 1


@pytest.mark.parametrize("root", _corpora(), ids=lambda p: p.name)
def test_a_compressed_or_big_endian_file_is_classified_from_its_header_alone(root):
    """Its header's attributes are pydicom's and the scan gives it the kind and series key pydicom's scan
    gives; a single-frame grey-level one keeps its header for the series (its pixels are decoded without
    pydicom: tests/io/test_compressed_pixels.py), any other is left to pydicom (no header)."""
    from medsynth.io.dicom.compressed import natively_decodable
    from medsynth.io.dicom.scan import _classify_with_pydicom, _classify_without_pydicom

    encoded = [(p, h) for p in _dicom_files(root) if (h := read_fast_header(p)) is not None and h.transfer_syntax not in (IMPLICIT_LE, EXPLICIT_LE)]
    if not encoded:
        pytest.skip(f"{root.name}: no compressed or big-endian file")
    big_endian = native = 0
    for path, header in encoded:
        full = pydicom.dcmread(path, stop_before_pixels=True)
        big_endian += str(full.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.2"
        for keyword in TAGS:
            assert _as_plain(header.get(keyword)) == _as_plain(full.get(keyword)), (path.name, keyword)
        assert read_image_header(path) is None
        kind, key, series_header = _classify_without_pydicom(path)
        assert (kind, key) == _classify_with_pydicom(path)[:2], path.name
        assert header.header_only is not natively_decodable(header)
        assert (series_header is not None) is (not header.header_only), path.name
        native += not header.header_only
    if root == SHARED / "dicom":
        assert len(encoded) >= 7 and big_endian >= 1  # dcm_qa_ts: RLE, JPEG, JPEG-LS, JPEG 2000, explicit big endian
        assert native == len(encoded)  # all single-frame MONOCHROME2


@pytest.mark.parametrize("root", _corpora(), ids=lambda p: p.name)
def test_the_values_kept_per_series_never_read_the_attributes_their_key_leaves_out(root, monkeypatch):
    """classic_slice computes split key, rescale and diffusion once per group of headers that differ only in
    PER_IMAGE_TAGS: that is sound only while those computations never read them. Every keyword read (get,
    `in`) while computing them is recorded, on every single-frame file of each corpus."""
    from medsynth.io.dicom import slices

    per_image = {kw for kw, (tag, _vr) in TAGS.items() if tag in slices.PER_IMAGE_TAGS}
    assert per_image == {"SOPInstanceUID", "InstanceNumber", "ImagePositionPatient"}
    read: set[str] = set()
    get, contains = FastHeader.get, FastHeader.__contains__
    monkeypatch.setattr(FastHeader, "get", lambda self, kw, default=None: (read.add(kw), get(self, kw, default))[1])
    monkeypatch.setattr(FastHeader, "__contains__", lambda self, kw: (read.add(kw), contains(self, kw))[1])
    computed = 0
    for path in _dicom_files(root):
        header = read_fast_header(path)
        if header is None or header.frames() != 1:
            continue
        slices._shared_values.clear()
        try:
            slices._image_values(header)
        except SeriesError:
            pass
        computed += 1
    assert read and not read & per_image, sorted(read & per_image)
    if root == SHARED / "dicom":
        assert computed > 600 and {"Manufacturer", "RepetitionTime", "RescaleSlope"} <= read


def test_images_of_one_series_share_the_values_computed_once(tmp_path):
    """Two GE slices differing only in position and instance number: the second reuses the first's values
    (the same objects); changing the echo time (a split attribute) gives new values."""
    from medsynth.io.dicom import slices

    src = sorted((SHARED / "dicom" / "dcm_qa_nih" / "In" / "20180918GE" / "mr_0004").glob("*.dcm"))[:2]
    slices._shared_values.clear()
    a, b = (slices.classic_slice(p, read_fast_header(p)) for p in src)
    assert a.split_key is b.split_key and not np.array_equal(a.ipp, b.ipp)
    ds = pydicom.dcmread(src[1])
    ds.EchoTime = float(ds.EchoTime) + 5
    ds.save_as(tmp_path / "echo.dcm")
    c = slices.classic_slice(tmp_path / "echo.dcm", read_fast_header(tmp_path / "echo.dcm"))
    assert c.split_key is not a.split_key and c.split_key != a.split_key
    assert dict(c.split_key)["echo"] != dict(a.split_key)["echo"]
