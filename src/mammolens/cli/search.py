"""`mammolens search RUN "TEXT" | --image FILE [--index IDX] [-k 10]`."""

from pathlib import Path

import typer

from mammolens.cli._app import app


@app.command("search")
def search_cli(
    run: Path = typer.Argument(..., help="Run folder whose model embeds the query (the one that built the index)."),
    text: str = typer.Argument(None, help='Report text to search for, e.g. "spiculated mass upper outer quadrant".'),
    image: Path = typer.Option(None, "--image", help="Search with an image file instead of a text."),
    index: Path = typer.Option(None, "--index", help="Index folder from `mammolens index` (default RUN/index)."),
    k: int = typer.Option(10, "-k", "--k", help="Number of exams to return."),
    device: str = typer.Option("auto"),
) -> None:
    """The nearest exams to a text or an image: rank (2= for a shared rank), cosine score, exam (pseudonym),
    laterality, view, modality and the matching image's path relative to the data folder (pseudonymised
    unless the index was built with --include-ids)."""
    from mammolens.search import format_hits, search_run

    hits = search_run(run, text=text, image=image, index_dir=index, k=k, device=device)
    for line in format_hits(hits):
        typer.echo(line)
