"""Enhanced objects of one series that hold a partial volume, built by rewriting the shared Siemens XA10 enhanced
objects (4 files, one 64 x 64 x 6 volume each) and compared with dcm2niix run on the same files (number of
outputs, voxels, affine):

* an object with fewer frames (a truncated last volume): dcm2niix's isSameSet compares the image dimensions,
  so it is written apart from the others;
"""

from __future__ import annotations

from collections.abc import Callable

import pydicom
import pytest
from pydicom.sequence import Sequence

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
