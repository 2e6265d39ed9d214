"""Crafted DICOM and NIfTI that hide identifying data where a table-driven profile does not look: free text
in structured content, standard attributes Table E.1-1 does not list, identifiers in kept fields, patient
names in folder names."""

import csv
import re

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from medsynth.config import ConfigError, DeidConfig, Params, parse_params
from medsynth.io.deid import Deidentifier, DeidKey
from medsynth.io.ingest import DeidSelfCheckError, deidentify_tree, ingest
from medsynth.io.phi_scan import identifiers_of, scan_outputs
from tests.fixtures.phi import ct_dataset

KEY = DeidKey(b"0123456789abcdef-hostile-key", "file", True)
LETTER = "Mrs Victoria Probe, born 22 Nov 1958, seen by Dr Gregory House at Saint Probe Hospital"
# every word of the letter that identifies someone, and the patient's structured identifiers
NEEDLES = ["victoria", "probe", "gregory", "house", "saint", "22 nov 1958", "19581122", "mrn555123", "acc7730021"]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _ct(**extra) -> Dataset:
    """A small CT slice with a patient's identifiers; ``extra`` attributes set by keyword."""
    ds = ct_dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "PROBE^VICTORIA^^MRS", "MRN555123", "19581122"
    ds.AccessionNumber, ds.ReferringPhysicianName = "ACC7730021", "HOUSE^GREGORY^^DR"
    ds.InstitutionName = "SAINT PROBE HOSPITAL"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.StudyDate = "CT", 3, 1, "20200301"
    ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [0, 0, 0], [1, 0, 0, 0, 1, 0], [1, 1]
    ds.SliceThickness, ds.RescaleSlope, ds.RescaleIntercept, ds.BurnedInAnnotation = 2, 1, -1024, "NO"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", 8, 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def _deid_folder(tmp_path, datasets, cfg=None):
    """``medsynth deid`` on files of ``datasets``: (output folder, its self-check identifiers, log rows)."""
    inp = tmp_path / "in"
    inp.mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(datasets):
        ds.save_as(inp / f"f{i}.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    tree = deidentify_tree(inp, out, Deidentifier(cfg or DeidConfig(), KEY))
    assert tree.quarantine == [] and len(tree.log) == len(datasets)
    return out, tree.identifiers, tree.log


def _text_of(folder) -> bytes:
    """Every output byte, lower case (pixel data is our own ramp: no letters)."""
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()).lower()


def _report() -> Sequence:
    """Structured content: a TEXT item (the letter), a coded item with a local code whose meaning is PHI,
    a standard code whose meaning was overwritten with PHI, and a nested TEXT item two levels down."""
    text = Dataset()
    text.ValueType, text.TextValue = "TEXT", LETTER
    text.ConceptNameCodeSequence = [_code("121106", "DCM", "Comment by Dr Gregory House")]  # DCM 121106 is "Comment"
    coded = Dataset()
    coded.ValueType = "CODE"
    coded.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
    coded.ConceptCodeSequence = [_code("L-99X", "99LOCAL", "Victoria Probe MRN555123 liver")]
    inner = Dataset()
    inner.ValueType, inner.TextValue = "TEXT", "Saint Probe Hospital ward 7, ACC7730021"
    coded.ContentSequence = [inner]
    return Sequence([text, coded])


@pytest.mark.parametrize("options", [{}, {"unlisted_attributes": "keep"}], ids=["default", "keep-unlisted"])
def test_free_text_and_code_meanings_in_structured_content_never_reach_the_output(tmp_path, options):
    ds = _ct(ContentSequence=_report())
    ds.AcquisitionContextSequence = _report()
    out, ids, _ = _deid_folder(tmp_path, [ds], DeidConfig(**options))
    data = _text_of(out)
    assert [n for n in NEEDLES if n.encode() in data] == []
    got = pydicom.dcmread(next(out.rglob("*.dcm")))
    text, coded = got.ContentSequence
    assert "TextValue" not in text and "TextValue" not in coded.ContentSequence[0]
    assert text.ConceptNameCodeSequence[0].CodeMeaning == "Comment"  # the standard meaning of DCM 121106
    assert coded.ConceptCodeSequence[0].CodeValue == "L-99X"  # codes are kept; a local code's meaning is cleaned
    assert coded.ConceptCodeSequence[0].CodeMeaning == "* liver"
    assert scan_outputs(out, ids)[1] == []


UNLISTED = {  # standard attributes outside Table E.1-1 that hold identifying data
    (0x0010, 0x0033): ("LO", "19581122 Gregorian"),  # Patient's Birth Date in Alternative Calendar
    (0x0010, 0x0034): ("LO", "20230101 Gregorian"),  # Patient's Death Date in Alternative Calendar
    (0x0010, 0x0035): ("CS", "GREGORIAN"),  # Patient's Alternative Calendar
    (0x0010, 0x2298): ("CS", "MOTHER"),  # Responsible Person Role
}


