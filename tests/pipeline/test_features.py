"""Tests for mammolens.pipeline.features: stored, reused while run and cache match, recomputed otherwise."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from _encode_fixtures import encode_env  # noqa: F401 — session fixture

from mammolens.pipeline import encode as enc
from mammolens.pipeline import features as feat


@pytest.fixture
def counted(monkeypatch):
    n = {"batches": 0}
    real = enc.iter_encode

    def wrapper(*a, **kw):
        for res in real(*a, **kw):
            n["batches"] += 1
            yield res

    monkeypatch.setattr(enc, "iter_encode", wrapper)
    return n


def test_features_equal_embed_cache_and_are_reused(encode_env, counted, tmp_path):  # noqa: F811
    from mammolens.data.cache import open_cache
    from mammolens.models.run import load_run
    from mammolens.search import embed_cache

    env = encode_env
    rows = np.arange(6)
    a = feat.cache_features(env.run, env.cache, rows, root=tmp_path, batch_size=4)
    assert not a.reused and counted["batches"] == 2
    assert a.embeddings.shape[0] == 6 and a.embeddings.dtype == np.float32 and a.tokens is None
    assert isinstance(a.embeddings, np.memmap)  # memory-mapped from disk
    ref = embed_cache(load_run(env.run).model, open_cache(env.cache), rows)
    np.testing.assert_allclose(a.embeddings, ref, atol=1e-6)
    np.testing.assert_array_equal(a.rows, rows)
    n = counted["batches"]
    b = feat.cache_features(env.run, env.cache, rows, root=tmp_path)
    assert b.reused and counted["batches"] == n and b.path == a.path  # nothing embedded the second time
    meta = json.loads((a.path / "features.json").read_text())
    assert meta["run_name"] == env.run.name and meta["input_size"] == [64, 64]
    assert str(env.root) not in json.dumps(meta)  # names, never absolute paths
    # other rows: another key
    c = feat.cache_features(env.run, env.cache, rows[:3], root=tmp_path)
    assert not c.reused and c.path != a.path


def test_features_recomputed_when_the_checkpoint_or_cache_changes(encode_env, counted, tmp_path):  # noqa: F811
    env = encode_env
    run = tmp_path / "run"
    shutil.copytree(env.run, run)
    cache = tmp_path / "cache"
    shutil.copytree(env.cache, cache)
    a = feat.cache_features(run, cache, np.arange(4), root=tmp_path / "f")
    assert feat.cache_features(run, cache, np.arange(4), root=tmp_path / "f").reused
    ck = run / "checkpoints" / "best.pt"
    st = ck.stat()
    os.utime(ck, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a rewritten checkpoint
    b = feat.cache_features(run, cache, np.arange(4), root=tmp_path / "f")
    assert not b.reused and b.path != a.path
    meta = json.loads((cache / "cache.json").read_text())
    (cache / "cache.json").write_text(json.dumps({**meta, "last_run": {"processed": 1}}))  # a rebuilt cache
    assert not feat.cache_features(run, cache, np.arange(4), root=tmp_path / "f").reused
    assert feat.cache_features(run, cache, np.arange(4), root=tmp_path / "f", recompute=True).reused is False


def test_features_tokens_float16_and_default_root(encode_env, tmp_path):  # noqa: F811
    env = encode_env
    run = tmp_path / "run"
    shutil.copytree(env.run, run)
    f = feat.cache_features(run, env.cache, tokens=True)
    assert f.path.parent == run / "features"
    assert f.tokens.dtype == np.float16 and f.tokens.shape[:2] == (f.embeddings.shape[0], 16)
    assert feat.cache_features(run, env.cache).reused  # a set with tokens serves an embeddings-only request
    with pytest.raises(ValueError, match="no rows"):
        feat.cache_features(run, env.cache, np.array([], dtype=int))
    with pytest.raises(FileNotFoundError, match="not a finished mammolens run"):
        feat.run_fingerprint(tmp_path / "nothing")
