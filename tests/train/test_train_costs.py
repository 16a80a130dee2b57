"""What the loop does beyond the plain step, and how it keeps it cheap (issue 19): the validation schedule,
checkpoints written in the background (``best.pt`` a link of its epoch's ``last.pt``), the weights file for
inference, the fused optimizer, the hand-written peer the benchmark compares with."""

import json
import os

import torch

from mammolens.run import RunFolder, load_checkpoint, load_run, read_checkpoint
from mammolens.train.loop import _optimizer, _snapshot, train

from _train_helpers import _cfg, cache_dir  # noqa: F401  (fixture)


def _lines(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln]


def test_val_every_validates_on_schedule_and_the_last_epoch(cache_dir, tmp_path):  # noqa: F811
    run = train(_cfg(cache_dir, tmp_path / "run", epochs=3, val_every=2), progress=False)
    lines = _lines(run)
    assert ["val_macro_auc" in ln for ln in lines] == [False, True, True]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] in (2, 3)  # an unvalidated epoch is never the best
    assert read_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == summary["best_epoch"]


def test_checkpoints_best_link_and_weights_file_after_training(cache_dir, tmp_path):  # noqa: F811
    run = train(_cfg(cache_dir, tmp_path / "run", epochs=2), progress=False)
    folder = RunFolder(run)
    best, last = folder.checkpoint("best"), folder.checkpoint("last")
    best_epoch = json.loads((run / "summary.json").read_text())["best_epoch"]
    assert read_checkpoint(best)["epoch"] == best_epoch
    if best_epoch == 2:
        assert os.path.samefile(best, last)  # one write for both
    w = read_checkpoint(folder.weights("best"))
    assert "optimizer" not in w and "rng" not in w and w["epoch"] == best_epoch
    full = load_checkpoint(run, "best")
    for k, v in full["state_dict"].items():
        assert torch.equal(v, w["state_dict"][k]), k
    assert full["optimizer"]["state"]  # resume keeps everything
    model = load_run(run).model  # reads the weights file
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
    assert not list(folder.checkpoints.glob("*.tmp")) and not list(folder.checkpoints.glob("*.lnk"))


def test_snapshot_copies_tensors_so_training_can_go_on():
    live = {"w": torch.zeros(3), "opt": {"state": {0: {"m": torch.ones(2)}}, "groups": [{"lr": 1.0}]}, "n": 1}
    snap = _snapshot(live)
    live["w"].add_(1)
    live["opt"]["state"][0]["m"].mul_(5)
    assert torch.equal(snap["w"], torch.zeros(3)) and torch.equal(snap["opt"]["state"][0]["m"], torch.ones(2))
    assert snap["opt"]["groups"] == [{"lr": 1.0}] and snap["n"] == 1


def test_the_optimizer_is_fused_on_the_cpu(cache_dir, tmp_path):  # noqa: F811
    module = torch.nn.Linear(3, 2)
    opt = _optimizer(module, _cfg(cache_dir, tmp_path), torch.device("cpu"))
    assert opt.defaults.get("fused") is True


def test_the_hand_written_peer_trains_the_same_model(cache_dir, tmp_path):  # noqa: F811
    from mammolens.bench.train_peer import peer_train

    rec = peer_train(cache_dir, epochs=1, out=tmp_path, batch_size=8)
    assert rec["seconds"] > 0 and rec["steady_images_per_s"] > 0 and (tmp_path / "weights.pt").is_file()
    assert rec["val_macro_auc"] is None or 0.0 <= rec["val_macro_auc"] <= 1.0


def test_background_checkpoint_writes_give_the_same_checkpoint(cache_dir, tmp_path, monkeypatch):  # noqa: F811
    import mammolens.train.loop as loop

    sync = train(_cfg(cache_dir, tmp_path / "sync", epochs=2, ood=False), progress=False)
    monkeypatch.setattr(loop, "BACKGROUND_CHECKPOINTS", True)
    bg = train(_cfg(cache_dir, tmp_path / "bg", epochs=2, ood=False), progress=False)
    a, b = load_checkpoint(sync, "last"), load_checkpoint(bg, "last")
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert read_checkpoint(RunFolder(bg).checkpoint("best"))["epoch"] == read_checkpoint(
        RunFolder(sync).checkpoint("best"))["epoch"]
