"""`mammolens suite --backbones RUN random:MODEL ... --tasks density,... --data MANIFEST --out DIR`:
backbones × tasks on frozen features (``mammolens.suite.run_suite``). Not ``bench``, which measures speed."""

from pathlib import Path

import typer

from mammolens.cli._app import app


def _split(values: list[str]) -> list[str]:
    return [v for item in values for v in item.split(",") if v]


@app.command("suite")
def suite_cli(
    backbones: list[str] = typer.Option(..., "--backbones", "-b", help="Run folders, random:MODEL or timm:MODEL "
                                        "(repeat the flag or separate with commas)."),
    data: Path = typer.Option(..., "--data", "-d", help="A manifest (.parquet/.csv; cached into OUT/cache) or a cache folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (results/, suite.json, suite.csv, suite.html)."),
    tasks: str = typer.Option("density,abnormality,lesion-seg,lesion-det,retrieval,vqa", "--tasks", "-t",
                              help="Comma-separated: density, abnormality, lesion-seg, lesion-det, retrieval, vqa."),
    external: list[str] = typer.Option([], "--external", help="Further manifests or caches, scored separately."),
    folds: int = typer.Option(3, "--folds", "-k", help="Patient-grouped folds."),
    n_boot: int = typer.Option(200, "--n-boot", help="Patient-bootstrap replicates per CI."),
    size: int = typer.Option(128, "--size", help="Tile size when --data is a manifest."),
    steps: int = typer.Option(150, "--steps", help="Optimisation steps of each dense head per fold."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    no_resume: bool = typer.Option(False, "--no-resume", help="Recompute results already in OUT/results."),
) -> None:
    """Rank backbones across tasks: kNN and linear probe, segmentation and detection heads, retrieval and
    closed-question VQA, out of fold with patient-bootstrap CIs; resumable."""
    from mammolens.suite import run_suite

    rep = run_suite(_split(backbones), _split([tasks]), data, out, external=_split(external), folds=folds,
                    n_boot=n_boot, seed=seed, size=size, steps=steps, resume=not no_resume, device=device)
    for key, r in rep["ranks"].items():
        cells = "  ".join(f"{Path(b).name}={v:.3f}" for b, v in r["estimates"].items())
        typer.echo(f"{key:<22} {r['metric']:<22} {cells}")
    for s in rep["summary"]:
        typer.echo(f"{Path(s['backbone']).name}: {s['text']}")
    typer.echo(f"table: {out / 'suite.html'}")
