"""Command line: `mammolens COMMAND`. Each command is a thin wrapper in its own module of this package
(``cli/<command>.py``), registered on one typer app; the logic lives in the library."""

import importlib
import pkgutil

from mammolens.cli._app import app

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_mod}")


def main() -> None:
    app()


__all__ = ["app", "main"]
