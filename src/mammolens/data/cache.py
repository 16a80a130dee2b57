"""The preprocessed store: one memory-mapped uint16 array ``[N, S, S]`` plus its index.

A cache folder holds

- ``images.u16``: raw ``np.memmap`` uint16 ``[N, S, S]``, row ``i`` = manifest row ``i``;
- ``index.parquet``: the manifest rows + ``cache_row``, ``status`` (done/failed/pending), ``error``,
  ``conversion`` (the reader's conversion record, JSON), ``flipped``, ``bbox``, ``orig_h``, ``orig_w``;
- ``cache.json``: ``PreprocessCfg``, manifest hash, shape, counts, conversion summary, version, time;
- ``progress.jsonl``: one line per finished row (how an interrupted build resumes);
- ``errors.csv``: ``row, image_path, reason`` for every image that could not be read (no identifiers: paths
  relative to the images' common folder, identifier components pseudonymised; ``index.parquet`` has the rest).

``build_cache`` is parallel over processes (each worker writes its rows straight into ``images.u16``),
resumable (rows already in ``progress.jsonl`` are skipped) and idempotent (a re-run does nothing).
Large archives can be built in shards (``shard=(k, n)``) on several machines and joined with
``merge_caches``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from os import PathLike
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from mammolens.constants import MANIFEST_REQUIRED
from mammolens.parallel import run_tasks
from mammolens.privacy import scrub_errors
from mammolens.transforms.config import PreprocessCfg  # re-exported: it lives below data and transforms

log = logging.getLogger(__name__)

__all__ = ["PreprocessCfg", "Cache", "CacheError", "build_cache", "open_cache", "merge_caches", "manifest_hash"]

CACHE_FORMAT = "mammolens-cache"
CACHE_FORMAT_VERSION = 1
IMAGES_FILE = "images.u16"
INDEX_FILE = "index.parquet"
META_FILE = "cache.json"
PROGRESS_FILE = "progress.jsonl"
ERRORS_FILE = "errors.csv"


class CacheError(ValueError):
    """A cache folder is missing, corrupt, incomplete or built from a different manifest/config."""


# ----------------------------------------------------------------------------------------------- hashing


def manifest_hash(df: pd.DataFrame) -> str:
    """Content hash of a manifest (columns, order and values); identifies the rows a cache was built from."""
    h = hashlib.sha256()
    h.update(json.dumps([str(c) for c in df.columns]).encode())
    canon = df.reset_index(drop=True).astype("string").fillna("")
    h.update(pd.util.hash_pandas_object(canon, index=True).to_numpy().tobytes())
    return h.hexdigest()


def _load_manifest(manifest: pd.DataFrame | str | PathLike) -> pd.DataFrame:
    if isinstance(manifest, pd.DataFrame):
        df = manifest.copy()
        if all(c in df.columns for c in MANIFEST_REQUIRED):
            from mammolens.data.manifest import validate_manifest

            df = validate_manifest(df)
        elif "image_path" not in df.columns:
            raise ValueError("manifest DataFrame has no 'image_path' column")
    else:
        from mammolens.data.manifest import read_manifest

        df = read_manifest(manifest)
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- workers

_W: dict[str, Any] = {}  # per-process state: the images file, cfg and reader


def _worker_init(images_path: str, shape: tuple[int, int, int], cfg_dict: dict, reader: Callable | None) -> None:
    import mammolens.io.dicom  # noqa: F401  (import once per worker, not inside the first task)
    import mammolens.transforms.breast  # noqa: F401

    # positional writes into the file rather than a memmap: no msync of a huge mapping per row, and a
    # killed worker loses nothing already written (the page cache belongs to the kernel)
    if "fd" in _W:
        os.close(_W.pop("fd"))
    _W["fd"] = os.open(images_path, os.O_RDWR)
    _W["row_bytes"] = int(shape[1] * shape[2] * 2)
    _W["cfg"] = PreprocessCfg.from_dict(cfg_dict)
    _W["reader"] = reader


def preload_worker_modules() -> None:
    """Import what every row needs in the parent, so that forked workers inherit it instead of each
    importing pydicom, its pixel decoders, scipy.ndimage and PIL on their first row."""
    import PIL.Image  # noqa: F401
    import pydicom.pixels  # noqa: F401
    import scipy.ndimage  # noqa: F401

    import mammolens.io  # noqa: F401
    import mammolens.io.dicom  # noqa: F401
    import mammolens.transforms.breast  # noqa: F401


def _default_reader(path: str, **kw):
    from mammolens.io import read_image

    return read_image(path, **kw)


def _parse_frame(frame: Any) -> int | None:
    if frame is None or (isinstance(frame, float) and np.isnan(frame)) or frame is pd.NA:
        return None
    s = str(frame).strip()
    if s in ("", "nan", "<NA>", "None"):
        return None
    return int(float(s))


def _conversion_json(conv: Any) -> str:
    if not conv:
        return ""
    return json.dumps(conv, sort_keys=True, default=str)


def _process_row(task: tuple[int, str, str, Any]) -> dict[str, Any]:
    """Read, preprocess and write one row; raises on a bad file (``run_tasks`` records the reason)."""
    from mammolens.io.gating import mammography_gate
    from mammolens.transforms.breast import preprocess_image

    row, path, laterality, frame = task
    cfg: PreprocessCfg = _W["cfg"]
    reader = _W["reader"] or _default_reader
    fr = _parse_frame(frame)
    img = reader(path, frame=fr) if fr is not None else reader(path, dbt=cfg.dbt)
    gate_ok, gate_reason = mammography_gate(getattr(img, "meta", None) or {})
    if not gate_ok:  # a DX abdomen in a hand-made manifest must not be trained on as DM
        raise ValueError(gate_reason)
    pixels = np.asarray(getattr(img, "pixels", img))
    if fr is not None and pixels.ndim == 3:  # a reader that returned the whole stack
        if not 0 <= fr < pixels.shape[0]:
            raise ValueError(f"frame {fr} out of range: the file has {pixels.shape[0]} frames")
        pixels = pixels[fr]
    out, info = preprocess_image(pixels, cfg, laterality=laterality)
    buf = np.ascontiguousarray(out, dtype="<u2").tobytes()
    assert len(buf) == _W["row_bytes"]
    os.pwrite(_W["fd"], buf, row * _W["row_bytes"])  # written before the row is reported done
    return {
        "row": row,
        "status": "done",
        "error": "",
        "conversion": _conversion_json(getattr(img, "conversion", None)),
        "flipped": info["flipped"],
        "bbox": ",".join(str(b) for b in info["bbox"]),
        "orig_h": info["orig_shape"][0],
        "orig_w": info["orig_shape"][1],
    }


# ----------------------------------------------------------------------------------------------- build


def _read_progress(path: Path) -> dict[int, dict]:
    done: dict[int, dict] = {}
    if not path.exists():
        return done
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
                done[int(rec["row"])] = rec
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from an interrupted run: that row is redone
    return done


def _shard_rows(n: int, shard: tuple[int, int] | None) -> slice:
    if shard is None:
        return slice(0, n)
    k, m = shard
    if not (isinstance(k, int) and isinstance(m, int) and 0 <= k < m):
        raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard!r}")
    bounds = np.linspace(0, n, m + 1).round().astype(int)
    return slice(int(bounds[k]), int(bounds[k + 1]))


def _summarise_conversions(values: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per key of the conversion record: counts of each value (keys with > 20 distinct values: a count)."""
    per_key: dict[str, Counter] = {}
    for v in values:
        if not v:
            continue
        try:
            d = json.loads(v)
        except ValueError:
            continue
        if not isinstance(d, dict):
            continue
        for k, x in d.items():
            per_key.setdefault(k, Counter())[x if isinstance(x, str) else json.dumps(x, sort_keys=True, default=str)] += 1
    out: dict[str, dict[str, int]] = {}
    for k, c in sorted(per_key.items()):
        out[k] = dict(c.most_common()) if len(c) <= 20 else {f"<{len(c)} distinct values>": sum(c.values())}
    return out