def _with_unlisted() -> Dataset:
    ds = _ct(PatientSex="F", PatientAge="061Y", PatientSize=1.62, PatientWeight=58, EthnicGroup="ISLANDER", SmokingStatus="YES",
             PatientSexNeutered="ALTERED")
    for tag, (vr, value) in UNLISTED.items():
        ds.add_new(tag, vr, value)
    return ds


def test_standard_attributes_the_table_does_not_list_are_removed_and_counted(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from medsynth.cli import app

    (tmp_path / "in").mkdir()
    _with_unlisted().save_as(tmp_path / "in" / "f0.dcm", enforce_file_format=True)
    monkeypatch.setenv("MEDSYNTH_DEID_KEY", KEY.secret.decode())
    res = CliRunner().invoke(app, ["deid", str(tmp_path / "in"), str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    got = pydicom.dcmread(next((tmp_path / "out").rglob("*.dcm")))
    assert [t for t in UNLISTED if t in got] == []
    rows = list(csv.DictReader(open(tmp_path / "out" / "deid_log.csv")))
    assert int(rows[0]["unlisted_removed"]) >= len(UNLISTED)
    # what conversion needs stays
    assert list(got.ImagePositionPatient) == [0, 0, 0] and got.Rows == 8 and got.RescaleIntercept == -1024 and got.Modality == "CT"
    assert "unlisted attributes: remove" in got.DeidentificationMethod
    # Retain Patient Characteristics keeps sex, age, size and weight only
    assert (got.PatientSex, got.PatientAge, float(got.PatientSize), float(got.PatientWeight)) == ("F", "061Y", 1.62, 58.0)
    assert "EthnicGroup" not in got and "SmokingStatus" not in got and not got.get("PatientSexNeutered")


def test_unlisted_keep_keeps_coded_values_but_no_free_text_and_all_opts_into_every_characteristic(tmp_path):
    out, _, log = _deid_folder(tmp_path, [_with_unlisted()], DeidConfig(unlisted_attributes="keep", retain_patient_characteristics="all"))
    got = pydicom.dcmread(next(out.rglob("*.dcm")))
    assert got[0x0010, 0x0035].value == "GREGORIAN" and got[0x0010, 0x2298].value == "MOTHER"
    assert got[0x0010, 0x0033].value == "*"  # LO text is cleaned: the date is gone
    assert log[0]["unlisted_removed"] == 0
    assert (got.EthnicGroup, got.SmokingStatus, got.PatientSexNeutered) == ("ISLANDER", "YES", "ALTERED")


def test_unlisted_attributes_param_is_validated():
    assert Params().deid.unlisted_attributes == "remove" and Params().deid.retain_patient_characteristics is True
    with pytest.raises(ConfigError) as e:
        parse_params({"deid": {"unlisted_attributes": "drop"}})
    assert "deid.unlisted_attributes" in str(e.value) and "'drop'" in str(e.value) and "'keep'" in str(e.value)
    with pytest.raises(ConfigError, match=r"deid\.retain_patient_characteristics: 'some'.*'all'"):
        parse_params({"deid": {"retain_patient_characteristics": "some"}})


def test_identifiers_hidden_in_kept_fields(tmp_path):
    """MRN alone in BodyPartExamined (CS), birth date alone in ManufacturerModelName (LO), accession number
    alone in ScanOptions (CS, on the safe list). What happens to each, in both modes."""
    hidden = {"BodyPartExamined": "MRN555123", "ManufacturerModelName": "19581122", "ScanOptions": "ACC7730021"}
    out, ids, _ = _deid_folder(tmp_path / "remove", [_ct(**hidden)])
    got = pydicom.dcmread(next(out.rglob("*.dcm")))
    # removed as unlisted attributes: gone, so not found
    assert "BodyPartExamined" not in got and "ManufacturerModelName" not in got
    # ScanOptions is kept (acquisition parameter): the accession number in it is a finding, not exempted
    assert got.ScanOptions == "ACC7730021"
    assert scan_outputs(out, ids)[1] == [(got.filename.split("/out/")[1], "AccessionNumber")]

    out, ids, _ = _deid_folder(tmp_path / "keep", [_ct(**hidden)], DeidConfig(unlisted_attributes="keep"))
    got = pydicom.dcmread(next(out.rglob("*.dcm")))
    assert got.BodyPartExamined == "MRN555123"  # CS is kept verbatim under keep
    assert got.ManufacturerModelName == "*"  # LO is cleaned: the birth date is gone
    kinds = {k for _, k in scan_outputs(out, ids)[1]}
    assert kinds == {"PatientID", "AccessionNumber"}


def test_self_check_matches_case_name_parts_date_renderings_and_nested_identifiers(tmp_path):
    ds = _ct()
    person = Dataset()
    person.ValueType, person.PersonName = "PNAME", "CUDDY^LISA"  # a person in structured content
    ds.ContentSequence = [person]
    ds.OtherPatientIDsSequence = [Dataset()]
    ds.OtherPatientIDsSequence[0].PatientID = "OLDMRN-4711"
    ids = identifiers_of(ds)
    out = tmp_path / "out"
    out.mkdir()
    texts = {
        "lower.json": '{"note": "mrn555123"}',  # case
        "part.csv": "a,Victoria\n",  # a name part
        "part2.txt": "seen by house",  # the physician's surname, lower case
        "iso.txt": "dob 1958-11-22",
        "dots.txt": "dob 22.11.1958",
        "slash.txt": "dob 22/11/1958",
        "text.txt": "born 22 Nov 1958",
        "long.txt": "born November 22, 1958",
        "nested.txt": "cc: Lisa",  # a person name from inside a sequence
        "other.txt": "old id oldmrn-4711",
        "clean.txt": "uid 2.25.195811224, 1958, victoriaprobe",  # no identifier as a token of its own
    }
    for name, text in texts.items():
        (out / name).write_text(text)
    scanned, findings = scan_outputs(out, ids)
    assert scanned == len(texts)
    assert sorted(findings) == [
        ("dots.txt", "PatientBirthDate"), ("iso.txt", "PatientBirthDate"), ("long.txt", "PatientBirthDate"),
        ("lower.json", "PatientID"), ("nested.txt", "PersonName"), ("other.txt", "PatientID"), ("part.csv", "PatientName"),
        ("part2.txt", "ReferringPhysicianName"), ("slash.txt", "PatientBirthDate"), ("text.txt", "PatientBirthDate"),
    ]


def _nifti(path, data=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16) if data is None else data, np.eye(4)), path)


def test_no_quarantine_reason_names_an_input_path(tmp_path, monkeypatch):
    """A corrupt NIfTI and a corrupt mask under a patient-named folder: quarantined, and neither the
    folder nor any input path reaches an output. With the sanitising undone, the self-check catches it."""
    inp = tmp_path / "export"
    _nifti(inp / "cases" / "good01.nii.gz")
    _nifti(inp / "cases" / "good02.nii.gz")
    bad = inp / "DOE_JANE_MRN555123" / "scan.nii"
    _nifti(bad)
    bad.write_bytes(bad.read_bytes()[:600])  # truncated voxels: nibabel's message quotes the path
    (inp / "DOE_JANE_MRN555123" / "mask.nii.gz").write_bytes(b"garbage")
    labels = tmp_path / "labels.csv"
    labels.write_text("case,condition,mask\ncases/good01.nii.gz,normal,\ncases/good02.nii.gz,lesion,DOE_JANE_MRN555123/mask.nii.gz\n")
    p = Params()
    out = tmp_path / "ingest"
    res = ingest(inp, out, p.data, p.deid, KEY, labels_path=labels, workers=1)
    reasons = [q["reason"] for q in res.quarantine]
    assert any(r.startswith("truncated or corrupt voxel data") for r in reasons)
    assert any(r.startswith("mask unusable: unreadable NIfTI: File <file> is not") for r in reasons)
    for f in ("quarantine.csv", "manifest.csv", "ingest.json", "deid_log.csv"):
        text = (out / f).read_text()
        assert "DOE_JANE" not in text and "MRN555123" not in text and str(tmp_path) not in text, f
    assert res.summary["deid"]["self_check"]["findings"] == 0

    monkeypatch.setattr("medsynth.io.ingest._sanitize_reason", lambda reason, roots, file=None: reason)
    with pytest.raises(DeidSelfCheckError, match=r"input path: 1 file\(s\), e\.g\. quarantine\.csv"):
        ingest(inp, tmp_path / "ingest2", p.data, p.deid, KEY, labels_path=labels, workers=1)
    assert not (tmp_path / "ingest2" / "quarantine.csv").exists()


def test_dicom_quarantine_reason_names_no_input_path(tmp_path):
    """A DICOM reason that quotes its file (as a reader's error message may) loses the whole path."""
    from medsynth.io.ingest import _sanitize_reason

    root = tmp_path / "export"
    f = root / "DOE_JANE_MRN555123" / "IM0001.dcm"
    for reason in (f"cannot read {f}", f"cannot read '{str(f)[:-6]}", f"{f.name} is truncated", f"in {f.relative_to(root)}"):
        clean = _sanitize_reason(reason, [root], f)
        assert not re.search(r"DOE_JANE|IM0001|export", clean), clean
    assert _sanitize_reason("1 NaN/Inf voxel(s)", [root], f) == "1 NaN/Inf voxel(s)"
