"""What splits one series into several outputs, and which volumes of a diffusion series are set apart, as
dcm2niix decides by default: each case rewrites a few attributes of a real shared GE series (4 volumes of
15 slices, or all 10 for diffusion) and compares our volumes with dcm2niix run on the same files.

* dcm2niix's ``isSameSet`` (nii_dicom_batch.cpp): derived, vendor, modality, study date/time split (not
  the StudyInstanceUID: files of several study UIDs and one study date/time are stacked); then,
  unless the image is X-ray (an Exposure (0018,1152) and no echo time), real/imaginary/phase (ImageType,
  ComplexImageComponent, GE's private image type), TR, flip
  angle, echo time and number, a Philips trigger time and the protocol name ('_MoCo' added for an inner
  MOCO ImageType value, any vendor, when the name has two or more characters) split; receive coil and
  acquisition number do not;
* GE non-DTI diffusion (``numberOfDiffusionDirectionGE == 0``, nii_saveDTI): b > 0 volumes without a
  gradient direction are traces, set apart as a Philips DWI's isotropic volumes; in a DTI series they
  stay (dcm2niix reads them as b = 0);
* a GE B0 field map (2 volumes of the same series): the field map volume is marked real (issue 501) and
  written apart from the magnitude;
* a Philips enhanced object built from the real one's magnitude frames as dynamics or cardiac phases:
  volumes of different trigger delay times are written apart (saveDcm2Nii, ``gradDynVol``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medsynth.io.dicom import ge_diffusion, read_header, stack_key
from medsynth.io.dicom.attributes import ge_field_map_volume
from medsynth.io.dicom.philips import philips_trigger_times
from medsynth.io.dicom_fast import read_image_header
from tests.conftest import shared
from tests.io.test_vendor_formats import _assert_converts_as_dcm2niix, _volumes

OTHER_STUDY = "1.2.826.0.1.3680043.8.498.1"  # a StudyInstanceUID other than the shared series'
GE_SERIES = ("dicom", "dcm_qa_nih", "In", "20180918GE", "mr_0004")  # GE EPI, 10 volumes x 15 slices, 64 x 64


def _rewritten(dest: Path, change: Callable[[pydicom.Dataset, int], None], volumes: int = 4) -> Path:
    """The first ``volumes`` volumes of the shared GE series, ``change(ds, t)`` applied to each file of
    volume t (in acquisition order), written to ``dest``."""
    src = shared(*GE_SERIES)
    files = [pydicom.dcmread(p) for p in sorted(src.glob("*.dcm"))]
    normal = np.cross(np.array(files[0].ImageOrientationPatient[:3], float), np.array(files[0].ImageOrientationPatient[3:], float))
    by_pos: dict[float, list[pydicom.Dataset]] = {}
    for ds in sorted(files, key=lambda d: int(d.InstanceNumber)):
        by_pos.setdefault(round(float(np.dot(np.array(ds.ImagePositionPatient, float), normal)), 3), []).append(ds)
    dest.mkdir(parents=True)
    for k, key in enumerate(sorted(by_pos)):
        for t, ds in enumerate(by_pos[key][:volumes]):
            change(ds, t)
            ds.save_as(dest / f"s{k:02d}_t{t:02d}.dcm", enforce_file_format=True)
    return dest


def _assert_four_volumes_as_dcm2niix(tmp_path: Path, change: Callable[[pydicom.Dataset, int], None], n_outputs: int) -> list:
    """The 4 volumes of :func:`_rewritten` with ``change`` convert as the wheel converts them, into ``n_outputs``
    outputs (1: one 4-volume series, 2: two of 2 volumes), nothing quarantined; the volumes."""
    vols, quarantine = _assert_converts_as_dcm2niix(_rewritten(tmp_path / "in", change), tmp_path / "ref", n_outputs=n_outputs)
    assert not quarantine
    assert sorted(v.shape[3] for v in vols) == ([2, 2] if n_outputs == 2 else [4])
    return vols


def _late(**attrs) -> Callable[[pydicom.Dataset, int], None]:
    """Set ``attrs`` on the files of volumes 2 and 3 only."""
    def change(ds: pydicom.Dataset, t: int) -> None:
        if t >= 2:
            for name, value in attrs.items():
                setattr(ds, name, value)
    return change


def _every(**attrs) -> Callable[[pydicom.Dataset, int], None]:
    """Set ``attrs`` on every file."""
    def change(ds: pydicom.Dataset, t: int) -> None:
        for name, value in attrs.items():
            setattr(ds, name, value)
    return change


def _both(*changes: Callable[[pydicom.Dataset, int], None]) -> Callable[[pydicom.Dataset, int], None]:
    """``changes`` applied in turn."""
    def change(ds: pydicom.Dataset, t: int) -> None:
        for one in changes:
            one(ds, t)
    return change


def _xray(ds: pydicom.Dataset, t: int) -> None:
    del ds.EchoTime
    ds.add_new(0x00181152, "IS", 5)  # Exposure
    if t >= 2:
        ds.RepetitionTime, ds.ProtocolName, ds.FlipAngle = 3000, "other protocol", 30


def _ge_phase(ds: pydicom.Dataset, t: int) -> None:
    if t >= 2:
        ds[0x0043102F].value = 1  # GE private image type: phase


def _component(value: str) -> Callable[[pydicom.Dataset, int], None]:
    """ComplexImageComponent (0008,9208) at the top level of the files of volumes 2 and 3."""
    def change(ds: pydicom.Dataset, t: int) -> None:
        if t >= 2:
            ds.add_new(0x00089208, "CS", value)
    return change


def _no_protocol(description_varies: bool) -> Callable[[pydicom.Dataset, int], None]:
    def change(ds: pydicom.Dataset, t: int) -> None:
        ds.ProtocolName = ""
        if description_varies and t >= 2:
            ds.SeriesDescription = "another description"
    return change


def _philips(extra: Callable[[pydicom.Dataset, int], None] | None = None) -> Callable[[pydicom.Dataset, int], None]:
    def change(ds: pydicom.Dataset, t: int) -> None:
        ds.Manufacturer = "Philips Medical Systems"
        ds.TriggerTime = 100 * (t // 2)
        if extra is not None:
            extra(ds, t)
    return change


def _cardiac_phase(ds: pydicom.Dataset, t: int) -> None:
    ds.add_new((0x2001, 0x0010), "LO", "Philips Imaging DD 001")
    ds.add_new((0x2001, 0x1008), "IS", t + 1)


def _asl_label(ds: pydicom.Dataset, t: int) -> None:
    ds.add_new((0x2005, 0x0014), "LO", "Philips MR Imaging DD 005")
    ds.add_new((0x2005, 0x1429), "CS", "LABEL" if t % 2 else "CONTROL")


SPLITS = {  # name -> (change, outputs dcm2niix writes)
    "TR": (_late(RepetitionTime=3000), 2),
    "flip angle": (_late(FlipAngle=30), 2),
    "echo time": (_late(EchoTime=40), 2),
    "echo number": (_late(EchoNumbers=2), 2),
    "protocol name": (_late(ProtocolName="other protocol"), 2),
    "protocol name emptied": (_late(ProtocolName=""), 2),  # then the series description stands for it
    "series description without protocol name": (_no_protocol(True), 2),
    "MOCO image type ('_MoCo' protocol name)": (_late(ImageType=["ORIGINAL", "PRIMARY", "MOCO", "NONE"]), 2),
    "MOCO image type, series description without protocol name": (_both(_no_protocol(False), _late(ImageType=["ORIGINAL", "PRIMARY", "MOCO", "NONE"])), 2),
    "study time": (_late(StudyTime="120000"), 2),
    "study UID and study time": (_late(StudyInstanceUID=OTHER_STUDY, StudyTime="120000"), 2),
    "modality": (_late(Modality="CT"), 2),
    "real image type": (_late(ImageType=["ORIGINAL", "PRIMARY", "R", "NONE"]), 2),
    "phase anywhere in the image type": (_late(ImageType=["ORIGINAL", "PRIMARY", "PHASE CONTRAST M"]), 2),
    "GE private phase": (_ge_phase, 2),
    "complex image component phase": (_component("PHASE"), 2),
    "complex image component real": (_component("REAL"), 2),
    "complex image component imaginary": (_component("IMAGINARY"), 2),
    "complex image component magnitude": (_component("MAGNITUDE"), 1),
    "Philips trigger time": (_philips(), 2),
    "receive coil": (_late(ReceiveCoilName="8HRBRAIN"), 1),
    "study UID of the same study date/time": (_late(StudyInstanceUID=OTHER_STUDY), 1),
    "acquisition number": (_late(AcquisitionNumber=9), 1),
    "vendor names of one vendor": (_late(Manufacturer="GE HEALTHCARE"), 1),
    "P as the last image type value": (_late(ImageType=["ORIGINAL", "PRIMARY", "P"]), 1),
    "same series description without protocol name": (_no_protocol(False), 1),
    "MOCO as the last image type value": (_late(ImageType=["ORIGINAL", "PRIMARY", "M", "MOCO"]), 1),
    "MOCO image type, protocol name of one character": (_both(_every(ProtocolName="A"), _late(ImageType=["ORIGINAL", "PRIMARY", "MOCO", "NONE"])), 1),
    "X-ray: TR, flip angle and protocol": (_xray, 1),
    "GE trigger time": (_late(TriggerTime=77), 1),
    "Philips trigger time with cardiac phases": (_philips(_cardiac_phase), 1),
    "Philips trigger time of ASL label / control": (_philips(_asl_label), 1),
}


@pytest.mark.parametrize("name", list(SPLITS))
def test_a_series_splits_where_dcm2niix_splits_it(tmp_path, name):
    change, n_outputs = SPLITS[name]
    vols = _assert_four_volumes_as_dcm2niix(tmp_path, change, n_outputs)
    if n_outputs == 2:
        assert all(any(n.startswith("split ") for n in v.notes) for v in vols)


def test_the_split_note_names_the_attribute(tmp_path):
    vols, _ = _volumes(_rewritten(tmp_path / "in", _late(RepetitionTime=3000)))
    assert {n for v in vols for n in v.notes if n.startswith("split")} == {"split 1/2 of the series by TR", "split 2/2 of the series by TR"}


# ----------------------------------------------------------------------------- GE diffusion

DIRECTIONS = [v / np.linalg.norm(v) for v in np.random.default_rng(3).normal(size=(10, 3))]


def _ge_dwi(directions: int, traces: tuple[int, ...] = (9,), vas_collapse: int | None = None) -> Callable[[pydicom.Dataset, int], None]:
    """A GE DWI: volume 0 b = 0, the others b = 1000 (stored with GE's bias, (0043,1039)) with a gradient
    direction (0019,10BB-BD), those in ``traces`` without one; NumberOfDiffusionDirection (0019,10E0)
    ``directions``; the image-level diffusion type (0043,1030) ``vas_collapse`` when given."""
    def change(ds: pydicom.Dataset, t: int) -> None:
        ds[0x00431039].value = ["0" if t == 0 else "1000001000", "8", "0", "0"]
        vector = [0.0, 0.0, 0.0] if t == 0 or t in traces else [round(float(x), 4) for x in DIRECTIONS[t]]
        for tag, x in zip((0x001910BB, 0x001910BC, 0x001910BD), vector, strict=True):
            ds[tag].value = str(x)
        ds[0x001910E0].value = str(directions)
        if vas_collapse is not None:
            ds[0x00431030].value = vas_collapse
    return change


GE_DWI = {  # name -> (change, volumes of each output)
    "non-DTI with one trace": (_ge_dwi(0), [9, 10]),
    "non-DTI with two traces": (_ge_dwi(0, traces=(8, 9)), [8, 10]),
    "DTI (the trace is read as b = 0)": (_ge_dwi(9), [10]),
    "DTI marked non-DTI by its diffusion type (0043,1030)": (_ge_dwi(9, vas_collapse=3), [9, 10]),
    "DTI diffusion type 16 (0043,1030)": (_ge_dwi(9, vas_collapse=16), [10]),
    "non-DTI without a trace": (_ge_dwi(0, traces=()), [10]),
}


@pytest.mark.parametrize("name", list(GE_DWI))
def test_ge_diffusion_traces_are_set_apart_as_dcm2niix_sets_them_apart(tmp_path, name):
    change, lengths = GE_DWI[name]
    folder = _rewritten(tmp_path / "in", change, volumes=10)
    vols, _ = _assert_converts_as_dcm2niix(folder, tmp_path / "ref", n_outputs=len(lengths))
    assert sorted(v.shape[3] for v in vols) == lengths
    if len(lengths) == 2:
        n_trace = 10 - lengths[0]
        assert any(f"{n_trace} isotropic (trace / ADC) volume(s) of 10 set apart" in n for v in vols for n in v.notes)


def test_ge_diffusion_reads_the_same_through_both_readers(tmp_path):
    folder = _rewritten(tmp_path / "in", _ge_dwi(0), volumes=10)
    seen = set()
    for path in sorted(folder.glob("*.dcm")):
        fast = read_image_header(path)
        assert fast is not None
        slow = read_header(path)
        assert ge_diffusion(fast) == ge_diffusion(slow)
        assert stack_key(fast) == stack_key(slow)
        seen.add(ge_diffusion(fast))
    assert (0.0, (0.0, 0.0, 0.0)) in seen and (1000.0, (0.0, 0.0, 0.0)) in seen and len(seen) == 10


# ----------------------------------------------------------------------------- GE B0 field maps


def _ge_b0map(name: str = "b0map", internal: str | None = None, images: int = 30, thickness: float | None = None
              ) -> Callable[[pydicom.Dataset, int], None]:
    """A GE B0 field map (two volumes: the field map in Hz first, then the magnitude): Pulse Sequence Name
    (0019,109C) ``name``, Internal Pulse Sequence Name (0019,109E) ``internal``, ImagesInAcquisition
    (0020,1002) ``images`` against 15 Locations in Acquisition (0021,104F); SliceThickness ``thickness``
    (5 mm apart: a ZIP factor above 1 multiplies the locations)."""
    def change(ds: pydicom.Dataset, t: int) -> None:
        ds[0x0019109C].value = name
        if internal is not None:
            ds[0x0019109E].value = internal
        ds.ImagesInAcquisition = images
        assert ds[0x0021104F].value == 15
        if thickness is not None:
            ds.SliceThickness = thickness
    return change


GE_B0MAP = {  # name -> (change, outputs dcm2niix writes)
    "b0map pulse sequence": (_ge_b0map(), 2),
    "B0map internal pulse sequence": (_ge_b0map(name="epiRT", internal="B0map"), 2),
    "b0map with as many images as locations": (_ge_b0map(images=15), 1),
    "b0map with a ZIP factor of 2 (10 mm slices 5 mm apart)": (_ge_b0map(thickness=10.0), 1),
    "not a b0map": (_ge_b0map(name="epiRT"), 1),
}


@pytest.mark.parametrize("name", list(GE_B0MAP))
def test_ge_b0_field_map_and_magnitude_are_written_apart_as_dcm2niix_writes_them(tmp_path, name):
    """dcm2niix marks the first volume of a GE B0map (InstanceNumber up to the locations) real (the field
    map in Hz) and the magnitude not, so they are two outputs (nii_dicom.cpp, issue 501)."""
    change, n_outputs = GE_B0MAP[name]
    folder = _rewritten(tmp_path / "in", change, volumes=2)
    vols, quarantine = _assert_converts_as_dcm2niix(folder, tmp_path / "ref", n_outputs=n_outputs)
    assert not quarantine
    assert [v.shape for v in vols] == ([(64, 64, 15)] * 2 if n_outputs == 2 else [(64, 64, 15, 2)])


def test_the_ge_field_map_rule_reads_the_same_through_both_readers(tmp_path):
    folder = _rewritten(tmp_path / "in", _ge_b0map(), volumes=2)
    seen = []
    for path in sorted(folder.glob("*.dcm")):
        fast, slow = read_image_header(path), read_header(path)
        assert fast is not None
        assert ge_field_map_volume(fast) == ge_field_map_volume(slow)
        seen.append(ge_field_map_volume(fast))
    assert seen.count(True) == seen.count(False) == 15


# ----------------------------------------------------------------------------- Philips enhanced trigger delay times

PHILIPS_ENHANCED = ("dicom", "dcm_qa_enh", "In", "Philips", "IM_0027_fMAP.dcm")  # 64 frames: 32 magnitude, 32 field map


def _philips_dynamics(dest: Path, triggers: list[float | None], label: str | None = None, private: bool = False,
                      scan_begin: bool = False) -> Path:
    """The real Philips enhanced object's 32 magnitude frames as len(triggers) volumes (TemporalPositionIndex
    in the FrameContentSequence and the DimensionIndexSequence, as a Philips dynamic or cine object holds
    them), each frame of volume t with a Cardiac Synchronization Sequence (0018,9118) giving
    NominalCardiacTriggerDelayTime (0020,9153) ``triggers[t]`` (None: no such item), or with ``private``
    the TriggerTime (0018,1060) of its Philips private per-frame item (2005,140F); ``scan_begin``: that
    item's MR Image Dynamic Scan Begin Time (2005,10A0) is the trigger time (in s); ``label``: every
    frame's private ASL label type (2005,1429)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(shared(*PHILIPS_ENHANCED))
    frames = ds.pixel_array[:32]
    magnitude = list(ds.PerFrameFunctionalGroupsSequence)[:32]
    items = []
    for t, trigger in enumerate(triggers):
        for k, source in enumerate(magnitude):
            item = copy.deepcopy(source)
            content = item.FrameContentSequence[0]
            content.TemporalPositionIndex = t + 1
            content.DimensionIndexValues = [1, k + 1, t + 1]
            private_item = item[0x2005140F].value[0]
            if trigger is not None and private:
                private_item.TriggerTime = float(trigger)
            elif trigger is not None:
                cardiac = Dataset()
                cardiac.NominalCardiacTriggerDelayTime = float(trigger)
                item.CardiacSynchronizationSequence = Sequence([cardiac])
            if scan_begin and trigger is not None:
                private_item[0x200510A0].value = float(trigger) / 1000.0
            if label is not None:
                private_item[0x20051429].value = label
            items.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    index = Dataset()
    index.DimensionOrganizationUID = ds.DimensionIndexSequence[0].DimensionOrganizationUID
    index.DimensionIndexPointer, index.FunctionalGroupPointer = 0x00209128, 0x00209111
    index.DimensionDescriptionLabel = "Temporal Position Index"
    ds.DimensionIndexSequence = Sequence([*list(ds.DimensionIndexSequence)[:2], index])
    ds.NumberOfFrames = len(items)
    ds.PixelData = np.concatenate([frames] * len(triggers)).tobytes()
    dest.mkdir(parents=True)
    ds.save_as(dest / "philips.dcm", enforce_file_format=True)
    return dest


