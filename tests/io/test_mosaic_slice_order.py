"""Siemens mosaics whose slice numbering is reversed: dcm2niix reverses the slices it writes when the CSA
image header's ProtocolSliceNumber is above 1 (nii_dicom_batch.cpp, sliceTimingCore: sliceDir = -1, then
saveDcm2Nii's nii_flipZ), and moves the affine's origin to the last slice and negates its slice axis with
them: the same voxels at the same places. ``sSliceArray.ucImageNumb`` in the CSA series header
(nii_SaveBIDSX) only prints a warning: it sets ProtocolSliceNumber on that function's copy of the header.
medsynth writes every volume on the closest RAS axes, so neither changes its output; these tests hold it to
dcm2niix on the shared mosaic with its CSA headers rewritten."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medsynth.io.siemens_csa import read_csa
from tests.conftest import shared
from tests.io.test_vendor_formats import _assert_converts_as_dcm2niix

CSA_IMAGE, CSA_SERIES = 0x00291010, 0x00291020


def _rewrite_csa(raw: bytes, name: str, change: Callable[[list[bytes]], list[bytes]]) -> bytes:
    """A CSA2 header ("SV10") with the items of tag ``name`` replaced by ``change(items)``, every other tag as it was."""
    assert raw[:4] == b"SV10"
    n_tags = struct.unpack_from("<I", raw, 8)[0]
    out, pos = bytearray(raw[:16]), 16
    for _ in range(n_tags):
        tag_name, vm, vr, syngodt, n_items, check = struct.unpack_from("<64si4s3i", raw, pos)
        pos += 84
        items = []
        for _ in range(n_items):
            length, mark = struct.unpack_from("<4i", raw, pos)[1:3]
            items.append((mark, raw[pos + 16:pos + 16 + length]))
            pos += 16 + length + (-length % 4)
        if tag_name.split(b"\x00", 1)[0].decode() == name:
            mark = items[0][0] if items else 77
            items = [(mark, value) for value in change([v for _m, v in items])]
        out += struct.pack("<64si4s3i", tag_name, vm, vr, syngodt, len(items), check)
        for mark, value in items:
            out += struct.pack("<4i", len(value), len(value), mark, len(value)) + value + b"\x00" * (-len(value) % 4)
    return bytes(out + raw[pos:])


def _mosaic(tmp_path: Path, element: int, name: str, change: Callable[[list[bytes]], list[bytes]]) -> Path:
    ds = pydicom.dcmread(shared("dicom", "dcm_qa_ts", "In", "1.dcm"))  # 35 oblique slices in 6 x 6 tiles
    ds[element].value = _rewrite_csa(ds[element].value, name, change)
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "1.dcm", enforce_file_format=True)
    return tmp_path / "in"


def _protocol_slice_number(items: list[bytes]) -> list[bytes]:
    return [b"34\x00"]


def _uc_image_numb(items: list[bytes]) -> list[bytes]:
    assert b"### ASCCONV END" in items[0]
    return [items[0].replace(b"### ASCCONV END", b"sSliceArray.ucImageNumbTra\t = 0x1\n### ASCCONV END", 1)]


def test_the_csa_rewrite_keeps_every_other_tag():
    raw = pydicom.dcmread(shared("dicom", "dcm_qa_ts", "In", "1.dcm"))[CSA_IMAGE].value
    assert _rewrite_csa(raw, "no such tag", lambda items: items) == raw
    rewritten = read_csa(_rewrite_csa(raw, "ProtocolSliceNumber", _protocol_slice_number))
    original = read_csa(raw)
    assert rewritten["ProtocolSliceNumber"] == ["34"] and original["ProtocolSliceNumber"] == ["0"]
    assert {k: v for k, v in rewritten.items() if k != "ProtocolSliceNumber"} == {k: v for k, v in original.items() if k != "ProtocolSliceNumber"}


def _dcm2niix_raw(folder: Path, out: Path) -> tuple[np.ndarray, np.ndarray, str]:
    exe = shutil.which("dcm2niix")
    if exe is None:
        pytest.skip("dcm2niix is not installed (pip install -e '.[test]')")
    out.mkdir()
    run = subprocess.run([exe, "-b", "n", "-z", "n", "-o", str(out), str(folder)], check=True, capture_output=True, text=True)
    (path,) = out.glob("*.nii")
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine, run.stdout


def test_a_reversed_protocol_slice_number_reverses_dcm2niix_storage_only(tmp_path):
    """dcm2niix writes the slices last to first, with an affine that puts each where it was."""
    (tmp_path / "plain_in").mkdir()
    shutil.copy(shared("dicom", "dcm_qa_ts", "In", "1.dcm"), tmp_path / "plain_in" / "1.dcm")
    plain, plain_aff, _ = _dcm2niix_raw(tmp_path / "plain_in", tmp_path / "plain")
    folder = _mosaic(tmp_path, CSA_IMAGE, "ProtocolSliceNumber", _protocol_slice_number)
    flipped, flipped_aff, log = _dcm2niix_raw(folder, tmp_path / "flipped")
    assert "ProtocolSliceNumber" in log
    assert not np.array_equal(flipped, plain)
    np.testing.assert_array_equal(flipped[:, :, ::-1], plain)
    last = plain.shape[2] - 1
    np.testing.assert_allclose(flipped_aff @ [0, 0, last, 1], plain_aff @ [0, 0, 0, 1], atol=1e-3)
    np.testing.assert_allclose(flipped_aff[:3, 2], -plain_aff[:3, 2], atol=1e-5)


@pytest.mark.parametrize(("element", "name", "change"), [(CSA_IMAGE, "ProtocolSliceNumber", _protocol_slice_number),
                                                         (CSA_SERIES, "MrPhoenixProtocol", _uc_image_numb)], ids=["ProtocolSliceNumber", "ucImageNumb"])
def test_a_mosaic_with_reversed_slice_numbering_converts_as_dcm2niix(tmp_path, element, name, change):
    folder = _mosaic(tmp_path, element, name, change)
    (vol,), quarantine = _assert_converts_as_dcm2niix(folder, tmp_path / "ref")
    assert not quarantine and vol.shape == (64, 64, 35)
