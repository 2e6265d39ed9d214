"""De-identification keeps what conversion's vendor rules read, in a form that cannot carry an identifier:
a series de-identified by the pipeline's defaults (and, for the GE field map, Retain Safe Private) converts
to the outputs dcm2niix writes from the original files; values outside the technical form are removed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medsynth.config import DeidConfig
from medsynth.io.deid import Deidentifier, DeidKey
from tests.io.test_dcm2niix_merges import _dce, _xa10_rewritten, _xa_classic
from tests.io.test_dcm2niix_splits import _asl_label, _cardiac_phase, _ge_b0map, _ge_dwi, _ge_phase, _philips, _rewritten
from tests.io.test_enhanced_partial import _ice, _last
from tests.io.test_vendor_formats import _dcm2niix, _volumes

KEY = DeidKey(b"conversion-facts-test-key-0123", "file", True)


def _deidentified(src: Path, dest: Path, cfg: DeidConfig) -> Path:
    dest.mkdir(parents=True)
    deid = Deidentifier(cfg, KEY)
    for path in sorted(src.glob("*.dcm")):
        deid.deidentify(pydicom.dcmread(path)).dataset.save_as(dest / path.name, enforce_file_format=True)
    return dest


SAFE = DeidConfig(retain_safe_private=True)


def _ge(change, volumes: int = 4) -> Callable[[Path], Path]:
    return lambda dest: _rewritten(dest, change, volumes=volumes)


def _ge_series_diffusion_type(value: int) -> Callable[[pydicom.Dataset, int], None]:
    """The GE DTI of :func:`_ge_dwi` (9 directions) with the series-level diffusion type (0021,105A) ``value``."""
    dwi = _ge_dwi(9)

    def change(ds: pydicom.Dataset, t: int) -> None:
        dwi(ds, t)
        ds[0x0021105A].value = value
    return change


def _philips_scan_begin(ds: pydicom.Dataset, t: int) -> None:
    """Trigger times that are the dynamic scan's begin time (2005,10A0, in s): they never split."""
    ds.add_new((0x2005, 0x0010), "LO", "Philips MR Imaging DD 001")
    ds.add_new((0x2005, 0x10A0), "FL", float(ds.TriggerTime) / 1000.0)


