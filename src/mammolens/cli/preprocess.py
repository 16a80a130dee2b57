"""`mammolens preprocess MANIFEST --out DIR`: build the memory-mapped preprocessed cache."""

from pathlib import Path

import typer

from mammolens.cli._app import app, finish, report_failures


@app.command("preprocess")
def preprocess_cli(
    manifest: Path = typer.Argument(..., help="manifest.parquet (or .csv) from `ingest` or `import`."),
    out: Path = typer.Option(..., "--out", "-o", help="Cache folder (images.u16, index.parquet, cache.json)."),
    size: int = typer.Option(224, "--size", help="Output side S: images are S x S uint16."),
    workers: int = typer.Option(None, "--workers", "-j", help="Processes (default: all cores; 0 = in process)."),
    dbt: str = typer.Option("mip", "--dbt", help="DBT reduction passed to the reader: mip, slab, center."),
    crop: bool = typer.Option(True, "--crop/--no-crop", help="Crop to the breast."),
    flip: str = typer.Option("left", "--flip", help="'left': chest wall on the left; 'none': keep as stored."),
    use_laterality: bool = typer.Option(False, "--use-laterality", help="Orient by header laterality, not the image."),
    margin: float = typer.Option(0.0, "--margin", help="Crop margin, fraction of the longest side."),
    keep_aspect: bool = typer.Option(True, "--keep-aspect/--stretch", help="Letterbox (default) or stretch."),
    shard: str = typer.Option(None, "--shard", help="K/N: build the K-th of N blocks (0-based); merge with merge_caches."),
    limit: int = typer.Option(None, "--limit", help="Process at most this many pending rows (resume later)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Retry rows that failed before."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild a cache made from another manifest/config."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    include_ids: bool = typer.Option(False, "--include-ids", help="Show full paths and identifiers in the FAILED "
                                     "lines (default: as in errors.csv, pseudonymised)."),
) -> None:
    """Crop, orient, resize and store every manifest image; resumable (rerun to continue)."""
    from mammolens.cli._app import show_progress
    from mammolens.data.cache import PreprocessCfg, build_cache, open_cache

    shard_t = None
    if shard:
        k, n = (int(x) for x in shard.split("/"))
        shard_t = (k, n)
    cfg = PreprocessCfg(size=size, dbt=dbt, crop=crop, flip=flip, use_laterality=use_laterality,
                        margin=margin, keep_aspect=keep_aspect)
    path = build_cache(manifest, out, cfg, workers=workers, progress=show_progress(progress), overwrite=overwrite,
                       limit=limit, shard=shard_t, retry_failed=retry_failed)
    cache = open_cache(path, allow_incomplete=True)
    m = cache.meta
    c, run = m["counts"], m.get("last_run", {})
    speed = f" ({run['images_per_s']} img/s)" if run.get("images_per_s") else ""
    typer.echo(f"processed {run.get('processed', 0)} row(s) this run in {run.get('seconds', 0):.1f} s{speed}")
    typer.echo(f"cache {path}: {c['done']} done, {c['failed']} failed, {c['pending']} pending; "
               f"{len(cache)} x {cfg.size} x {cfg.size} uint16")
    if c["failed"]:
        typer.echo(f"errors: {path / 'errors.csv'}")
        failed = cache.index[cache.index["status"] == "failed"]
        if include_ids:
            report_failures(zip(failed["image_path"], failed["error"]), path / "errors.csv")
        else:
            from mammolens.privacy import scrub_errors

            report_failures(zip(*scrub_errors(cache.index, failed.index)), path / "errors.csv")
    if c["pending"]:
        typer.echo("incomplete: run the same command again to continue")
    finish(c["done"] + c["pending"], c["failed"], f"the manifest {manifest} lists no image" if not len(cache)
           else f"none of the {len(cache)} image(s) could be read (reasons in {path / 'errors.csv'})")
