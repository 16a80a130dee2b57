"""`mammolens pretrain --config FILE`: self-supervised pretraining of the image tower (labels ignored).

The same loop, run folder and ``--set`` overrides as ``mammolens train``; the config's method is a pretraining
method (``pretrain`` when it names none). Several GPUs: ``torchrun --nproc-per-node N -m mammolens.train
--config FILE`` with ``method: pretrain`` in the file.
"""

import os
from pathlib import Path

import typer

from mammolens.cli._app import app

_SET_HELP = ("Override a config key: --set epochs=3 --set method.pretrain.local_crops=6 --set method.terms.koleo=0 "
             "(repeatable).")


@app.command("pretrain")
def pretrain_cli(
    config: Path = typer.Option(..., "--config", "-c", help="YAML TrainCfg (example: configs/pretrain_demo.yaml)."),
    overrides: list[str] = typer.Option([], "--set", "-s", help=_SET_HELP),
) -> None:
    """Pretrain an image tower without labels (DINO + iBOT + KoLeo) and print its folder and last probes.

    Start a run from it with `pretrained: run:RUN` in a `mammolens train` config.
    """
    import json

    from mammolens.train import train
    from mammolens.train.methods.pretrain import pretrain_config

    run_dir = train(pretrain_config(config, overrides))
    if int(os.environ.get("RANK", "0")) != 0:
        return
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln]
    last = lines[-1] if lines else {}
    typer.echo(f"run: {run_dir}")
    shown = [f"{k} {last[k]:.4f}" for k in ("train_loss", "knn_macro_auc", "val_macro_auc", "effective_rank")
             if isinstance(last.get(k), (int, float))]
    typer.echo(f"epoch {last.get('epoch')}: " + ", ".join(shown) + ("  (collapse warning)" if last.get("collapse") else ""))
    typer.echo(f"next: pretrained: run:{run_dir} in a `mammolens train` config")
