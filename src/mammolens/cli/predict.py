"""`mammolens predict RUN INPUT... --out DIR`."""

from pathlib import Path

import typer

from mammolens.cli._app import app, finish, report_failures


@app.command("predict")
def predict_cli(
    run: Path = typer.Argument(..., help="Run folder written by `mammolens train`."),
    inputs: list[Path] = typer.Argument(..., help="Image files, study folders or a whole archive."),
    out: Path = typer.Option(Path("predictions"), "--out", help="Output folder."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="GradCAM overlay PNGs (and DICOM SC)."),
    dicom: bool = typer.Option(True, "--dicom/--no-dicom", help="DICOM SR + Secondary Capture for DICOM inputs."),
    include_ids: bool = typer.Option(False, "--include-ids", help="Put patient ID / Study UID in the CSV/JSON tables."),
    batch_size: int = typer.Option(16),
    workers: int = typer.Option(None, help="Reading/preprocessing processes (default: all cores)."),
    device: str = typer.Option("auto"),
    precision: str = typer.Option("fp32", help="fp32 (default), bf16 (faster on recent CPUs/GPUs) or fp16 (CUDA)."),
    sidecar: Path = typer.Option(None, "--sidecar", help="CSV with columns path, patient, study, laterality, view "
                                 "that groups image files into exams (paths relative to the CSV)."),
) -> None:
    """The task's class per image, breast and exam (any number of views), probabilities and (dense tasks) the dense flag.

    Writes images.csv, breasts.csv, exams.csv, results.json, errors.csv, overlays/ and dicom/.
    Exit code 0 when every file was predicted, 1 when some failed (listed in errors.csv), 3 when none was.
    """
    from mammolens.workflows import predict_to_dir

    res = predict_to_dir(run, inputs, out, overlays=overlays, dicom=dicom, include_ids=include_ids,
                         batch_size=batch_size, workers=workers, device=device,
                         precision=precision, sidecar=sidecar)
    typer.echo(f"{res['n_images']} images, {res['n_breasts']} breasts, {res['n_exams']} exams predicted; "
               f"{res['n_sr']} DICOM SR written -> {res['out_dir']}")
    if res.get("random_weights"):
        typer.echo(f"WARNING: {res['random_weights']}")
    if res.get("n_ood"):
        typer.echo(f"{res['n_ood']} images outside the training distribution (not assessable): see images.csv")
    if res.get("n_not_assessable"):
        typer.echo(f"{res['n_not_assessable']} images not assessable (no prediction): see quality_reason in images.csv")
    report_failures(((e["file"], e["reason"]) for e in res["errors"]), Path(res["out_dir"]) / "errors.csv")
    finish(res["n_images"], res["n_failed"], "no image file found in " + " ".join(map(str, inputs)) if not res["n_failed"]
           else f"none of the {res['n_failed']} file(s) could be read (reasons in {Path(res['out_dir']) / 'errors.csv'})")
