"""Crafted inputs that must neither stop nor corrupt a batch (issue 18): file names that are not UTF-8, one
SeriesInstanceUID for two patients, decompression bombs, empty / NaN / Inf volumes, hostile labels CSVs,
an output inside the input, an unreadable key file. Each is quarantined or refused with a reason, and
the rest of the batch is converted."""

import csv
import gzip
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless, generate_uid
from typer.testing import CliRunner

from medsynth.cli import app
from medsynth.config import ConfigError, DeidConfig, Params, parse_params
from medsynth.io.convert import convert_folder
from medsynth.io.deid import Deidentifier, DeidKey
from medsynth.io.ingest import IngestError, deidentify_tree, ingest
from medsynth.io.nifti import load_nifti_checked
from tests.conftest import ROOT
from tests.fixtures.phi import ct_dataset

KEY = DeidKey(b"0123456789abcdef-hostile-inputs", "file", True)
P = Params()


def _slice(k: int, patient: str, study: str, series: str, number: int = 1, rows: int = 16, **extra) -> Dataset:
    ds = ct_dataset()
    ds.PatientID, ds.PatientName, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, f"{patient}^TEST", study, series
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.BurnedInAnnotation = "CT", number, k + 1, "NO"
    ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [0, 0, 2.0 * k], [1, 0, 0, 0, 1, 0], [1, 1]
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", rows, 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (np.arange(rows * 16, dtype=np.uint16) + 10 * k).tobytes()
    for name, value in extra.items():
        setattr(ds, name, value)
    return ds


def _series(folder, patient="PAT0001", study=None, series=None, n=8, **extra) -> str:
    """``n`` slices of one series in ``folder`` (str, Path or bytes); returns its SeriesInstanceUID."""
    study, series = study or generate_uid(), series or generate_uid()
    folder = Path(os.fsdecode(folder))  # a name that is not UTF-8 is held as surrogates
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        _slice(k, patient, study, series, **extra).save_as(folder / f"{k:02d}.dcm", enforce_file_format=True)
    return series


def _nifti(path, data=None) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32) if data is None else data
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def _reasons(folder) -> list[str]:
    return [r["reason"] for r in csv.DictReader(open(Path(folder) / "quarantine.csv"))]


def _ingest(inp, out, labels=None, data=P.data):
    return ingest(inp, out, data, P.deid, KEY, labels_path=labels, workers=1)


# --------------------------------------------------------------------------- 1. file names that are not UTF-8


def test_file_names_that_are_not_utf8_stop_nothing(tmp_path):
    inp = tmp_path / "in"
    raw = os.fsencode(inp)
    _series(raw + b"/M\xfcller_CT", patient="PAT0001")  # a series folder named in Latin-1
    _series(inp / "P2" / "ct", patient="PAT0002")
    _nifti(os.fsdecode(raw + b"/sc\xe4n.nii.gz"))
    open(raw + b"/Befund_M\xfcller.txt", "wb").write(b"report")

    res = convert_folder(inp, tmp_path / "conv", workers=1)
    assert len(res.series_rows) == 3
    assert len(list(csv.DictReader(open(tmp_path / "conv" / "series.csv")))) == 3
    assert "Befund_M\\xfcller.txt" in (tmp_path / "conv" / "quarantine.csv").read_text(encoding="utf-8")  # its bytes, escaped

    out = tmp_path / "deid"
    cli = CliRunner().invoke(app, ["deid", str(inp), str(out), "--ephemeral-key", "--workers", "1"])
    assert cli.exit_code == 0, cli.output
    assert "self-check" in cli.output
    assert len(list(csv.DictReader(open(out / "deid_log.csv")))) == 16
    assert len(_reasons(out)) == 2  # the report and the NIfTI

    ing = _ingest(inp, tmp_path / "ingest")
    assert len(ing.cases) == 3 and ing.summary["deid"]["self_check"]["findings"] == 0
    assert (tmp_path / "ingest" / "ingest.json").is_file() and len(_reasons(tmp_path / "ingest")) == 1


