"""Inference reads the weights, never the resume state: ``best.weights.pt`` beside the checkpoint, both
memory-mapped; ``best.pt`` is a hard link of the epoch's ``last.pt``; resume still reads everything."""

import json
import os
import subprocess
import sys

import torch

from mammolens.models import create_model
from mammolens.run import RunFolder, load_checkpoint, load_run, read_checkpoint
from mammolens.run.folder import RESUME_KEYS
from mammolens.run.model import PromptHead, head_specs
from mammolens.tasks import resolve_task, task_dict

BIG = 96 * 2**20 // 4  # float32 values of a 96 MiB optimizer state (tiny-clip's weights are ~14 MiB)


def _write_run(root, optimizer_bytes: int = BIG, best: bool = True):
    torch.manual_seed(0)
    clip = create_model("tiny-clip", image_size=64).eval()
    task = resolve_task("density")
    ck = {"format": 1, "model_name": "tiny-clip", "model_kwargs": dict(clip.model_kwargs), "state_dict": clip.state_dict(),
          "task": task_dict(task), "heads": head_specs({"density": PromptHead.build(clip, task)}),
          "primary_head": "density", "method": "contrastive", "method_state": {}, "preprocess": {"size": 64},
          "optimizer": {"state": {0: {"exp_avg": torch.ones(optimizer_bytes)}}, "param_groups": []},
          "scheduler": {"last_epoch": 3}, "scaler": {}, "rng": {"torch": torch.get_rng_state()}, "epoch": 3}
    folder = RunFolder(root)
    folder.save_checkpoint(ck, best=best)
    return clip, folder


def test_weights_file_leaves_out_the_resume_state_and_loads_the_same_model(tmp_path):
    clip, folder = _write_run(tmp_path / "run")
    assert os.path.samefile(folder.checkpoint("best"), folder.checkpoint("last"))  # a link, not a second write
    before = load_run(tmp_path / "run").model  # from best.pt (no weights file yet), memory-mapped
    path = folder.write_weights("best")
    w = read_checkpoint(path)
    assert not set(RESUME_KEYS) & set(w) and w["epoch"] == 3 and "state_dict" in w
    assert path.stat().st_size < folder.checkpoint("best").stat().st_size / 4
    after = load_run(tmp_path / "run").model
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(after(x), before(x))
        torch.testing.assert_close(after(x), PromptHead.build(clip, resolve_task("density"))(
            {"embedding": clip.encode_image(x), "scale": clip.logit_scale}))
    full = load_checkpoint(tmp_path / "run", "last")  # what resume reads: everything
    assert full["optimizer"]["state"][0]["exp_avg"].numel() == BIG and full["scheduler"] == {"last_epoch": 3}


def test_a_new_best_epoch_removes_the_stale_weights_file(tmp_path):
    _, folder = _write_run(tmp_path / "run", optimizer_bytes=10)
    folder.write_weights("best")
    ck = load_checkpoint(tmp_path / "run", "last")
    ck["epoch"] = 4
    folder.save_checkpoint(ck, best=False)  # not a better epoch: best.pt and its weights stay
    assert folder.weights("best").is_file() and read_checkpoint(folder.checkpoint("best"))["epoch"] == 3
    folder.save_checkpoint(ck, best=True)
    assert not folder.weights("best").exists() and read_checkpoint(folder.checkpoint("best"))["epoch"] == 4


_PEAK = """
import json, resource, sys, time
import torch
from mammolens.models import create_model
create_model("tiny-clip", image_size=64)  # the model build's own memory, before the clock
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
from mammolens.run import load_run
load_run(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "peak_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))
"""


def test_loading_a_run_with_a_large_optimizer_state_costs_neither_time_nor_memory(tmp_path):
    """A 96 MiB optimizer state in best.pt (no weights file: an older run): the load maps the file and reads the
    weights' pages only, so the process grows by far less than the file (a whole read: > 96 MiB)."""
    _write_run(tmp_path / "run")
    size_mib = (tmp_path / "run" / "checkpoints" / "best.pt").stat().st_size / 2**20
    out = subprocess.run([sys.executable, "-c", _PEAK, str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert size_mib > 100 and rec["peak_mib"] < 60, (size_mib, rec)
