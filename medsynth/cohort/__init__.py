"""The files one stage hands to the next, each with one typed home: the case manifest (written by ingest,
split by preprocess, mirrored by synthesize), the preprocessing record ``preprocess.json`` and the bank of
preprocessed tensors. Every stage reads and writes them through this package."""

from medsynth.cohort.manifest import MANIFEST_FIELDS, ManifestError, ManifestRow, generated_row, read_manifest, write_manifest
from medsynth.cohort.preprocessed import PreprocessInfo, StaleCacheError, TensorBank, data_info_from, load_bank, read_preprocess_info

__all__ = ["MANIFEST_FIELDS", "ManifestError", "ManifestRow", "generated_row", "read_manifest", "write_manifest", "PreprocessInfo", "StaleCacheError",
           "TensorBank", "data_info_from", "load_bank", "read_preprocess_info"]
