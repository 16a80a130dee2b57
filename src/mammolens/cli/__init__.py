"""Command line: `mammolens COMMAND`. Each command is a thin wrapper in its own module of this package
(``cli/<command>.py``), registered on one typer app; the logic lives in the library."""

import importlib
import pkgutil

from mammolens.cli._app import app

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_mod}")


def main() -> None:
    """Entry point. User errors are shown by each command's one handler (``cli._app.user_errors``): one
    ``error:`` line, exit code 2, or 3 when nothing at all was read (see ``cli._app`` for every code)."""
    app(standalone_mode=True)


__all__ = ["app", "main"]
