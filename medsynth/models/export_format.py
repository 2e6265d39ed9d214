"""The exported model's format (``model.pt`` and a bundle's ``configs/medsynth_model.json``) and its one
migration path.

An export holds ``kind``, ``config``, ``data_info`` (and, in model.pt, the sampler's ``state_dict``),
with ``format`` = :data:`EXPORT_FORMAT`. Reading an export goes through :func:`migrate`, which upgrades
an older format step by step (``MIGRATIONS[n]`` turns format n into n + 1) and refuses a newer one, so
the models' ``build_sampler`` only ever sees a current config.
"""

from __future__ import annotations

from collections.abc import Callable

EXPORT_FORMAT = 2


class ExportFormatError(ValueError):
    pass


def _format_1_to_2(export: dict) -> dict:
    """Format 1 (no ``format`` key): exports made before ``train.cgan.upsample`` and the VAEs'
    ``latent_prior`` existed name neither; they were trained with nearest upsampling and sample N(0, I)."""
    config = dict(export["config"])
    if export["kind"] == "cgan":
        config.setdefault("upsample", "nearest")
    if export["kind"] in ("cvae", "vaegan"):
        config.setdefault("latent_prior", "standard")
    return {**export, "config": config}


MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _format_1_to_2}


def migrate(export: dict, source: str) -> dict:
    """``export`` in the current format; ``source`` (the file) names it in the error for a format newer
    than this medsynth reads."""
    version = int(export.get("format", 1))
    if version > EXPORT_FORMAT:
        raise ExportFormatError(f"{source}: exported in model format {version}; this medsynth reads up to format {EXPORT_FORMAT}: "
                                "upgrade medsynth to use it")
    while version < EXPORT_FORMAT:
        export = MIGRATIONS[version](export)
        version += 1
    return {**export, "format": EXPORT_FORMAT}
