"""Retrieval metrics as pure numpy functions: Recall@k, median rank and mean average precision.

Every function takes ``(relevant, scores)`` (scikit-learn's order: truth first): ``relevant`` a boolean
``[Q, N]`` matrix (query ``q`` should find gallery item ``n``), ``scores`` the ``[Q, N]`` similarities
(higher is nearer). Items are ranked by descending score; tied scores are scored by the expected value over
their orders (a tie-heavy case, such as many identical report texts, would otherwise move with the input
order), so permuting the gallery changes nothing. ``ignore`` (``[Q, N]`` boolean) removes items from a query's ranking, e.g. the
query image itself in image→image retrieval. Queries without any relevant item are left out (their rank
is undefined) and counted in ``n_queries_without_relevant``.

- Recall@k: the fraction of queries with at least one relevant item among the top k (the hit rate used
  by CLIP-style image–text retrieval papers).
- Median rank: the median over queries of the (expected) 1-based rank of the first relevant item.
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


def _tie_groups(relevant: np.ndarray, scores: np.ndarray, ignore: np.ndarray | None):
    """Per query row of a block: tie groups of equal scores in descending order and their counts.

    Returns ``(keep [b], n [b', N], r [b', N], before_n [b', N], before_r [b', N], gid [b', N])``: for the
    queries with a relevant item, the size and relevant count of each tie group (by group index, 0 for
    unused indices), the items and relevant items ranked before it, and each ranked item's group index.
    """
    s = scores.astype(np.float64)  # [b, N], a copy
    r = relevant.copy()
    if ignore is not None:
        s[ignore] = -np.inf  # ranked last and never relevant
        r &= ~ignore
    keep = r.sum(1) > 0
    s, r = s[keep], r[keep]
    order = np.argsort(-s, axis=1, kind="stable")
    ss, hit = np.take_along_axis(s, order, axis=1), np.take_along_axis(r, order, axis=1)
    b, n_items = ss.shape
    new = np.ones_like(hit)
    new[:, 1:] = ss[:, 1:] != ss[:, :-1]
    gid = np.cumsum(new, axis=1) - 1  # [b', N] group of each ranked item
    flat = (np.arange(b)[:, None] * n_items + gid).ravel()
    n = np.bincount(flat, minlength=b * n_items).reshape(b, n_items).astype(np.float64)
    rg = np.bincount(flat, weights=hit.ravel().astype(np.float64), minlength=b * n_items).reshape(b, n_items)
    before_n, before_r = np.cumsum(n, axis=1) - n, np.cumsum(rg, axis=1) - rg
    return keep, n, rg, before_n, before_r, gid


def _blocks(relevant, scores, ignore):
    relevant = np.asarray(relevant, dtype=bool)
    scores = np.asarray(scores)  # converted to float64 one block at a time
    ignore = None if ignore is None else np.asarray(ignore, dtype=bool)
    _check(relevant, scores, ignore)
    for lo in range(0, len(scores), _BLOCK):
        yield _tie_groups(relevant[lo:lo + _BLOCK], scores[lo:lo + _BLOCK],
                          None if ignore is None else ignore[lo:lo + _BLOCK])


def _first(n, rg, before_n):
    """Size, relevant count and start of each query's first tie group holding a relevant item."""
    g = (rg > 0).argmax(1)
    rows = np.arange(len(g))
    return n[rows, g], rg[rows, g], before_n[rows, g]


def rank_statistics(relevant, scores, ignore=None) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the 1-based rank of the first relevant item and the average precision, both the
    expected value over the orders of tied scores (so that no input order changes them).

    Within a tie group of ``n`` items, ``r`` of them relevant, after ``b`` items: the first relevant rank
    is ``b + (n + 1) / (r + 1)`` in expectation; the expected AP is McSherry & Najork's (2008) tie-aware
    average precision. Without ties both are the usual values.

    Returns:
        ``(first_rank [Q'], average_precision [Q'])`` (float64) over the Q' queries with a relevant item.
    """
    ranks, aps = [], []
    for _keep, n, rg, before_n, before_r, gid in _blocks(relevant, scores, ignore):
        if not len(n):
            continue
        fn, fr, fb = _first(n, rg, before_n)
        ranks.append(fb + (fn + 1) / (fr + 1))
        # per ranked item, its group's value
        ni, ri, bni, bri = (np.take_along_axis(a, gid, axis=1) for a in (n, rg, before_n, before_r))
        i = np.arange(1, n.shape[1] + 1)[None, :] - bni  # 1-based position within the group
        # expected precision at position i times P(relevant at i), McSherry & Najork
        contrib = (ri / ni) * (bri + 1 + (i - 1) * (ri - 1) / np.maximum(ni - 1, 1)) / (bni + i)
        aps.append(contrib.sum(1) / rg.sum(1))
    if not ranks:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(ranks), np.concatenate(aps)


def _hit_probability(relevant, scores, k: int, ignore=None) -> np.ndarray:
    """Per query with a relevant item: the probability over tie orders that one is in the top ``k``."""
    from math import comb

    out = []
    for _keep, n, rg, before_n, _br, _gid in _blocks(relevant, scores, ignore):
        for fn, fr, fb in zip(*_first(n, rg, before_n)):
            m = int(k - fb)  # slots of the top k left for the first relevant group
            fn, fr = int(fn), int(fr)
            out.append(0.0 if m <= 0 else 1.0 if m >= fn else 1.0 - comb(fn - fr, m) / comb(fn, m))
    return np.asarray(out, dtype=np.float64)


def recall_at_k(relevant, scores, k: int, ignore=None) -> float:
    """Fraction of queries with a relevant item in their top ``k``, expected over the orders of tied scores
    (NaN without any scorable query)."""
    hits = _hit_probability(relevant, scores, k, ignore)
    return float(np.mean(hits)) if len(hits) else float("nan")


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
    out: dict[str, float] = {f"recall@{k}": float(np.mean(_hit_probability(relevant, scores, k, ignore)))
                             if len(ranks) else nan for k in ks}
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
