"""``manifest.csv``: one row per case. Ingest writes it (``split`` empty), preprocess adds each case's
patient-level split, synthesize writes ``synthetic_manifest.csv`` with the same columns."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TypedDict

from medsynth.io.writers import write_csv_atomic

MANIFEST_FIELDS = ["case_id", "patient", "condition", "modality", "shape", "spacing", "source", "has_mask", "split"]


class ManifestRow(TypedDict, total=False):
    case_id: str  # the case's file stem under images/ and masks/
    patient: str  # pseudonymised patient id (a synthetic case: its own id; a counterfactual: its source case)
    condition: str
    modality: str  # CT, MR or SEG (shape-only cohorts)
    shape: str  # "DxHxW" voxels
    spacing: str  # "sxsxs" mm
    source: str  # dicom, nifti, npz, synthetic:<model>, counterfactual:<model>
    has_mask: int | str
    split: str  # train, val, test, holdout (preprocess), synthetic


class ManifestError(FileNotFoundError):
    pass


def read_manifest(path: Path) -> list[ManifestRow]:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found (run the stage that writes it first)")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))  # type: ignore[arg-type]


def generated_row(case_id: str, patient: str, condition: str, modality: str, shape, spacing, source: str) -> ManifestRow:
    """The manifest row of a case a model wrote (synthetic or counterfactual): split ``synthetic``, always masked."""
    return {"case_id": case_id, "patient": patient, "condition": condition, "modality": modality,
            "shape": "x".join(str(s) for s in shape), "spacing": "x".join(f"{s:g}" for s in spacing),
            "source": source, "has_mask": 1, "split": "synthetic"}


def write_manifest(path: Path, rows: list[ManifestRow] | list[dict]) -> None:
    write_csv_atomic(Path(path), rows, MANIFEST_FIELDS)
