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
    assert sum(f["n_val"] for f in saved["folds"]) == 64
    assert 0.0 <= saved["pooled"]["macro_auc"] <= 1.0


def test_cross_validate_rejects_one_fold(cache_dir, tmp_path):
    with pytest.raises(ValueError, match="k >= 2"):
        cross_validate(_cfg(cache_dir, tmp_path / "cv"), k=1)
