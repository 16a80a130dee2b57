"""Retrieval benchmark: query latency and Recall@10 of the approximate indexes against exact search.

Synthetic L2-normalised vectors (a mixture of Gaussian clusters, like embeddings of a cohort: near
neighbours exist) at the sizes asked for. Exact search (``VectorIndex`` kind ``exact``) gives the true top
k; each approximate kind (``hnsw``, ``ivf``) is built on the same vectors and timed one query at a time.
Recall@k here is the overlap of the approximate top k with the exact top k.

    python -m mammolens.bench.retrieval --sizes 10000 1000000 --kinds ivf hnsw
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from mammolens.search import IndexCfg, VectorIndex

__all__ = ["synthetic_vectors", "bench_retrieval"]


def synthetic_vectors(n: int, dim: int = 512, n_clusters: int = 1000, noise: float = 0.5,
                      seed: int = 0) -> np.ndarray:
    """``[n, dim]`` float32 unit vectors around ``n_clusters`` random centres, built in blocks."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        x = centres[rng.integers(0, n_clusters, hi - lo)] + noise * rng.standard_normal((hi - lo, dim), dtype=np.float32)
        out[lo:hi] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _latency_ms(index: VectorIndex, queries: np.ndarray, k: int) -> tuple[float, float, np.ndarray]:
    """Median and 95th-percentile latency of single queries (ms), and the ids found ``[Q, k]``."""
    times, ids = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, i = index.search(q[None], k)
        times.append(1000 * (time.perf_counter() - t0))
        ids.append(i[0])
    return float(np.median(times)), float(np.percentile(times, 95)), np.stack(ids)


def bench_retrieval(sizes: Sequence[int] = (10_000, 1_000_000), dim: int = 512, n_queries: int = 100, k: int = 10,
                    kinds: Sequence[str] = ("ivf", "hnsw"), seed: int = 0, cfg: dict | None = None) -> list[dict[str, Any]]:
    """One row per (size, kind): build seconds, median/p95 single-query latency, Recall@k against exact.

    Args:
        cfg: ``IndexCfg`` fields for the approximate kinds (``nprobe``, ``ef_search``, ...).
    """
    rows = []
    for n in sizes:
        x = synthetic_vectors(n, dim, seed=seed)
        rng = np.random.default_rng(seed + 1)
        # queries near stored vectors but not equal to them, as a new exam of a known patient would be
        q = x[rng.choice(n, n_queries, replace=False)] + 0.05 * rng.standard_normal((n_queries, dim), dtype=np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        exact = VectorIndex.build(x, IndexCfg(kind="exact"))
        med, p95, truth = _latency_ms(exact, q, k)
        rows.append({"n": n, "dim": dim, "kind": "exact", "build_s": 0.0, "latency_ms_median": round(med, 3),
                     "latency_ms_p95": round(p95, 3), f"recall@{k}": 1.0})
        for kind in kinds:
            t0 = time.perf_counter()
            index = VectorIndex.build(x, IndexCfg(kind=kind, **(cfg or {})))
            build = time.perf_counter() - t0
            med, p95, ids = _latency_ms(index, q, k)
            recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, truth)]))
            rows.append({"n": n, "dim": dim, "kind": kind, "build_s": round(build, 1),
                         "latency_ms_median": round(med, 3), "latency_ms_p95": round(p95, 3),
                         f"recall@{k}": round(recall, 4)})
            del index
        del x, exact
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--kinds", nargs="+", default=["ivf", "hnsw"], choices=["ivf", "hnsw"])
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--ef-search", type=int, default=64)
    a = ap.parse_args(argv)
    rows = bench_retrieval(a.sizes, a.dim, a.queries, a.k, a.kinds, cfg={"nprobe": a.nprobe, "ef_search": a.ef_search})
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