def build_cache(
    manifest: pd.DataFrame | str | PathLike,
    out_dir: str | PathLike,
    cfg: PreprocessCfg | dict | None = None,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    retry_failed: bool = False,
    reader: Callable | None = None,
    timeout: float | None = None,
) -> Path:
    """Preprocess every manifest image into a memory-mapped cache (see the module docstring).

    Args:
        manifest: DataFrame or path to a manifest (.parquet/.csv; relative paths resolved).
        out_dir: cache folder (created).
        cfg: ``PreprocessCfg`` (or its dict); default ``PreprocessCfg()``.
        workers: processes; default all cores; 0 or 1 runs in this process.
        progress: show a progress bar.
        overwrite: delete an existing cache built from another manifest or cfg instead of raising.
        limit: process at most this many pending rows, then stop (the rest on the next call).
        shard: ``(k, n)``: build only the k-th of n contiguous blocks of the manifest (merge with
            ``merge_caches``).
        retry_failed: also redo rows that failed in an earlier run.
        reader: ``f(path, dbt=...)`` / ``f(path, frame=...)`` (rows with a ``frame``) returning a
            ``MammoImage`` or an array; default ``mammolens.io.read_image`` (must be picklable when
            ``workers > 1``).
        timeout: seconds per row before its worker is killed and replaced and the row marked failed
            (default ``MAMMOLENS_FILE_TIMEOUT`` or 120; see ``mammolens.parallel``).

    Returns:
        ``out_dir``.

    Raises:
        CacheError: ``out_dir`` holds a cache of a different manifest or cfg and ``overwrite`` is False.
    """
    cfg = PreprocessCfg.from_dict(cfg) if isinstance(cfg, dict) else (cfg or PreprocessCfg())
    df = _load_manifest(manifest)
    df = df.iloc[_shard_rows(len(df), shard)].reset_index(drop=True)
    out = Path(out_dir)
    n, s = len(df), cfg.size
    shape = (n, s, s)
    mhash = manifest_hash(df)
    meta_path, images_path, progress_path = out / META_FILE, out / IMAGES_FILE, out / PROGRESS_FILE

    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except ValueError as e:
            old = {"corrupt": str(e)}
        same = (
            old.get("manifest_hash") == mhash
            and old.get("cfg") == cfg.to_dict()
            and images_path.exists()
            and images_path.stat().st_size == n * s * s * 2
        )
        if not same:
            if not overwrite:
                what = "its cache.json is unreadable" if "corrupt" in old else (
                    "it was built from a different manifest" if old.get("manifest_hash") != mhash
                    else "it was built with a different PreprocessCfg" if old.get("cfg") != cfg.to_dict()
                    else "its images.u16 has the wrong size"
                )
                raise CacheError(
                    f"{out} already holds a cache but {what}; use another --out folder, or overwrite=True "
                    "(--overwrite) to rebuild it"
                )
            shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()) and not overwrite:
        if (out / IMAGES_FILE).exists() or (out / INDEX_FILE).exists():
            raise CacheError(f"{out} holds cache files without {META_FILE}; pass overwrite=True to rebuild it")

    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": CACHE_FORMAT,
        "format_version": CACHE_FORMAT_VERSION,
        "cfg": cfg.to_dict(),
        "manifest_hash": mhash,
        "shape": list(shape),
        "dtype": "uint16",
        "shard": list(shard) if shard else None,
        "complete": False,
    }
    if not meta_path.exists():
        from mammolens._version import __version__

        meta.update(mammolens_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        with open(images_path, "wb") as f:
            f.truncate(n * s * s * 2)  # sparse: rows take disk space as they are written
        meta_path.write_text(json.dumps(meta, indent=2))
    else:
        meta = {**json.loads(meta_path.read_text()), **meta}

    records = _read_progress(progress_path)
    pending = [i for i in range(n) if i not in records or (retry_failed and records[i]["status"] != "done")]
    if limit is not None:
        pending = pending[: max(0, int(limit))]
    lat = df["laterality"].astype("string").fillna("") if "laterality" in df else pd.Series([""] * n)
    frames = df["frame"] if "frame" in df else pd.Series([None] * n)
    tasks = [(i, str(df.at[i, "image_path"]), str(lat.iat[i]), frames.iat[i]) for i in pending]
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    workers = max(0, min(workers, len(tasks)))
    log.info("cache %s: %d rows, %d to do, %d workers", out, n, len(tasks), workers)
    t0 = time.perf_counter()

    from tqdm.auto import tqdm

    init_args = (str(images_path), shape, cfg.to_dict(), reader)
    bar = tqdm(total=len(tasks), desc="preprocess", unit="img", disable=not progress or not tasks)
    with open(progress_path, "a") as plog:

        def record(rec: dict) -> None:
            records[rec["row"]] = rec
            plog.write(json.dumps(rec) + "\n")
            plog.flush()
            bar.update(1)

        # the pool's initializer opens images.u16 per worker (here too when workers <= 1: closed below)
        if workers > 1:
            preload_worker_modules()  # forked workers then start with them imported (~0.1 s each saved)
        try:
            for k, rec, err in run_tasks(_process_row, tasks, workers, initializer=_worker_init,
                                         initargs=init_args, timeout=timeout):
                record(rec if err is None else {"row": tasks[k][0], "status": "failed", "error": err})
        finally:
            if "fd" in _W:
                os.close(_W.pop("fd"))
            _W.clear()
    bar.close()
    elapsed = time.perf_counter() - t0
    _write_outputs(out, df, records, meta, processed=len(tasks), seconds=elapsed)
    return out


def _write_outputs(out: Path, df: pd.DataFrame, records: dict[int, dict], meta: dict, processed: int, seconds: float) -> None:
    n = len(df)
    index = df.copy()
    index["cache_row"] = np.arange(n, dtype=np.int64)
    cols = {"status": "pending", "error": "", "conversion": "", "flipped": False, "bbox": "", "orig_h": -1, "orig_w": -1}
    for c, default in cols.items():
        index[c] = [records.get(i, {}).get(c, default) for i in range(n)]
    index["flipped"] = index["flipped"].astype(bool)
    index[["orig_h", "orig_w"]] = index[["orig_h", "orig_w"]].astype(np.int64)
    index.to_parquet(out / INDEX_FILE, index=False)
    failed = index[index["status"] == "failed"]
    from mammolens.csvsafe import write_csv

    paths, reasons = scrub_errors(index, failed.index)  # no identity, no absolute path (index.parquet has them)
    write_csv(pd.DataFrame({"row": failed["cache_row"], "image_path": paths, "reason": reasons}), out / ERRORS_FILE)
    counts = index["status"].value_counts().to_dict()
    meta.update(
        complete=bool(counts.get("pending", 0) == 0),
        counts={k: int(counts.get(k, 0)) for k in ("done", "failed", "pending")},
        conversion_summary=_summarise_conversions(index["conversion"].tolist()),
        last_run={"processed": processed, "seconds": round(seconds, 3),
                  "images_per_s": round(processed / seconds, 2) if seconds > 0 and processed else None},
    )
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=str))


