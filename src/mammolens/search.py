"""A vector index over a run's image embeddings, and search by report text or by image.

``mammolens index RUN CACHE`` embeds every readable image of a preprocessed cache with the run's image tower
and saves an index; ``mammolens search RUN "spiculated mass" | --image FILE`` embeds the query with the
same run (``encode_text`` / ``encode_image``) and returns the nearest exams with their scores.

Kinds (``IndexCfg.kind``): ``exact`` (inner product on all vectors, numpy, no extra dependency),
``hnsw`` (faiss ``IndexHNSWFlat``) and ``ivf`` (faiss ``IndexIVFFlat``), both approximate and from the
optional ``search`` extra (``faiss-cpu``). Embeddings are L2-normalised, so inner product = cosine.

The index folder holds ``index.json`` (kind, dimension, size, the run's folder name and model), the
vectors (``vectors.npy`` or ``index.faiss``) and ``keys.parquet``: one row per vector with keyed
pseudonyms of the exam and patient (``mammolens.privacy``), laterality, view, modality and the image's path
relative to the data folder with identifier components pseudonymised. No identifier, no absolute path, no
report text is stored (``include_ids`` keeps IDs and paths). Index files are read as data only (``allow_pickle=False``); a faiss
file is parsed by faiss itself, so only open index folders you or mammolens wrote.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammolens._optional import optional_import

log = logging.getLogger(__name__)

__all__ = ["IndexCfg", "VectorIndex", "INDEX_KINDS", "embed_cache", "build_run_index", "search_run", "format_hits"]

INDEX_KINDS = ("exact", "hnsw", "ivf")
KEY_COLUMNS = ("exam", "patient", "laterality", "view", "modality")


def _faiss():
    return optional_import("faiss", "search", purpose="an approximate vector index (hnsw, ivf)")


@dataclass
class IndexCfg:
    """How to build an index.

    Attributes:
        kind: ``exact``, ``hnsw`` or ``ivf``.
        hnsw_m: HNSW graph degree (more: better recall, more memory, slower build).
        ef_construction: HNSW build-time candidate list.
        ef_search: HNSW query-time candidate list (recall against latency).
        nlist: IVF cells; 0 picks ``4 * sqrt(N)``.
        nprobe: IVF cells visited per query (recall against latency).
    """

    kind: str = "exact"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    nlist: int = 0
    nprobe: int = 16

    def __post_init__(self):
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {self.kind!r}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "nprobe"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"IndexCfg.{name} must be >= 1, got {getattr(self, name)}")


class VectorIndex:
    """Nearest neighbours by inner product over ``[N, D]`` float32 vectors.

    Build with :meth:`build`, query with :meth:`search`, keep with :meth:`save` / :meth:`load`.
    """

    def __init__(self, cfg: IndexCfg, dim: int, vectors: np.ndarray | None = None, faiss_index=None):
        self.cfg, self.dim, self.vectors, self._index = cfg, int(dim), vectors, faiss_index

    def __len__(self) -> int:
        return int(len(self.vectors) if self.vectors is not None else self._index.ntotal)

    @classmethod
    def build(cls, vectors: np.ndarray, cfg: IndexCfg | None = None) -> VectorIndex:
        cfg = cfg or IndexCfg()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or not len(x):
            raise ValueError(f"an index needs a non-empty [N, D] matrix of vectors, got shape {x.shape}")
        if cfg.kind == "exact":
            return cls(cfg, x.shape[1], vectors=x)
        faiss = _faiss()
        d = x.shape[1]
        if cfg.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.ef_construction
        else:
            nlist = cfg.nlist or max(1, min(len(x) // 39, int(4 * np.sqrt(len(x)))))  # faiss wants 39 points a cell
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            # k-means on 64 points a cell is as good as on all, and minutes faster at 1M vectors
            sample = np.random.default_rng(0).choice(len(x), 64 * nlist, replace=False) if len(x) > 64 * nlist else None
            index.train(x if sample is None else x[np.sort(sample)])
        index.add(x)
        return cls(cfg, d, faiss_index=index)

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [Q, k], ids [Q, k])``, best first; ids are -1 where fewer than ``k`` were found."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"query vectors have dimension {q.shape[1]} but the index holds {self.dim}-d vectors; "
                             "embed the query with the run that built the index")
        k = int(min(k, len(self)))
        if self.vectors is not None:
            s = q @ self.vectors.T  # [Q, N]
            ids = _top_k(s, k)
            return np.take_along_axis(s, ids, axis=1), ids
        if self.cfg.kind == "hnsw":
            self._index.hnsw.efSearch = max(self.cfg.ef_search, k)
        else:
            self._index.nprobe = self.cfg.nprobe
        scores, ids = self._index.search(q, k)
        return scores, ids.astype(np.int64)

    def save(self, out_dir: str | PathLike) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.vectors is not None:
            np.save(out / "vectors.npy", self.vectors, allow_pickle=False)
        else:
            _faiss().write_index(self._index, str(out / "index.faiss"))

    @classmethod
    def load(cls, index_dir: str | PathLike, cfg: IndexCfg, dim: int) -> VectorIndex:
        d = Path(index_dir)
        if cfg.kind == "exact":
            vectors = np.load(d / "vectors.npy", allow_pickle=False, mmap_mode="r")
            if vectors.ndim != 2 or vectors.shape[1] != dim or vectors.dtype != np.float32:
                raise ValueError(f"{d / 'vectors.npy'} is not a float32 [N, {dim}] matrix (found {vectors.dtype} "
                                 f"{vectors.shape}); rebuild the index with `mammolens index`")
            return cls(cfg, dim, vectors=np.asarray(vectors))
        index = _faiss().read_index(str(d / "index.faiss"))
        if index.d != dim:
            raise ValueError(f"{d / 'index.faiss'} holds {index.d}-d vectors, index.json says {dim}; rebuild it")
        return cls(cfg, dim, faiss_index=index)


def _top_k(s: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores of each row, best first (argpartition, then sort the k)."""
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


