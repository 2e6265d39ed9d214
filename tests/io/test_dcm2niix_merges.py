"""Series that dcm2niix (default options: ``-m 2``, ``isForceStackDCE``) stacks across SeriesInstanceUID and
SeriesNumber, each built by rewriting real shared DICOM as the vendor stores it, and compared with dcm2niix
run on the same files (number of outputs, voxels, affine):

* Siemens XA classic ("interoperability") exports: one frame per file, a SeriesInstanceUID (and here a
  StudyInstanceUID and a SeriesNumber) per volume, one SeriesTime: dcm2niix stacks by the series time
  (nii_dicom.cpp, issue 394) and orders the volumes by series number;
* Siemens dynamic (DCE) series, SequenceName '*fldyn3d1', one series per dynamic: stacked by protocol name
  unless the software is an early XA release (issue 252);
* early Siemens XA (XA10-XA31) series numbers 6001, 6002 ... of one SeriesInstanceUID: one series per
  thousand (nii_dicom_batch.cpp ``isSameSet``, issue 236), on the shared XA10 enhanced volumes;
* files of one series and several StudyInstanceUIDs: stacked when their study date/time is the same, or
  (early XA files) when their study UID is (``isSameSet``), on the same volumes;
* early XA files (dcm2niix's isXA10A: SoftwareVersions XA10-XA31, or an ImplementationVersionName (0002,0013)
  with XA10A) of one study UID stack whatever their study time, and are Siemens whatever their Manufacturer;
* a file without ProtocolName or a SeriesDescription of two or more characters takes its SequenceName for the
  protocol name, unless it is Siemens (readDICOMx, after the '_MoCo' rule), classic and enhanced;
* study date/times within 0.0001 of each other stack (isSameSet: isSameFloatDouble on StudyDate * 1e6 +
  StudyTime), which only joins study times of files without a StudyDate.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from medsynth.io.dicom import read_header, stack_key
from medsynth.io.dicom.attributes import siemens_xa
from medsynth.io.dicom_fast import read_image_header
from tests.conftest import shared
from tests.io.test_dcm2niix_splits import _assert_four_volumes_as_dcm2niix, _rewritten
from tests.io.test_vendor_formats import _assert_converts_as_dcm2niix, _volumes

VOLUME_UIDS = [generate_uid(entropy_srcs=["test_dcm2niix_merges", "series", str(t)]) for t in range(4)]
STUDY_UIDS = [generate_uid(entropy_srcs=["test_dcm2niix_merges", "study", str(t)]) for t in range(4)]


def _set_or_remove(ds: pydicom.Dataset, **attrs: object) -> None:
    """Set each attribute to its value; None removes it."""
    for name, value in attrs.items():
        if value is None:
            if name in ds:
                delattr(ds, name)
        else:
            setattr(ds, name, value)


def _siemens(software: str | None, extra: Callable[[pydicom.Dataset, int], None], implementation: str | None = None,
             manufacturer: str | None = "Siemens Healthineers") -> Callable[[pydicom.Dataset, int], None]:
    """The GE series as a Siemens one (private elements removed), volume t its own SeriesInstanceUID;
    SoftwareVersions ``software``, Manufacturer ``manufacturer`` (None: removed), the file meta's
    ImplementationVersionName ``implementation`` where given."""
    def change(ds: pydicom.Dataset, t: int) -> None:
        for elem in list(ds):
            if elem.tag.is_private:
                del ds[elem.tag]
        _set_or_remove(ds, Manufacturer=manufacturer, SoftwareVersions=software)
        if implementation is not None:
            ds.file_meta.ImplementationVersionName = implementation
        ds.SeriesInstanceUID = VOLUME_UIDS[t]
        extra(ds, t)
    return change


def _xa_classic(series_time: Callable[[int], str | None] = lambda t: "120000.000000", software: str | None = "syngo MR XA30", **siemens):
    """A Siemens XA classic export: per volume t a SeriesInstanceUID, StudyInstanceUID and SeriesNumber (20 - t:
    dcm2niix orders by series number, so the volumes come last first), SeriesTime ``series_time(t)``;
    ``siemens``: the other options of :func:`_siemens`."""
    def extra(ds: pydicom.Dataset, t: int) -> None:
        ds.StudyInstanceUID = STUDY_UIDS[t]
        ds.SeriesNumber = 20 - t
        value = series_time(t)
        if value is None:
            del ds.SeriesTime
        else:
            ds.SeriesTime = value
    return _siemens(software, extra, **siemens)


def _dce(sequence: str = "*fldyn3d1", software: str = "syngo MR E11", protocol: Callable[[int], str] = lambda t: "t1_fl3d_dyn"):
    """A Siemens dynamic series saved one series per dynamic: per volume t a SeriesInstanceUID, SeriesNumber
    10 + t and SeriesTime; SequenceName ``sequence``, ProtocolName ``protocol(t)``."""
    def extra(ds: pydicom.Dataset, t: int) -> None:
        ds.SequenceName = sequence
        ds.SeriesNumber = 10 + t
        ds.SeriesTime = f"12{t:02d}00.000000"
        ds.ProtocolName = protocol(t)
    return _siemens(software, extra)


MERGES = {  # name -> (change, outputs dcm2niix writes)
    "XA30 classic: a series and study UID and a series number per volume": (_xa_classic(), 1),
    "XA60 classic": (_xa_classic(software="syngo MR XA60"), 1),
    "XA classic, two series times": (_xa_classic(series_time=lambda t: "120000" if t < 2 else "120500"), 2),
    "XA classic without a series time": (_xa_classic(series_time=lambda t: None), 4),
    "not XA (VE11) with a UID per volume": (_xa_classic(software="syngo MR E11"), 4),
    "VE11 with ImplementationVersionName XA10A (an early XA file)": (_xa_classic(software="syngo MR E11", implementation="SYNGO_MR_XA10A"), 1),
    "ImplementationVersionName XA10A, SoftwareVersions empty (read: an XA file)": (_xa_classic(software="", implementation="SYNGO_MR_XA10A"), 1),
    "ImplementationVersionName XA10A without SoftwareVersions (not an XA file)": (_xa_classic(software=None, implementation="SYNGO_MR_XA10A"), 4),
    "XA30 without Manufacturer (an early XA file is Siemens)": (_xa_classic(manufacturer=None), 1),
    "DCE, a series per dynamic": (_dce(), 1),
    "DCE, two protocol names": (_dce(protocol=lambda t: "t1_fl3d_dyn" if t < 2 else "t1_fl3d_sub"), 2),
    "DCE of an early XA release (XA30)": (_dce(software="syngo MR XA30"), 4),
    "not DCE (*fl3d1)": (_dce(sequence="*fl3d1"), 4),
}


@pytest.mark.parametrize("name", list(MERGES))
def test_series_merge_where_dcm2niix_merges_them(tmp_path, name):
    change, n_outputs = MERGES[name]
    folder = _rewritten(tmp_path / "in", change)
    vols, quarantine = _assert_converts_as_dcm2niix(folder, tmp_path / "ref", n_outputs=n_outputs)
    assert not quarantine
    assert sorted(v.shape[3] if len(v.shape) == 4 else 1 for v in vols) == {1: [4], 2: [2, 2], 4: [1, 1, 1, 1]}[n_outputs]
    stacked = [n for v in vols for n in v.notes if n.startswith("stacked across")]
    assert len(stacked) == (n_outputs if n_outputs < 4 else 0)


def test_the_merge_note_names_what_merged_the_series(tmp_path):
    vols, _ = _volumes(_rewritten(tmp_path / "in", _xa_classic()))
    (vol,) = vols
    assert "stacked across 4 SeriesInstanceUID(s) and 4 SeriesNumber(s) by Siemens XA series time 120000.000000, as dcm2niix stacks them" in vol.notes


XA10 = ("dicom", "dcm_qa_enh", "In", "Siemens", "XA10")  # 4 enhanced files, one 64 x 64 x 6 volume each, one SeriesInstanceUID


def _xa10_rewritten(dest: Path, change: Callable[[pydicom.Dataset, int], None]) -> Path:
    """The four XA10 files, ``change(ds, i)`` applied to file i."""
    dest.mkdir(parents=True)
    for i, path in enumerate(sorted(shared(*XA10).glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        change(ds, i)
        ds.save_as(dest / path.name, enforce_file_format=True)
    return dest


def _assert_xa10_converts_as_dcm2niix(tmp_path: Path, change: Callable[[pydicom.Dataset, int], None], n_outputs: int) -> None:
    """The four XA10 objects with ``change`` convert as the wheel converts them, into ``n_outputs`` outputs
    (1: one 64x64x6x4 series, 2: two of 64x64x6x2), nothing quarantined."""
    vols, quarantine = _assert_converts_as_dcm2niix(_xa10_rewritten(tmp_path / "in", change), tmp_path / "ref", n_outputs=n_outputs)
    assert not quarantine
    assert sorted(v.shape for v in vols) == ([(64, 64, 6, 2)] * 2 if n_outputs == 2 else [(64, 64, 6, 4)])


def _xa10_numbered(dest: Path, number: Callable[[int], int]) -> Path:
    return _xa10_rewritten(dest, lambda ds, i: setattr(ds, "SeriesNumber", number(i)))


XA10_NUMBERS = {  # name -> (SeriesNumber of file i, outputs dcm2niix writes)
    "6004 down to 6001 (one series, ordered by number)": (lambda i: 6004 - i, 1),
    "6001, 6001, 7001, 7001": (lambda i: 6001 + 1000 * (i // 2), 2),
    "6 to 9 (not above 1000)": (lambda i: 6 + i, 4),
}


@pytest.mark.parametrize("name", list(XA10_NUMBERS))
def test_early_xa_series_numbers_of_one_uid_merge_by_thousands(tmp_path, name):
    number, n_outputs = XA10_NUMBERS[name]
    folder = _xa10_numbered(tmp_path / "in", number)
    _assert_converts_as_dcm2niix(folder, tmp_path / "ref", n_outputs=n_outputs)


def _xa10_studies(study: Callable[[int], int], time: Callable[[int], str]) -> Callable[[pydicom.Dataset, int], None]:
    def change(ds: pydicom.Dataset, i: int) -> None:
        ds.StudyInstanceUID, ds.StudyTime = STUDY_UIDS[study(i)], time(i)
    return change


XA10_STUDIES = {  # name -> (StudyInstanceUID and StudyTime of file i, outputs dcm2niix writes)
    "two study UIDs, one study time": (_xa10_studies(lambda i: i // 2, lambda i: "120000"), 1),
    "two study UIDs, two study times": (_xa10_studies(lambda i: i // 2, lambda i: "120000" if i < 2 else "130000"), 2),
    "one study UID, a study time per file (early XA: not compared)": (_xa10_studies(lambda i: 0, lambda i: f"12{i:02d}00"), 1),
}


@pytest.mark.parametrize("name", list(XA10_STUDIES))
def test_files_of_several_study_uids_stack_by_study_time_as_dcm2niix_stacks_them(tmp_path, name):
    """dcm2niix never splits by StudyInstanceUID: files of one series and study date/time stack whatever their
    study UID, and two early XA files of one study UID stack whatever their study time (isSameSet, issue 236)."""
    change, n_outputs = XA10_STUDIES[name]
    _assert_xa10_converts_as_dcm2niix(tmp_path, change, n_outputs)


def _study_time_late(software: str | None, implementation: str | None = None) -> Callable[[pydicom.Dataset, int], None]:
    """A Siemens series of one SeriesInstanceUID and StudyInstanceUID, without SeriesTime; StudyTime 12:00 for
    volumes 2 and 3."""
    def extra(ds: pydicom.Dataset, t: int) -> None:
        ds.SeriesInstanceUID = VOLUME_UIDS[0]
        del ds.SeriesTime
        if t >= 2:
            ds.StudyTime = "120000"
    return _siemens(software, extra, implementation)


def _xa_classic_study_time_late() -> Callable[[pydicom.Dataset, int], None]:
    """:func:`_xa_classic` (an XA30 export, a study UID per volume), StudyTime 12:00 for volumes 2 and 3."""
    classic = _xa_classic()

    def change(ds: pydicom.Dataset, t: int) -> None:
        classic(ds, t)
        if t >= 2:
            ds.StudyTime = "120000"
    return change


def _ge_implementation_late(ds: pydicom.Dataset, t: int) -> None:
    if t >= 2:
        ds.file_meta.ImplementationVersionName = "SYNGO_MR_XA10A"


EARLY_XA = {  # name -> (change, outputs dcm2niix writes)
    "XA10, study time of volumes 2-3": (_study_time_late("syngo MR XA10"), 1),
    "VE11 with ImplementationVersionName XA10A, study time of volumes 2-3": (_study_time_late("syngo MR E11", "SYNGO_MR_XA10A"), 1),
    "ImplementationVersionName XA10 (not XA10A), study time of volumes 2-3": (_study_time_late("syngo MR E11", "SYNGO_MR_XA10"), 2),
    "XA60 (not early), study time of volumes 2-3": (_study_time_late("syngo MR XA60"), 2),
    "XA30 classic, a study UID per volume, study time of volumes 2-3": (_xa_classic_study_time_late(), 2),
    "GE, ImplementationVersionName XA10A in volumes 2-3 (their vendor Siemens)": (_ge_implementation_late, 2),
}


@pytest.mark.parametrize("name", list(EARLY_XA))
def test_early_xa_files_split_as_dcm2niix_splits_them(tmp_path, name):
    """dcm2niix's isXA10A (SoftwareVersions XA10-XA31, or ImplementationVersionName with XA10A): two such files
    of one StudyInstanceUID stack whatever their study time (isSameSet, issue 236), and the file is Siemens
    whatever its Manufacturer (readDICOMx)."""
    change, n_outputs = EARLY_XA[name]
    _assert_four_volumes_as_dcm2niix(tmp_path, change, n_outputs)


@pytest.mark.parametrize(("software", "implementation", "flags"), [("syngo MR E11", "SYNGO_MR_XA10A", (True, True)), ("", "SYNGO_MR_XA10A", (True, True)),
                                                                   (None, "SYNGO_MR_XA10A", (True, False)), ("syngo MR E11", "SYNGO_MR_E11", (False, False))])
def test_the_early_xa_flags_read_the_same_through_both_readers(tmp_path, software, implementation, flags):
    folder = _rewritten(tmp_path / "in", _xa_classic(software=software, implementation=implementation))
    for path in sorted(folder.glob("*.dcm"))[:4]:
        fast, slow = read_image_header(path), read_header(path)
        assert fast is not None
        assert siemens_xa(fast) == siemens_xa(slow) == flags
        assert stack_key(fast) == stack_key(slow)


def _sequence_names(protocol: str | None = None, description: str | None = None, sequence: Callable[[int], str] = lambda t: "epi1" if t < 2 else "epi2",
                    manufacturer: str | None = None, moco: bool = False) -> Callable[[pydicom.Dataset, int], None]:
    """The GE series with ProtocolName ``protocol`` and SeriesDescription ``description`` (None: removed),
    SequenceName ``sequence(t)``; ``manufacturer`` set; ``moco``: an inner MOCO ImageType value in volumes 2-3."""
    def change(ds: pydicom.Dataset, t: int) -> None:
        _set_or_remove(ds, ProtocolName=protocol, SeriesDescription=description)
        ds.SequenceName = sequence(t)
        if manufacturer is not None:
            ds.Manufacturer = manufacturer
        if moco and t >= 2:
            ds.ImageType = ["ORIGINAL", "PRIMARY", "MOCO", "NONE"]
    return change


SEQUENCE_NAMES = {  # name -> (change, outputs dcm2niix writes)
    "no protocol or description, two sequence names": (_sequence_names(), 2),
    "a one-character description, two sequence names": (_sequence_names(description="A"), 2),
    "a description, two sequence names": (_sequence_names(description="Axial EPI"), 1),
    "a one-character protocol, two sequence names": (_sequence_names(protocol="P"), 1),
    "Siemens, two sequence names": (_sequence_names(manufacturer="SIEMENS"), 1),
    "one-character sequence names": (_sequence_names(sequence=lambda t: "a" if t < 2 else "b"), 1),
    "a sequence name for the protocol, MOCO in volumes 2-3 (no '_MoCo')": (_sequence_names(sequence=lambda t: "epi1", moco=True), 1),
}


@pytest.mark.parametrize("name", list(SEQUENCE_NAMES))
def test_a_sequence_name_stands_for_a_missing_protocol_as_dcm2niix_takes_it(tmp_path, name):
    change, n_outputs = SEQUENCE_NAMES[name]
    _assert_four_volumes_as_dcm2niix(tmp_path, change, n_outputs)


def _xa10_sequence_names(manufacturer: str, description: str | None = None) -> Callable[[pydicom.Dataset, int], None]:
    """The XA10 objects as another vendor's (Manufacturer ``manufacturer``, no SoftwareVersions, a file meta
    ImplementationVersionName without XA10A), without ProtocolName, SeriesDescription ``description``,
    SequenceName epi1 for objects 0-1 and epi2 for 2-3."""
    def change(ds: pydicom.Dataset, i: int) -> None:
        ds.Manufacturer = manufacturer
        del ds.ProtocolName, ds.SoftwareVersions
        if description is None:
            del ds.SeriesDescription
        else:
            ds.SeriesDescription = description
        ds.file_meta.ImplementationVersionName = "MEDSYNTH_TEST"
        ds.SequenceName = "epi1" if i < 2 else "epi2"
    return change


@pytest.mark.parametrize(("manufacturer", "description", "n_outputs"), [("GE MEDICAL SYSTEMS", None, 2), ("GE MEDICAL SYSTEMS", "AB", 1), ("SIEMENS", None, 1)])
def test_an_enhanced_objects_sequence_name_stands_for_a_missing_protocol(tmp_path, manufacturer, description, n_outputs):
    _assert_xa10_converts_as_dcm2niix(tmp_path, _xa10_sequence_names(manufacturer, description), n_outputs)


def _study_times(date: str | None, late: str) -> Callable[[pydicom.Dataset, int], None]:
    """StudyDate ``date`` (None: removed), StudyTime 12:00 for volumes 0-1 and ``late`` for volumes 2-3."""
    def change(ds: pydicom.Dataset, t: int) -> None:
        if date is None:
            del ds.StudyDate
        else:
            ds.StudyDate = date
        ds.StudyTime = "120000" if t < 2 else late
    return change


STUDY_TIMES = {  # name -> (change, outputs dcm2niix writes)
    "no study date, 0.05 ms apart": (_study_times(None, "120000.00005"), 1),
    "an empty study date, 0.05 ms apart": (_study_times("", "120000.00005"), 1),
    "no study date, 0.1 ms apart (above the tolerance as doubles)": (_study_times(None, "120000.0001"), 2),
    "no study date, 0.2 ms apart": (_study_times(None, "120000.0002"), 2),
    "a study date, 0.05 ms apart (one double)": (_study_times("20181022", "120000.00005"), 1),
    "a study date, 3 ms apart (the next double)": (_study_times("20181022", "120000.003"), 2),
}


@pytest.mark.parametrize("name", list(STUDY_TIMES))
def test_study_date_times_stack_within_dcm2niix_tolerance(tmp_path, name):
    change, n_outputs = STUDY_TIMES[name]
    _assert_four_volumes_as_dcm2niix(tmp_path, change, n_outputs)


def _xa10_study_times(late: str) -> Callable[[pydicom.Dataset, int], None]:
    """The XA10 objects without a StudyDate, two StudyInstanceUIDs (objects 0-1, 2-3), StudyTime 12:00 and ``late``."""
    def change(ds: pydicom.Dataset, i: int) -> None:
        del ds.StudyDate
        ds.StudyInstanceUID, ds.StudyTime = STUDY_UIDS[i // 2], "120000" if i < 2 else late
    return change


@pytest.mark.parametrize(("late", "n_outputs"), [("120000.00005", 1), ("120000.0002", 2)])
def test_early_xa_objects_of_two_study_uids_stack_by_study_time_within_tolerance(tmp_path, late, n_outputs):
    _assert_xa10_converts_as_dcm2niix(tmp_path, _xa10_study_times(late), n_outputs)
