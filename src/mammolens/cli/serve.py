"""`mammolens serve RUN`: local web page — drop a study, see breast density and heat maps."""

from pathlib import Path

import typer

from mammolens.cli._app import app


@app.command("serve")
def serve_cli(
    run: Path = typer.Argument(..., help="Run directory (config.yaml + checkpoints/) to load once."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; keep the loopback default unless you must."),
    port: int = typer.Option(8000, help="TCP port."),
    max_upload_mb: float = typer.Option(200, "--max-upload-mb", help="Largest upload per request (HTTP 413 above)."),
) -> None:
    """Serve the web page at http://HOST:PORT (model loaded once; uploads deleted after each request)."""
    from mammolens.serve.app import is_loopback, serve

    if not is_loopback(host):
        typer.secho(
            f"warning: binding to {host} exposes the server to other machines; it has no authentication "
            "and is meant for local use (default --host 127.0.0.1)",
            fg=typer.colors.YELLOW,
            err=True,
        )
    try:
        from mammolens.inference import Predictor

        predictor = Predictor.from_run(run)
    except (ValueError, FileNotFoundError, ImportError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from e
    typer.echo(f"mammolens: serving {run} at http://{host}:{port}  (Ctrl+C to stop)")
    try:
        serve(predictor, host=host, port=port, max_upload_mb=max_upload_mb, warn_public=False)
    except ImportError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from e
