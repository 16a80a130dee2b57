"""Training methods: one module per method behind one small interface (``base.TrainMethod``).

``TrainCfg.method`` picks one by name; the loop (``train.loop``) is the same for all of them. A new
method is a ``TrainMethod`` subclass registered with ``@register_method("name")`` (import its module
before building the ``TrainCfg``); the loop needs no change.

This module imports no torch: the built-in methods are loaded when first asked for, so that
``TrainCfg`` can check a method name cheaply.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["register_method", "get_method", "list_methods", "TrainMethod", "MethodContext"]

# built-in methods: name -> "module:class", imported on first use
_BUILTIN = {
    "contrastive": "mammolens.train.methods.contrastive:ContrastiveMethod",
    "zeroshot": "mammolens.train.methods.zeroshot:ZeroShotMethod",
    "linear-probe": "mammolens.train.methods.linear_probe:LinearProbeMethod",
    "finetune-ce": "mammolens.train.methods.finetune_ce:FinetuneCEMethod",
    "report-contrastive": "mammolens.train.methods.report_contrastive:ReportContrastiveMethod",
    "pretrain": "mammolens.train.methods.pretrain:PretrainMethod",
    "distill": "mammolens.train.methods.distill:DistillMethod",
}
_REGISTRY: dict[str, Any] = {}


def register_method(name: str):
    """Class decorator: make a ``TrainMethod`` subclass available as ``method: name`` in the config."""

    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_methods() -> list[str]:
    """Names of the built-in and registered training methods."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def get_method(name: str):
    """The ``TrainMethod`` class registered as ``name``.

    Raises:
        ValueError: unknown name (the message lists the choices).
    """
    if name not in _REGISTRY and name in _BUILTIN:
        module, cls = _BUILTIN[name].split(":")
        importlib.import_module(module)  # registers itself
        _REGISTRY.setdefault(name, getattr(importlib.import_module(module), cls))
    if name not in _REGISTRY:
        raise ValueError(f"unknown training method {name!r}; choose one of: {', '.join(list_methods())} "
                         "(a new method registers itself with @register_method)")
    return _REGISTRY[name]


def __getattr__(name: str):
    if name in ("TrainMethod", "MethodContext"):
        from mammolens.train.methods import base

        return getattr(base, name)
    raise AttributeError(f"module 'mammolens.train.methods' has no attribute {name!r}")
