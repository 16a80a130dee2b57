"""`mammolens explain RUN IMAGES...`: GradCAM overlays, or maps of sentences (`--text`, `--report`)."""

from pathlib import Path

import typer

from mammolens.cli._app import app, finish, report_failures


@app.command("explain")
def explain_cli(
    run: Path = typer.Argument(..., help="Run folder written by `mammolens train`."),
    images: list[Path] = typer.Argument(..., help="Image files or folders (DICOM, PNG, TIFF...)."),
    out: Path = typer.Option(Path("explanations"), "--out", help="Folder for the overlay PNGs."),
    class_name: str = typer.Option(None, "--class", help="Explain this class (default: the predicted one)."),
    text: list[str] = typer.Option(None, "--text", help="A sentence or finding to map, e.g. \"spiculated mass\" "
                                   "(repeatable)."),
    report: Path = typer.Option(None, "--report", help="A plain-text report: each sentence is mapped."),
    map_kind: str = typer.Option("gradcam", "--map", help="gradcam | text (text-to-patch similarity) | factor "
                                 "(FActOR channel attribution, fitted on the run's training images)."),
    dicom: bool = typer.Option(False, "--dicom", help="Also write a DICOM Secondary Capture per overlay (DICOM inputs)."),
    device: str = typer.Option("auto"),
) -> None:
    """Heat maps drawn on the original images with a colour bar, as PNG: GradCAM of the classifier, or maps of sentences."""
    from mammolens.workflows import explain_run, explain_sentences, read_sentences

    if text or report is not None or map_kind != "gradcam":
        texts = read_sentences(text, report)
        recs = explain_sentences(run, images, out, texts, kind=map_kind, device=device, dicom=dicom)
        for r in recs:
            if "error" not in r:
                typer.echo(f"{r['file']}: {r['text']!r} ({r['kind']}) -> {r['overlay']}")
    else:
        recs = explain_run(run, images, out, class_name=class_name, device=device)
        for r in recs:
            if "error" not in r:
                typer.echo(f"{r['file']}: predicted {r['pred']} -> {r['overlay']}")
    failed = [(r["file"], r["error"]) for r in recs if "error" in r]
    report_failures(failed, "the list above", limit=len(failed))  # explain writes no errors.csv: all shown
    finish(len(recs) - len(failed), len(failed), "no image file found in " + " ".join(map(str, images)) if not failed
           else f"none of the {len(failed)} file(s) could be read")
