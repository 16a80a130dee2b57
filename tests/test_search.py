"""Tests for mammolens.search: exact and approximate indexes, a run's index, search by text and image."""

import json

import numpy as np
import pandas as pd
import pytest

from _app_fixtures import app_env  # noqa: F401 — session fixture
from mammolens.search import IndexCfg, VectorIndex, build_run_index, load_run_index, search_run


def _unit(rng, n, d=32):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_index_matches_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    x, q = _unit(rng, 500), _unit(rng, 20)
    idx = VectorIndex.build(x, IndexCfg(kind="exact"))
    scores, ids = idx.search(q, k=7)
    want = np.argsort(-(q @ x.T), axis=1)[:, :7]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, want, axis=1), rtol=1e-5)
    idx.save(tmp_path)
    again = VectorIndex.load(tmp_path, IndexCfg(kind="exact"), 32)
    np.testing.assert_array_equal(again.search(q, k=7)[1], ids)
    with pytest.raises(ValueError, match="dimension 5"):
        idx.search(np.ones((1, 5)), k=3)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_recall(kind, tmp_path):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    x, q = _unit(rng, 2000), _unit(rng, 50)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    idx = VectorIndex.build(x, IndexCfg(kind=kind, nprobe=32))
    _, ids = idx.search(q, k=10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert recall >= 0.9
    idx.save(tmp_path)
    _, ids2 = VectorIndex.load(tmp_path, IndexCfg(kind=kind, nprobe=32), 32).search(q, k=10)
    np.testing.assert_array_equal(ids2, ids)


def test_index_cfg_rejects_unknown_kind():
    with pytest.raises(ValueError, match="exact"):
        IndexCfg(kind="annoy")


@pytest.fixture(scope="module")
def run_index(app_env, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("idx") / "index"
    res = build_run_index(app_env.run, app_env.cache, out=out, device="cpu")
    return res, out


def test_build_run_index_stores_pseudonyms_only(run_index, app_env):  # noqa: F811
    res, out = run_index
    assert res["n"] == 48 and res["kind"] == "exact" and {p.name for p in out.iterdir()} == {
        "index.json", "keys.parquet", "vectors.npy"}
    keys = pd.read_parquet(out / "keys.parquet")
    assert keys["exam"].str.startswith("study-").all() and keys["exam"].nunique() == app_env.df["study_id"].nunique()
    text = (out / "index.json").read_text() + keys.to_csv()
    assert "SYN" not in text and str(app_env.root) not in text
    assert not any(v in text for v in set(app_env.df["patient_id"]) | set(app_env.df["study_id"]))
    meta = json.loads((out / "index.json").read_text())
    assert meta["run"] == app_env.run.name and meta["n"] == 48


def test_search_run_by_image_finds_its_own_exam(run_index, app_env):  # noqa: F811
    from mammolens.privacy import pseudonym

    _, out = run_index
    row = app_env.df.iloc[5]
    hits = search_run(app_env.run, image=app_env.cohort / row["image_path"], index_dir=out, k=3, device="cpu")
    assert list(hits["rank"]) == [1, 2, 3] and hits["exam"].is_unique
    assert hits["exam"].iloc[0] == pseudonym(row["study_id"], "study")  # the image itself is in the index
    assert hits["score"].iloc[0] == pytest.approx(1.0, abs=1e-3) and hits["score"].is_monotonic_decreasing


def test_search_run_by_text(run_index, app_env):  # noqa: F811
    _, out = run_index
    hits = search_run(app_env.run, text="spiculated mass upper outer quadrant", index_dir=out, k=4, device="cpu")
    vindex, keys, _ = load_run_index(out)
    assert len(hits) == 4 and set(hits["exam"]) <= set(keys["exam"]) and hits["score"].is_monotonic_decreasing
    with pytest.raises(ValueError, match="exactly one query"):
        search_run(app_env.run, index_dir=out)
