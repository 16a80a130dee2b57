import json
import os
import subprocess
import sys

import pytest

from mammolens.train.config import save_cfg

from _train_helpers import _cfg, _cohort_cache, cache_dir  # noqa: F401  (fixture)


@pytest.mark.timeout(240)
def test_ddp_two_gloo_processes_write_one_run(cache_dir, tmp_path):
    cfg = _cfg(cache_dir, tmp_path / "ddp", epochs=1, batch_size=4)
    path = save_cfg(cfg, tmp_path / "ddp.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1", "GLOO_SOCKET_IFNAME": "lo"}
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
