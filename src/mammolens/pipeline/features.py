"""A feature cache: a run's image embeddings (and optionally patch tokens) of a cache's rows, kept on disk.

Retrieval (``search.build_run_index``) reads embeddings from here; the task suite (backbones × tasks) and
distillation are meant to as well: a cache embedded once by a run is embedded for all of them.

Layout: ``ROOT/<key>/`` (default ``ROOT`` = ``RUN/features``) holds

- ``embeddings.npy``: float32 ``[N, D]``, L2-normalised (``pipeline.encode``'s ``"embedding"``);
- ``tokens.npy`` (when asked for): float16 ``[N, T, D]`` patch tokens, L2-normalised (ViT towers only);
- ``rows.npy``: int64 ``[N]``, the cache rows, in the order of the arrays;
- ``features.json``: what produced them: the run and cache fingerprints, the checkpoint's name, the
  run's and cache's folder names (never absolute paths), the precision, the input size, shapes, time.

The ``key`` is a hash of the run fingerprint, the cache fingerprint, the rows and the precision:

- run fingerprint: the checkpoint file's resolved path, size and modification time (ns). Hashing 800 MB of
  weights would cost seconds on every call; any rewrite of the checkpoint (more training, a resume) changes
  its mtime, and a copied run folder has another path, so both only ever cause a recompute, never a
  stale reuse;
- cache fingerprint: a hash of the cache's ``cache.json`` (preprocessing, manifest hash, shape, counts,
  build record), which every (re)build or resumed build rewrites.

Files are written to a temporary folder and renamed into place, so a reader never sees half a feature set.
Arrays open memory-mapped (``np.load(mmap_mode="r")``, ``allow_pickle=False``).

API:
    ``cache_features(run, cache, rows=None, *, tokens=False, root=None, which="best", batch_size=64,
    device="cpu", precision="fp32", recompute=False) -> Features``;
    ``Features`` (``embeddings``, ``tokens``, ``rows``, ``meta``, ``path``, ``reused``);
    ``run_fingerprint(run_dir, which="best") -> str``; ``cache_fingerprint(cache_dir) -> str``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["FEATURES_FORMAT", "Features", "cache_features", "cache_fingerprint", "run_fingerprint"]

FEATURES_FORMAT = 1
META_FILE = "features.json"


@dataclass
class Features:
    """A feature set on disk: ``embeddings`` ``[N, D]`` float32, ``tokens`` ``[N, T, D]`` float16 or None,
    ``rows`` ``[N]`` cache rows, ``meta`` (``features.json``), ``path`` (its folder) and ``reused`` (read from
    disk rather than computed by this call). The arrays are read-only memory maps."""

    embeddings: np.ndarray
    rows: np.ndarray
    tokens: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    path: Path = Path(".")
    reused: bool = False


def _checkpoint_path(run_dir: Path, which: str) -> Path:
    """The checkpoint ``models.run.load_checkpoint`` reads for ``which`` (best falls back to last)."""
    p = Path(which) if which.endswith(".pt") else run_dir / "checkpoints" / f"{which}.pt"
    if not p.is_file() and which == "best":
        p = run_dir / "checkpoints" / "last.pt"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: {run_dir} is not a finished mammolens run (train one first)")
    return p


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def run_fingerprint(run_dir: str | PathLike, which: str = "best") -> str:
    """A hash of the run's checkpoint file: resolved path, size and mtime in ns (see the module docstring)."""
    p = _checkpoint_path(Path(run_dir), which).resolve()
    st = p.stat()
    return _digest({"checkpoint": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns})


def cache_fingerprint(cache_dir: str | PathLike) -> str:
    """A hash of the cache's ``cache.json`` (rewritten by every build, resume and merge)."""
    p = Path(cache_dir) / "cache.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: {Path(cache_dir).name} is not a mammolens cache")
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _open(folder: Path, meta: dict) -> Features:
    emb = np.load(folder / "embeddings.npy", mmap_mode="r", allow_pickle=False)
    rows = np.load(folder / "rows.npy", allow_pickle=False)
    tok = np.load(folder / "tokens.npy", mmap_mode="r", allow_pickle=False) if meta.get("tokens") else None
    return Features(emb, rows, tok, meta, folder, reused=True)


