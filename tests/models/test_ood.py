"""Tests for mammolens.models.ood (training-embedding distribution, out-of-distribution score)."""

import json

import numpy as np
import pytest

from mammolens.models.ood import OOD_FILE, fit_ood, load_ood


def _normed(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _cluster(n, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centre = np.zeros(d)
    centre[0] = 1.0
    return _normed(centre + 0.05 * rng.standard_normal((n, d)))


def test_fit_ood_in_distribution_passes_far_points_flagged():
    model = fit_ood(_cluster(400), rank=8)
    new = model.score(_cluster(200, seed=1))  # same distribution, unseen
    assert np.mean(new <= model.threshold) >= 0.97
    rng = np.random.default_rng(2)
    far = _normed(rng.standard_normal((50, 32)))  # random directions on the sphere
    assert (model.score(far) > model.threshold).all()
    assert model.info["rank"] == 8 and model.info["n"] == 400 and model.info["dim"] == 32


def test_fit_ood_flags_points_outside_the_fitted_span():
    x = _cluster(300)
    model = fit_ood(x, rank=4)
    off = x[:5].copy()
    off[:, 31] += 1.0  # a direction the components hardly see: caught by the residual term
    assert (model.score(off) > model.threshold).all()


def test_fit_ood_few_samples_rank_is_capped():
    model = fit_ood(_cluster(5), rank=32)
    assert model.info["rank"] == 1 and np.isfinite(model.threshold) and model.threshold > 0


def test_ood_save_load_roundtrip(tmp_path):
    model = fit_ood(_cluster(50), checkpoint="best", epoch=3)
    model.save(tmp_path)
    loaded = load_ood(tmp_path)
    x = _cluster(10, seed=5)
    np.testing.assert_allclose(loaded.score(x), model.score(x))
    assert loaded.threshold == model.threshold and loaded.info["checkpoint"] == "best"
    assert json.loads(json.dumps(loaded.info))["epoch"] == 3
    with np.load(tmp_path / OOD_FILE, allow_pickle=False) as z:  # plain arrays, no pickle
        assert set(z.files) == {"mean", "components", "eigvals", "resid_scale", "threshold", "info"}
    assert load_ood(tmp_path / "missing") is None


def test_ood_bad_input_raises():
    with pytest.raises(ValueError, match=">= 2 finite embeddings"):
        fit_ood(np.zeros((1, 8)))
    with pytest.raises(ValueError, match=">= 2 finite embeddings"):
        fit_ood(np.full((4, 8), np.nan))
    with pytest.raises(ValueError, match=r"embeddings must be \[N, 32\]"):
        fit_ood(_cluster(20)).score(np.zeros((2, 7)))


def _with_object_array(run_dir, key):
    """``ood.npz`` of a fitted model with ``key`` replaced by (or added as) a pickled object array."""
    fit_ood(_cluster(50), checkpoint="best").save(run_dir)
    with np.load(run_dir / OOD_FILE, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[key] = np.array([{"evil": 1}], dtype=object)
    np.savez(run_dir / OOD_FILE, **arrays)


@pytest.mark.parametrize("key", ["info", "mean", "extra"])
def test_load_ood_refuses_object_arrays_clearly(tmp_path, key):
    from mammolens.models.ood import OODFileError

    _with_object_array(tmp_path, key)
    with pytest.raises(OODFileError, match=r"ood\.npz.*object arrays.*delete it") as e:
        load_ood(tmp_path)
    assert isinstance(e.value, ValueError)  # a user error (exit 2 in the CLI), never unpickled


def test_load_ood_refuses_missing_or_misshapen_arrays(tmp_path):
    from mammolens.models.ood import OODFileError

    np.savez(tmp_path / OOD_FILE, mean=np.zeros(3))
    with pytest.raises(OODFileError, match="missing"):
        load_ood(tmp_path)
