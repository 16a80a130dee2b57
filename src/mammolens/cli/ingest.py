"""`mammolens ingest DIR --out DIR`: scan a DICOM archive into manifest.parquet (+ errors.csv)."""

from pathlib import Path

import typer

from mammolens.cli._app import app, finish, report_failures


@app.command("ingest")
def ingest_cli(
    root: Path = typer.Argument(..., help="Archive folder (searched recursively; DICOM detected by content)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for manifest.parquet and errors.csv."),
    workers: int = typer.Option(None, "--workers", "-j", help="Header-reading processes (default: all cores)."),
    pattern: list[str] = typer.Option(["*"], "--pattern", help="File-name glob(s) to consider (repeatable)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    include_ids: bool = typer.Option(False, "--include-ids", help="Keep patient/study identifiers in errors.csv "
                                     "and the FAILED lines (default: pseudonymised)."),
) -> None:
    """Read every DICOM header under ROOT (no pixel decoding) and write OUT/manifest.parquet.

    errors.csv lists each file left out (kind "error": not DICOM, not a mammogram, a duplicate...) and each
    image kept with a header field left empty (kind "warning": PatientAge 130Y...); paths relative to ROOT.
    """
    from mammolens.cli._app import show_progress
    from mammolens.data.ingest import KIND_WARNING, ingest
    from mammolens.io.paths import display_path

    manifest, errors = ingest(root, out, workers=workers, progress=show_progress(progress), patterns=tuple(pattern),
                              include_ids=include_ids)
    warned = errors["kind"] == KIND_WARNING
    errors = errors[~warned]
    typer.echo(f"ingested {len(manifest)} image(s); {len(errors)} file(s) skipped"
               + (f"; {int(warned.sum())} warning(s) (header fields left empty, see errors.csv)" if warned.any() else ""))
    if len(manifest):
        for col in ("modality", "manufacturer", "laterality", "view"):
            counts = manifest[col].replace("", "?").value_counts()
            typer.echo(f"  {col:<13} " + "  ".join(f"{k}: {v}" for k, v in counts.items()))
        typer.echo(f"  patients      {manifest['patient_id'].nunique()}  studies {manifest['study_id'].nunique()}")
    typer.echo(f"manifest: {display_path(out / 'manifest.parquet')}")
    typer.echo(f"errors:   {display_path(out / 'errors.csv')}")
    report_failures(zip(errors["path"], errors["reason"]), out / "errors.csv")
    root = display_path(root)
    finish(len(manifest), len(errors), f"no file under {root} matched --pattern {' '.join(pattern)}" if not len(errors)
           else f"none of the {len(errors)} file(s) under {root} is a readable mammography DICOM "
                f"(reasons in {out / 'errors.csv'})")
