"""`mammolens explain RUN IMAGES...`: GradCAM overlays."""

from pathlib import Path

import typer

from mammolens.cli._app import app


@app.command("explain")
def explain_cli(
    run: Path = typer.Argument(..., help="Run folder written by `mammolens train`."),
    images: list[Path] = typer.Argument(..., help="Image files or folders (DICOM, PNG, TIFF...)."),
    out: Path = typer.Option(Path("explanations"), "--out", help="Folder for the overlay PNGs."),
    class_name: str = typer.Option(None, "--class", help="Explain this class (default: the predicted one)."),
    device: str = typer.Option("auto"),
) -> None:
    """GradCAM heat maps of the run's classifier, overlaid on the preprocessed image, as PNG."""
    from mammolens.workflows import explain_run

    recs = explain_run(run, images, out, class_name=class_name, device=device)
    failed = 0
    for r in recs:
        if "error" in r:
            failed += 1
            typer.echo(f"FAILED {r['file']}: {r['error']}", err=True)
        else:
            typer.echo(f"{r['file']}: predicted {r['pred']} -> {r['overlay']}")
    raise typer.Exit(code=1 if failed else 0)