CASES = {  # name -> (raw series, deid options, outputs dcm2niix writes from the originals)
    "Siemens XA classic, a UID per volume (merged by series time)": (_ge(_xa_classic()), DeidConfig(), 1),
    "Siemens DCE, a series per dynamic (merged by protocol)": (_ge(_dce()), DeidConfig(), 1),
    "GE B0 field map (written apart from its magnitude)": (_ge(_ge_b0map(), 2), SAFE, 2),
    "GE private phase image type (written apart from the magnitude)": (_ge(_ge_phase), SAFE, 2),
    "GE non-DTI DWI with a trace (set apart)": (_ge(_ge_dwi(0), 10), SAFE, 2),
    "GE DTI marked non-DTI by its diffusion type": (_ge(_ge_dwi(9, vas_collapse=3), 10), SAFE, 2),
    "GE DTI marked non-DTI by its series diffusion type": (_ge(_ge_series_diffusion_type(3), 10), SAFE, 2),
    "Philips trigger times of cardiac phases (not split)": (_ge(_philips(_cardiac_phase)), SAFE, 1),
    "Philips trigger times of ASL label / control (not split)": (_ge(_philips(_asl_label)), SAFE, 1),
    "Philips trigger times at the dynamic scan's begin (not split)": (_ge(_philips(_philips_scan_begin)), SAFE, 1),
    "Siemens enhanced partial volume, ICE dims in each frame (written apart)": (
        lambda dest: _xa10_rewritten(dest, _ice(_last(12))), SAFE, 2),
    "Siemens enhanced partial volume, ICE dims at the top level (written apart)": (
        lambda dest: _xa10_rewritten(dest, _ice(_last(12), where="top")), SAFE, 2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_deidentified_series_convert_as_dcm2niix_converts_the_originals(tmp_path, name):
    build, cfg, n_outputs = CASES[name]
    raw = build(tmp_path / "raw")
    refs = _dcm2niix(raw, tmp_path / "ref")
    assert len(refs) == n_outputs
    vols, quarantine = _volumes(_deidentified(raw, tmp_path / "deid", cfg))
    assert not quarantine
    assert len(vols) == n_outputs
    for want, want_aff in refs:
        assert any(v.shape == want.shape and np.allclose(v.affine, want_aff, atol=1e-3) and np.allclose(v.data, want, atol=1e-3)
                   for v in vols), (want.shape, [v.shape for v in vols])


@pytest.fixture(scope="module")
def one_file(tmp_path_factory) -> Path:
    """One file of the GE B0 field map (its private pulse sequence names and locations in acquisition set)."""
    return sorted(_rewritten(tmp_path_factory.mktemp("facts") / "in", _ge_b0map(), volumes=1).glob("*.dcm"))[0]


@pytest.mark.parametrize("unlisted", ["remove", "keep"])
@pytest.mark.parametrize(("keyword", "value", "kept"), [
    ("SequenceName", "*fldyn3d1", True),
    ("SequenceName", "*ep_b1000#1", True),
    ("SequenceName", "SMITH", False),  # upper case: a name
    ("SequenceName", "mrn123456", False),  # five digits or more: an identifier
    ("SequenceName", "john", False),  # no digit
    ("SoftwareVersions", "syngo MR XA30", True),
    ("SoftwareVersions", "syngo MR XA30 St Mary", False),
    ("SoftwareVersions", "V5.6.1 SN 40123", False),
])
def test_technical_text_is_kept_whole_or_removed(one_file, keyword, value, kept, unlisted):
    ds = pydicom.dcmread(one_file)
    setattr(ds, keyword, value)
    out = Deidentifier(DeidConfig(unlisted_attributes=unlisted), KEY).deidentify(ds).dataset
    assert (out.get(keyword) == value) if kept else (keyword not in out)


@pytest.mark.parametrize(("tag", "value", "kept"), [
    (0x0019109C, "b0map", True),
    (0x0019109C, "epiRT", False),
    (0x0019109C, "SMITH b0map", False),
    (0x0019109E, "B0map", True),
    (0x0019109E, "B0map 12345", False),
])
def test_ge_sequence_names_are_kept_under_retain_safe_private_only_when_they_name_the_field_map(one_file, tag, value, kept):
    ds = pydicom.dcmread(one_file)
    ds[tag].value = value
    out = Deidentifier(DeidConfig(retain_safe_private=True), KEY).deidentify(ds).dataset
    assert (tag in out and out[tag].value == value) if kept else tag not in out
    assert 0x0021104F in out and out[0x0021104F].value == 15  # locations in acquisition: a number
    assert tag not in Deidentifier(DeidConfig(), KEY).deidentify(pydicom.dcmread(one_file)).dataset  # without the option: no private element


@pytest.mark.parametrize(("value", "kept"), [("LABEL", True), ("CONTROL", True), ("SMITH", False), ("LABEL SMITH", False)])
def test_the_philips_asl_label_is_kept_only_as_label_or_control(one_file, value, kept):
    ds = pydicom.dcmread(one_file)
    ds.private_block(0x2005, "Philips MR Imaging DD 005", create=True).add_new(0x29, "CS", value)
    out = Deidentifier(SAFE, KEY).deidentify(ds).dataset
    found = [e.value for e in out if e.tag.group == 0x2005 and (e.tag.element & 0xFF) == 0x29 and e.tag.element > 0xFF]
    assert found == ([value] if kept else [])


@pytest.fixture(scope="module")
def xa_object(tmp_path_factory) -> Path:
    """One Siemens XA10 enhanced object, its frames' Siemens items with an ICE dims long of 12 slices."""
    return sorted(_xa10_rewritten(tmp_path_factory.mktemp("xa") / "in", _ice(_last(12))).glob("*.dcm"))[3]


@pytest.mark.parametrize(("value", "kept"), [("X_1_1_1_1_1_1_1_1_1_1_1_1_1_1_1_1_1_1_1_12_1_1", True), ("X_1_SMITH_12", False),
                                             ("X_1_1 1234", False)])
def test_the_siemens_frame_item_keeps_only_the_ice_dims_and_only_as_counters(xa_object, value, kept):
    ds = pydicom.dcmread(xa_object)
    for frame in ds.PerFrameFunctionalGroupsSequence:
        frame[0x002111FE].value[0][0x0021118E].value = value
    assert "HE1-4" in str(ds.PerFrameFunctionalGroupsSequence[0][0x002111FE].value[0])  # the receive coil, among others
    out = Deidentifier(SAFE, KEY).deidentify(ds).dataset
    item = out.PerFrameFunctionalGroupsSequence[0][0x002111FE].value[0]
    assert [e.tag for e in item if e.tag.element > 0xFF] == ([0x0021118E] if kept else [])
    assert not kept or item[0x0021118E].value == value
    plain = Deidentifier(DeidConfig(), KEY).deidentify(pydicom.dcmread(xa_object)).dataset
    assert 0x002111FE not in plain.PerFrameFunctionalGroupsSequence[0]  # without the option: no private element


def test_the_ge_raw_data_run_number_is_kept_under_retain_safe_private(one_file):
    ds = pydicom.dcmread(one_file)
    run = ds[0x001910A2].value
    assert Deidentifier(SAFE, KEY).deidentify(ds).dataset[0x001910A2].value == run
    assert 0x001910A2 not in Deidentifier(DeidConfig(), KEY).deidentify(pydicom.dcmread(one_file)).dataset