# ------------------------------------------------------------------------------------- a run's index
def _device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def embed_cache(model, cache, rows: np.ndarray | None = None, batch_size: int = 64,
                device: str = "cpu", precision: str = "fp32") -> np.ndarray:
    """Normalised image embeddings ``[N, D]`` (float32) of cache rows (all rows when ``rows`` is None),
    in row order, with a run's image tower through ``pipeline.encode`` (resized to the model's input size,
    autocast)."""
    from mammolens.pipeline import encode as _enc

    rows = np.arange(len(cache.index)) if rows is None else np.asarray(rows)
    model = model.to(device).eval()
    batches = (np.stack([cache.get(int(r)) for r in rows[lo:lo + batch_size]]) for lo in range(0, len(rows), batch_size))
    emb = _enc.encode(model, batches, ("embedding",), device=device, precision=precision)["embedding"]
    return emb if len(rows) else np.zeros((0, 0), dtype=np.float32)


def _keys(index: pd.DataFrame, include_ids: bool = False) -> pd.DataFrame:
    """The stored keys of cache rows: pseudonyms, view labels and ``image``, the image's path relative to
    the images' common folder (the data folder) with identifier components pseudonymised, as in
    ``predictions.parquet``; with ``include_ids`` the IDs and the path as they are."""
    import os

    from mammolens.privacy import pseudonym, pseudonymise_frame

    def col(name):
        return index[name].astype(str).tolist() if name in index else [""] * len(index)

    if "image_path" in index and len(index):
        if include_ids:
            root = os.path.commonpath([str(Path(p).resolve().parent) for p in index["image_path"]])
            image = [Path(os.path.relpath(Path(p).resolve(), root)).as_posix() for p in index["image_path"]]
        else:
            image = pseudonymise_frame(index)["image_path"].astype(str).tolist()  # every identifier column scrubs
    else:
        image = [""] * len(index)
    keep = (lambda v, kind: v) if include_ids else pseudonym
    return pd.DataFrame({
        "exam": [keep(v, "study") for v in col("study_id")],
        "patient": [keep(v, "patient") for v in col("patient_id")],
        "laterality": col("laterality"), "view": col("view"), "modality": col("modality"), "image": image,
    })