# --------------------------------------------------------------------------- 2. one series UID, two patients


def test_two_patients_sharing_a_series_uid_and_number_stay_two_cases(tmp_path):
    inp = tmp_path / "in"
    uid = _series(inp / "A" / "ct", patient="PAT_A_0001")
    _series(inp / "B" / "ct", patient="PAT_B_0002", series=uid)  # same SeriesInstanceUID and SeriesNumber, same positions
    res = convert_folder(inp, tmp_path / "conv", workers=1)
    assert sorted((r["shape"], r["n_source_files"]) for r in res.series_rows) == [("16x16x8", 8), ("16x16x8", 8)]

    labels = tmp_path / "labels.csv"
    labels.write_text("case,condition\nA/ct,lesion\n")
    ing = _ingest(inp, tmp_path / "ingest", labels)
    assert len(ing.cases) == 2 and len({c["patient"] for c in ing.cases}) == 2
    assert sorted(c["condition"] for c in ing.cases) == ["lesion", "normal"]  # A's row labels A's series only


# --------------------------------------------------------------------------- 3. decompression limits


def _gzip_bomb(path: Path, shape=(1024, 1024, 512)) -> None:
    """A .nii.gz of about 2 MB whose header declares 2 GiB of float32 voxels, all present: gzip members
    of 64 MiB of zeros, one after another."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr["vox_offset"] = 352
    zeros = gzip.compress(bytes(64 << 20), compresslevel=9)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(hdr.binaryblock + b"\0" * 4))
        for _ in range(int(np.prod(shape)) * 4 // (64 << 20)):
            fh.write(zeros)


def test_a_gzip_nifti_declaring_2_gib_is_quarantined_unread(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    _gzip_bomb(inp / "bomb.nii.gz")
    assert (inp / "bomb.nii.gz").stat().st_size < 4 << 20
    _nifti(inp / "good.nii.gz")
    script = textwrap.dedent(f"""
        import json, resource, sys, time
        from pathlib import Path
        from medsynth.config import Params
        from medsynth.io.convert import convert_folder
        from medsynth.io.deid import DeidKey
        from medsynth.io.ingest import ingest
        t, before = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        conv = convert_folder(Path({str(inp)!r}), Path({str(tmp_path / 'conv')!r}), workers=1)
        p = Params()
        ing = ingest(Path({str(inp)!r}), Path({str(tmp_path / 'ingest')!r}), p.data, p.deid, DeidKey(b"k" * 32, "file", True), workers=1)
        print(json.dumps({{"seconds": time.monotonic() - t, "rss_growth_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before,
                           "convert": [q.reason for q in conv.quarantine], "cases": len(ing.cases),
                           "ingest": [q["reason"] for q in ing.quarantine]}}))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    limit = "header declares 1024 x 1024 x 512 = 536,870,912 voxels (2,147,483,648 bytes of float32): over the limit of 134,217,728"
    assert [r[: len(limit)] for r in out["convert"]] == [limit] and [r[: len(limit)] for r in out["ingest"]] == [limit]
    assert out["cases"] == 1
    assert out["rss_growth_mib"] < 512, out  # peak memory past the imports: the 2 GiB are never inflated


