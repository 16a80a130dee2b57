"""`mammolens import NAME SRC --out DIR`: map a public dataset's own layout to a manifest."""

from pathlib import Path

import typer

from mammolens.cli._app import app, finish

_DATASETS = "mias, cbis-ddsm, vindr, rsna, embed, inbreast"


@app.command("import")
def import_cli(
    name: str = typer.Argument(..., help=f"Dataset adapter: {_DATASETS}."),
    src: Path = typer.Argument(..., help="The dataset folder as released (label files + images)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for manifest.parquet (+ errors.csv)."),
    check_files: bool = typer.Option(
        None, "--check-files/--no-check-files", help="Skip rows whose image is missing (adapter default if unset)."
    ),
) -> None:
    """Import a public dataset (its own label files) into DIR/manifest.parquet and print class counts."""
    from mammolens.data.adapters import get_adapter, import_dataset, summarize

    adapter = get_adapter(name)
    kw = {} if check_files is None else {"check_files": check_files}
    if kw and adapter.name in ("mias", "inbreast"):
        kw = {}  # these adapters always need the image files to build the manifest
    df = import_dataset(adapter.name, src, out=out, **kw)
    errors = df.attrs.get("errors", [])
    skipped = [e for e in errors if e.skipped]
    if not len(df):
        reasons = sorted({e.reason for e in skipped}) or ["the label files list no image"]
        finish(0, len(skipped), f"{adapter.title}: 0 of {len(skipped)} row(s) imported from {src}: "
               f"{'; '.join(reasons[:3])}. The adapter expects {adapter.expects}"
               + ("; check the image folder, or pass --no-check-files to keep the listed paths unchecked"
                  if adapter.name not in ("mias", "inbreast") else ""))
    typer.echo(f"{adapter.title}: wrote {out / 'manifest.parquet'}")
    for section, counts in summarize(df, adapter.label_columns).items():
        typer.echo(f"  {section:<13} " + "  ".join(f"{k}: {v}" for k, v in counts.items()))
    if errors:
        typer.echo(f"  {len(errors)} row issue(s), {len(skipped)} row(s) skipped: see {out / 'errors.csv'}")
    finish(len(df), len(skipped), "")