def build_run_index(run_dir: str | PathLike, cache_dir: str | PathLike, out: str | PathLike | None = None,
                    cfg: IndexCfg | None = None, batch_size: int = 64, device: str = "auto",
                    include_ids: bool = False) -> dict[str, Any]:
    """Embed a cache's readable images with a run and save an index (default ``RUN/index``).

    ``keys.parquet`` holds pseudonyms and each image's pseudonymised path relative to the data folder;
    ``include_ids`` keeps the real IDs and paths (for an index that stays on the machine that holds the data).

    Returns:
        ``{"out_dir", "kind", "n", "dim", "seconds"}``.
    """
    import time

    from mammolens.data.cache import open_cache
    from mammolens.pipeline import features as _features
    from mammolens.run import load_run

    cfg = cfg or IndexCfg()
    t0 = time.perf_counter()
    run = load_run(run_dir)
    cache = open_cache(cache_dir, allow_incomplete=True)
    index = cache.index
    ok = np.flatnonzero((index["status"] == "done").to_numpy()) if "status" in index else np.arange(len(index))
    if not len(ok):
        raise ValueError(f"cache {Path(cache_dir).name} has no readable image to index")
    # through the feature cache (RUN/features): a second index of the same run and cache embeds nothing
    feats = _features.cache_features(run, cache, ok, batch_size=batch_size, device=_device(device))
    emb = np.asarray(feats.embeddings)  # [N, D]
    vindex = VectorIndex.build(emb, cfg)
    out_dir = Path(out) if out else Path(run_dir) / "index"
    vindex.save(out_dir)
    _keys(index.iloc[ok], include_ids).to_parquet(out_dir / "keys.parquet", index=False)
    meta = {"format": 1, "cfg": asdict(cfg), "dim": vindex.dim, "n": len(vindex),
            "run": Path(run_dir).resolve().name, "model": str(run.cfg.get("model", "")),
            "cache": Path(cache_dir).resolve().name, "include_ids": bool(include_ids)}  # names, never absolute paths
    (out_dir / "index.json").write_text(json.dumps(meta, indent=2))
    return {"out_dir": str(out_dir), "kind": cfg.kind, "n": len(vindex), "dim": vindex.dim,
            "seconds": round(time.perf_counter() - t0, 2)}