# ----------------------------------------------------------------------------------------------- read


class Cache:
    """An opened cache folder: ``images`` (read-only memmap uint16 ``[N, S, S]``), ``index``, ``cfg``, ``meta``.

    Picklable: the memmap is reopened lazily after unpickling (DataLoader workers).
    """

    def __init__(self, path: str | PathLike, index: pd.DataFrame, meta: dict):
        self.path = Path(path)
        self.index = index
        self.meta = meta
        self.cfg = PreprocessCfg.from_dict(meta["cfg"])
        self.shape = tuple(int(x) for x in meta["shape"])
        self._images: np.memmap | None = None

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            if self.shape[0] == 0:
                self._images = np.zeros(self.shape, dtype=np.uint16)
            else:
                self._images = np.memmap(self.path / IMAGES_FILE, dtype=np.uint16, mode="r", shape=self.shape)
        return self._images

    def __len__(self) -> int:
        return self.shape[0]

    def get(self, i: int) -> np.ndarray:
        """Row ``i`` as float32 ``[S, S]`` in [0, 1]."""
        return np.asarray(self.images[i], dtype=np.float32) / 65535.0

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_images"] = None
        return state

    def __repr__(self) -> str:
        c = self.meta.get("counts", {})
        return f"Cache({str(self.path)!r}, n={len(self)}, size={self.cfg.size}, done={c.get('done')}, failed={c.get('failed')})"


