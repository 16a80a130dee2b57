"""The preprocessed store: one memory-mapped uint16 array ``[N, S, S]`` plus its index.

A cache folder holds

- ``images.u16``: raw ``np.memmap`` uint16 ``[N, S, S]``, row ``i`` = manifest row ``i``;
- ``index.parquet``: the manifest rows + ``cache_row``, ``status`` (done/failed/pending), ``error``,
  ``conversion`` (the reader's conversion record, JSON), ``flipped``, ``bbox``, ``orig_h``, ``orig_w``;
- ``cache.json``: ``PreprocessCfg``, manifest hash, the quality gate (``quality``: ``check_image``'s
  ``QUALITY_VERSION`` and the ``QualityCfg`` used), shape, counts, conversion summary, version, time;
- ``progress.jsonl``: one line per finished row (how an interrupted build resumes);
- ``errors.csv``: ``row, image_path, reason`` for every image that could not be read, that the header
  gate refused (not a mammogram) or that the quality gate found not assessable; such rows are
  ``status == "failed"`` and never trained on (no identifiers: paths relative to the images' common folder,
  identifier components pseudonymised; ``index.parquet`` has the rest).

Each row goes through ``pipeline.prepare`` (read → header gate → quality gate → preprocess), the same
function ``Predictor`` uses, so training never sees an image prediction would refuse. A cache whose
manifest, ``PreprocessCfg`` or quality gate differs from the call's (a cache built before the gate was
recorded, too) is not resumed: ``build_cache`` raises ``CacheError`` (``overwrite=True`` rebuilds it).

``build_cache`` is parallel over processes (``pipeline.executor``; each worker writes its rows straight
into ``images.u16``),
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
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

import mammolens.pipeline.prepare as _prep  # looked up at call time (tests count the calls)
from mammolens.constants import MANIFEST_REQUIRED
from mammolens.pipeline.executor import get_executor
from mammolens.privacy import scrub_errors
from mammolens.transforms.config import PreprocessCfg  # re-exported: it lives below data and transforms
from mammolens.transforms.quality import QUALITY_VERSION, QualityCfg

log = logging.getLogger(__name__)

__all__ = ["PreprocessCfg", "Cache", "CacheError", "build_cache", "open_cache", "merge_caches", "manifest_hash",
           "quality_record"]

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

_W: dict[str, Any] = {}  # per-process state: the images file, cfg, quality gate and reader


def _worker_init(images_path: str, shape: tuple[int, int, int], cfg_dict: dict, reader: Callable | None,
                 quality_dict: dict | None = None) -> None:
    import mammolens.io.dicom  # noqa: F401  (import once per worker, not inside the first task)
    import mammolens.transforms.breast  # noqa: F401

    # positional writes into the file rather than a memmap: no msync of a huge mapping per row, and a
    # killed worker loses nothing already written (the page cache belongs to the kernel)
    if "fd" in _W:
        os.close(_W.pop("fd"))
    _W["fd"] = os.open(images_path, os.O_RDWR)
    _W["row_bytes"] = int(shape[1] * shape[2] * 2)
    _W["cfg"] = PreprocessCfg.from_dict(cfg_dict)
    _W["quality"] = QualityCfg.from_dict(quality_dict) if quality_dict is not None else None
    _W["reader"] = reader


def preload_worker_modules() -> None:
    """Import what every row needs in the parent, so that forked workers inherit it instead of each
    importing pydicom, its pixel decoders, scipy.ndimage and PIL on their first row."""
    import PIL.Image  # noqa: F401
    import pydicom.pixels  # noqa: F401
    import scipy.ndimage  # noqa: F401

    import mammolens.io  # noqa: F401
    import mammolens.io.dicom
    import mammolens.pipeline.prepare  # noqa: F401
    import mammolens.transforms.breast  # noqa: F401

    mammolens.io.dicom._cv2()  # OpenCV (the table lookup), imported once here rather than in every worker


def _conversion_json(conv: Any) -> str:
    if not conv:
        return ""
    return json.dumps(conv, sort_keys=True, default=str)


def _process_row(task: tuple[int, str, str, Any]) -> dict[str, Any]:
    """Prepare (``pipeline.prepare``: read, gate, quality, preprocess) and write one row; raises on a bad
    file and on an image either gate refuses (the ``Executor`` records the reason in ``errors.csv``)."""
    row, path, laterality, frame = task
    p = _prep.prepare(path, _W["cfg"], _W["quality"], laterality=laterality, frame=frame, reader=_W["reader"])
    if not p.ok:  # a DX abdomen in a hand-made manifest, a text page: never trained on
        raise ValueError(p.reason)
    buf = np.ascontiguousarray(p.pixels, dtype="<u2").tobytes()
    assert len(buf) == _W["row_bytes"]
    os.pwrite(_W["fd"], buf, row * _W["row_bytes"])  # written before the row is reported done
    info = p.geometry
    return {
        "row": row,
        "status": "done",
        "error": "",
        "conversion": _conversion_json(p.conversion),
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


def quality_record(quality: QualityCfg) -> dict[str, Any]:
    """What ``cache.json`` records of the quality gate: ``check_image``'s version and the thresholds used."""
    return {"version": QUALITY_VERSION, "cfg": quality.to_dict()}


