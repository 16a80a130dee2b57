"""Command line: `mammolens COMMAND`. Each command is a thin wrapper in its own module of this package
(``cli/<command>.py``), registered on one typer app; the logic lives in the library."""

import importlib
import pkgutil

from mammolens.cli._app import app

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_mod}")


def main() -> None:
    """Entry point: user errors (missing file, bad value) print one line, exit code 2; a job that read
    nothing at all (``NothingReadError``) exits 3 (see ``cli._app`` for every code)."""
    import os
    import sys

    from mammolens.cli._app import EXIT_NOTHING_READ, EXIT_USAGE
    from mammolens.parallel import NothingReadError

    try:
        app(standalone_mode=True)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        if os.environ.get("MAMMOLENS_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_NOTHING_READ if isinstance(e, NothingReadError) else EXIT_USAGE)


__all__ = ["app", "main"]
