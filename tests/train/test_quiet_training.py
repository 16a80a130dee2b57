"""A training run prints its epoch lines and nothing else: no UserWarning (issue 21: a `requires_grad` warning
was printed on every run), for every method, with and without gradient checkpointing."""

import warnings

import pytest

from mammolens.train import train

from _train_helpers import _cfg, _cohort_cache, cache_dir  # noqa: F401  (fixture)


@pytest.mark.parametrize("kw", [dict(method="contrastive", grad_checkpointing=True), dict(method="finetune-ce"),
                                dict(method="linear-probe"), dict(method="report-contrastive")],
                         ids=lambda kw: kw["method"] + ("+ckpt" if kw.get("grad_checkpointing") else ""))
def test_training_emits_no_warning(cache_dir, tmp_path, kw):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train(_cfg(cache_dir, tmp_path / "run", epochs=1, max_steps_per_epoch=2, **kw), progress=False)
    shown = [f"{w.category.__name__}: {w.message}" for w in seen
             if issubclass(w.category, UserWarning) and not issubclass(w.category, DeprecationWarning)]
    assert not shown, shown