def _read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cache_features(run, cache, rows: np.ndarray | None = None, *, tokens: bool = False,
                   root: str | PathLike | None = None, which: str = "best", batch_size: int = 64,
                   device: str = "cpu", precision: str = "fp32", recompute: bool = False) -> Features:
    """Embeddings (and with ``tokens``, patch tokens) of a cache's rows by a run: read from the feature cache
    when the run, cache, rows and precision match, else computed with ``pipeline.encode`` and written.

    Args:
        run: a run folder or a ``LoadedRun`` (``models.run.load_run``; its ``run_dir`` names the checkpoint).
        cache: a cache folder or an opened ``Cache``.
        rows: cache rows (default: every row whose status is ``done``).
        tokens: also keep patch tokens (ViT towers; float16). A stored set without tokens is recomputed.
        root: the feature cache's folder (default ``RUN/features``).
        which: the checkpoint (``best``/``last``/a ``.pt`` path) the run was (or is) loaded from.
        recompute: ignore a stored set.

    Raises:
        ValueError: ``rows`` is empty.
    """
    from mammolens.data.cache import open_cache
    from mammolens.models.run import load_run
    from mammolens.pipeline import encode as _enc

    run_dir = Path(run) if isinstance(run, (str, PathLike)) else Path(run.run_dir)
    cache = open_cache(cache, allow_incomplete=True) if isinstance(cache, (str, PathLike)) else cache
    if rows is None:
        index = cache.index
        rows = np.flatnonzero((index["status"] == "done").to_numpy()) if "status" in index else np.arange(len(index))
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        raise ValueError(f"cache {cache.path.name} has no rows to embed")
    ident = {"format": FEATURES_FORMAT, "run": run_fingerprint(run_dir, which), "cache": cache_fingerprint(cache.path),
             "rows": hashlib.sha256(rows.tobytes()).hexdigest(), "precision": precision}
    key = _digest(ident)[:20]
    folder = (Path(root) if root is not None else run_dir / "features") / key
    meta = _read_meta(folder) if not recompute else None
    if meta is not None and meta.get("key") == key and (meta.get("tokens") or not tokens):
        try:
            found = _open(folder, meta)
            if found.embeddings.shape[0] == len(rows) == len(found.rows):
                log.info("features: reusing %s", folder.name)
                return found
        except (OSError, ValueError) as e:  # a damaged set is recomputed
            log.warning("features: %s is unreadable (%s); recomputing", folder.name, e)

    t0 = time.perf_counter()
    loaded = load_run(run_dir, device=device, which=which) if isinstance(run, (str, PathLike)) else run
    model = loaded.model.to(device).eval()
    want = ("embedding", "tokens") if tokens else ("embedding",)
    batches = (np.stack([cache.get(int(r)) for r in rows[lo:lo + batch_size]]) for lo in range(0, len(rows), batch_size))
    emb_parts, tok_parts = [], []
    for res in _enc.iter_encode(model, batches, want, device=device, precision=precision):
        emb_parts.append(res["embedding"])
        if tokens:
            tok_parts.append(res["tokens"].astype(np.float16))
    emb = np.concatenate(emb_parts).astype(np.float32, copy=False)  # [N, D]
    hw = _enc.model_input_size(model)
    meta = {"key": key, **ident, "which": which, "run_name": run_dir.resolve().name,
            "cache_name": Path(cache.path).resolve().name, "n": len(rows), "dim": int(emb.shape[1]),
            "tokens": bool(tokens), "input_size": list(hw) if hw else None,
            "seconds": round(time.perf_counter() - t0, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tok = np.concatenate(tok_parts) if tokens else None
    log.info("features: %d rows of %s embedded in %.1f s", len(rows), meta["cache_name"], meta["seconds"])
    try:
        _write(folder, emb, rows, tok, meta)
    except OSError as e:  # a read-only run folder: the features are still right, only not kept
        log.warning("features: cannot write %s (%s); not cached", folder, e)
        return Features(emb, rows, tok, meta, folder, reused=False)
    out = _open(folder, meta)
    out.reused = False
    return out


def _write(folder: Path, emb: np.ndarray, rows: np.ndarray, tok: np.ndarray | None, meta: dict) -> None:
    """Write a feature set into a temporary sibling folder, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        np.save(tmp / "embeddings.npy", emb, allow_pickle=False)
        np.save(tmp / "rows.npy", rows, allow_pickle=False)
        if tok is not None:
            np.save(tmp / "tokens.npy", tok, allow_pickle=False)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
