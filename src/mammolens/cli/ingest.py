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
) -> None:
    """Read every DICOM header under ROOT (no pixel decoding) and write OUT/manifest.parquet."""
    from mammolens.data.ingest import ingest

    manifest, errors = ingest(root, out, workers=workers, progress=progress, patterns=tuple(pattern))
    typer.echo(f"ingested {len(manifest)} image(s); {len(errors)} file(s) skipped")
    if len(manifest):
        for col in ("modality", "manufacturer", "laterality", "view"):
            counts = manifest[col].replace("", "?").value_counts()
            typer.echo(f"  {col:<13} " + "  ".join(f"{k}: {v}" for k, v in counts.items()))
        typer.echo(f"  patients      {manifest['patient_id'].nunique()}  studies {manifest['study_id'].nunique()}")
    typer.echo(f"manifest: {out / 'manifest.parquet'}")
    typer.echo(f"errors:   {out / 'errors.csv'}")
    report_failures(zip(errors["path"], errors["reason"]), out / "errors.csv")
    finish(len(manifest), len(errors), f"no file under {root} matched --pattern {' '.join(pattern)}" if not len(errors)
           else f"none of the {len(errors)} file(s) under {root} is a readable mammography DICOM (reasons in {out / 'errors.csv'})")
