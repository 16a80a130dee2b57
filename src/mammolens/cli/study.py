"""`mammolens study --manifest FILE --out DIR`: the single- vs multi-modality design (``mammolens.study``)."""

from pathlib import Path

import typer

from mammolens.cli._app import app


@app.command("study")
def study_cli(
    manifest: Path = typer.Option(..., "--manifest", "-m", help="Cohort manifest (or a preprocessed cache folder)."),
    out: Path = typer.Option(Path("study"), "--out", "-o", help="Study folder (runs, study.csv/json/html)."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML TrainCfg shared by every run (configs/)."),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Override a TrainCfg key: --set epochs=3 (repeatable)."),
    modalities: list[str] = typer.Option(["DM", "s2D", "DBT"], "--modality", help="Single-modality arms (repeatable)."),
    folds: int = typer.Option(5, "--folds", "-k", help="Outer patient folds."),
    seeds: list[int] = typer.Option([0, 1, 2, 3, 4], "--seed", help="Seeds, one repetition each (repeatable)."),
    external: list[Path] = typer.Option([], "--external", help="External manifest every run is tested on (repeatable)."),
    n_boot: int = typer.Option(1000, help="Bootstrap replicates (patients resampled)."),
    keep_checkpoints: bool = typer.Option(False, help="Keep every run's checkpoints."),
) -> None:
    """Train DM-only, s2D-only, DBT-only and multi-modality runs per fold and seed; one table with CIs and
    paired multi − single tests per test modality and external set (OUT/study.html)."""
    from mammolens.study import StudyCfg, run_study
    from mammolens.train.config import load_cfg

    base = load_cfg(config, overrides)
    train = {k: v for k, v in base.to_dict().items() if k != "data"}
    train["data"] = {"preprocess": base.data.preprocess}
    is_cache = manifest.is_dir()
    cfg = StudyCfg(manifest="" if is_cache else str(manifest), cache=str(manifest) if is_cache else "",
                   out_dir=str(out), train=train, modalities=list(modalities), folds=folds, seeds=list(seeds),
                   external=[str(p) for p in external], n_boot=n_boot, keep_checkpoints=keep_checkpoints)
    res = run_study(cfg)
    typer.echo(f"study: {res['n_runs']} runs ({len(res['seeds'])} seeds x {res['folds']} folds x "
               f"{len(res['arms'])} arms): {out / 'study.html'}")
    for r in res["table"]:
        diff = "" if r["train"] == "multi" else f"  multi-this {r['macro_auc_diff']:+.3f} p={r['macro_auc_p']:.3f}"
        typer.echo(f"  {r['train']:>5} -> {r['test']:<11} acc {r['accuracy']:.3f}  AUC {r['macro_auc']:.3f}"
                   f" [{r['macro_auc_lo']:.3f}, {r['macro_auc_hi']:.3f}]{diff}")