def _fingerprint(df: pd.DataFrame, cfg: PreprocessCfg, quality: QualityCfg) -> dict[str, Any]:
    """The fields of ``cache.json`` a cache must match to be resumed rather than rebuilt."""
    return {"manifest_hash": manifest_hash(df), "cfg": cfg.to_dict(), "quality": quality_record(quality)}


def _check_existing(out: Path, fp: dict[str, Any], n_bytes: int, overwrite: bool) -> None:
    """Keep a cache folder built from the same fingerprint (to resume it), delete one built from another
    (``overwrite``) or raise ``CacheError`` naming what differs."""
    meta_path, images_path = out / META_FILE, out / IMAGES_FILE
    if not meta_path.exists():
        if (out.exists() and any(out.iterdir()) and not overwrite
                and (images_path.exists() or (out / INDEX_FILE).exists())):
            raise CacheError(f"{out} holds cache files without {META_FILE}; pass overwrite=True to rebuild it")
        return
    try:
        old = json.loads(meta_path.read_text())
    except ValueError as e:
        old = {"corrupt": str(e)}
    if "corrupt" in old:
        what = "its cache.json is unreadable"
    elif old.get("manifest_hash") != fp["manifest_hash"]:
        what = "it was built from a different manifest"
    elif old.get("cfg") != fp["cfg"]:
        what = "it was built with a different PreprocessCfg"
    elif old.get("quality") != fp["quality"]:
        what = ("it was built without the image quality gate (an older mammolens)" if "quality" not in old
                else "it was built with a different image quality gate (version or thresholds)")
    elif not images_path.exists() or images_path.stat().st_size != n_bytes:
        what = "its images.u16 has the wrong size"
    else:
        return  # the same build: resumed
    if not overwrite:
        raise CacheError(f"{out} already holds a cache but {what}; use another --out folder, or overwrite=True "
                         "(--overwrite) to rebuild it")
    shutil.rmtree(out)