PHILIPS_TRIGGERS = {  # name -> (triggers per volume, _philips_dynamics options, shapes of what dcm2niix writes)
    "one trigger time": ([100.0, 100.0], {}, [(64, 64, 32, 2)]),
    "two trigger times": ([0.0, 100.0], {}, [(64, 64, 32)] * 2),
    "three cardiac phases": ([0.0, 100.0, 200.0], {}, [(64, 64, 32)] * 3),
    "a trigger time repeated": ([0.0, 100.0, 0.0], {}, [(64, 64, 32), (64, 64, 32, 2)]),
    "first volume without a cardiac item": ([None, 100.0], {}, [(64, 64, 32)] * 2),
    "later volume without a cardiac item (keeps the last value)": ([100.0, None], {}, [(64, 64, 32, 2)]),
    "trigger times in the private per-frame item": ([0.0, 100.0], {"private": True}, [(64, 64, 32)] * 2),
    "trigger times that are the dynamic scan begin times": ([0.0, 100.0], {"private": True, "scan_begin": True}, [(64, 64, 32, 2)]),
    "ASL label images": ([0.0, 100.0], {"label": "LABEL"}, [(64, 64, 32, 2)]),
}


@pytest.mark.parametrize("name", list(PHILIPS_TRIGGERS))
def test_philips_enhanced_volumes_are_written_apart_by_trigger_time_as_dcm2niix_writes_them(tmp_path, name):
    """dcm2niix writes the volumes of a Philips enhanced object apart when their trigger delay times
    differ (nii_dicom_batch.cpp, saveDcm2Nii: gradDynVol), except ASL label / control images."""
    triggers, options, shapes = PHILIPS_TRIGGERS[name]
    folder = _philips_dynamics(tmp_path / "in", triggers, **options)
    vols, quarantine = _assert_converts_as_dcm2niix(folder, tmp_path / "ref", n_outputs=len(shapes))
    assert not quarantine
    assert sorted(v.shape for v in vols) == sorted(shapes)
    if len(shapes) > 1:
        assert all(any(n.startswith("trigger delay time") for n in v.notes) for v in vols)


def test_philips_trigger_times_read_the_same_through_both_readers(tmp_path):
    path = _philips_dynamics(tmp_path / "in", [None, 100.0, 250.0]) / "philips.dcm"
    fast = read_image_header(path)
    assert fast is not None and fast.get("PerFrameFunctionalGroupsSequence") is not None
    times = philips_trigger_times(fast)
    assert times == philips_trigger_times(pydicom.dcmread(path, stop_before_pixels=True))
    assert times == [0.0] * 32 + [100.0] * 32 + [250.0] * 32
