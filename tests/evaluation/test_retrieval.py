"""Retrieval metrics against a brute-force, one-query-at-a-time computation."""

import numpy as np
import pytest

from mammolens.evaluation import retrieval as R


def _brute(relevant, scores, ks, ignore=None):
    ranks, aps = [], []
    for q in range(scores.shape[0]):
        items = [n for n in range(scores.shape[1]) if ignore is None or not ignore[q, n]]
        items.sort(key=lambda n: (-scores[q, n], n))  # descending score, ties in gallery order
        hits = [bool(relevant[q, n]) for n in items]
        if not any(hits):
            continue
        ranks.append(hits.index(True) + 1)
        found, prec = 0, []
        for i, h in enumerate(hits, start=1):
            if h:
                found += 1
                prec.append(found / i)
        aps.append(sum(prec) / len(prec))
    out = {f"recall@{k}": sum(r <= k for r in ranks) / len(ranks) for k in ks}
    out["median_rank"] = float(np.median(ranks))
    out["mAP"] = sum(aps) / len(aps)
    return out, len(ranks)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_metrics_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    q_lab, g_lab = rng.integers(0, 4, 30), rng.integers(-1, 4, 300)  # -1: unlabelled gallery items
    q_lab[:2] = 7  # two queries with no relevant item
    scores = rng.normal(size=(30, 300))  # no ties: the plain ranking (ties: see the tie tests below)
    rel = R.same_label(q_lab, g_lab)
    got = R.retrieval_metrics(rel, scores, ks=(1, 5, 10))
    want, n = _brute(rel, scores, (1, 5, 10))
    for key, v in want.items():
        assert got[key] == pytest.approx(v), key
    assert got["n_queries"] == n == 28 and got["n_queries_without_relevant"] == 2
    assert R.recall_at_k(rel, scores, 5) == pytest.approx(want["recall@5"])
    assert R.median_rank(rel, scores) == want["median_rank"]
    assert R.mean_average_precision(rel, scores) == pytest.approx(want["mAP"])


def test_retrieval_metrics_ignore_self_and_blocks(monkeypatch):
    rng = np.random.default_rng(3)
    lab = rng.integers(0, 3, 40)
    emb = rng.normal(size=(40, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)  # cosine: each query is nearest to itself
    scores = emb @ emb.T
    rel, ignore = R.same_label(lab, lab), np.eye(40, dtype=bool)
    monkeypatch.setattr(R, "_BLOCK", 7)  # several query blocks give the same numbers
    got = R.retrieval_metrics(rel, scores, ks=(1, 5), ignore=ignore)
    want, _ = _brute(rel, scores, (1, 5), ignore)
    for key, v in want.items():
        assert got[key] == pytest.approx(v), key
    # without ignoring itself every query finds itself first
    assert R.recall_at_k(rel, scores, 1) == 1.0


def test_retrieval_metrics_hand_computed():
    rel = np.array([[False, True, False, True]])
    scores = np.array([[0.9, 0.8, 0.7, 0.1]])  # relevant at ranks 2 and 4
    m = R.retrieval_metrics(rel, scores, ks=(1, 2))
    assert m["recall@1"] == 0.0 and m["recall@2"] == 1.0 and m["median_rank"] == 2.0
    assert m["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_retrieval_metrics_shape_error():
    with pytest.raises(ValueError, match="one shape"):
        R.retrieval_metrics(np.ones((2, 3), bool), np.ones((3, 2)))
    assert np.isnan(R.retrieval_metrics(np.zeros((2, 3), bool), np.ones((2, 3)))["mAP"])


def test_tied_scores_are_the_expectation_over_tie_orders():
    """Issue 22: with ties the numbers moved with the gallery order. Now they are the mean over every
    order of the tied items (brute force over all 7! gallery orders, each ranked with a stable sort)."""
    import itertools

    scores = np.array([[0.9, 0.5, 0.5, 0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.1]])
    rel = np.array([[0, 1, 0, 1, 0, 0, 1], [0, 0, 1, 0, 0, 0, 1]], dtype=bool)
    acc = {k: 0.0 for k in ("recall@1", "recall@2", "recall@5", "median_rank", "mAP")}
    perms = list(itertools.permutations(range(7)))
    per_q_rank = np.zeros(2)
    for p in perms:
        want, _ = _brute(rel[:, p], scores[:, p], (1, 2, 5))
        for k in acc:
            acc[k] += want[k] / len(perms)
        for q in range(2):
            per_q_rank[q] += _brute(rel[q:q + 1, p], scores[q:q + 1, p], (1,))[0]["median_rank"] / len(perms)
    got = R.retrieval_metrics(rel, scores, ks=(1, 2, 5))
    for k in ("recall@1", "recall@2", "recall@5", "mAP"):
        assert got[k] == pytest.approx(acc[k], abs=1e-9), k
    ranks, _ = R.rank_statistics(rel, scores)
    np.testing.assert_allclose(ranks, per_q_rank, atol=1e-9)  # expected first rank per query


def test_permuting_the_gallery_changes_nothing_with_ties():
    rng = np.random.default_rng(5)
    scores = np.round(rng.normal(size=(20, 60)), 0)  # heavy ties
    rel = R.same_label(rng.integers(0, 3, 20), rng.integers(0, 3, 60))
    base = R.retrieval_metrics(rel, scores, ks=(1, 5))
    for seed in range(3):
        p = np.random.default_rng(seed).permutation(60)
        got = R.retrieval_metrics(rel[:, p], scores[:, p], ks=(1, 5))
        for k, v in base.items():
            assert got[k] == pytest.approx(v, abs=1e-12), k
