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
    map_kind: str = typer.Option(None, "--map", help="gradcam | text (text-to-patch similarity) | factor "
                                 "(FActOR channel attribution, fitted on the run's training images). Default: "
                                 "text with --text/--report, else GradCAM of the classifier."),
    dicom: bool = typer.Option(False, "--dicom", help="Also write a DICOM Secondary Capture per overlay (DICOM inputs)."),
    manifest: Path = typer.Option(None, "--manifest", help="A manifest with lesion_x, lesion_y, lesion_r: draw each "
                                  "image's ground-truth lesion outline (green circle) on its overlays."),
    sidecar: Path = typer.Option(None, "--sidecar", help="CSV with columns path, patient, study, laterality, view "
                                 "that groups image files into exams (as in predict)."),
    device: str = typer.Option("auto"),
) -> None:
    """Heat maps drawn on the original images with a colour bar, as PNG: GradCAM of the classifier, or maps of sentences.

    Overlays are named after their source image (IMAGE_<hash>_gradcam.png, IMAGE_<hash>_text_0.png).
    """
    from mammolens.workflows import explain_run, explain_sentences, read_sentences

    sentences = bool(text) or report is not None
    if map_kind in ("text", "factor") and not sentences:
        raise ValueError(f"--map {map_kind} maps sentences: give --text \"spiculated mass\" (repeatable) or --report "
                         "FILE; without them explain draws GradCAM of the classifier.")
    if sentences:
        texts = read_sentences(text, report)
        recs = explain_sentences(run, images, out, texts, kind=map_kind or "text", device=device, dicom=dicom,
                                 manifest=manifest)
        for r in recs:
            if "error" not in r:
                typer.echo(f"{r['file']}: {r['text']!r} ({r['kind']}) -> {r['overlay']}")
    else:
        recs = explain_run(run, images, out, class_name=class_name, device=device, sidecar=sidecar, manifest=manifest)
        for r in recs:
            if "error" not in r:
                typer.echo(f"{r['file']}: predicted {r['pred']} -> {r['overlay']}")
    if manifest is not None:
        n = sum(1 for r in recs if r.get("outlined"))
        typer.echo(f"ground-truth outline drawn on {n} overlay(s) (images with lesion_x/lesion_y/lesion_r in "
                   f"{manifest.name})")
    failed = [(r["file"], r["error"]) for r in recs if "error" in r]
    report_failures(failed, "the list above", limit=len(failed))  # explain writes no errors.csv: all shown
    finish(len(recs) - len(failed), len(failed), "no image file found in " + " ".join(map(str, images)) if not failed
           else f"none of the {len(failed)} file(s) could be read")
