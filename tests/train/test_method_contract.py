"""The run contract, for every training method in ``list_methods()`` (the way timm tests every registered
model): it trains two steps on the synthetic cohort, the run loads in ``Predictor`` and ``evaluate``, and an
interrupted run resumed with ``resume=true`` is bit-identical to an uninterrupted one (weights, method state,
metrics), on CPU with a fixed seed.

One-shot methods (``zeroshot``, ``linear-probe``) have no epoch loop and so nothing to resume: for them
only training and loading are tested.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mammolens.train import train
from mammolens.train.loop import load_checkpoint
from mammolens.train.methods import get_method, list_methods

from _run_fixtures import OLD_METHODS, old_run
from _train_helpers import _cfg, _cohort_cache, cache_dir  # noqa: F401  (fixture)

# what a method needs beyond the defaults to exercise all it owns (attention pooling has weights)
EXTRA = {"report-contrastive": {"batch_size": 4}}
METHOD_EXTRA = {"report-contrastive": {"pooling": "attention"},
                # small heads; the distillation terms need a teacher run (tests/train/test_distill.py has one)
                "pretrain": {"pretrain": {"out_dim": 64, "patch_out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 32,
                                          "local_crops": 2, "probe_max_images": 32}},
                "distill": {"terms": {"cosine": 0.0, "similarity": 0.0}, "distill": {"tasks": ["dense"]}}}
# methods with modalities also run with the adaptive modality weights (a state of their own)
ADAPTIVE = ("contrastive",)
CASES = [(m, "fixed") for m in list_methods()] + [(m, "adaptive") for m in ADAPTIVE]
TIMINGS = ("images_per_s", "epoch_time_s", "data_wait_s", "data_wait_frac")


def _contract_cfg(cache_dir, out, method, weighting, **kw):  # noqa: F811
    section = {"name": method, "modality_weighting": weighting, **METHOD_EXTRA.get(method, {})}
    base = dict(method=section, epochs=2, max_steps_per_epoch=1, ood=False, probe_steps=5)
    base.update(EXTRA.get(method, {}))
    base.update(kw)
    return _cfg(cache_dir, out, **base)


def _lines(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(ln).items() if k not in TIMINGS}
            for ln in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same(a, b, where: str = "") -> None:
    """Recursive exact equality of checkpoint values (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: {sorted(a)} != {sorted(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _loads_in_predictor_and_evaluate(run: Path, cache_dir, tmp_path) -> None:  # noqa: F811
    from mammolens.data.cache import open_cache
    from mammolens.inference import Predictor
    from mammolens.workflows import evaluate_run

    ck = load_checkpoint(run, "best")
    k = len(ck["task"]["class_names"])
    assert ck["format"] == 1 and ck["primary_head"] in ck["heads"]
    assert set(ck["method_state"]) >= ({"head"} if ck["heads"][ck["primary_head"]]["kind"] == "linear" else set())
    assert ck["lineage"]["cache"]["fingerprint"] and ck["lineage"]["config_hash"]

    pred = Predictor.from_run(run, device="cpu", workers=0)
    probs = pred.predict_tensor(torch.rand(2, 1, 64, 64))
    assert probs.shape == (2, k) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    index = open_cache(cache_dir).index
    files = [Path(p) if Path(p).is_absolute() else cache_dir.parent / p for p in index["image_path"].iloc[:2]]
    res = pred.predict(files)
    assert len(res.images) == 2 and set(res.images["pred"]) <= set(ck["task"]["class_names"])

    out = evaluate_run(run, cache_dir, out=tmp_path / "eval", n_boot=10, gallery_per_class=0, workers=0,
                       device="cpu", progress=False)
    assert out["n_images"] > 0 and 0.0 <= out["metrics"]["auc_macro"] <= 1.0


@pytest.mark.parametrize("method, weighting", CASES)
def test_method_trains_loads_and_resumes_bit_identically(cache_dir, tmp_path, method, weighting):  # noqa: F811
    full = train(_contract_cfg(cache_dir, tmp_path / "full", method, weighting), progress=False)
    _loads_in_predictor_and_evaluate(full, cache_dir, tmp_path)
    if get_method(method).one_shot:  # fitted once: no epochs, nothing to resume
        assert [ln["epoch"] for ln in _lines(full)] == [1]
        return

    assert [ln["step"] for ln in _lines(full)] == [1, 2]  # two optimizer steps
    part = train(_contract_cfg(cache_dir, tmp_path / "part", method, weighting), stop_after=1, progress=False)
    assert load_checkpoint(part, "last")["epoch"] == 1
    part = train(_contract_cfg(cache_dir, tmp_path / "part", method, weighting, resume=True), progress=False)

    a, b = load_checkpoint(full, "last"), load_checkpoint(part, "last")
    for key in ("state_dict", "heads", "method_state", "optimizer", "scheduler", "epoch", "step", "best_metric"):
        _assert_same(a[key], b[key], key)
    assert _lines(full) == _lines(part)


def test_the_contract_sees_the_state_it_protects(cache_dir, tmp_path):  # noqa: F811
    """The method states compared above are not trivially equal: attention pooling and adaptive weights move."""
    run = train(_contract_cfg(cache_dir, tmp_path / "report", "report-contrastive", "fixed", epochs=1),
                progress=False)
    pool = load_checkpoint(run, "last")["method_state"]["pool"]
    assert pool["score.weight"].abs().sum() > 0  # started at zero (the plain mean)
    run = train(_contract_cfg(cache_dir, tmp_path / "adaptive", "contrastive", "adaptive", epochs=1),
                progress=False)
    state = load_checkpoint(run, "last")["method_state"]["adaptive_modality_weights"]
    assert not np.isnan(state["running"]).all() and state["weights"] != [1.0] * len(state["weights"])


@pytest.mark.parametrize("method", OLD_METHODS)
def test_run_folders_of_the_old_format_load_unchanged(cache_dir, tmp_path, method):  # noqa: F811
    """Folders written before heads/method state existed (tests/fixtures/runs_v0) predict, evaluate and
    verify as before: one head of the old kind, the same class count."""
    from mammolens.run import load_run, verify_run

    run = old_run(method, tmp_path / method)
    ck = load_checkpoint(run, "best")
    assert "heads" not in ck and "format" not in ck  # really the old format
    loaded = load_run(run)
    kind = "linear" if ck.get("head_state_dict") is not None else "prompt"
    assert loaded.model.primary_head.kind == kind and loaded.model.num_classes == len(ck["task"]["class_names"])
    assert loaded.lineage is None and verify_run(run)["heads"] == {loaded.model.primary: {"kind": kind,
                                                                                        "task": loaded.task.name}}
    from mammolens.inference import Predictor
    from mammolens.workflows import evaluate_run

    probs = Predictor.from_run(run, device="cpu", workers=0).predict_tensor(torch.rand(2, 1, 64, 64))
    assert probs.shape == (2, loaded.model.num_classes)
    out = evaluate_run(run, cache_dir, out=tmp_path / "eval", n_boot=10, gallery_per_class=0, workers=0,
                       device="cpu", progress=False)
    assert out["n_images"] > 0