def test_a_deflated_dicom_bomb_is_refused_while_streaming_and_the_limit_is_a_param(tmp_path):
    inp = tmp_path / "in"
    _series(inp / "good", patient="PAT0001")
    bomb = _slice(0, "PAT0002", generate_uid(), generate_uid(), rows=16)
    bomb.Rows = bomb.Columns = 4096
    bomb.PixelData = bytes(4096 * 4096 * 2)  # 32 MiB of zeros: 33 KB deflated
    bomb.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    bomb.save_as(inp / "bomb.dcm", enforce_file_format=True)
    assert (inp / "bomb.dcm").stat().st_size < 1 << 20
    tracemalloc.start()
    tree = deidentify_tree(inp, tmp_path / "deid", Deidentifier(DeidConfig(), KEY), max_voxels=64**3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [q["reason"] for q in tree.quarantine] == [
        f"deflated data set inflates to more than 17,825,792 bytes (from {(inp / 'bomb.dcm').stat().st_size:,}): over the limit of "
        "262,144 voxels (data.max_voxels); not decoded"]
    assert len(tree.log) == 8 and peak < 12 << 20  # inflated in 1 MiB steps, never whole

    # data.max_voxels reaches the NIfTI checks of ingest too; below 64^3 it is refused by name
    _nifti(inp / "big.nii.gz", np.ones((72, 72, 72), np.float32))
    ing = _ingest(inp, tmp_path / "ingest", data=P.data.model_copy(update={"max_voxels": 64**3}))
    assert len(ing.cases) == 1
    assert sum("over the limit of 262,144 voxels (data.max_voxels)" in q["reason"] for q in ing.quarantine) == 2
    with pytest.raises(ConfigError, match="data.max_voxels"):
        parse_params({"data": {"max_voxels": 1000}})


def test_a_dicom_declaring_a_huge_image_is_quarantined_before_decoding(tmp_path):
    inp = tmp_path / "in"
    _series(inp / "good", patient="PAT0001")
    study, series = generate_uid(), generate_uid()
    for k in range(2):  # two RLE slices of 65535 x 65535 declared, 200 bytes each
        ds = _slice(k, "PAT0002", study, series)
        ds.Rows = ds.Columns = 65535
        ds.PixelData = encapsulate([b"\x00" * 200])
        ds.file_meta.TransferSyntaxUID = RLELossless
        ds.save_as(inp / f"huge{k}.dcm", enforce_file_format=True)
    declared = "declared size 65535 x 65535 x 1 frame(s) = 4,294,836,225 voxels (8,589,672,450 bytes decoded, 16 bits allocated)"
    res = convert_folder(inp, tmp_path / "conv", workers=1)
    assert len(res.series_rows) == 1 and [q.reason[: len(declared)] for q in res.quarantine] == [declared] * 2
    tree = deidentify_tree(inp, tmp_path / "deid", Deidentifier(DeidConfig(), KEY))
    assert [q["reason"][: len(declared)] for q in tree.quarantine] == [declared] * 2


def test_an_unreadable_voxel_block_gets_a_reason_that_says_what(tmp_path, monkeypatch):
    _nifti(tmp_path / "a.nii.gz")

    def fail(*args, **kwargs):
        raise MemoryError()  # what a too-large read raises: no message

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", fail)
    with pytest.raises(Exception, match=r"^truncated or corrupt voxel data \(8 x 8 x 8 float32 declared\): MemoryError$"):
        load_nifti_checked(tmp_path / "a.nii.gz")


# --------------------------------------------------------------------------- 4. empty, NaN and Inf DICOM volumes


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_dicom_volumes_without_pixels_or_with_nan_or_inf_are_quarantined(tmp_path):
    inp = tmp_path / "in"
    _series(inp / "good", patient="PAT0001")
    _series(inp / "nan", patient="PAT0002", RescaleSlope="nan")
    _series(inp / "inf", patient="PAT0003", RescaleSlope="1e308")  # overflows float32 in all but the one 0 pixel
    _series(inp / "norows", patient="PAT0004", rows=0, PixelData=b"\0\0")
    expected = ["RescaleSlope nan / RescaleIntercept -1024: not finite"] * 8 + [
        "2047 NaN/Inf voxel(s) after RescaleSlope / RescaleIntercept (overflow or non-finite pixel values)",
        ] + ["Rows x Columns is 0 x 16: no pixels"] * 8
    res = convert_folder(inp, tmp_path / "conv", workers=1)
    assert len(res.series_rows) == 1
    assert sorted(q.reason for q in res.quarantine) == sorted(expected)
    ing = _ingest(inp, tmp_path / "ingest")
    assert len(ing.cases) == 1 and sorted(q["reason"] for q in ing.quarantine) == sorted(expected)


# --------------------------------------------------------------------------- 5. labels CSV


@pytest.mark.parametrize("mask", ["../../etc/passwd", "masks/../../outside.nii.gz", "ABSOLUTE"])
def test_a_label_mask_outside_the_input_is_refused_with_its_line(tmp_path, mask):
    inp = tmp_path / "in"
    _nifti(inp / "a.nii.gz")
    _nifti(inp / "b.nii.gz")
    _nifti(tmp_path / "outside.nii.gz", np.ones((8, 8, 8), np.uint8))
    mask = str(tmp_path / "outside.nii.gz") if mask == "ABSOLUTE" else mask
    labels = tmp_path / "labels.csv"
    labels.write_text(f"case,condition,mask\na.nii.gz,normal,\nb.nii.gz,lesion,{mask}\n")
    with pytest.raises(IngestError, match=r"labels\.csv:3: mask .* lies outside data\.input"):
        _ingest(inp, tmp_path / "ingest", labels)
    assert not (tmp_path / "ingest" / "masks").exists()


def test_masks_in_the_input_never_become_patients(tmp_path):
    inp = tmp_path / "in"
    _nifti(inp / "P1" / "ct.nii.gz")
    _nifti(inp / "P2" / "ct.nii.gz")
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    _nifti(inp / "P1" / "segmentation_mask.nii.gz", mask)
    _nifti(inp / "P2" / "segmentation_mask.nii.gz", mask)  # no row names it
    labels = tmp_path / "labels.csv"
    labels.write_text("case,condition,mask\nP1/ct.nii.gz,lesion,P1/./../P1/segmentation_mask.nii.gz\n")
    ing = _ingest(inp, tmp_path / "ingest", labels)
    assert sorted((c["condition"], c["has_mask"]) for c in ing.cases) == [("lesion", 1), ("normal", 0)]
    assert [(q["kind"], q["reason"][:17]) for q in ing.quarantine] == [("mask", "looks like a mask")]


def test_a_labels_csv_with_a_bom_is_read_and_one_in_latin1_is_refused_clearly(tmp_path):
    inp = tmp_path / "in"
    _nifti(inp / "a.nii.gz")
    _nifti(inp / "b.nii.gz")
    labels = tmp_path / "labels.csv"
    labels.write_bytes("case,condition\na.nii.gz,lesion\n".encode("utf-8-sig"))  # Excel's "CSV UTF-8"
    assert sorted(c["condition"] for c in _ingest(inp, tmp_path / "ingest", labels).cases) == ["lesion", "normal"]
    labels.write_bytes("case,condition\na.nii.gz,lesion\nb.nii.gz,Lymphknoten vergrößert\n".encode("latin-1"))
    with pytest.raises(IngestError, match=r"labels\.csv:3: labels CSV is not UTF-8 \(byte 0xf6: Latin-1 or Windows-1252\?\)"):
        _ingest(inp, tmp_path / "ingest2", labels)


def test_two_label_rows_naming_one_series_under_different_keys_are_a_conflict(tmp_path):
    inp = tmp_path / "in"
    uid = _series(inp / "P1" / "ct", patient="PAT0001")
    _series(inp / "P2" / "ct", patient="PAT0002")
    labels = tmp_path / "labels.csv"
    # P1's series by folder and by UID, disagreeing; P2's by folder and PatientID, agreeing
    labels.write_text(f"case,condition\nP1/ct,lesion\nPAT0002,normal\n{uid},normal\nP2/ct,normal\n")
    ing = _ingest(inp, tmp_path / "ingest", labels)
    assert [c["condition"] for c in ing.cases] == ["normal"]
    assert [(q["kind"], q["reason"]) for q in ing.quarantine] == [
        ("label", "labels CSV lines 2 and 4 name this series under different keys (path, PatientID, SeriesInstanceUID) with a "
                  "different condition, mask or patient: keep one row")]


# --------------------------------------------------------------------------- 6. output inside the input, unreadable key


def test_deid_and_ingest_refuse_an_output_inside_the_input(tmp_path):
    inp = tmp_path / "in"
    _series(inp / "ct")
    for out, why in ((inp, "lies inside the input"), (inp / "deid", "lies inside the input"), (tmp_path, "holds the input")):
        res = CliRunner().invoke(app, ["deid", str(inp), str(out), "--ephemeral-key"])
        assert res.exit_code == 2 and why in " ".join(res.output.split()), res.output
    assert sorted(p.name for p in inp.rglob("*") if p.is_file()) == [f"{k:02d}.dcm" for k in range(8)]
    with pytest.raises(IngestError, match="lies inside data.input"):
        _ingest(inp, inp / "ingest")


@pytest.mark.parametrize("stage", ["fingerprint", "ingest"])
def test_an_unreadable_key_file_is_a_clear_error_in_the_stages(tmp_path, monkeypatch, capsys, stage):
    import yaml

    inp = tmp_path / "export"
    _series(inp / "ct")
    key = tmp_path / "site.key"
    key.write_text("s" * 64)
    key.chmod(0)
    read_bytes = Path.read_bytes

    def unreadable(self):  # chmod 0 does not stop root: refuse as the file system would
        if self == key:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"input": str(inp)}, "deid": {"key_file": str(key)}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT / "pipelines"))
    sys.modules.pop(stage, None)
    module = __import__(stage)
    assert module.main() == 1
    err = "".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "".join(f"{stage} failed: {key}: key file cannot be read (Permission denied)".split()) in err


