"""A timm-style model registry: ``@register_model`` adds a builder under a name."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable

__all__ = [
    "register_model",
    "registered_models",
    "get_model_builder",
    "is_registered",
    "unknown_model_error",
    "unregister_model",
]

_REGISTRY: dict[str, Callable] = {}


def register_model(name: str | Callable | None = None, *, replace: bool = False):
    """Register a builder ``fn(pretrained=None, image_size=None, **kw) -> MammoCLIP``.

    Use as ``@register_model`` (the function name with ``_`` → ``-``) or ``@register_model("tag")``;
    ``replace=True`` lets a rescan of the JSON configs re-register their tags.
    """

    def wrap(fn: Callable, tag: str | None = None) -> Callable:
        key = tag or fn.__name__.replace("_", "-")
        if key in _REGISTRY and _REGISTRY[key] is not fn and not replace:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = fn
        return fn

    if callable(name):
        return wrap(name)
    return lambda fn: wrap(fn, name)


def unregister_model(name: str) -> None:
    """Remove ``name`` (no error when absent); used when a JSON config disappears from the config paths."""
    _REGISTRY.pop(name, None)


def registered_models(pattern: str | None = None) -> list[str]:
    names = sorted(_REGISTRY)
    return fnmatch.filter(names, pattern) if pattern else names


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def get_model_builder(name: str) -> Callable:
    return _REGISTRY[name]


def unknown_model_error(name: str, all_names: list[str]) -> ValueError:
    """A ValueError that lists the registered models, close matches and the other accepted forms."""
    close = difflib.get_close_matches(name, all_names, n=5, cutoff=0.5)
    hint = f" Did you mean {close}?" if close else ""
    return ValueError(
        f"unknown model {name!r}.{hint} Registered: {registered_models()}; also any of the "
        f"{len(all_names) - len(_REGISTRY)} open_clip architectures in list_models(), 'timm:<timm model name>' "
        f"(e.g. 'timm:resnet50'), 'hf-hub:ORG/REPO' or 'local-dir:PATH'."
    )
