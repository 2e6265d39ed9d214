"""What a file or series that cannot be converted becomes: a quarantine entry with its reason."""

from __future__ import annotations

from dataclasses import dataclass

# the most voxels one input file or series may hold (data.max_voxels): a 512 x 512 x 512 CT fits
DEFAULT_MAX_VOXELS = 512**3


class SeriesError(Exception):
    """A series (or file) that cannot be turned into a volume; the message is the reason."""


@dataclass
class QuarantineEntry:
    path: str
    reason: str


def error_text(exc: BaseException) -> str:
    """An exception as a one-line reason: its message, or its class name when the message is empty."""
    return " ".join(str(exc).split())[:160] or type(exc).__name__


def max_decoded_bytes(max_voxels: int) -> int:
    """The most bytes one file may decode or inflate to: 4 bytes a voxel (32-bit samples) + 16 MiB of header."""
    return 4 * max_voxels + (16 << 20)
