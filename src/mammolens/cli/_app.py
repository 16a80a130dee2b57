"""The typer application every command module registers on."""

import typer

app = typer.Typer(
    name="mammolens",
    help="Vision-language foundation models for mammography: ingest, preprocess, train, evaluate, explain, predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold patient data
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more (never patient identifiers)."),
) -> None:
    """mammolens: vision-language foundation models for mammography."""
    import logging

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
