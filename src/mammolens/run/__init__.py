"""The run folder in one place: write, read, verify, lineage (docs/index.md).

A run folder is written by the trainer and read by every surface (predict, evaluate, explain, search,
serve); this package is the only code that knows its layout.

``run.folder``  ``RunFolder`` (paths, atomic checkpoint writes, metrics/summary), ``read_checkpoint``,
                ``load_checkpoint``, ``load_run -> LoadedRun``, ``verify_run``, ``lineage``
``run.model``   ``RunModel`` (a backbone plus named heads), the head kinds (``prompt``, ``linear``; a
                registry, ``register_head_kind``, for more)

Names are loaded lazily (``mammolens.run.load_run`` imports ``run.folder`` on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CHECKPOINT_FORMAT": "folder", "LoadedRun": "folder", "RunError": "folder", "RunFolder": "folder",
    "cache_fingerprint": "folder", "config_hash": "folder", "lineage": "folder", "load_checkpoint": "folder",
    "load_run": "folder", "read_checkpoint": "folder", "verify_run": "folder",
    "HEAD_KINDS": "model", "HEAD_METHODS": "model", "Head": "model", "LinearHead": "model", "PromptHead": "model",
    "RunModel": "model", "build_heads": "model", "build_run_model": "model", "head_specs": "model",
    "register_head_kind": "model", "zeroshot_head": "model",
}


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'mammolens.run' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mammolens.run.{mod}"), name)


__all__ = sorted(_EXPORTS)
