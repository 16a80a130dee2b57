import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammolens.train import cross_validate
from mammolens.train.config import cfg_from_dict

def _cohort_cache(tmp_path_factory) -> Path:
    """A 16-patient synthetic cohort cached at 64 px, built once per test session."""
    from mammolens.data.cache import PreprocessCfg, build_cache
    from mammolens.data.synthetic import make_cohort

    root = tmp_path_factory.getbasetemp() / "train_cohort"
    cache = root / "cache"
    if not (cache / "cache.json").is_file():
        make_cohort(root, n_patients=16, seed=0, image_size=(96, 80), dbt_frames=4, density_probs=[0.25] * 4)
        build_cache(root / "manifest.parquet", cache, PreprocessCfg(size=64), workers=0, progress=False)
    return cache


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return _cohort_cache(tmp_path_factory)


def _cfg(cache_dir, out, **kw):
    base = dict(data=dict(cache=str(cache_dir), val_frac=0.25), task="density", model="tiny-clip", image_size=64,
                method="contrastive", epochs=2, batch_size=8, lr=1e-3, weight_decay=0.0, warmup_steps=1,
                precision="fp32", augment=False, workers=0, seed=0, out_dir=str(out), device="cpu")
    base.update(kw)
    return cfg_from_dict(base)


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
