"""One helper for optional dependencies: import lazily, and name the extra to install when missing.

Like MONAI's ``optional_import``, but it raises at once: every caller needs the module it asks for.
The extras are those of ``pyproject.toml`` (``text``, ``serve``, ``dicom-out``, ``search``, ``bench``, ``pretrain``,
``dense``, ``node``, ``all``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

__all__ = ["optional_import"]


def optional_import(module: str | Sequence[str], extra: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` (or the first importable of several names, for renamed packages).

    Args:
        module: Module name, e.g. ``"transformers"``, or names to try in order
            (``("python_multipart", "multipart")``).
        extra: The mammolens extra that installs it (``"text"``, ``"serve"``, ``"dicom-out"``).
        purpose: What needs it, for the message (defaults to the module name).

    Raises:
        ImportError: None of the names imports; the message says ``pip install -e ".[<extra>]"`` (from the
            mammolens clone, where the project is installed from).
    """
    names = [module] if isinstance(module, str) else list(module)
    error: ImportError | None = None
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError as e:
            error = e
    what = purpose or names[0]
    raise ImportError(
        f"{what} needs the optional dependency {names[0]!r}, which is not installed ({error}); "
        f'install it with: pip install -e ".[{extra}]" (in the mammolens clone)'
    ) from error
