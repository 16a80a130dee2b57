import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mammolens.train import load_run, predict_cache, train
from mammolens.train.loop import load_checkpoint, split_rows

from _train_helpers import _cfg, _cohort_cache, cache_dir  # noqa: F401  (fixture)


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
    drop = ("images_per_s", "epoch_time_s", "data_wait_s", "data_wait_frac")  # timings
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


@pytest.mark.parametrize("method", ["contrastive", "linear-probe"])
def test_train_checkpoints_are_plain_data(cache_dir, tmp_path, method):
    """Checkpoints load with plain ``torch.load(weights_only=True)`` (no allow-list): RNG states as lists/tensors."""
    run = train(_cfg(cache_dir, tmp_path / "run", epochs=1, method=method))
    for name in ("last.pt", "best.pt"):
        ck = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert isinstance(ck["rng"]["numpy"][1], list) and len(ck["rng"]["numpy"][1]) == 624
        assert isinstance(ck["rng"]["torch"], torch.Tensor)


def test_train_resume_refuses_a_checkpoint_that_runs_code(cache_dir, tmp_path):
    marker = tmp_path / "pwned"

    class WritesMarker:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}, "payload": WritesMarker()}, tmp_path / "run" / "checkpoints" / "last.pt")
    with pytest.raises(ValueError, match="last.pt holds objects other than tensors and plain data"):
        train(_cfg(cache_dir, tmp_path / "run", epochs=1, resume=True))
    assert not marker.exists()


def test_train_cli_prints_epoch_lines(cache_dir, tmp_path):
    import re

    import yaml
    from typer.testing import CliRunner

    from mammolens.cli import app

    cfg = _cfg(cache_dir, tmp_path / "run", epochs=2, max_steps_per_epoch=2, ood=False)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "cfg.yaml")])
    assert result.exit_code == 0, result.output
    pattern = r"epoch {}/2  loss \d+\.\d{{4}}  val macro AUC (\d\.\d{{4}}|n/a)  elapsed \d+:\d\d:\d\d  ETA \d+:\d\d:\d\d"
    for epoch in (1, 2):
        assert re.search(pattern.format(epoch), result.output), result.output
    assert "ETA 0:00:00" in result.output  # nothing left after the last epoch


def test_train_progress_false_is_quiet(cache_dir, tmp_path, capsys):
    train(_cfg(cache_dir, tmp_path / "run", epochs=1, max_steps_per_epoch=1, ood=False), progress=False)
    captured = capsys.readouterr()
    assert "epoch 1/1" not in captured.err + captured.out


def test_failed_train_leaves_no_run_folder_bad_cache(tmp_path):
    cfg = _cfg(tmp_path / "no-such-cache", tmp_path / "runs" / "run", epochs=1)
    with pytest.raises(FileNotFoundError, match="not a cache folder"):
        train(cfg, progress=False)
    assert not (tmp_path / "runs").exists()  # nor the parent it made


@pytest.mark.parametrize("failure", ["nan", "interrupt"])
def test_failed_train_leaves_no_run_folder(cache_dir, tmp_path, monkeypatch, failure):
    import mammolens.losses as losses

    real = losses.weighted_contrastive_loss

    def broken(*args, **kwargs):
        if failure == "interrupt":
            raise KeyboardInterrupt
        out = real(*args, **kwargs)  # the loss, or (loss, per-row losses) for the adaptive weights
        return (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else out * float("nan")

    monkeypatch.setattr(losses, "weighted_contrastive_loss", broken)
    with pytest.raises(KeyboardInterrupt if failure == "interrupt" else ValueError,
                       match=None if failure == "interrupt" else "diverged: the loss is nan in epoch 1"):
        train(_cfg(cache_dir, tmp_path / "run", epochs=2, max_steps_per_epoch=2, ood=False), progress=False)
    assert not (tmp_path / "run").exists()


def test_failed_train_keeps_folders_it_did_not_make_and_finished_epochs(cache_dir, tmp_path, monkeypatch):
    import mammolens.losses as losses

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileNotFoundError):
        train(_cfg(tmp_path / "no-such-cache", tmp_path / "mine", epochs=1), progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"

    # interrupted in epoch 2: epoch 1's checkpoint stays, and resume=true finishes the run
    real, calls = losses.weighted_contrastive_loss, []

    def interrupted_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(losses, "weighted_contrastive_loss", interrupted_in_epoch_2)
    cfg = _cfg(cache_dir, tmp_path / "run", epochs=2, max_steps_per_epoch=2, ood=False)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    assert load_checkpoint(tmp_path / "run", "last")["epoch"] == 1
    monkeypatch.setattr(losses, "weighted_contrastive_loss", real)
    run = train(_cfg(cache_dir, tmp_path / "run", epochs=2, max_steps_per_epoch=2, ood=False, resume=True),
                progress=False)
    assert [ln["epoch"] for ln in _lines(run)] == [1, 2]
