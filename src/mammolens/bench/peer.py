"""The competent peer: what a user who knows the tools writes by hand, the baseline ``bench`` reports ratios to.

Preprocessing (``peer_tile``): ``dicomsdl`` decodes the stored values; a 65,536-entry uint8 table made from
the header's first window (``WindowCenter``/``WindowWidth`` after ``RescaleSlope``/``Intercept``; min-max of
the image without one), inverted for MONOCHROME1, is applied with ``cv2.LUT``; ``cv2.resize`` with
``INTER_AREA`` makes the ``S x S`` tile (no breast mask, crop or orientation: it does less than
``build_cache``). ``peer_preprocess`` runs it over the files in a ``multiprocessing`` pool of ``workers``
processes, writing one uint8 memory-mapped array.

Files to probabilities (``peer_predict``): the same tile in a ``torch.utils.data.DataLoader`` (``workers``
processes, batch ``batch_size``), open_clip's normalisation, ``encode_image`` under ``torch.inference_mode``
and bf16 autocast, then ``softmax(100 * cos)`` against the class embeddings (open_clip's README).

Needs the ``bench`` extra (``dicomsdl``, ``opencv-python-headless``); ``peer_available()`` says why not.
"""

from __future__ import annotations

from os import PathLike
from typing import Any

import numpy as np

OPENCLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENCLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def peer_available() -> str | None:
    """None when the peer can run, else the reason (a missing package and the extra that has it)."""
    for mod in ("dicomsdl", "cv2"):
        try:
            __import__(mod)
        except ImportError:
            return f"the competent-peer baseline needs {mod} (pip install -e '.[bench]')"
    return None


def _number(ds, keyword: str, default: float | None) -> float | None:
    value = getattr(ds, keyword, None)
    if value is None:
        return default
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def peer_tile(path: str | PathLike, size: int = 224) -> np.ndarray:
    """One DICOM file to a uint8 ``[size, size]`` tile the way the peer does it (module docstring)."""
    import cv2
    import dicomsdl

    ds = dicomsdl.open(str(path))
    raw = ds.pixelData(storedvalue=True)
    if raw.ndim == 3:
        raw = raw[0]
    slope, intercept = _number(ds, "RescaleSlope", 1.0), _number(ds, "RescaleIntercept", 0.0)
    center, width = _number(ds, "WindowCenter", None), _number(ds, "WindowWidth", None)
    values = np.arange(65536, dtype=np.float32) * slope + intercept
    if center is None or not width or width <= 1:
        lo, hi = float(raw.min()) * slope + intercept, float(raw.max()) * slope + intercept
    else:
        lo, hi = center - width / 2, center + width / 2
    lut = np.clip((values - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    if str(getattr(ds, "PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        lut = 255 - lut
    img = cv2.LUT(np.ascontiguousarray(raw, dtype=np.uint16), lut)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


_OUT: dict[str, Any] = {}


def _pool_init(out_path: str, n: int, size: int) -> None:
    # No cv2.setNumThreads here: in a worker forked after the parent used OpenMP it deadlocks (as in
    # mammolens.parallel); OpenCV keeps its default threads, as a user's script would.
    _OUT["mm"] = np.memmap(out_path, dtype=np.uint8, mode="r+", shape=(n, size, size))
    _OUT["size"] = size


def _pool_one(task: tuple[int, str]) -> int:
    i, path = task
    _OUT["mm"][i] = peer_tile(path, _OUT["size"])
    return i


def peer_preprocess(files: list, out_path: str | PathLike, size: int = 224, workers: int = 2) -> int:
    """The peer's preprocessing of ``files`` into one uint8 ``[N, size, size]`` memmap; returns N."""
    import multiprocessing as mp

    out_path = str(out_path)
    mm = np.memmap(out_path, dtype=np.uint8, mode="w+", shape=(len(files), size, size))
    del mm
    tasks = [(i, str(f)) for i, f in enumerate(files)]
    if workers <= 1:
        _pool_init(out_path, len(files), size)
        for t in tasks:
            _pool_one(t)
    else:
        with mp.get_context("fork").Pool(workers, initializer=_pool_init, initargs=(out_path, len(files), size)) as pool:
            for _ in pool.imap_unordered(_pool_one, tasks, chunksize=4):
                pass
    _OUT.clear()
    return len(files)


class _PeerFiles:
    """A ``Dataset`` of files: the peer tile, normalised to open_clip's 3-channel input."""

    def __init__(self, files: list, size: int):
        self.files, self.size = [str(f) for f in files], size
        self.mean = np.asarray(OPENCLIP_MEAN, np.float32)[:, None, None]
        self.std = np.asarray(OPENCLIP_STD, np.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import torch

        x = peer_tile(self.files[i], self.size).astype(np.float32) / 255.0
        return torch.from_numpy((np.broadcast_to(x, (3, self.size, self.size)) - self.mean) / self.std)


def _peer_worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)  # (no cv2.setNumThreads: it can deadlock in a forked worker, see _pool_init)


def peer_predict(raw_clip, text_emb, files: list, size: int, batch_size: int = 32, workers: int = 2,
                 precision: str = "bf16") -> np.ndarray:
    """Class probabilities ``[N, K]`` of ``files`` the peer's way (module docstring)."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(_PeerFiles(files, size), batch_size=batch_size, num_workers=workers,
                        worker_init_fn=_peer_worker_init if workers > 0 else None,
                        multiprocessing_context="fork" if workers > 0 else None)
    out = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for x in loader:
            f = raw_clip.encode_image(x).float()
            f = f / f.norm(dim=-1, keepdim=True)
            out.append((100.0 * f @ text_emb.float().T).float().softmax(dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(text_emb)), np.float32)


__all__ = ["OPENCLIP_MEAN", "OPENCLIP_STD", "peer_available", "peer_predict", "peer_preprocess", "peer_tile"]


