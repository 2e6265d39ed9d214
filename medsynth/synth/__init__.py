"""Sampling trained generators and writing what users take away (NIfTI, DICOM + SEG, bundles)."""

import importlib


def __getattr__(name: str):
    # `from medsynth.synth import bundle` as MONAI bundle configs write it (attribute lookup, not import)
    if name in ("bundle", "sampler", "augment", "dicom_writer"):
        return importlib.import_module(f"medsynth.synth.{name}")
    raise AttributeError(name)
