"""`mammolens train --config FILE` and `mammolens cv --config FILE --folds K`.

``python -m mammolens.train`` (and ``torchrun -m mammolens.train``) run the same ``train`` command
(``train/__main__.py``); under torchrun only rank 0 prints.
"""

import os
from pathlib import Path

import typer

from mammolens.cli._app import app

_SET_HELP = ("Override a config key: --set epochs=3 --set data.modalities=[DM] --set method.terms.prompt=0.5 "
             "(repeatable).")


def _rank0() -> bool:
    """Not a torchrun worker other than the first (those train, they do not print)."""
    return int(os.environ.get("RANK", "0")) == 0


@app.command("train")
def train_cli(
    config: Path = typer.Option(..., "--config", "-c", help="YAML TrainCfg (examples in configs/)."),
    overrides: list[str] = typer.Option([], "--set", "-s", help=_SET_HELP),
    folds: int = typer.Option(0, "--folds", "-k", help="Run K-fold cross-validation instead of one run "
                              "(the same as `mammolens cv --folds K`); 0: one run."),
    n_boot: int = typer.Option(1000, help="With --folds: bootstrap replicates for the pooled report's 95% CIs."),
) -> None:
    """Train one run: method contrastive, zeroshot, linear-probe, finetune-ce or report-contrastive.

    Prints the run folder and its best validation metric.

    Several GPUs: torchrun --nproc-per-node N -m mammolens.train --config FILE
    """
    if folds:
        return _cross_validate(config, folds, overrides, n_boot)
    import json

    from mammolens.train import load_cfg, train

    cfg = load_cfg(config, overrides)
    run_dir = train(cfg)
    if not _rank0():  # summary.json is written by rank 0
        return
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
    n_boot: int = typer.Option(1000, help="Bootstrap replicates (patients resampled) for the pooled report's 95% CIs."),
) -> None:
    """Patient-level k-fold cross-validation: one run per fold under OUT_DIR/fold_i, pooled out-of-fold metrics
    and OUT_DIR/report.html (CIs)."""
    _cross_validate(config, folds, overrides, n_boot)


def _cross_validate(config: Path, folds: int, overrides: list[str], n_boot: int = 1000) -> None:
    from mammolens.train import cross_validate, load_cfg

    cfg = load_cfg(config, overrides)
    res = cross_validate(cfg, k=folds, n_boot=n_boot)
    if not _rank0():
        return
    typer.echo(f"{folds}-fold CV ({res['n_patients']} patients, {res['n_images']} images): "
               f"{Path(cfg.out_dir) / 'cv_metrics.json'}")
    typer.echo(f"report (pooled out-of-fold, 95% CIs): {Path(cfg.out_dir) / 'report.html'}")
    for key in ("macro_auc", "balanced_accuracy", "accuracy"):
        ms = res["mean_sd"].get(key)
        if ms:
            typer.echo(f"  {key:<18} {ms['mean']:.4f} ± {ms['sd']:.4f}   pooled {res['pooled'].get(key, float('nan')):.4f}")
