"""De-identification keeps what conversion's vendor rules read, in a form that cannot carry an identifier:
a series de-identified by the pipeline's defaults (and, for the GE field map, Retain Safe Private) converts
to the outputs dcm2niix writes from the original files; values outside the technical form are removed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medsynth.config import DeidConfig
from medsynth.io.deid import Deidentifier, DeidKey
from tests.io.test_dcm2niix_merges import _dce, _xa_classic
from tests.io.test_dcm2niix_splits import _ge_b0map, _rewritten
from tests.io.test_vendor_formats import _dcm2niix, _volumes

KEY = DeidKey(b"conversion-facts-test-key-0123", "file", True)


def _deidentified(src: Path, dest: Path, cfg: DeidConfig) -> Path:
    dest.mkdir(parents=True)
    deid = Deidentifier(cfg, KEY)
    for path in sorted(src.glob("*.dcm")):
        deid.deidentify(pydicom.dcmread(path)).dataset.save_as(dest / path.name, enforce_file_format=True)
    return dest


CASES = {  # name -> (change of the shared GE series, volumes, deid options, outputs dcm2niix writes from the originals)
    "Siemens XA classic, a UID per volume (merged by series time)": (_xa_classic(), 4, DeidConfig(), 1),
    "Siemens DCE, a series per dynamic (merged by protocol)": (_dce(), 4, DeidConfig(), 1),
    "GE B0 field map (written apart from its magnitude)": (_ge_b0map(), 2, DeidConfig(retain_safe_private=True), 2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_deidentified_series_convert_as_dcm2niix_converts_the_originals(tmp_path, name):
    change, volumes, cfg, n_outputs = CASES[name]
    raw = _rewritten(tmp_path / "raw", change, volumes=volumes)
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
