"""Retrieval metrics as pure numpy functions: Recall@k, median rank and mean average precision.

Every function takes ``(relevant, scores)`` (scikit-learn's order: truth first): ``relevant`` a boolean
``[Q, N]`` matrix (query ``q`` should find gallery item ``n``), ``scores`` the ``[Q, N]`` similarities
(higher is nearer). Items are ranked by descending score; ties keep gallery order (a stable sort), so the
numbers are reproducible. ``ignore`` (``[Q, N]`` boolean) removes items from a query's ranking, e.g. the
query image itself in image→image retrieval. Queries without any relevant item are left out (their rank
is undefined) and counted in ``n_queries_without_relevant``.

- Recall@k: the fraction of queries with at least one relevant item among the top k (the hit rate used
  by CLIP-style image–text retrieval papers).
- Median rank: the median over queries of the 1-based rank of the first relevant item.
- mAP: the mean over queries of average precision (mean of precision@i at each relevant item's rank i).

Large galleries are processed in blocks of queries, so the memory is ``block × N``, not ``Q × N``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["rank_statistics", "recall_at_k", "median_rank", "mean_average_precision", "retrieval_metrics",
           "same_label"]

_BLOCK = 256  # queries per block: 256 × 1M float64 scores stay around 2 GB


def _check(relevant: np.ndarray, scores: np.ndarray, ignore: np.ndarray | None) -> None:
    if relevant.ndim != 2 or relevant.shape != scores.shape:
        raise ValueError(f"relevant and scores must be [Q, N] matrices of one shape, got {relevant.shape} and "
                         f"{scores.shape}; build relevant with same_label(query_labels, gallery_labels)")
    if ignore is not None and ignore.shape != scores.shape:
        raise ValueError(f"ignore must have the shape of scores {scores.shape}, got {ignore.shape}")


def rank_statistics(relevant, scores, ignore=None) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the 1-based rank of the first relevant item and the average precision.

    Returns:
        ``(first_rank [Q'], average_precision [Q'])`` over the Q' queries with at least one relevant item.
    """
    relevant = np.asarray(relevant, dtype=bool)
    scores = np.asarray(scores)  # converted to float64 one block at a time
    ignore = None if ignore is None else np.asarray(ignore, dtype=bool)
    _check(relevant, scores, ignore)
    ranks, aps = [], []
    for lo in range(0, len(scores), _BLOCK):
        s = scores[lo:lo + _BLOCK].astype(np.float64)  # [b, N], a copy
        r = relevant[lo:lo + _BLOCK].copy()
        if ignore is not None:
            s[ignore[lo:lo + _BLOCK]] = -np.inf  # ranked last and never relevant
            r &= ~ignore[lo:lo + _BLOCK]
        order = np.argsort(-s, axis=1, kind="stable")
        hit = np.take_along_axis(r, order, axis=1)  # [b, N] relevance in ranked order
        n_rel = hit.sum(1)
        keep = n_rel > 0
        hit, n_rel = hit[keep], n_rel[keep]
        ranks.append(hit.argmax(1) + 1)
        precision = np.cumsum(hit, axis=1) / np.arange(1, hit.shape[1] + 1)  # precision@i
        aps.append((precision * hit).sum(1) / n_rel)
    if not ranks:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(ranks).astype(np.int64), np.concatenate(aps)


def recall_at_k(relevant, scores, k: int, ignore=None) -> float:
    """Fraction of queries with a relevant item in their top ``k`` (NaN without any scorable query)."""
    ranks, _ = rank_statistics(relevant, scores, ignore)
    return float(np.mean(ranks <= k)) if len(ranks) else float("nan")


def median_rank(relevant, scores, ignore=None) -> float:
    """Median 1-based rank of each query's first relevant item."""
    ranks, _ = rank_statistics(relevant, scores, ignore)
    return float(np.median(ranks)) if len(ranks) else float("nan")


def mean_average_precision(relevant, scores, ignore=None) -> float:
    """Mean over queries of average precision."""
    _, aps = rank_statistics(relevant, scores, ignore)
    return float(np.mean(aps)) if len(aps) else float("nan")


def retrieval_metrics(relevant, scores, ks: Sequence[int] = (1, 5, 10), ignore=None) -> dict[str, float]:
    """``recall@k`` for each k, ``median_rank``, ``mAP``, ``n_queries`` and ``n_queries_without_relevant``,
    from one ranking pass."""
    ranks, aps = rank_statistics(relevant, scores, ignore)
    nan = float("nan")
    out: dict[str, float] = {f"recall@{k}": float(np.mean(ranks <= k)) if len(ranks) else nan for k in ks}
    out["median_rank"] = float(np.median(ranks)) if len(ranks) else nan
    out["mAP"] = float(np.mean(aps)) if len(aps) else nan
    out["n_queries"] = int(len(ranks))
    out["n_queries_without_relevant"] = int(np.shape(scores)[0] - len(ranks))
    return out


def same_label(query_labels, gallery_labels) -> np.ndarray:
    """``relevant[q, n]``: the query and the gallery item carry the same label; -1, NaN, None and "" are
    unlabelled and relevant to nothing."""
    q = np.asarray(query_labels, dtype=object)
    g = np.asarray(gallery_labels, dtype=object)

    def known(a):
        return np.array([not (v is None or v == "" or v == -1 or (isinstance(v, float) and np.isnan(v)))
                         for v in a], dtype=bool)

    return (q[:, None] == g[None, :]) & known(q)[:, None] & known(g)[None, :]
