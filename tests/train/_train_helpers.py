"""Shared by the training tests: one small synthetic cohort cache per session and a config factory."""

from pathlib import Path

import pytest

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
