"""`mammolens index RUN CACHE [--out IDX] [--kind exact|hnsw|ivf]`."""

from pathlib import Path

import typer

from mammolens.cli._app import app


@app.command("index")
def index_cli(
    run: Path = typer.Argument(..., help="Run folder written by `mammolens train`."),
    cache: Path = typer.Argument(..., help="Preprocessed cache folder (`mammolens preprocess`) to index."),
    out: Path = typer.Option(None, "--out", help="Index folder (default RUN/index)."),
    kind: str = typer.Option("exact", "--kind", help="exact (numpy), hnsw or ivf (approximate; need the search "
                             "extra: pip install -e '.\\[search]')."),
    include_ids: bool = typer.Option(False, "--include-ids", help="Store patient/exam IDs and the images' real paths "
                                     "(default: pseudonyms and pseudonymised paths)."),
    batch_size: int = typer.Option(64),
    device: str = typer.Option("auto"),
) -> None:
    """Embed every readable image of a cache with the run and save a vector index (pseudonymous keys only)."""
    from mammolens.search import IndexCfg, build_run_index

    res = build_run_index(run, cache, out=out, cfg=IndexCfg(kind=kind), batch_size=batch_size, device=device,
                          include_ids=include_ids)
    typer.echo(f"{res['kind']} index of {res['n']} images ({res['dim']}-d) in {res['out_dir']} ({res['seconds']} s)")