def test_data_max_voxels_bounds_a_series_of_small_slices_in_ingest(tmp_path):
    inp = tmp_path / "in"
    _series(inp / "small", patient="PAT0001")
    _series(inp / "tall", patient="PAT0002", rows=4096)  # 8 slices of 16 x 4096: each within the limit, together not
    ing = _ingest(inp, tmp_path / "ingest", data=P.data.model_copy(update={"max_voxels": 64**3}))
    assert len(ing.cases) == 1
    assert [q["reason"] for q in ing.quarantine] == [
        "16 x 4096 x 8 x 1 = 524,288 voxels: over the limit of 262,144 voxels (data.max_voxels); not decoded"]


# --------------------------------------------------------------------------- 7. medsynth locate


def _into(folder: Path, prefix: str, src: Path) -> list[str]:
    """Move the files of ``src`` into ``folder`` as ``<prefix><name>``; their paths relative to folder's parent."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for f in sorted(src.iterdir()):
        f.rename(folder / f"{prefix}{f.name}")
        names.append(f"{folder.name}/{prefix}{f.name}")
    src.rmdir()
    return names


def test_locate_finds_every_kind_of_quarantine_id_ingest_writes(tmp_path):
    """Files, series (quarantined in conversion, which reads only the de-identified copies, or as a
    case), masks and labels CSV rows: each id in quarantine.csv leads back to what it names."""
    inp = tmp_path / "in"
    _series(inp / "P7" / "ct", patient="PAT0007")  # the one good case
    _series(inp / "P1" / "ct", patient="PAT0001")  # its labels row names a corrupt mask
    (inp / "P1" / "lesion.nii.gz").write_bytes(b"\x1f\x8b not a NIfTI")
    _series(inp / "P4" / "ct", patient="PAT0004")  # two labels rows disagree on it
    # two series in one folder: one over data.max_voxels (quarantined in conversion), one MR (not selected)
    _series(inp / "_tall", patient="PAT0002", rows=4096)
    _series(inp / "_mr", patient="PAT0003", Modality="MR")
    tall, mr = _into(inp / "flat", "t", inp / "_tall"), _into(inp / "flat", "m", inp / "_mr")
    (inp / "notes.txt").write_text("not an image")
    _nifti(inp / "P5" / "seg_mask.nii.gz", np.zeros((8, 8, 8), np.uint8))  # a mask no row names
    labels = tmp_path / "labels.csv"
    labels.write_text("case,condition,mask\nP1/ct,lesion,P1/lesion.nii.gz\nP4/ct,lesion,\nPAT0004,normal,\nNOSUCHCASE,normal,\n")
    data = P.data.model_copy(update={"max_voxels": 64**3, "modality": "CT"})
    ing = _ingest(inp, tmp_path / "ingest", labels, data=data)
    assert len(ing.cases) == 1
    expected = {  # (kind, start of the reason) -> what locate prints
        ("file", "not an image file"): ["notes.txt"],
        ("mask", "looks like a mask"): ["P5/seg_mask.nii.gz"],
        ("mask", "mask unusable"): ["P1/lesion.nii.gz"],
        ("series", "16 x 4096 x 8 x 1"): tall,
        ("series", "modality MR not selected"): mr,
        ("label", "labels CSV lines 3 and 4"): [f"P4/ct/{k:02d}.dcm" for k in range(8)],
        ("label", "labels CSV row matched no"): [f"{labels}:5: NOSUCHCASE"],
    }
    rows = list(csv.DictReader(open(tmp_path / "ingest" / "quarantine.csv")))
    assert sorted((r["kind"], next(s for k, s in expected if r["reason"].startswith(s))) for r in rows) == sorted(expected)
    key_file = tmp_path / "site.key"
    key_file.write_bytes(KEY.secret)
    for r in rows:
        res = CliRunner().invoke(app, ["locate", str(inp), r["file_id"], "--key-file", str(key_file), "--labels", str(labels)])
        want = next(v for (kind, s), v in expected.items() if kind == r["kind"] and r["reason"].startswith(s))
        assert res.exit_code == 0 and res.stdout.splitlines() == want, (r, res.output)
    label_row = next(r for r in rows if r["reason"].startswith("labels CSV row"))
    res = CliRunner().invoke(app, ["locate", str(inp), label_row["file_id"], "--key-file", str(key_file)])
    assert res.exit_code == 2 and "--labels" in res.output
    res = CliRunner().invoke(app, ["locate", str(inp), "S000000000000", "--key-file", str(key_file)])
    assert res.exit_code == 3 and "nothing under" in " ".join(res.output.split())


# --------------------------------------------------------------------------- 8. kill -9 of ingest


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its parent (here init) has not reaped it yet


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_ingest_leaves_no_worker_and_a_rerun_no_temporary_file(tmp_path):
    import signal
    import time

    inp, out = tmp_path / "in", tmp_path / "ingest"
    for i in range(30):
        _series(inp / f"P{i:02d}", patient=f"PAT{i:04d}")
    script = textwrap.dedent(f"""
        from pathlib import Path
        from medsynth.config import Params
        from medsynth.io.deid import DeidKey
        from medsynth.io.ingest import ingest
        p = Params()
        ingest(Path({str(inp)!r}), Path({str(out)!r}), p.data, p.deid, DeidKey({KEY.secret!r}, "file", True), workers=2)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 20
        while len(workers) < 2 and parent.poll() is None and time.monotonic() < deadline:
            workers |= _children(parent.pid)
            time.sleep(0.02)
        assert len(workers) >= 2 and parent.poll() is None, "the pool never started"
        time.sleep(0.2)  # the workers are busy de-identifying
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while any(_running(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_running(w) for w in workers), "pool workers outlived the killed ingest"
    finally:
        for w in workers:
            if _running(w):
                os.kill(w, signal.SIGKILL)
    # a run killed while writing a CSV leaves the writer's temporary file beside it
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os
        from medsynth.io.writers import atomic_path
        with atomic_path({str(out / 'manifest.csv')!r}) as tmp:
            tmp.write_text("case_id,half a row")
            os.kill(os.getpid(), 9)
    """)], cwd=ROOT)
    assert killed.returncode == -9 and [p.name[:14] for p in out.glob(".*.tmp")] == [".manifest.csv."]
    (out / "notes.txt.abcdefgh.tmp").write_text("not the writer's: kept")
    assert len(_ingest(inp, out).cases) == 30
    assert [p.relative_to(out).as_posix() for p in out.rglob("*tmp*")] == ["notes.txt.abcdefgh.tmp"]
