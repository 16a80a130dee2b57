"""The retrieval benchmark at a toy size: exact is its own reference, the approximate kinds are close."""

import pytest

from mammolens.bench.retrieval import bench_retrieval, main


def test_bench_retrieval_small(capsys):
    pytest.importorskip("faiss")
    rows = bench_retrieval(sizes=(3000,), dim=32, n_queries=20, kinds=("ivf", "hnsw"), cfg={"nprobe": 16})
    assert [r["kind"] for r in rows] == ["exact", "ivf", "hnsw"]
    assert rows[0]["recall@10"] == 1.0
    for r in rows[1:]:
        assert 0.8 <= r["recall@10"] <= 1.0 and r["latency_ms_median"] > 0 and r["n"] == 3000
    main(["--sizes", "500", "--dim", "16", "--queries", "5", "--kinds", "ivf"])
    assert capsys.readouterr().out.count('"kind"') == 2
