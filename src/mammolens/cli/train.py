"""`mammolens train --config FILE` and `mammolens cv --config FILE --folds K`."""

from pathlib import Path

import typer

from mammolens.cli._app import app

_SET_HELP = "Override a config key: --set epochs=3 --set data.modalities=[DM] (repeatable)."


@app.command("train")
def train_cli(
    config: Path = typer.Option(..., "--config", "-c", help="YAML TrainCfg (examples in configs/)."),
    overrides: list[str] = typer.Option([], "--set", "-s", help=_SET_HELP),
) -> None:
    """Train a run (contrastive, zeroshot, linear-probe or finetune-ce) and print its folder and best metric.

    Several GPUs: torchrun --nproc-per-node N -m mammolens.train --config FILE
    """
    import json

    from mammolens.train import load_cfg, train

    cfg = load_cfg(config, overrides)
    run_dir = train(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    typer.echo(f"run: {run_dir}")
    best = summary.get("best_metric")
    shown = "n/a (no validation set or a single class)" if best is None else f"{best:.4f}"
    typer.echo(f"best val macro AUC: {shown} (epoch {summary.get('best_epoch')}, method {summary.get('method')})")


@app.command("cv")
def cv_cli(
    config: Path = typer.Option(..., "--config", "-c", help="YAML TrainCfg (examples in configs/)."),
    folds: int = typer.Option(5, "--folds", "-k", help="Number of patient folds."),
    overrides: list[str] = typer.Option([], "--set", "-s", help=_SET_HELP),
) -> None:
    """Patient-level k-fold cross-validation: one run per fold under OUT_DIR/fold_i, pooled OOF metrics."""
    from mammolens.train import cross_validate, load_cfg

    cfg = load_cfg(config, overrides)
    res = cross_validate(cfg, k=folds)
    typer.echo(f"{folds}-fold CV ({res['n_patients']} patients, {res['n_images']} images): "
               f"{Path(cfg.out_dir) / 'cv_metrics.json'}")
    for key in ("macro_auc", "balanced_accuracy", "accuracy"):
        ms = res["mean_sd"].get(key)
        if ms:
            typer.echo(f"  {key:<18} {ms['mean']:.4f} ± {ms['sd']:.4f}   pooled {res['pooled'].get(key, float('nan')):.4f}")
