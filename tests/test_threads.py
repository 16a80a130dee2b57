"""`mammolens.threads`: passive OpenMP waits before torch loads, intra-op threads = cores - loader workers."""

import os
import subprocess
import sys

import pytest
import torch

from mammolens.threads import PASSIVE_ENV, available_cores, configure_threads, passive_openmp_env, worker_threads


@pytest.fixture
def restore_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def test_configure_threads_leaves_cores_to_loader_workers(restore_threads, monkeypatch):
    monkeypatch.setattr("mammolens.threads.available_cores", lambda: 8)
    assert configure_threads(0) == 8 and torch.get_num_threads() == 8
    assert configure_threads(3) == 5 and torch.get_num_threads() == 5
    assert configure_threads(16) == 1 and torch.get_num_threads() == 1  # never below one
    with pytest.raises(ValueError, match="workers must be >= 0"):
        configure_threads(-1)


def test_configure_threads_respects_omp_num_threads(restore_threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert configure_threads(0) == 1 and torch.get_num_threads() == 1


def test_worker_threads_sets_one_thread(restore_threads):
    torch.set_num_threads(2)
    worker_threads(0)
    assert torch.get_num_threads() == 1


def test_passive_openmp_env_keeps_user_values():
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert passive_openmp_env(env) == {"KMP_BLOCKTIME": "0"}
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "KMP_BLOCKTIME": "0"}
    assert available_cores() >= 1


def test_importing_mammolens_before_torch_makes_openmp_waits_passive():
    """The OpenMP runtime reads OMP_WAIT_POLICY when torch loads: `import mammolens` must come first and set it."""
    env = {k: v for k, v in os.environ.items() if k not in PASSIVE_ENV}
    code = "import os, mammolens, torch; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('KMP_BLOCKTIME'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PASSIVE", "0"]


def test_train_loader_workers_get_one_thread_and_train_sets_threads(tmp_path, restore_threads, monkeypatch):
    """`train` sizes torch's threads to cores - workers and its loader workers run one thread each."""
    from mammolens.data.cache import PreprocessCfg, build_cache
    from mammolens.data.synthetic import make_cohort
    from mammolens.train import train
    from mammolens.train import loop

    make_cohort(tmp_path / "c", n_patients=4, seed=0, modalities=("DM",), image_size=(64, 52))
    from mammolens.transforms.quality import QualityCfg

    cache = build_cache(tmp_path / "c" / "manifest.parquet", tmp_path / "cache", PreprocessCfg(size=32), workers=0,
                        progress=False, quality=QualityCfg(enabled=False))  # 52-px images: below min_side
    seen = {}
    real = loop._make_loader

    def spy(ds, cfg, *a, **kw):
        dl = real(ds, cfg, *a, **kw)
        seen.setdefault("init", dl.worker_init_fn)
        seen.setdefault("threads", torch.get_num_threads())
        return dl

    monkeypatch.setattr(loop, "_make_loader", spy)
    monkeypatch.setattr("mammolens.threads.available_cores", lambda: 3)
    train({"data": {"cache": str(cache)}, "task": "density", "model": "tiny-clip", "image_size": 32, "epochs": 1,
           "batch_size": 4, "workers": 1, "precision": "fp32", "out_dir": str(tmp_path / "run"),
           "max_steps_per_epoch": 1, "device": "cpu"})
    assert seen["threads"] == 2  # 3 cores - 1 loader worker
    assert seen["init"] is worker_threads
