"""The labels CSV has one reader: params validation (the conditions it checks synthesize.per_condition
against) and ingest (rows matched to cases) accept and refuse the same files, and a refusal names the
file and the line."""

import pytest

from medsynth.config import DataConfig, cohort_conditions
from medsynth.io import ingest
from medsynth.io.labels import LabelRow, LabelsError, read_labels


def test_a_good_csv_gives_ingest_its_rows_and_validation_its_conditions(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_bytes("case,condition,mask,patient\n/P1/ct/, lesion ,P1/mask.nii.gz,\nP2/ct,small,,PAT2\n".encode("utf-8-sig"))
    rows = {"P1/ct": LabelRow("lesion", "P1/mask.nii.gz", None, 2), "P2/ct": LabelRow("small", None, "PAT2", 3)}
    assert read_labels(csv) == rows
    assert ingest.read_labels(csv) == rows
    data = DataConfig(input=str(tmp_path), labels=str(csv), default_condition="typical", rare_condition="lesion")
    assert cohort_conditions(data) == {"lesion", "small", "typical"}


@pytest.mark.parametrize(("content", "message"), [
    ("case,condition\na,normal\nb,Lymphknoten vergrößert\n".encode("latin-1"), r"labels\.csv:3: labels CSV is not UTF-8 \(byte 0xf6"),
    (b"case,label\na,normal\n", r"labels\.csv: labels CSV needs columns 'case' and 'condition' .* found \['case', 'label'\]"),
    (b"case,condition\na,normal\nb,\n", r"labels\.csv:3: empty 'case' or 'condition'"),
    (b"case,condition\na,normal\nb,lesion\n/a/,lesion\n", r"labels\.csv:4: case 'a' listed twice \(first on line 2\)"),
    (None, r"labels\.csv: labels CSV not found \(data\.labels\)"),
])
def test_a_csv_ingest_refuses_is_refused_with_its_line_and_leaves_the_conditions_unknown_at_load(tmp_path, content, message):
    csv = tmp_path / "labels.csv"
    if content is not None:
        csv.write_bytes(content)
    with pytest.raises(LabelsError, match=message):
        read_labels(csv)
    with pytest.raises(ingest.IngestError, match=message):
        ingest.read_labels(csv)
    # validation leaves the check to ingest, which names the line: no guess from a file ingest refuses
    assert cohort_conditions(DataConfig(input=str(tmp_path), labels=str(csv))) is None