def load_run_index(index_dir: str | PathLike) -> tuple[VectorIndex, pd.DataFrame, dict]:
    """``(index, keys, meta)`` of a folder written by :func:`build_run_index`."""
    d = Path(index_dir)
    if not (d / "index.json").is_file():
        raise FileNotFoundError(f"{d} is not an index folder (no index.json); build one with "
                                "`mammolens index RUN CACHE --out FOLDER`")
    try:
        meta = json.loads((d / "index.json").read_text(encoding="utf-8"))
        cfg, dim = IndexCfg(**meta["cfg"]), int(meta["dim"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{d / 'index.json'} is not a mammolens index description ({e}); rebuild the index") from None
    vindex = VectorIndex.load(d, cfg, dim)
    keys = pd.read_parquet(d / "keys.parquet")
    if len(keys) != len(vindex) or not set(KEY_COLUMNS) <= set(keys.columns):
        raise ValueError(f"{d}: keys.parquet has {len(keys)} rows / columns {list(keys.columns)} for an index of "
                         f"{len(vindex)} vectors; rebuild the index")
    return vindex, keys, meta


def _query_embedding(run_dir, text: str | None, image: str | PathLike | None, device: str) -> np.ndarray:
    import torch

    from mammolens.inference import Predictor
    from mammolens.pipeline import encode as _enc

    if (text is None) == (image is None):
        raise ValueError("search needs exactly one query: a text or --image FILE")
    p = Predictor.from_run(run_dir, device=device, workers=0)
    if text is not None:
        with torch.no_grad():
            return p.model.encode_text([text]).float().cpu().numpy()  # [1, D]
    rec = next(iter(p.iter_batches([image])))[0]
    if rec.get("error"):
        raise ValueError(f"query image {Path(image).name} cannot be used: {rec['error']}")
    # the preprocessed tile is uint16, as in the cache; encode resizes it to the run's input size
    x = torch.from_numpy(np.asarray(rec["pixels"], dtype=np.float32) / 65535.0)[None, None]
    return _enc.encode(p.model, [x], ("embedding",), device=p.device, precision=p.precision)["embedding"]  # [1, D]


def search_run(run_dir: str | PathLike, text: str | None = None, image: str | PathLike | None = None,
               index_dir: str | PathLike | None = None, k: int = 10, device: str = "auto") -> pd.DataFrame:
    """The ``k`` nearest exams to a report text or an image file.

    An exam's score is the best score of its images (the view that matches the query best).

    Returns:
        DataFrame ``rank, exam, score, patient, laterality, view, modality, image`` (the best image of each
        exam; ``image``: its path relative to the data folder, pseudonymised unless the index was built with
        ``include_ids``; an index from an earlier version has no ``image``). Equal scores share a rank.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    vindex, keys, meta = load_run_index(index_dir or Path(run_dir) / "index")
    if meta.get("run") and meta["run"] != Path(run_dir).resolve().name:
        log.warning("index was built with run %s, searching with run %s", meta["run"], Path(run_dir).resolve().name)
    q = _query_embedding(run_dir, text, image, _device(device))
    # several views per exam (12 for DM + s2D + DBT): widen the image search until k distinct exams are found
    n = min(len(vindex), k * 8)
    while True:
        scores, ids = vindex.search(q, n)
        hits = keys.iloc[ids[0][ids[0] >= 0]].assign(score=scores[0][ids[0] >= 0])
        if hits["exam"].nunique() >= k or n >= len(vindex):
            break
        n = min(len(vindex), n * 4)
    best = hits.sort_values("score", ascending=False, kind="stable").drop_duplicates("exam").head(k)
    best = best.reset_index(drop=True)
    best.insert(0, "rank", _tie_ranks(best["score"].to_numpy()))
    return best[["rank", "exam", "score", "patient", "laterality", "view", "modality",
                 *(["image"] if "image" in best.columns else [])]]


def _tie_ranks(scores: np.ndarray, digits: int = 6) -> np.ndarray:
    """Competition ranks (1, 2, 2, 4) of best-first scores: scores equal to ``digits`` places share a rank."""
    r = np.round(np.asarray(scores, dtype=np.float64), digits)
    return np.array([1 + int(np.sum(r > v)) for v in r], dtype=np.int64)


def format_hits(hits: pd.DataFrame) -> list[str]:
    """One line per hit: rank (``=`` marks a shared rank), score with enough digits to tell the hits apart
    (4, up to 8), exam, laterality, view, modality and the image path."""
    scores = hits["score"].to_numpy(dtype=np.float64)
    digits = 4
    while digits < 8 and len(np.unique(np.round(scores, digits))) < len(np.unique(np.round(scores, 8))):
        digits += 1
    shared = hits["rank"].duplicated(keep=False).to_numpy()
    lines = []
    for r, tie in zip(hits.itertuples(), shared):
        rank = f"{r.rank}=" if tie else f"{r.rank} "
        image = f"  {r.image}" if getattr(r, "image", "") else ""
        lines.append(f"{rank:>4} {r.score:.{digits}f}  {r.exam}  {r.laterality} {r.view} {r.modality}{image}")
    return lines
