"""Preprocessing: DICOM files -> preprocessed store, ``build_cache`` against the naive per-file loop and, in
interleaved rounds, against the competent peer (``bench.peer``: dicomsdl + OpenCV LUT + INTER_AREA resize, a
process pool of as many workers)."""

from __future__ import annotations

import shutil
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from mammolens.bench._common import available_cores, eval_transform, interleaved, measure, paired_ratio, torch_threads


def _naive_preprocess_file(path: str | PathLike, transform, out_path: str | PathLike):
    """What a user writes: pydicom → min-max uint8 → PIL → open_clip transform → np.save."""
    import pydicom
    from PIL import Image

    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.float32)
    arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-8)
    img = Image.fromarray((arr * 255).astype(np.uint8)).convert("RGB")
    x = transform(img)  # [3, 224, 224] float32, normalised
    np.save(out_path, x.numpy())
    return x


def bench_preprocess(files: list[Path], work: str | PathLike, size: int = 224, workers: int | None = None,
                     repeats: int = 3) -> dict[str, Any]:
    """Images/s of ``build_cache`` against the naive per-file loop on the same files.

    Returns:
        ``{"naive": {...}, "ours": {...}, "ratio", "ratio_per_core", "peer": {...}, "peer_ratio", ...}``;
        ``ratio`` is ours (all ``workers``) over naive (one process, as users write it); ``ratio_per_core``
        divides each throughput by the processes it used; ``peer_ratio`` is ours over the competent peer
        (same workers), the median of the per-round ratios of interleaved rounds (``peer_skipped`` says why
        not when dicomsdl or OpenCV is missing).
    """
    import pandas as pd

    from mammolens.data.cache import PreprocessCfg, build_cache

    work = Path(work)
    workers = available_cores() if workers is None else int(workers)
    transform = eval_transform(size)
    naive_dir = work / "naive_npy"

    def naive() -> int:
        shutil.rmtree(naive_dir, ignore_errors=True)
        naive_dir.mkdir(parents=True)
        for i, f in enumerate(files):
            _naive_preprocess_file(f, transform, naive_dir / f"{i:05d}.npy")
        return len(files)

    manifest = pd.DataFrame({"image_path": [str(f) for f in files]})
    cfg = PreprocessCfg(size=size)
    cache_dir = work / "cache"

    def ours() -> int:
        shutil.rmtree(cache_dir, ignore_errors=True)
        build_cache(manifest, cache_dir, cfg, workers=workers, progress=False)
        return len(files)

    with torch_threads(1):  # the naive loop is single-threaded numpy/PIL; keep torch from oversubscribing
        r_naive = measure(naive, repeats)
    from mammolens.bench.peer import peer_available, peer_preprocess

    skipped = peer_available()
    fns = {"ours": ours}
    if skipped is None:
        fns["peer"] = lambda: peer_preprocess(files, work / "peer.u8", size=size, workers=workers)
    runs = interleaved(fns, max(repeats, 3) if skipped is None else repeats)
    r_ours = {**runs["ours"]}
    shutil.rmtree(naive_dir, ignore_errors=True)
    from mammolens.data.cache import open_cache

    n_done = int((open_cache(cache_dir).index["status"] == "done").sum())
    shutil.rmtree(cache_dir, ignore_errors=True)
    (work / "peer.u8").unlink(missing_ok=True)
    naive_rate, ours_rate = r_naive["items_per_s"], r_ours["items_per_s"]
    peer = ({"peer": {**runs["peer"], "processes": workers}, "peer_ratio": paired_ratio(runs, "ours", "peer")}
            if skipped is None else {"peer_skipped": skipped})
    return {
        **peer,
        "n_files": len(files),
        "size": size,
        "naive": {**r_naive, "processes": 1, "per_core": naive_rate},
        "ours": {**r_ours, "processes": workers, "per_core": ours_rate / max(workers, 1), "n_done": n_done},
        "ratio": ours_rate / naive_rate,
        "ratio_per_core": (ours_rate / max(workers, 1)) / naive_rate,
    }


