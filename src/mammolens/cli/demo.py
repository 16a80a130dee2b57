"""`mammolens demo`: the whole pipeline on the built-in simulated cohort."""

from pathlib import Path

import typer

from mammolens.cli._app import app


@app.command("demo")
def demo_cli(
    out: Path = typer.Option(Path("mammolens-demo"), "--out", help="Folder for the cohort, cache, run and report."),
    patients: int = typer.Option(48, help="Simulated patients in the training cohort (4 views each)."),
    external: int = typer.Option(16, help="Simulated patients in the external-validation cohort."),
    size: int = typer.Option(64, help="Image size of the cache and the model input."),
    epochs: int = typer.Option(30, help="Training epochs of the tiny CLIP."),
    n_boot: int = typer.Option(200, help="Bootstrap replicates for the confidence intervals."),
    workers: int = typer.Option(None, help="Processes for preprocessing (default: all cores)."),
    seed: int = typer.Option(0),
) -> None:
    """Simulated cohort -> cache -> weighted contrastive fine-tuning -> external evaluation -> prediction.

    The images are SIMULATED (see mammolens.data.synthetic); the numbers show the pipeline works, not
    clinical performance.
    """
    from rich.console import Console

    from mammolens.workflows import run_demo

    console = Console()
    res = run_demo(out, n_patients=patients, n_external=external, size=size, epochs=epochs, n_boot=n_boot,
                   workers=workers, seed=seed)
    m = res["metrics"]

    def num(key: str) -> float:
        v = m.get(key)
        return float("nan") if v is None else float(v)

    console.print(f"[bold]external validation (simulated site)[/bold]: accuracy {num('accuracy'):.3f}, "
                  f"balanced accuracy {num('balanced_accuracy'):.3f}, macro AUC {num('auc_macro'):.3f}")
    if res["example_exam"]:
        console.print(f"example exam prediction: {res['example_exam']}")
    console.print(f"timings (s): {res['seconds']}")
    console.print(f"run: {res['run']}")
    console.print(f"report: {res['report']}")
