"""The ``medsynth`` command: what users do outside the pipeline, on the same library functions."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from medsynth import __version__

app = typer.Typer(help="medsynth: de-identify, convert and synthesize 3D medical images.", no_args_is_help=True, add_completion=False)
console = Console(stderr=True)


def _fail(msg: str, code: int = 1) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(msg)}")
    raise typer.Exit(code)


@app.command()
def version() -> None:
    """Print the medsynth version."""
    print(__version__)


@app.command()
def convert(
    input: Path = typer.Argument(..., help="folder (searched recursively) or file of DICOM / NIfTI"),
    output: Path = typer.Argument(..., help="output folder: one RAS NIfTI per series, series.csv, quarantine.csv"),
    workers: int | None = typer.Option(None, help="processes (default: the header scan one per 200 files, the conversion all cores "
                                       "from 1,000 image files, else one, each at most one per core; 1: one process)"),
) -> None:
    """Convert every DICOM series (and NIfTI) under INPUT to RAS NIfTI in OUTPUT. Does not de-identify."""
    from medsynth.io.convert import convert_folder

    if not input.exists():
        _fail(f"{input}: input does not exist", 2)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("converting", total=None)
        res = convert_folder(input, output, workers=workers, progress=lambda _: progress.advance(task))
    console.print(escape(res.summary(output)))
    if not res.series_rows:
        _fail("nothing could be converted", 3)


@app.command()
def deid(
    input: Path = typer.Argument(..., help="folder of DICOM files (read only)"),
    output: Path = typer.Argument(..., help="output folder: de-identified copies under pseudonymous folders"),
    key_file: Path | None = typer.Option(None, "--key-file", help="site key file (else $MEDSYNTH_DEID_KEY)"),
    ephemeral_key: bool = typer.Option(False, "--ephemeral-key", help="throw-away key for trials: pseudonyms NOT stable"),
    no_dates: bool = typer.Option(False, "--no-dates", help="drop dates instead of shifting them"),
    drop_patient_characteristics: bool = typer.Option(False, help="remove sex, age, size, weight"),
    clean_descriptors: bool = typer.Option(True, "--clean-descriptors/--remove-descriptors",
                                           help="clean free-text descriptions to imaging vocabulary, or remove them"),
    retain_safe_private: bool = typer.Option(False, help="keep the documented safe private tags"),
    workers: int | None = typer.Option(None, help="processes (default: all cores from 1,000 image files, else one)"),
) -> None:
    """De-identify DICOM (PS3.15 Annex E Basic Profile + options) into OUTPUT with deid_log.csv and quarantine.csv."""
    from medsynth.config import DeidConfig
    from medsynth.io.deid import Deidentifier, DeidKeyError, load_key
    from medsynth.io.ingest import DEID_LOG_FIELDS, QUARANTINE_FIELDS, DeidSelfCheckError, deidentify_tree, self_check
    from medsynth.io.writers import remove_stale_temps, write_csv_atomic

    cfg = DeidConfig(
        retain_longitudinal_modified_dates=not no_dates, retain_patient_characteristics=not drop_patient_characteristics,
        clean_descriptors=clean_descriptors, retain_safe_private=retain_safe_private,
    )
    try:
        key = load_key(cfg, key_file=str(key_file) if key_file else None, ephemeral=ephemeral_key)
    except DeidKeyError as exc:
        _fail(str(exc), 2)
    if not input.is_dir():
        _fail(f"{input}: not a folder", 2)
    if output.resolve().is_relative_to(input.resolve()):
        _fail(f"{output}: the output folder lies inside the input {input}: the input is only read; write elsewhere", 2)
    if input.resolve().is_relative_to(output.resolve()):
        _fail(f"{output}: the output folder holds the input {input}: give the de-identified copies a folder of their own", 2)
    d = Deidentifier(cfg, key, version=__version__)
    remove_stale_temps(output)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("de-identifying", total=None)
        tree = deidentify_tree(input, output, d, progress=lambda _: progress.advance(task), workers=workers)
    quarantine, log, niftis = tree.quarantine, tree.log, tree.niftis
    for p in niftis:
        quarantine.append({"file_id": d.pseudo.file_id(str(p.relative_to(input))), "kind": "file",
                           "reason": "NIfTI: not DICOM (use the pipeline's ingest to clean NIfTI headers)"})
    write_csv_atomic(output / "deid_log.csv", log, DEID_LOG_FIELDS)
    write_csv_atomic(output / "quarantine.csv", quarantine, QUARANTINE_FIELDS)
    try:
        check = self_check(output, tree.identifiers)  # never deletes here: OUTPUT is the user's folder
    except DeidSelfCheckError as exc:
        _fail(str(exc), 1)
    note = "" if key.stable else " [yellow](throw-away key: pseudonyms are NOT stable)[/yellow]"
    console.print(f"deid: wrote {len(log)} de-identified file(s) to {output}; {len(quarantine)} quarantined{note}; "
                  f"self-check: {check['identifiers_searched']} original identifiers searched in {check['files_scanned']} files, none found")


@app.command()
def keygen(
    path: Path = typer.Argument(..., help="key file to create, e.g. ~/.medsynth/site.key (keep it outside the repository)"),
    force: bool = typer.Option(False, "--force", help="replace an existing key: pseudonyms made with the replaced key can no longer be reproduced"),
) -> None:
    """Write a new random site key (64 hex digits, mode 600) for deid --key-file / deid.key_file."""
    import os
    import secrets

    def write_new(p: Path, data: bytes) -> None:  # creates p with mode 600, or fails if anything is there
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    path = path.expanduser()
    if path.is_dir():
        _fail(f"{path}: is a folder; give the key file's path", 2)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = (secrets.token_hex(32) + "\n").encode()
    try:
        if force:
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            write_new(tmp, key)
            os.replace(tmp, path)
        else:
            write_new(path, key)
    except FileExistsError:
        _fail(f"{path}: a key file is already there; it is left as it is (--force replaces it, and the pseudonyms it gave change)", 2)
    console.print(f"keygen: wrote a new site key to {path} (mode 600); back it up: the same key gives the same pseudonyms. "
                  f"Use it with --key-file {path} or deid.key_file: {path} in params.yaml")


def _print_path(path: str) -> None:
    """A path on stdout; one that is not valid UTF-8 as its bytes, ready to paste into a shell."""
    try:
        print(path)
    except UnicodeEncodeError:
        sys.stdout.flush()
        sys.stdout.buffer.write(os.fsencode(path) + b"\n")
        sys.stdout.flush()


@app.command()
def locate(
    input: Path = typer.Argument(..., help="the raw input folder (data.input)"),
    file_id: str = typer.Argument(..., help="an id from quarantine.csv: F... a file, S... a series, L... a labels CSV row"),
    key_file: Path | None = typer.Option(None, "--key-file"),
    labels: Path | None = typer.Option(None, "--labels", help="the labels CSV (data.labels): needed for L... ids"),
    demo: bool = typer.Option(False, help="the id came from the demo key"),
) -> None:
    """Map a quarantine id back to what it names (runs only where the raw data and the key are): a file's
    path; a series' files, one per line; a labels CSV row as CSV:LINE: CASE."""
    from medsynth.config import DeidConfig
    from medsynth.io.deid import DeidKeyError, Pseudonymizer, load_key
    from medsynth.io.dicom import classify_file, discover_files

    try:
        key = load_key(DeidConfig(), key_file=str(key_file) if key_file else None, demo=demo)
    except DeidKeyError as exc:
        _fail(str(exc), 2)
    if not input.is_dir():
        _fail(f"{input}: not a folder", 2)
    p = Pseudonymizer(key)
    if file_id.startswith("L"):
        from medsynth.io.labels import LabelsError, read_labels

        if labels is None:
            _fail(f"{file_id} names a labels CSV row: give the labels CSV with --labels", 2)
        try:
            rows = read_labels(labels)
        except LabelsError as exc:
            _fail(str(exc), 2)
        for case, row in rows.items():
            if p.label_id(case) == file_id:
                print(f"{labels}:{row.line}: {case}")
                return
        _fail(f"no row of {labels} has id {file_id}", 3)
    paths = discover_files(input)
    for path in paths:
        rel = str(path.relative_to(input))
        if p.file_id(rel) == file_id:
            _print_path(rel)
            return
        if p.series_id(rel) == file_id:
            # the id names a series by its first file: list every file of that series (the same
            # series key: SeriesInstanceUID, SeriesNumber and PatientID, or what dcm2niix stacks across them)
            kind, series = classify_file(path)
            members = [q for q in paths if q == path or kind == "image" and classify_file(q) == (kind, series)]
            for q in sorted(members, key=str):
                _print_path(str(q.relative_to(input)))
            return
    _fail(f"nothing under {input} has id {file_id}", 3)


