"""The ``medsynth`` command's entry point.

``medsynth convert INPUT OUTPUT [--workers N]`` runs here without importing the command-line framework
(typer and rich cost about 0.15 s, a sixth of converting a small folder). Every other command, and any
other form of ``convert`` (``--help``, a wrong option), goes to :mod:`medsynth.cli`, which also
documents ``convert``.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _plain_convert(argv: list[str]) -> tuple[Path, Path, int | None] | None:
    """(input, output, workers) when ``argv`` is exactly ``convert IN OUT [--workers N]``, else None."""
    if not argv or argv[0] != "convert":
        return None
    positional: list[str] = []
    workers: int | None = None
    rest = argv[1:]
    while rest:
        arg = rest.pop(0)
        if arg.startswith("--workers"):
            value = arg.partition("=")[2] if "=" in arg else (rest.pop(0) if rest else "")
            try:
                workers = int(value)
            except ValueError:
                return None
        elif arg.startswith("-"):
            return None
        else:
            positional.append(arg)
    return (Path(positional[0]), Path(positional[1]), workers) if len(positional) == 2 else None


def main() -> None:
    plain = _plain_convert(sys.argv[1:])
    if plain is None:
        from medsynth.cli import app

        app()
        return
    input_dir, output, workers = plain
    if not input_dir.exists():
        print(f"error: {input_dir}: input does not exist", file=sys.stderr)
        sys.exit(2)
    from medsynth.io.dicom.scan import start_scan

    pending = start_scan(input_dir, workers=workers)  # its child processes read the headers while numpy and the converter are imported
    from medsynth.io.convert import convert_folder

    res = convert_folder(input_dir, output, workers=workers, pending=pending)
    print(res.summary(output), file=sys.stderr)
    if not res.series_rows:
        print("error: nothing could be converted", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":  # pragma: no cover
    main()
