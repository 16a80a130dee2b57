"""The one image path (docs/index.md): every surface that turns a file into numbers goes through it.

``prepare``   file or manifest row → gated, quality-checked, preprocessed tile + geometry (``pipeline.prepare``)
``encode``    one batched forward over tiles: probabilities, embeddings, patch tokens (``pipeline.encode``)
``Executor``  runs a function over many items: crash isolation, per-item timeout, input order (``pipeline.executor``)
``aggregate`` image rows → breast and exam rows, with the task's dense rule (``pipeline.aggregate``)

The modules sit at different layers (``tests/test_layout.py``): ``executor`` beside ``parallel``, ``prepare``
beside ``data`` (the cache builder uses it), ``aggregate`` beside ``tasks``, ``encode`` beside ``models``.
Names are loaded lazily, so importing ``mammolens.pipeline.prepare`` never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # no "encode"/"prepare" entries: ``mammolens.pipeline.encode`` and ``.prepare`` are the modules (tests patch
    # the functions there); call ``encode.encode(...)`` and ``prepare.prepare(...)``
    "iter_encode": "encode",
    "to_input": "encode",
    "resize_to_model": "encode",
    "cache_features": "features",
    "Features": "features",
    "Prepared": "prepare",
    "Executor": "executor",
    "LocalExecutor": "executor",
    "get_executor": "executor",
    "aggregate_breast": "aggregate",
    "aggregate_exam": "aggregate",
}


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'mammolens.pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mammolens.pipeline.{mod}"), name)


__all__ = sorted(_EXPORTS)
