"""Training-loader throughput: cache -> ``MammoDataset`` -> ``DataLoader`` batches."""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

import torch

from mammolens.bench._common import GPU_TRAIN_TARGET, available_cores, fastest, measure


def bench_loader(work: str | PathLike, n_images: int = 4096, size: int = 224, batch_size: int = 256,
                 workers: int | None = None, repeats: int = 3) -> dict[str, Any]:
    """Training-loader throughput: cache → ``MammoDataset`` → ``DataLoader`` batches, img/s.

    The GPU training target (``GPU_TRAIN_TARGET`` img/s) includes reading batches from the cache; this
    measures that feed rate on the CPU, with the trainer's loader arguments (shuffled, ``batch_size``,
    worker processes, pinned memory when CUDA is present), over ``n_images`` rows (a small synthetic
    cohort's images repeated: the cache read per row is the same whatever the content).
    """
    import pandas as pd
    from torch.utils.data import DataLoader

    from mammolens.data.cache import PreprocessCfg, build_cache
    from mammolens.data.dataset import MammoDataset
    from mammolens.data.synthetic import make_cohort

    work = Path(work)
    workers = available_cores() if workers is None else int(workers)
    cache_dir = work / f"loader_cache_{n_images}_{size}"
    if not (cache_dir / "cache.json").exists():
        make_cohort(work / "loader_cohort", n_patients=8, seed=0, image_size=(128, 104))
        m = pd.read_parquet(work / "loader_cohort" / "manifest.parquet")
        m["image_path"] = [str(work / "loader_cohort" / p) for p in m["image_path"]]
        m = pd.concat([m] * (n_images // len(m) + 1)).iloc[:n_images].reset_index(drop=True)
        build_cache(m, cache_dir, PreprocessCfg(size=size), workers=workers, progress=False, overwrite=True)
    ds = MammoDataset(cache_dir, "density")
    rates: dict[str, Any] = {}
    for w in sorted({0, workers}):
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=w, persistent_workers=w > 0,
                            pin_memory=torch.cuda.is_available(), drop_last=False)

        def epoch(loader=loader) -> int:
            n = 0
            for batch in loader:
                n += int(batch["image"].shape[0])
            return n

        rates[str(w)] = measure(epoch, repeats, workers=w)
        del loader
    best = fastest(rates)
    img_s = rates[best]["items_per_s"]
    return {"n_images": n_images, "size": size, "batch_size": batch_size, "by_workers": rates,
            "best_workers": int(best), "items_per_s": img_s, "gpu_target": GPU_TRAIN_TARGET,
            "ratio_to_gpu_target": img_s / GPU_TRAIN_TARGET}


