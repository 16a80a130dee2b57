import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mammolens.train import load_run, predict_cache, train
from mammolens.train.config import cfg_from_dict
from mammolens.train.loop import load_checkpoint, split_rows

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


def _lines(run_dir):
    return [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_run_files_and_loss_decreases(cache_dir, tmp_path):
    run = train(_cfg(cache_dir, tmp_path / "run", epochs=3, lr=2e-3, augment=True))
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    lines = _lines(run)
    assert [ln["epoch"] for ln in lines] == [1, 2, 3]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    for key in ("lr", "val_macro_auc", "val_balanced_accuracy", "val_recall_A", "images_per_s", "epoch_time_s"):
        assert key in lines[0]
    assert lines[-1]["lr"] < lines[0]["lr"]  # cosine decay
    ck = load_checkpoint(run, "last")
    for key in ("model_name", "model_kwargs", "state_dict", "task", "preprocess", "epoch", "step", "optimizer",
                "scheduler", "scaler", "rng", "best_metric", "cfg"):
        assert key in ck, key
    assert ck["epoch"] == 3 and ck["step"] == lines[-1]["step"]
    assert ck["preprocess"]["size"] == 64


def test_train_refuses_to_overwrite_a_run(cache_dir, tmp_path):
    train(_cfg(cache_dir, tmp_path / "run", epochs=1))
    with pytest.raises(FileExistsError, match="resume=true"):
        train(_cfg(cache_dir, tmp_path / "run", epochs=1))


def test_train_resume_is_bit_identical(cache_dir, tmp_path):
    full = train(_cfg(cache_dir, tmp_path / "full", epochs=3, augment=True))
    part = train(_cfg(cache_dir, tmp_path / "part", epochs=3, augment=True), stop_after=1)
    assert load_checkpoint(part, "last")["epoch"] == 1
    part = train(_cfg(cache_dir, tmp_path / "part", epochs=3, augment=True, resume=True))
    a, b = load_checkpoint(full, "last")["state_dict"], load_checkpoint(part, "last")["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop = ("images_per_s", "epoch_time_s")
    la = [{k: v for k, v in ln.items() if k not in drop} for ln in _lines(full)]
    lb = [{k: v for k, v in ln.items() if k not in drop} for ln in _lines(part)]
    assert la == lb


def test_train_early_stopping_triggers(cache_dir, tmp_path):
    # lr 0: the validation AUC can never improve after epoch 1, so patience 1 stops after epoch 2
    run = train(_cfg(cache_dir, tmp_path / "es", epochs=6, lr=0.0, min_lr=0.0, patience=1))
    summary = json.loads((run / "summary.json").read_text())
    assert [ln["epoch"] for ln in _lines(run)] == [1, 2]
    assert summary["stopped_early"] is True and summary["best_epoch"] == 1


def test_split_rows_patients_disjoint_and_modality_filter(cache_dir):
    from mammolens.data.cache import open_cache
    from mammolens.tasks import get_task

    cache = open_cache(cache_dir)
    labels = get_task("density").encode(cache.index["density"])
    cfg = _cfg(cache_dir, "unused", data={"cache": str(cache_dir), "val_frac": 0.25, "modalities": ["DM"]})
    tr, va = split_rows(cache.index, np.asarray(labels), cfg)
    pid = cache.index["patient_id"].to_numpy()
    assert len(tr) and len(va)
    assert not set(pid[tr]) & set(pid[va])
    assert set(cache.index["modality"].iloc[np.concatenate([tr, va])]) == {"DM"}


def test_load_run_predicts_probabilities(cache_dir, tmp_path):
    from mammolens.data.dataset import MammoDataset

    run = train(_cfg(cache_dir, tmp_path / "run", epochs=1))
    model, task, cfg = load_run(run)
    assert task.name == "density" and cfg.model == "tiny-clip"
    probs = predict_cache(model, task, MammoDataset(str(cache_dir), task, rows=np.arange(10)), batch_size=4)
    assert probs.shape == (10, 4)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