def _start_or_resume(out: Path, meta: dict[str, Any], n_bytes: int) -> dict[str, Any]:
    """Create ``images.u16`` (sparse) and ``cache.json`` for a new build, or read back a resumed one's meta."""
    meta_path = out / META_FILE
    out.mkdir(parents=True, exist_ok=True)
    if meta_path.exists():
        return {**json.loads(meta_path.read_text()), **meta}
    from mammolens._version import __version__

    meta = {**meta, "mammolens_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with open(out / IMAGES_FILE, "wb") as f:
        f.truncate(n_bytes)  # sparse: rows take disk space as they are written
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def _pending_tasks(df: pd.DataFrame, records: dict[int, dict], retry_failed: bool,
                   limit: int | None) -> list[tuple[int, str, str, Any]]:
    """``(row, image_path, laterality, frame)`` for the rows still to do (failed ones too with ``retry_failed``)."""
    n = len(df)
    pending = [i for i in range(n) if i not in records or (retry_failed and records[i]["status"] != "done")]
    if limit is not None:
        pending = pending[: max(0, int(limit))]
    lat = df["laterality"].astype("string").fillna("") if "laterality" in df else pd.Series([""] * n)
    frames = df["frame"] if "frame" in df else pd.Series([None] * n)
    return [(i, str(df.at[i, "image_path"]), str(lat.iat[i]), frames.iat[i]) for i in pending]


def _preprocess_rows(tasks: list, workers: int, init_args: tuple, timeout: float | None, progress_path: Path,
                     records: dict[int, dict], progress: bool) -> None:
    """Run ``_process_row`` over ``tasks`` with the ``Executor``; every finished row (done or failed, with its
    reason) goes to ``records`` and one line of ``progress.jsonl`` as it comes."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc="preprocess", unit="img", disable=not progress or not tasks)
    # the executor's initializer opens images.u16 per worker (here too when workers <= 1: closed below)
    if workers > 1:
        preload_worker_modules()  # forked workers then start with them imported (~0.1 s each saved)
    ex = get_executor("local", workers=workers, initializer=_worker_init, initargs=init_args)
    with open(progress_path, "a") as plog:
        try:
            for k, rec, err in ex.map(_process_row, tasks, ordered=False, timeout=timeout):
                rec = rec if err is None else {"row": tasks[k][0], "status": "failed", "error": err}
                records[rec["row"]] = rec
                plog.write(json.dumps(rec) + "\n")
                plog.flush()
                bar.update(1)
        finally:
            if "fd" in _W:
                os.close(_W.pop("fd"))
            _W.clear()
    bar.close()


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
    quality: QualityCfg | dict | None = None,
) -> Path:
    """Preprocess every manifest image into a memory-mapped cache (see the module docstring).

    Args:
        manifest: DataFrame or path to a manifest (.parquet/.csv; relative paths resolved).
        out_dir: cache folder (created).
        cfg: ``PreprocessCfg`` (or its dict); default ``PreprocessCfg()``.
        workers: processes; default all cores; 0 or 1 runs in this process.
        progress: show a progress bar.
        overwrite: delete an existing cache built from another manifest, cfg or quality gate instead of raising.
        limit: process at most this many pending rows, then stop (the rest on the next call).
        shard: ``(k, n)``: build only the k-th of n contiguous blocks of the manifest (merge with
            ``merge_caches``).
        retry_failed: also redo rows that failed in an earlier run.
        reader: ``f(path, dbt=...)`` / ``f(path, frame=...)`` (rows with a ``frame``) returning a
            ``MammoImage`` or an array; default ``mammolens.io.read_image`` (must be picklable when
            ``workers > 1``).
        timeout: seconds per row before its worker is killed and replaced and the row marked failed
            (default ``MAMMOLENS_FILE_TIMEOUT`` or 120; see ``mammolens.parallel``).
        quality: the image quality gate (``transforms.quality``), the one ``Predictor`` applies; default
            ``QualityCfg()``. Images it refuses are failed rows (``errors.csv``), never trained on.
            ``QualityCfg(enabled=False)`` turns it off. Recorded in ``cache.json``.

    Returns:
        ``out_dir``.

    Raises:
        CacheError: ``out_dir`` holds a cache of a different manifest, cfg or quality gate and
            ``overwrite`` is False.
    """
    cfg = PreprocessCfg.from_dict(cfg) if isinstance(cfg, dict) else (cfg or PreprocessCfg())
    quality = QualityCfg.from_dict(quality) if isinstance(quality, dict) else (quality or QualityCfg())
    df = _load_manifest(manifest)
    df = df.iloc[_shard_rows(len(df), shard)].reset_index(drop=True)
    out = Path(out_dir)
    n, s = len(df), cfg.size
    shape, n_bytes = (n, s, s), n * s * s * 2
    fp = _fingerprint(df, cfg, quality)
    _check_existing(out, fp, n_bytes, overwrite)
    meta = _start_or_resume(out, {
        "format": CACHE_FORMAT, "format_version": CACHE_FORMAT_VERSION, **fp, "shape": list(shape),
        "dtype": "uint16", "shard": list(shard) if shard else None, "complete": False,
    }, n_bytes)

    records = _read_progress(out / PROGRESS_FILE)
    tasks = _pending_tasks(df, records, retry_failed, limit)
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    workers = max(0, min(workers, len(tasks)))
    log.info("cache %s: %d rows, %d to do, %d workers", out, n, len(tasks), workers)
    t0 = time.perf_counter()
    init_args = (str(out / IMAGES_FILE), shape, cfg.to_dict(), reader, quality.to_dict())
    _preprocess_rows(tasks, workers, init_args, timeout, out / PROGRESS_FILE, records, progress)
    _write_outputs(out, df, records, meta, processed=len(tasks), seconds=time.perf_counter() - t0)
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
    cfg0, quality0 = caches[0].meta["cfg"], caches[0].meta.get("quality")
    for c in caches[1:]:
        if c.meta["cfg"] != cfg0:
            raise CacheError(f"cannot merge {c.path} (cfg {c.meta['cfg']}) with {caches[0].path} (cfg {cfg0})")
        if c.meta.get("quality") != quality0:
            raise CacheError(f"cannot merge {c.path} (quality gate {c.meta.get('quality')}) with {caches[0].path} "
                             f"(quality gate {quality0}); rebuild the shards with the same mammolens and QualityCfg")
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

    own = ("cache_row", "status", "error", "conversion", "flipped", "bbox", "orig_h", "orig_w")
    manifest_cols = [c for c in index.columns if c not in own]
    counts = index["status"].value_counts().to_dict()
    meta = {
        "format": CACHE_FORMAT,
        "format_version": CACHE_FORMAT_VERSION,
        "cfg": cfg0,
        "quality": quality0,
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