@app.command()
def demo(
    output: Path = typer.Argument(..., help="folder to write the demo cohort (fake patients) into"),
    patients: int = typer.Option(40, help="number of phantom patients"),
    seed: int = typer.Option(1234),
) -> None:
    """Write the embedded demo cohort: DICOM series with fake PHI, a few NIfTI, masks and labels.csv."""
    from pydantic import ValidationError

    from medsynth.config import DemoConfig, _describe_error
    from medsynth.data.demo import generate_demo_cohort

    try:
        cfg = DemoConfig(patients=patients)
    except ValidationError as exc:
        _fail("; ".join(_describe_error({**e, "loc": tuple(f"--{p}" for p in e["loc"])}) for e in exc.errors()), 2)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("writing phantoms", total=patients)
        cases = generate_demo_cohort(output, cfg, seed=seed, progress=lambda _: progress.advance(task))
    console.print(f"demo: wrote {len(cases)} phantom patients ({sum(c.condition == 'lesion' for c in cases)} with a lesion) to {output}")


@app.command()
def synth(
    model: Path = typer.Argument(..., help="a trained model: model.pt or its folder (models/cgan); with --bundle, a MONAI bundle folder"),
    output: Path = typer.Argument(..., help="output folder"),
    condition: str = typer.Option(..., "--condition", "-c", help="condition to sample"),
    n: int = typer.Option(4, "-n", help="number of cases"),
    seed: int = typer.Option(0, help="base seed (case i uses seed + i)"),
    temperature: float = typer.Option(1.0, help="noise scale; < 1 trades diversity for typicality"),
    min_island_voxels: int = typer.Option(4, help="remove mask components smaller than this"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    dicom: bool = typer.Option(True, "--dicom/--no-dicom", help="also write a DICOM series + SEG per case (CT/MR models)"),
    batch_size: int = typer.Option(8, help="cases sampled per batch"),
    masks: Path | None = typer.Option(None, help="mask-conditioned models: folder of label maps on the model grid to paint images for "
                                         "(with a manifest beside it, e.g. data/synth/cvae/masks, only the condition's masks)"),
    bundle: bool = typer.Option(False, "--bundle", help="MODEL is a bundle from export-bundle: its weights and medsynth_model.json "
                                "are read, its config is never run, and a bundle whose configs differ from what export-bundle "
                                "writes is refused"),
    from_cases: Path | None = typer.Option(None, "--from", help="counterfactual models: folder of real cases to change to CONDITION "
                                              "(images/<case>.nii.gz + masks/<case>.nii.gz on the model grid, e.g. data/synth/<model>); "
                                              "N of them are changed, each once before any twice. Internal use only"),
) -> None:
    """Sample N synthetic image + mask pairs of one condition from a trained model or a bundle, without the pipeline;
    a counterfactual model changes N of the real cases given with --from instead."""
    from medsynth.io.writers import staging_dir
    from medsynth.synth.bundle import BundleError, check_bundle, load_bundle
    from medsynth.synth.counterfactual import INTERNAL_USE, is_counterfactual, read_sources, synthesize_counterfactuals
    from medsynth.synth.sampler import load_sampler, model_space_transform, needs_masks, physical_transform, read_mask_folder, synthesize

    try:
        if bundle:
            check_bundle(model)
        s = load_bundle(model, device) if bundle else load_sampler(model, device)
    except (FileNotFoundError, BundleError) as exc:
        _fail(str(exc), 2)
    if condition not in s.conditions:
        _fail(f"condition {condition!r} unknown to this model; it knows {s.conditions}", 2)
    if is_counterfactual(s):
        if from_cases is None:
            _fail(f"{model}: a counterfactual model changes real cases: pass --from FOLDER (images/ and masks/ on the model grid)", 2)
        try:
            sources = read_sources(from_cases, model_space_transform(s.data_info), s.data_info["roi_size"])
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc), 2)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("counterfactuals", total=n)
            with staging_dir(output) as tmp:
                rows, skipped = synthesize_counterfactuals(s, tmp, sources, condition, n, seed, physical_transform(s.data_info), device=device,
                                                           progress=lambda k: progress.advance(task, k))
        console.print(f"synth: wrote {len(rows)} counterfactual {condition} case(s) from {len(sources)} case(s) in {from_cases} to {output} "
                      f"({len(skipped)} could not hold the structure: {output / 'skipped_sources.json'}). {INTERNAL_USE}.")
        return
    if from_cases is not None:
        _fail(f"{model}: --from is for counterfactual models; this one ({s.kind}) samples from noise", 2)
    given = None
    if needs_masks(s):
        if masks is None:
            _fail(f"{model}: this model paints images for given masks (conditioning: mask); pass --masks FOLDER", 2)
        try:
            given = {condition: read_mask_folder(masks, s.data_info["roi_size"], condition)}
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc), 2)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("sampling", total=n)
        rows = synthesize(s, output, {condition: n}, seed, temperature, min_island_voxels,
                          device=device, progress=lambda k: progress.advance(task, k),
                          batch_size=batch_size, formats=("nifti", "dicom") if dicom else ("nifti",), masks=given)
    console.print(f"synth: wrote {len(rows)} synthetic {condition} case(s) to {output}")


