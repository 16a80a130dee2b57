"""The run folder: checkpoints with several heads round-trip, verify_run names what is wrong, lineage."""

import json

import pytest
import torch

from mammolens.models import create_model
from mammolens.run import RunError, RunFolder, cache_fingerprint, config_hash, lineage, load_run, verify_run
from mammolens.run.model import LinearHead, PromptHead, head_specs
from mammolens.tasks import resolve_task, task_dict


def _write_run(root, **extra):
    torch.manual_seed(0)
    clip = create_model("tiny-clip", image_size=64).eval()
    density, malignancy = resolve_task("density"), resolve_task("malignancy")
    linear = LinearHead.build(clip, malignancy)
    with torch.no_grad():
        linear.weight.mul_(2.0).add_(0.1)  # not the zero-shot initialisation: the state must be loaded
    heads = {"density": PromptHead.build(clip, density), "malignancy": linear}
    ck = {"format": 1, "model_name": "tiny-clip", "model_kwargs": dict(clip.model_kwargs),
          "state_dict": clip.state_dict(), "task": task_dict(density), "heads": head_specs(heads),
          "primary_head": "density", "method": "contrastive", "method_state": {}, "preprocess": {"size": 64},
          "lineage": lineage("tiny-clip", None, None, {"lr": 1.0})}
    ck.update(extra)
    RunFolder(root).save_checkpoint(ck, best=True)
    return clip, heads


def test_a_run_with_two_heads_loads_both(tmp_path):
    clip, heads = _write_run(tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert list(run.tasks) == ["density", "malignancy"] and run.task.name == "density"
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        out = run.model.forward_heads(x)
        emb = clip.encode_image(x)
        torch.testing.assert_close(out["malignancy"], heads["malignancy"]({"embedding": emb}))
        torch.testing.assert_close(run.model(x), heads["density"]({"embedding": emb, "scale": clip.logit_scale}))
    info = verify_run(tmp_path / "run")
    assert info["heads"] == {"density": {"kind": "prompt", "task": "density"},
                             "malignancy": {"kind": "linear", "task": "malignancy"}}
    assert info["format"] == 1 and info["lineage"]["model"] == "tiny-clip"


def test_verify_run_names_everything_missing_or_incompatible(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        verify_run(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match=r"no checkpoints/best\.pt \(nor last\.pt\).*no checkpoints"):
        verify_run(tmp_path / "empty")
    _write_run(tmp_path / "new", format=99, heads={"seg": {"task": "density", "kind": "segmentation", "state": {}}},
               primary_head="seg")
    with pytest.raises(RunError) as e:
        verify_run(tmp_path / "new")
    msg = str(e.value)
    assert str(tmp_path / "new") in msg and "format 99 is newer" in msg and "unknown kind 'segmentation'" in msg
    with pytest.raises(RunError, match="unknown kind 'segmentation'"):
        load_run(tmp_path / "new")
    (tmp_path / "bad" / "checkpoints").mkdir(parents=True)
    (tmp_path / "bad" / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match=r"cannot read last\.pt"):
        verify_run(tmp_path / "bad")


def test_lineage_records_the_source_cache_and_config(tmp_path):
    class _Cache:
        path = tmp_path / "cache"
        meta = {"cfg": {"size": 64}, "manifest_hash": "abc", "shape": [4, 64, 64]}

    lin = lineage("tiny-clip", "run:/runs/teacher", _Cache(), {"lr": 1.0, "out_dir": "a", "resume": False})
    assert lin["towers"]["image"] == {"weights": "run:/runs/teacher", "run": "/runs/teacher"}
    assert lin["cache"]["fingerprint"] == cache_fingerprint(_Cache.meta) and lin["mammolens"]
    # where the run is written and whether it was resumed do not change what was trained
    assert lin["config_hash"] == config_hash({"lr": 1.0, "out_dir": "b", "resume": True})
    assert config_hash({"lr": 1.0}) != config_hash({"lr": 2.0})
    assert cache_fingerprint({**_Cache.meta, "fingerprint": "f00"}) == "f00"
    assert cache_fingerprint(_Cache.meta) != cache_fingerprint({**_Cache.meta, "manifest_hash": "abd"})


def test_run_folder_metrics_lines(tmp_path):
    folder = RunFolder(tmp_path)
    for epoch in (1, 2, 3):
        folder.append_metrics({"epoch": epoch})
    folder.keep_metrics(2)
    assert [r["epoch"] for r in folder.read_metrics()] == [1, 2]
    folder.keep_metrics(0)
    assert not folder.metrics.exists() and folder.read_metrics() == []
    folder.write_summary({"best_epoch": 2})
    assert json.loads(folder.summary.read_text()) == folder.read_summary() == {"best_epoch": 2}
