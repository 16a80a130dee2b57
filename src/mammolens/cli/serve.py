"""`mammolens serve RUN`: local web page — drop a study, see breast density and heat maps."""

from pathlib import Path

import typer

from mammolens.cli._app import app
from mammolens.serve.app import MAX_PIXELS  # no web dependency imported at module level


@app.command("serve")
def serve_cli(
    run: Path = typer.Argument(..., help="Run directory (config.yaml + checkpoints/) to load once."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; keep the loopback default unless you must."),
    port: int = typer.Option(8000, help="TCP port."),
    max_upload_mb: float = typer.Option(200, "--max-upload-mb", help="Largest upload per request (HTTP 413 above)."),
    max_pixels: int = typer.Option(
        MAX_PIXELS,
        "--max-pixels",
        min=1,
        help="Largest image accepted, width × height of one frame read from its header (default 100 M); larger "
        "files are refused before decoding (multi-frame files also within the reader's MAMMOLENS_MAX_PIXELS budget).",
    ),
    allowed_host: list[str] = typer.Option(
        [],
        "--allowed-host",
        help="Extra name the page may be reached by (host or host:port; repeatable). Loopback names and the "
        "bound address are always allowed; other Host headers get HTTP 400.",
    ),
    api_docs: bool = typer.Option(False, "--api-docs", help="Serve /openapi.json, /docs and /redoc (off by default)."),
) -> None:
    """Serve the web page at http://HOST:PORT (model loaded once; uploads deleted after each request)."""
    from mammolens.serve.app import is_loopback, serve, served_hosts

    try:
        served_hosts(host, port, allowed_host)  # a malformed --allowed-host fails before the model loads
    except ValueError as e:
        raise ValueError(f"--allowed-host: {e}") from e  # name the flag; shown by cli._app.user_errors

    if not is_loopback(host):
        typer.secho(
            f"warning: binding to {host} exposes the server to other machines; it has no authentication "
            "and is meant for local use (default --host 127.0.0.1)"
            + ("; other machines must use a name given with --allowed-host" if host in ("0.0.0.0", "::") else ""),
            fg=typer.colors.YELLOW,
            err=True,
        )
    from mammolens.inference import Predictor

    predictor = Predictor.from_run(run)
    typer.echo(f"mammolens: serving {run} at http://{host}:{port}  (Ctrl+C to stop)")
    serve(
        predictor,
        host=host,
        port=port,
        max_upload_mb=max_upload_mb,
        warn_public=False,
        max_pixels=max_pixels,
        allowed_hosts=allowed_host,
        api_docs=api_docs,
    )