def open_cache(path: str | PathLike, allow_incomplete: bool = False) -> Cache:
    """Open a cache folder written by ``build_cache`` or ``merge_caches``.

    Raises:
        FileNotFoundError: the folder or one of its files is missing.
        CacheError: the files are corrupt, inconsistent, or the build was interrupted.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"cache folder not found: {path} (build one with `mammolens preprocess`)")
    for name in (META_FILE, INDEX_FILE, IMAGES_FILE):
        if not (path / name).exists():
            raise FileNotFoundError(
                f"{path} is not a complete mammolens cache: {name} is missing "
                "(rerun `mammolens preprocess` with the same manifest to finish it)"
            )
    try:
        meta = json.loads((path / META_FILE).read_text())
    except ValueError as e:
        raise CacheError(f"{path / META_FILE} is not valid JSON ({e}); rebuild the cache with --overwrite") from e
    if meta.get("format") != CACHE_FORMAT or "shape" not in meta or "cfg" not in meta:
        raise CacheError(f"{path / META_FILE} is not a mammolens cache description")
    n, s1, s2 = (int(x) for x in meta["shape"])
    size = (path / IMAGES_FILE).stat().st_size
    if size != n * s1 * s2 * 2:
        raise CacheError(
            f"{path / IMAGES_FILE} has {size} bytes, expected {n * s1 * s2 * 2} for uint16 {meta['shape']}; "
            "the cache is corrupt: rebuild it with --overwrite"
        )
    index = pd.read_parquet(path / INDEX_FILE)
    if len(index) != n:
        raise CacheError(f"{path / INDEX_FILE} has {len(index)} rows but images.u16 has {n}; rebuild the cache")
    if not meta.get("complete", False) and not allow_incomplete:
        c = meta.get("counts", {})
        raise CacheError(
            f"cache {path} is incomplete ({c.get('pending', '?')} of {n} rows pending): rerun "
            "`mammolens preprocess` with the same manifest and settings to resume"
        )
    return Cache(path, index, meta)


def merge_caches(dirs: Sequence[str | PathLike], out_dir: str | PathLike, overwrite: bool = False) -> Path:
    """Concatenate caches (e.g. shards built on several machines) into one, in the order given.

    All inputs must share the same ``PreprocessCfg``; ``cache_row`` is renumbered.
    """
    if not dirs:
        raise ValueError("merge_caches needs at least one cache folder")
    caches = [open_cache(d) for d in dirs]
    cfg0 = caches[0].meta["cfg"]
    for c in caches[1:]:
        if c.meta["cfg"] != cfg0:
            raise CacheError(f"cannot merge {c.path} (cfg {c.meta['cfg']}) with {caches[0].path} (cfg {cfg0})")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CacheError(f"{out} is not empty; pass overwrite=True to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    s = int(cfg0["size"])
    n = sum(len(c) for c in caches)
    if n:
        dst = np.memmap(out / IMAGES_FILE, dtype=np.uint16, mode="w+", shape=(n, s, s))
        r = 0
        for c in caches:
            step = 1024
            for a in range(0, len(c), step):
                b = min(len(c), a + step)
                dst[r + a : r + b] = c.images[a:b]
            r += len(c)
        dst.flush()
        del dst
    else:
        (out / IMAGES_FILE).write_bytes(b"")
    index = pd.concat([c.index for c in caches], ignore_index=True)
    index["cache_row"] = np.arange(n, dtype=np.int64)
    index.to_parquet(out / INDEX_FILE, index=False)
    failed = index[index["status"] == "failed"]
    from mammolens.csvsafe import write_csv

    write_csv(pd.DataFrame({"row": failed["cache_row"], "image_path": failed["image_path"], "reason": failed["error"]}),
              out / ERRORS_FILE)
    from mammolens._version import __version__

    manifest_cols = [c for c in index.columns if c not in ("cache_row", "status", "error", "conversion", "flipped", "bbox", "orig_h", "orig_w")]
    counts = index["status"].value_counts().to_dict()
    meta = {
        "format": CACHE_FORMAT,
        "format_version": CACHE_FORMAT_VERSION,
        "cfg": cfg0,
        "manifest_hash": manifest_hash(index[manifest_cols]),
        "shape": [n, s, s],
        "dtype": "uint16",
        "shard": None,
        "complete": True,
        "merged_from": [str(c.path) for c in caches],
        "counts": {k: int(counts.get(k, 0)) for k in ("done", "failed", "pending")},
        "conversion_summary": _summarise_conversions(index["conversion"].tolist()),
        "mammolens_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    return out