@app.command("export-bundle")
def export_bundle_cmd(
    model: Path = typer.Argument(..., help="a trained model: model.pt or its folder (models/cgan)"),
    output: Path = typer.Argument(..., help="bundle folder to write"),
    name: str | None = typer.Option(None, help="bundle name shown in metadata.json"),
    report: Path | None = typer.Option(None, help="gates.json of the evaluate stage (reports/eval/gates.json): this model's "
                                          "gates are embedded with its checkpoint's SHA-256 (privacy.json beside it gives the audience)"),
    model_name: str | None = typer.Option(None, help="the model's name in gates.json (default: the model's folder name)"),
    force: bool = typer.Option(False, "--force", help="export a model that failed a privacy gate; the bundle says so"),
) -> None:
    """Export a trained generator as a MONAI bundle (metadata with intended use, limits, contents and this model's gates;
    inference config; weights). Refuses a model that failed a privacy gate unless --force."""
    from medsynth.synth.bundle import SCHEMA_PATH, ExportRefused, export_bundle

    try:
        gates = json.loads(report.read_text()) if report else None
        privacy_path = report.with_name("privacy.json") if report else None
        privacy = json.loads(privacy_path.read_text()) if privacy_path and privacy_path.is_file() else {}
        name_in_gates = model_name or (model.parent.name if model.suffix == ".pt" else model.name)
        out = export_bundle(model, output, name, gates, name_in_gates, force, privacy.get(name_in_gates, {}).get("audience"))
    except (FileNotFoundError, ExportRefused) as exc:
        _fail(str(exc), 2)
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    ev = meta["evaluation"]
    if ev.get("forced"):
        console.print(escape(f"export-bundle: FORCED past failed privacy gate(s) {ev['privacy_gates_failed']}; the bundle says so"))
    console.print(escape(f"export-bundle: wrote {out} (recommendation: {ev['recommendation']}). Check it: python -m monai.bundle "
                         f"verify_metadata --meta_file {out}/configs/metadata.json --filepath {SCHEMA_PATH}; sample: medsynth synth "
                         f"--bundle {out} OUT -c CONDITION (never runs the bundle's config) or python -m monai.bundle run --config_file "
                         f"{out}/configs/inference.json (runs it: a bundle's config is code)"))


@app.command("models")
def list_models() -> None:
    """List registered generative models (built-in and plug-ins)."""
    from medsynth.models import registry

    for name, target in registry.available().items():
        print(f"{name}\t{target}")


@app.command("check-params")
def check_params(path: Path = typer.Argument(Path("params.yaml"))) -> None:
    """Validate a params.yaml and print what is wrong, key by key."""
    from medsynth.config import ConfigError, load_params

    try:
        load_params(path)
    except ConfigError as exc:
        _fail(str(exc), 2)
    print(f"{path}: valid")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
