"""`mammolens listen RUN --ae-title MAMMOLENS --port 11112 --send-to AET@HOST:PORT`: run as a DICOM node."""

import json
import logging
from pathlib import Path

import typer

from mammolens.cli._app import app


@app.command("listen")
def listen_cli(
    run: Path = typer.Argument(None, help="Run folder that predicts (or `run:` in --config)."),
    config: Path = typer.Option(None, "--config", help="YAML file of listen settings (NodeCfg fields); flags win."),
    ae_title: str = typer.Option(None, "--ae-title", help="This node's AE title (default MAMMOLENS)."),
    host: str = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1, loopback only)."),
    port: int = typer.Option(None, "--port", help="DICOM port (default 11112)."),
    send_to: list[str] = typer.Option(None, "--send-to", help="Destination AET@HOST:PORT of the results (repeatable)."),
    allow_aet: list[str] = typer.Option(None, "--allow-aet", help="Calling AE title accepted (repeatable; "
                                        "none: any). Others are rejected at association."),
    spool: Path = typer.Option(None, "--spool", help="Spool folder (default ./mammolens-spool)."),
    idle: float = typer.Option(None, "--idle", help="Seconds after a study's last object before it is predicted "
                               "(default 10)."),
    max_associations: int = typer.Option(None, "--max-associations", help="Concurrent associations (default 8)."),
    device: str = typer.Option(None, "--device", help="auto (default), cpu, cuda..."),
    status: bool = typer.Option(False, "--status", help="Print the status of the node using --spool (queue, done, "
                                "failed with reasons; no patient identity) and exit."),
) -> None:
    """Run as a DICOM node: Storage SCP for mammograms, predict each complete study, C-STORE the results back.

    Results per study (a new series each, deterministic UIDs): a Mammography CAD SR (TID 4000), the
    Comprehensive SR of `predict` and overlay Secondary Captures. See docs/dicom_node.md.
    """
    from mammolens.node import NodeCfg, read_status, serve

    flags = {"run": str(run) if run else None, "ae_title": ae_title, "host": host, "port": port,
             "send_to": list(send_to) if send_to else None, "allowed_aets": list(allow_aet) if allow_aet else None,
             "spool": str(spool) if spool else None, "idle_s": idle, "max_associations": max_associations,
             "device": device}
    if config is not None:
        cfg = NodeCfg.from_yaml(config, **flags)
    else:
        cfg = NodeCfg.from_dict({k: v for k, v in flags.items() if v is not None})
    if status:
        typer.echo(json.dumps(read_status(cfg.spool), indent=1))
        return
    logging.getLogger("mammolens.node").setLevel(logging.INFO)  # study pseudonyms and counts, no identity
    if cfg.host not in ("127.0.0.1", "::1", "localhost"):
        typer.secho(f"warning: listening on {cfg.host} exposes the node to other machines; restrict the calling AE "
                    "titles (--allow-aet) and consider TLS (tls_cert/tls_key in --config)", fg=typer.colors.YELLOW,
                    err=True)
    serve(cfg)
