import json

import numpy as np
import pandas as pd
import pytest

from mammolens.train import cross_validate

from _train_helpers import _cfg, _cohort_cache, cache_dir  # noqa: F401  (fixture)


def test_cross_validate_folds_disjoint_by_patient(cache_dir, tmp_path):
    res = cross_validate(_cfg(cache_dir, tmp_path / "cv", epochs=1), k=3)
    out = tmp_path / "cv"
    assert sorted(p.name for p in out.glob("fold_*")) == ["fold_0", "fold_1", "fold_2"]
    for i in range(3):
        assert (out / f"fold_{i}" / "checkpoints" / "best.pt").is_file()
    saved = json.loads((out / "cv_metrics.json").read_text())
    assert saved["k"] == 3 and len(saved["folds"]) == 3
    assert set(saved["mean_sd"]["macro_auc"]) == {"mean", "sd", "n"}
    oof = pd.read_parquet(out / "oof_predictions.parquet")
    assert len(oof) == res["n_images"] == 64
    assert oof.groupby("patient_id")["fold"].nunique().max() == 1  # no patient in two folds
    assert set(oof["fold"]) == {0, 1, 2}
    probs = oof[[c for c in oof.columns if c.startswith("prob_")]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert sum(f["n_test"] for f in saved["folds"]) == 64
    assert all(f["n_val"] > 0 and f["run_dir"] == f"fold_{f['fold']}" for f in saved["folds"])
    assert oof["patient_id"].str.match(r"^patient-[0-9a-f]{16}$").all()  # keyed pseudonyms only
    assert 0.0 <= saved["pooled"]["macro_auc"] <= 1.0


def test_cross_validate_rejects_one_fold(cache_dir, tmp_path):
    with pytest.raises(ValueError, match="k >= 2"):
        cross_validate(_cfg(cache_dir, tmp_path / "cv"), k=1)


def test_cross_validate_never_selects_on_the_test_fold(cache_dir, tmp_path, monkeypatch):
    """Nested CV: the rows that choose the checkpoint come from the training folds, never the test fold."""
    import mammolens.train.loop as loop

    seen = []
    real_train = loop.train

    def spy(cfg, rows=None, **kw):
        seen.append(tuple(np.asarray(r) for r in rows))
        return real_train(cfg, rows=rows, **kw)

    monkeypatch.setattr(loop, "train", spy)
    cross_validate(_cfg(cache_dir, tmp_path / "cv", epochs=1), k=3)
    oof = pd.read_parquet(tmp_path / "cv" / "oof_predictions.parquet")
    roles = pd.read_parquet(tmp_path / "cv" / "cv_rows.parquet")
    assert list(roles.columns) == ["cache_row", "patient", "fold", "role"]
    assert roles["patient"].str.match(r"^patient-[0-9a-f]{16}$").all()
    assert len(seen) == 3
    for i, (train_rows, val_rows) in enumerate(seen):
        test_rows = roles.query("fold == @i and role == 'test'")["cache_row"].to_numpy()
        assert len(val_rows) > 0 and not set(val_rows) & set(test_rows)
        assert not set(train_rows) & set(test_rows) and not set(train_rows) & set(val_rows)
        assert set(val_rows) == set(roles.query("fold == @i and role == 'val'")["cache_row"])
        assert len(test_rows) == int((oof["fold"] == i).sum())
        # patient-grouped: no patient in two roles of one fold
        fold = roles[roles["fold"] == i]
        assert fold.groupby("patient")["role"].nunique().max() == 1
