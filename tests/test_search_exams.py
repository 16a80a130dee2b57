"""search_run finds k distinct exams even when one exam has more than 8 images per wanted exam (issue 22)."""

import numpy as np
import pandas as pd

import mammolens.search as search
from mammolens.search import IndexCfg, VectorIndex


def test_search_run_finds_k_exams_past_an_exam_with_many_images(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    q = np.zeros((1, 8), np.float32)
    q[0, 0] = 1.0
    near = q + 0.01 * rng.normal(size=(30, 8)).astype(np.float32)  # exam A: 30 images, all nearest
    far = np.concatenate([q * 0.5 + 0.3 * rng.normal(size=(5, 8)), -q + 0.3 * rng.normal(size=(5, 8))]).astype(np.float32)
    x = np.concatenate([near, far])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    keys = pd.DataFrame({"exam": ["A"] * 30 + ["B"] * 5 + ["C"] * 5, "patient": "p", "laterality": "L",
                         "view": "CC", "modality": "DM"})
    index = VectorIndex.build(x, IndexCfg(kind="exact"))
    monkeypatch.setattr(search, "load_run_index", lambda d: (index, keys, {}))
    monkeypatch.setattr(search, "_query_embedding", lambda *a: q)
    hits = search.search_run(tmp_path, text="x", index_dir=tmp_path, k=3, device="cpu")
    assert hits["exam"].tolist() == ["A", "B", "C"]  # 8 x k = 24 images held exam A only
    assert hits["rank"].tolist() == [1, 2, 3]
    assert search.search_run(tmp_path, text="x", index_dir=tmp_path, k=10, device="cpu")["exam"].nunique() == 3
