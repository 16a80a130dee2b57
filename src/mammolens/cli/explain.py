"""`mammolens explain RUN IMAGES...`: GradCAM overlays."""

from pathlib import Path

import typer

from mammolens.cli._app import app, finish, report_failures


@app.command("explain")
def explain_cli(
    run: Path = typer.Argument(..., help="Run folder written by `mammolens train`."),
    images: list[Path] = typer.Argument(..., help="Image files or folders (DICOM, PNG, TIFF...)."),
    out: Path = typer.Option(Path("explanations"), "--out", help="Folder for the overlay PNGs."),
    class_name: str = typer.Option(None, "--class", help="Explain this class (default: the predicted one)."),
    device: str = typer.Option("auto"),
) -> None:
    """GradCAM heat maps of the run's classifier, drawn on the original image with a colour bar and the class they explain, as PNG."""
    from mammolens.workflows import explain_run

    recs = explain_run(run, images, out, class_name=class_name, device=device)
    failed = [(r["file"], r["error"]) for r in recs if "error" in r]
    for r in recs:
        if "error" not in r:
            typer.echo(f"{r['file']}: predicted {r['pred']} -> {r['overlay']}")
    report_failures(failed, "the list above", limit=len(failed))  # explain writes no errors.csv: all shown
    finish(len(recs) - len(failed), len(failed), "no image file found in " + " ".join(map(str, images)) if not failed
           else f"none of the {len(failed)} file(s) could be read")
