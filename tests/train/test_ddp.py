import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mammolens.train.config import cfg_from_dict, save_cfg

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


@pytest.mark.timeout(240)
def test_ddp_two_gloo_processes_write_one_run(cache_dir, tmp_path):
    cfg = _cfg(cache_dir, tmp_path / "ddp", epochs=1, batch_size=4)
    path = save_cfg(cfg, tmp_path / "ddp.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mammolens.train", "--config", str(path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "ddp"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # only rank 0 writes
    rec = json.loads(lines[0])
    assert rec["epoch"] == 1 and rec["step"] >= 1
    assert (run / "checkpoints" / "last.pt").is_file()
    assert "best val macro AUC" in proc.stdout
