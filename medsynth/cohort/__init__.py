"""The files one stage hands to the next, each with one typed home: the case manifest (written by ingest,
split by preprocess, mirrored by synthesize), the preprocessing record ``preprocess.json`` and the bank of
preprocessed tensors. Every stage reads and writes them through this package. :func:`check_per_condition`
checks ``synthesize.per_condition`` against a cohort's conditions (the train and synthesize stages)."""

from medsynth.cohort.conditions import check_per_condition
from medsynth.cohort.manifest import MANIFEST_FIELDS, ManifestError, ManifestRow, generated_row, read_manifest, write_manifest
from medsynth.cohort.preprocessed import PreprocessInfo, StaleCacheError, TensorBank, data_info_from, load_bank, read_preprocess_info

__all__ = ["MANIFEST_FIELDS", "ManifestError", "ManifestRow", "generated_row", "read_manifest", "write_manifest", "PreprocessInfo", "StaleCacheError",
           "TensorBank", "check_per_condition", "data_info_from", "load_bank", "read_preprocess_info"]
