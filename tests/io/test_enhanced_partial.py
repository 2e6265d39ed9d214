"""Enhanced objects of one series that hold a partial volume, built by rewriting the shared Siemens XA10 enhanced
objects (4 files, one 64 x 64 x 6 volume each) and compared with dcm2niix run on the same files (number of
outputs, voxels, affine):

* an object with fewer frames (a truncated last volume): dcm2niix's isSameSet compares the image dimensions,
  so it is written apart from the others;
* a Siemens partial volume (nii_dicom.cpp, issue 742): an object of more than one slice other than the frames
  the 21st '_'-separated field of its ICE dims long (0021,118E) expects (2 or more; the first element that
  gives a positive number counts) is marked derived, its series number plus 1000: written apart.
"""

from __future__ import annotations

from collections.abc import Callable

import pydicom
import pytest
from pydicom.sequence import Sequence

from medsynth.io.dicom import enhanced_slices
from medsynth.io.dicom_fast import read_image_header
from tests.io.test_dcm2niix_merges import _xa10_rewritten
from tests.io.test_vendor_formats import _assert_converts_as_dcm2niix


def _truncate(ds: pydicom.Dataset, frames: int) -> None:
    """Keep the first ``frames`` frames of an enhanced object (functional groups and pixel data)."""
    n = int(ds.NumberOfFrames)
    ds.PerFrameFunctionalGroupsSequence = Sequence(list(ds.PerFrameFunctionalGroupsSequence)[:frames])
    ds.PixelData = ds.PixelData[:len(ds.PixelData) // n * frames]
    ds.NumberOfFrames = frames


def _truncated(files: set[int], frames: int = 3) -> Callable[[pydicom.Dataset, int], None]:
    def change(ds: pydicom.Dataset, i: int) -> None:
        if i in files:
            _truncate(ds, frames)
    return change


TRUNCATED = {  # name -> (change, sorted output shapes dcm2niix writes)
    "last object cut to 3 frames": (_truncated({3}), [(64, 64, 3), (64, 64, 6, 3)]),
    "first object cut to 3 frames": (_truncated({0}), [(64, 64, 3), (64, 64, 6, 3)]),
    "last two objects cut to 3 frames": (_truncated({2, 3}), [(64, 64, 3, 2), (64, 64, 6, 2)]),
}


@pytest.mark.parametrize("name", list(TRUNCATED))
def test_an_object_with_fewer_frames_is_written_apart_as_dcm2niix_writes_it(tmp_path, name):
    change, shapes = TRUNCATED[name]
    folder = _xa10_rewritten(tmp_path / "in", change)
    vols, quarantine = _assert_converts_as_dcm2niix(folder, tmp_path / "ref", n_outputs=len(shapes))
    assert not quarantine
    assert sorted(v.shape for v in vols) == shapes
    assert all(any("split" in n and "slices per volume" in n for n in v.notes) for v in vols)


def _ice_long(frames: int | str) -> str:
    """An ICE dims long text whose 21st field is ``frames``."""
    return "_".join(["X", *["1"] * 19, str(frames), "1", "1"])


def _with_ice(ds: pydicom.Dataset, text: str, where: str) -> None:
    """(0021,118E) ``text`` at the top level (block of 'SIEMENS MR SDI 02') or in each frame's Siemens item."""
    if where == "top":
        ds.private_block(0x0021, "SIEMENS MR SDI 02", create=True).add_new(0x8E, "LO", text)
    else:
        for frame in ds.PerFrameFunctionalGroupsSequence:
            frame[0x002111FE].value[0].add_new(0x0021118E, "LO", text)


def _ice(frames: Callable[[int], int | str], where: str = "frame", cut: set[int] = frozenset(), top: str | None = None,
         manufacturer: str | None = None) -> Callable[[pydicom.Dataset, int], None]:
    """ICE dims long of object i expecting ``frames(i)`` (in each frame's item, or ``where`` 'top'); the objects
    ``cut`` truncated to 3 frames; ``top``: a top-level (0021,118E) text besides; ``manufacturer`` set."""
    def change(ds: pydicom.Dataset, i: int) -> None:
        if i in cut:
            _truncate(ds, 3)
        if top is not None:
            _with_ice(ds, top, "top")
        _with_ice(ds, _ice_long(frames(i)), where)
        if manufacturer is not None:
            ds.Manufacturer = manufacturer
    return change


def _last(last: int, others: int = 6) -> Callable[[int], int]:
    return lambda i: last if i == 3 else others


def _empty_field(ds: pydicom.Dataset, i: int) -> None:
    """The last object's ICE text with an empty second field ('X__1_...'): strtok skips it, so the 21st field
    is the 12 still (counting the empty field, it would be a 1)."""
    _with_ice(ds, _ice_long(12 if i == 3 else 6).replace("X_", "X__", 1), "frame")


PARTIAL = {  # name -> (change, sorted output shapes dcm2niix writes, partial volumes dcm2niix warns of)
    "last object cut to 3 frames, ICE 6": (_ice(_last(6), cut={3}), [(64, 64, 3), (64, 64, 6, 3)], 1),
    "full last object, ICE 12": (_ice(_last(12)), [(64, 64, 6), (64, 64, 6, 3)], 1),
    "full last object, ICE 12 at the top level": (_ice(_last(12), where="top"), [(64, 64, 6), (64, 64, 6, 3)], 1),
    "last two objects, ICE 12": (_ice(lambda i: 12 if i >= 2 else 6), [(64, 64, 6, 2), (64, 64, 6, 2)], 1),
    "last two objects cut to 3 frames, ICE 6": (_ice(_last(6), cut={2, 3}), [(64, 64, 3, 2), (64, 64, 6, 2)], 1),
    "an empty field skipped (strtok)": (_empty_field, [(64, 64, 6), (64, 64, 6, 3)], 1),
    "a top-level ICE without 21 fields, the frames' 12": (_ice(_last(12), top="X_1_1_1_1"), [(64, 64, 6), (64, 64, 6, 3)], 1),
    "every object ICE 6": (_ice(_last(6)), [(64, 64, 6, 4)], 0),
    "last object ICE 1 (below 2: none)": (_ice(_last(1)), [(64, 64, 6, 4)], 0),
    "a top-level ICE 6 read first, the frames' 12": (_ice(_last(12), top=_ice_long(6)), [(64, 64, 6, 4)], 0),
    "a top-level ICE 1 read first (stops the reading), the frames' 12": (_ice(_last(12), top=_ice_long(1)), [(64, 64, 6, 4)], 0),
    "GE objects, ICE 12 (Siemens only)": (_ice(_last(12), manufacturer="GE MEDICAL SYSTEMS"), [(64, 64, 6, 4)], 0),
}


@pytest.mark.parametrize("name", list(PARTIAL))
def test_a_siemens_partial_volume_is_written_apart_as_dcm2niix_writes_it(tmp_path, name):
    change, shapes, n_partial = PARTIAL[name]
    folder = _xa10_rewritten(tmp_path / "in", change)
    vols, quarantine = _assert_converts_as_dcm2niix(folder, tmp_path / "ref", n_outputs=len(shapes))
    assert not quarantine
    assert sorted(v.shape for v in vols) == shapes
    noted = [n for v in vols for n in v.notes if "partial volume (issue 742)" in n and n.startswith("Series 6")]
    assert len(noted) == n_partial
    if n_partial:
        partial = next(v for v in vols if any(n in noted for n in v.notes))
        assert partial.shape[2] == (3 if "cut" in name else 6)
        assert "(series 1006)" in noted[0] and f"{partial.shape[2]} slices acquired" in noted[0]


@pytest.mark.parametrize("where", ["top", "frame"])
def test_the_ice_dims_long_reads_the_same_through_both_readers(tmp_path, where):
    folder = _xa10_rewritten(tmp_path / "in", _ice(_last(12), where=where))
    for path in sorted(folder.glob("*.dcm")):
        fast = read_image_header(path)
        assert fast is not None and fast.frame_groups
        fast_keys = [s.split_key for s in enhanced_slices(path, fast)]  # type: ignore[arg-type]
        assert fast_keys == [s.split_key for s in enhanced_slices(path, pydicom.dcmread(path))]
        assert dict(fast_keys[0])["partial volume"] == ((6, 12) if path.name == "6_4.dcm" else None)
