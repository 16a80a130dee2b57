"""`mammolens bench [--small] [--only SECTION] [--out bench.json] [--check] [--busy K]`."""

from pathlib import Path

import typer

from mammolens.cli._app import app


@app.command("bench")
def bench_cli(
    small: bool = typer.Option(False, "--small", help="Quick CI mode: tiny images, tiny-clip, relaxed ratio targets."),
    only: list[str] = typer.Option(
        None, "--only", help="preprocess | inference | loader | train-gpu | shared-cpu (repeatable; default: the first three)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the full report (machine, config, medians, checks) as JSON."),
    check: bool = typer.Option(False, "--check", help="Exit with status 1 when a ratio misses its target."),
    repeats: int = typer.Option(None, "--repeats", help="Timed runs per measurement (median reported)."),
    n_files: int = typer.Option(None, "--files", help="DICOM files in the preprocessing / end-to-end benchmarks."),
    size: str = typer.Option(None, "--image-size", help="Synthetic DICOM size HxW, e.g. 2048x1664."),
    models: list[str] = typer.Option(None, "--model", help="Architectures for the inference benchmark (repeatable)."),
    workers: int = typer.Option(None, "--workers", "-j", help="Processes for our path (default: all cores)."),
    workdir: Path = typer.Option(None, "--workdir", help="Keep synthetic files here (default: a temporary folder)."),
    train_batch: int = typer.Option(256, "--train-batch", help="train-gpu: batch size."),
    train_steps: int = typer.Option(20, "--train-steps", help="train-gpu: timed steps."),
    train_precision: str = typer.Option("bf16", "--train-precision", help="train-gpu: bf16 or fp32."),
    train_compile: bool = typer.Option(False, "--compile", help="train-gpu: torch.compile the step."),
    train_mode: str = typer.Option("step", "--train-mode", help="train-gpu: 'step' (random data) or 'train' (full loop)."),
    busy: int = typer.Option(2, "--busy", help="shared-cpu: busy processes competing with the training."),
) -> None:
    """Throughput and memory against the naive pydicom + PIL + open_clip pipeline (medians of repeats)."""
    import json

    from rich.console import Console

    from mammolens.bench import BenchCfg, format_results, run_benchmarks

    console = Console(stderr=True)
    kw = {}
    if repeats is not None:
        kw["repeats"] = repeats
    if n_files is not None:
        kw["n_files"] = n_files
    if size:
        try:
            h, w = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise typer.BadParameter(f"--image-size must look like 2048x1664, got {size!r}") from None
        kw["image_size"] = (h, w)
    if models:
        kw["models"] = tuple(models)
    kw.update(only=tuple(only or ()), workers=workers, workdir=str(workdir) if workdir else None,
              train_batch=train_batch, train_steps=train_steps, train_precision=train_precision,
              train_compile=train_compile, train_mode=train_mode, shared_busy=busy)
    cfg = BenchCfg.small_mode(**kw) if small else BenchCfg(**kw)
    try:
        report = run_benchmarks(cfg, log=lambda s: console.print(f"[dim]{s}[/dim]"))
    except RuntimeError as e:  # e.g. --only train-gpu without a GPU: the user's setup, shown by cli._app
        raise ValueError(str(e)) from e
    typer.echo(format_results(report))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str))
        console.print(f"report written to {out}")
    if check and not report["passed"]:
        missed = ", ".join(c["name"] for c in report["checks"] if not c["ok"])
        console.print(f"[red]ratio target missed:[/red] {missed}")
        raise typer.Exit(1)
