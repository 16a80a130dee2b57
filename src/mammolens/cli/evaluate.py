"""`mammolens evaluate RUN --data MANIFEST [--compare RUN2]`."""

from pathlib import Path

import typer

from mammolens.cli._app import app, finish


@app.command("evaluate")
def evaluate_cli(
    run: Path = typer.Argument(..., help="Run folder written by `mammolens train`."),
    data: Path = typer.Option(..., "--data", help="Manifest (.parquet/.csv) or cache folder to evaluate on."),
    compare: Path = typer.Option(None, "--compare", help="A second run, compared on the same images (DeLong, McNemar)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default RUN/eval)."),
    n_boot: int = typer.Option(1000, help="Bootstrap replicates (patients resampled) for 95% CIs."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    gallery: int = typer.Option(2, help="GradCAM examples per class in the report."),
    batch_size: int = typer.Option(32),
    workers: int = typer.Option(None, help="Preprocessing processes (default: all cores)."),
    device: str = typer.Option("auto"),
    include_ids: bool = typer.Option(False, "--include-ids",
                                     help="Keep patient/study/image IDs and absolute paths in predictions.parquet."),
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="Show a progress bar (never when stderr is not a terminal)."),
    exclude_train: bool = typer.Option(False, "--exclude-train",
                                       help="Drop images of the run's own training/validation patients (RUN/split.json)."),
) -> None:
    """Metrics with CIs, subgroups, calibration and GradCAM gallery -> predictions.parquet, metrics.json, report.html.

    External validation is the same command on another dataset's manifest.
    """
    from rich.console import Console
    from rich.table import Table

    from mammolens.cli._app import show_progress
    from mammolens.workflows import evaluate_run

    res = evaluate_run(run, data, out=out, compare=compare, n_boot=n_boot, seed=seed, gallery_per_class=gallery,
                       batch_size=batch_size, workers=workers, device=device, include_ids=include_ids,
                       progress=show_progress(progress), exclude_train=exclude_train)
    console = Console()
    table = Table(title=f"{run.name} on {data.name} ({res['n_images']} images)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in ("accuracy", "balanced_accuracy", "auc_macro", "kappa_linear", "kappa_quadratic", "ece"):
        v = res["metrics"].get(k)
        if isinstance(v, (int, float)):
            table.add_row(k, f"{v:.3f}")
    console.print(table)
    console.print(f"report: {res['report']}")
    for w in res.get("warnings", []):  # the report's banners, as loud here
        typer.echo(f"{'WARNING' if w.get('level') == 'warning' else 'note'}: {w['text']}")
    if res.get("n_failed"):
        console.print(f"{res['n_failed']} image(s) could not be read and are not evaluated: see {res['errors']}")
    finish(res["n_images"], res.get("n_failed", 0), "")
