"""Which enhanced (multi-frame) objects of one series dcm2niix writes apart, by default: each case rewrites the
four shared Siemens XA10 enhanced files (one 64 x 64 x 6 volume each, one SeriesInstanceUID; the last two
changed) or two copies of the shared Philips object, and compares our volumes with dcm2niix run on the same files.

* dcm2niix's ``isSameSet`` (nii_dicom_batch.cpp) compares one value per file as readDICOMx (nii_dicom.cpp)
  reads it: every tag wherever it is nested, the last one read winning, so the functional groups' TR, flip
  angle and effective echo time count over the top-level ones; top-level EchoNumbers (else the Siemens ICE
  dims' echo), ProtocolName (else SeriesDescription; '_MoCo' for a MOCO ImageType), a derived or phase / real
  ImageType, Modality, Manufacturer and study date/time (not for an early XA object) split;
* an X-ray object (Exposure, no echo time) stacks whatever its TR;
* a Philips, Canon, Bruker, Mediso or unknown vendor's object numbered by DimensionIndexValues is written
  on its own ("4D dataset ... write this immediately").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from medsynth.io.dicom import enhanced_slices
from medsynth.io.dicom_fast import read_image_header
from tests.conftest import shared
from tests.io.test_vendor_formats import _assert_converts_as_dcm2niix, _dcm2niix, _volumes

XA10 = ("dicom", "dcm_qa_enh", "In", "Siemens", "XA10")  # 4 files, 6 frames each, effective echo time 30, TR 500 and flip 52 shared
PHILIPS = ("dicom", "dcm_qa_enh", "In", "Philips", "IM_0027_fMAP.dcm")  # 64 frames: 32 magnitude, 32 field map

Change = Callable[[pydicom.Dataset, int], None]


def _xa10(dest: Path, change: Change) -> Path:
    """The four XA10 files, ``change(ds, t)`` applied to file t (0 to 3)."""
    dest.mkdir(parents=True)
    for t, path in enumerate(sorted(shared(*XA10).glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        change(ds, t)
        ds.save_as(dest / path.name, enforce_file_format=True)
    return dest


def _late(**attrs) -> Change:
    """Set top-level ``attrs`` on files 2 and 3 only."""
    def change(ds: pydicom.Dataset, t: int) -> None:
        if t >= 2:
            for name, value in attrs.items():
                setattr(ds, name, value)
    return change


def _every(**attrs) -> Change:
    def change(ds: pydicom.Dataset, t: int) -> None:
        for name, value in attrs.items():
            setattr(ds, name, value)
    return change


def _both(*changes: Change) -> Change:
    def change(ds: pydicom.Dataset, t: int) -> None:
        for c in changes:
            c(ds, t)
    return change


def _shared_timing(**attrs) -> Change:
    """Files 2 and 3: ``attrs`` in the shared MR timing item (where the real files keep TR and flip angle)."""
    def change(ds: pydicom.Dataset, t: int) -> None:
        if t >= 2:
            for name, value in attrs.items():
                setattr(ds.SharedFunctionalGroupsSequence[0].MRTimingAndRelatedParametersSequence[0], name, value)
    return change


def _no_shared_tr(ds: pydicom.Dataset, t: int) -> None:
    del ds.SharedFunctionalGroupsSequence[0].MRTimingAndRelatedParametersSequence[0].RepetitionTime


def _no_echo_items(ds: pydicom.Dataset, t: int) -> None:
    for frame in ds.PerFrameFunctionalGroupsSequence:
        del frame.MREchoSequence


def _ice_echo(echo: int, frames: slice = slice(None)) -> Change:
    """Files 2 and 3: echo ``echo`` in the ICE dims (0021,1106) of the Siemens per-frame items ``frames``."""
    def change(ds: pydicom.Dataset, t: int) -> None:
        if t >= 2:
            for frame in list(ds.PerFrameFunctionalGroupsSequence)[frames]:
                elem = frame[0x002111FE].value[0][0x00211106]
                parts = elem.value.split("_")
                parts[1] = str(echo)
                elem.value = "_".join(parts)
    return change


def _unassigned(per_frame: bool, **attrs) -> Change:
    """A legacy converted object's unassigned converted attributes: ``attrs`` (a value per file t) in the
    shared (0020,9170) or each per-frame (0020,9171) item."""
    def change(ds: pydicom.Dataset, t: int) -> None:
        item = Dataset()
        for name, values in attrs.items():
            setattr(item, name, values[t])
        if per_frame:
            for frame in ds.PerFrameFunctionalGroupsSequence:
                frame.UnassignedPerFrameConvertedAttributesSequence = Sequence([item])
        else:
            ds.SharedFunctionalGroupsSequence[0].UnassignedSharedConvertedAttributesSequence = Sequence([item])
    return change


def _later_xa(ds: pydicom.Dataset, t: int) -> None:
    """An XA60 object: neither SoftwareVersions nor ImplementationVersionName an early XA release."""
    ds.SoftwareVersions = "syngo MR XA60"
    ds.file_meta.ImplementationVersionName = "SYNGO_MR_XA60A"


def _exposure(ds: pydicom.Dataset, t: int) -> None:
    ds.add_new(0x00181152, "IS", 5)  # Exposure, and no EchoTime: dcm2niix's X-ray image


SPLITS = {  # name -> (change, outputs dcm2niix writes: 2 of files 0-1 and 2-3, or 1 of all four)
    "echo number": (_late(EchoNumbers=2), 2),
    "echo number 2 against 1": (_both(_every(EchoNumbers=1), _late(EchoNumbers=2)), 2),
    "echo number of the Siemens ICE dims": (_ice_echo(2), 2),
    "echo number of the ICE dims of the last frame": (_ice_echo(3, slice(-1, None)), 2),
    "echo number 1 against none on GE (no ICE dims)": (_both(_every(Manufacturer="GE MEDICAL SYSTEMS"), _late(EchoNumbers=1)), 2),
    "protocol name": (_late(ProtocolName="other protocol"), 2),
    "series description without a protocol name": (_both(_every(ProtocolName=""), _late(SeriesDescription="other description")), 2),
    "MOCO image type ('_MoCo' protocol name)": (_late(ImageType=["ORIGINAL", "PRIMARY", "MOCO", "NONE"]), 2),
    "derived image type": (_late(ImageType=["DERIVED", "PRIMARY", "M", "NONE"]), 2),
    "ADC image type": (_late(ImageType=["ORIGINAL", "PRIMARY", "ADC", "NONE"]), 2),
    "phase image type": (_late(ImageType=["ORIGINAL", "PRIMARY", "P", "NONE"]), 2),
    "real image type": (_late(ImageType=["ORIGINAL", "PRIMARY", "R", "NONE"]), 2),
    "modality": (_late(Modality="CT"), 2),
    "vendor": (_late(Manufacturer="GE MEDICAL SYSTEMS"), 2),
    "TR of the shared functional group": (_shared_timing(RepetitionTime=3000), 2),
    "flip angle of the shared functional group": (_shared_timing(FlipAngle=30), 2),
    "top-level TR without one in the functional groups": (_both(_no_shared_tr, _late(RepetitionTime=3000)), 2),
    "top-level echo time without MR echo items": (_both(_no_echo_items, _late(EchoTime=40)), 2),
    "echo time of the unassigned shared attributes": (_both(_no_echo_items, _unassigned(False, EchoTime=[30, 30, 40, 40])), 2),
    "echo number of the unassigned per-frame attributes": (_unassigned(True, EchoNumbers=[1, 1, 2, 2]), 2),
    "study time of a later XA release": (_both(_later_xa, _late(StudyTime="120000")), 2),
    "study date of a later XA release": (_both(_later_xa, _late(StudyDate="20190101")), 2),
    # what dcm2niix does not split on (a split by the top-level attributes alone would)
    "top-level echo time (the effective echo time is read after it)": (_late(EchoTime=40), 1),
    "top-level TR and flip angle (the shared timing item's are read after them)": (_late(RepetitionTime=3000, FlipAngle=30), 1),
    "echo number 1 against none on Siemens (the ICE dims give 1)": (_late(EchoNumbers=1), 1),
    "echo number 2 everywhere, ICE dims echo 2 in files 2 and 3 (read only up to echo 1)": (_both(_every(EchoNumbers=2), _ice_echo(2)), 1),
    "study time of an early XA release (one study UID)": (_late(StudyTime="120000", StudyDate="20190101"), 1),
    "series description besides a protocol name": (_late(SeriesDescription="other description"), 1),
    "MOCO as the last image type value": (_late(ImageType=["ORIGINAL", "PRIMARY", "M", "MOCO"]), 1),
    "X-ray: TR of the shared functional group": (_both(_exposure, _shared_timing(RepetitionTime=3000)), 1),
    "acquisition number, receive coil, trigger time": (_late(AcquisitionNumber=9, ReceiveCoilName="8HRBRAIN", TriggerTime=77), 1),
}


@pytest.mark.parametrize("name", list(SPLITS))
def test_enhanced_objects_of_a_series_are_written_apart_as_dcm2niix_writes_them(tmp_path, name):
    change, n_outputs = SPLITS[name]
    folder = _xa10(tmp_path / "in", change)
    vols, quarantine = _assert_converts_as_dcm2niix(folder, tmp_path / "ref", n_outputs=n_outputs)
    assert not quarantine
    assert sorted(v.shape for v in vols) == ([(64, 64, 6, 2)] * 2 if n_outputs == 2 else [(64, 64, 6, 4)])
    if n_outputs == 2:
        assert all(any(n.startswith("split ") for n in v.notes) for v in vols)
        assert {len(v.source_files) for v in vols} == {2}


def test_the_split_note_names_the_functional_group_attribute(tmp_path):
    vols, _ = _volumes(_xa10(tmp_path / "in", _shared_timing(RepetitionTime=3000)))
    assert {n for v in vols for n in v.notes if n.startswith("split")} == {"split 1/2 of the series by TR", "split 2/2 of the series by TR"}


ALONE = {  # name -> (Manufacturer of every file, DimensionIndexValues kept, outputs dcm2niix writes)
    "Philips": ("Philips Medical Systems", True, 4),
    "Canon": ("CANON_MEC", True, 4),
    "unknown vendor": ("ACME", True, 4),
    "Philips without DimensionIndexValues": ("Philips Medical Systems", False, 1),
    "GE": ("GE MEDICAL SYSTEMS", True, 1),
}


@pytest.mark.parametrize("name", list(ALONE))
def test_an_enhanced_object_numbered_by_dimension_index_values_is_written_alone_as_dcm2niix_writes_it(tmp_path, name):
    """dcm2niix orders the frames of a Philips, Canon, Bruker, Mediso or unknown vendor's object by their
    DimensionIndexValues and writes such an object on its own, whatever the other files of its series."""
    vendor, indexed, n_outputs = ALONE[name]

    def change(ds: pydicom.Dataset, t: int) -> None:
        ds.Manufacturer = vendor
        if not indexed:
            for frame in ds.PerFrameFunctionalGroupsSequence:
                del frame.FrameContentSequence[0].DimensionIndexValues

    folder = _xa10(tmp_path / "in", change)
    vols, quarantine = _assert_converts_as_dcm2niix(folder, tmp_path / "ref", n_outputs=n_outputs)
    assert not quarantine
    assert sorted(v.shape for v in vols) == ([(64, 64, 6)] * 4 if n_outputs == 4 else [(64, 64, 6, 4)])


def test_two_philips_objects_of_one_series_are_written_apart_as_dcm2niix_writes_them(tmp_path):
    """Two copies of the Philips object (the second with its own SOPInstanceUID and a protocol name of its own,
    which changes nothing): four 3D volumes, each copy's magnitude and field map."""
    folder = tmp_path / "in"
    folder.mkdir()
    for t in range(2):
        ds = pydicom.dcmread(shared(*PHILIPS))
        if t:
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber, ds.ProtocolName = 2, "other protocol"
        ds.save_as(folder / f"copy{t}.dcm", enforce_file_format=True)
    refs = _dcm2niix(folder, tmp_path / "ref")
    vols, quarantine = _volumes(folder)
    assert not quarantine and len(refs) == len(vols) == 4
    for want, want_aff in refs:  # within 1e-4 of the range, as the dcm_qa references (float32 Philips scaling of values near 2e8)
        assert any(v.shape == want.shape and np.allclose(v.affine, want_aff, atol=1e-3)
                   and np.max(np.abs(v.data - want)) <= 1e-4 * max(np.max(np.abs(want)), 1.0) for v in vols)
    assert sorted(v.shape for v in vols) == [(64, 64, 32)] * 4
    assert {len(v.source_files) for v in vols} == {1}


@pytest.mark.parametrize("name", ["echo number of the Siemens ICE dims", "TR of the shared functional group",
                                  "echo number of the unassigned per-frame attributes", "MOCO image type ('_MoCo' protocol name)"])
def test_the_split_keys_read_the_same_through_both_readers(tmp_path, name):
    folder = _xa10(tmp_path / "in", SPLITS[name][0])
    keys = set()
    for path in sorted(folder.glob("*.dcm")):
        fast = read_image_header(path)
        assert fast is not None and fast.frame_groups
        fast_keys = [s.split_key for s in enhanced_slices(path, fast)]  # type: ignore[arg-type]
        assert fast_keys == [s.split_key for s in enhanced_slices(path, pydicom.dcmread(path))]
        keys.update(fast_keys)
    assert len(keys) == 2
