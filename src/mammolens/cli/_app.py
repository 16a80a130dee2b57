"""The typer application every command module registers on, and the one place user errors are shown.

Every command registered with ``@app.command`` runs inside :func:`user_errors`: the library's user errors
(missing file, bad value, unreadable image, bad manifest, missing extra) print one ``error:`` line and exit
2 for a usage error, never for a data problem (:func:`exit_code`: 3 when nothing at all was read or the one
image given is unreadable); ``MAMMOLENS_DEBUG=1`` re-raises them with their traceback. Commands
therefore only parse and print; none catches these errors itself.
"""

import functools
import os
from collections.abc import Callable

import typer


# ValueError covers ImageReadError, ManifestError, CacheError and NothingReadError; ImportError a missing extra.
USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError, ImportError)


def exit_code(e: BaseException) -> int:
    """The exit code of a user error: 2 only for the command line (flag, path, value, manifest or config
    given); a data problem is never 2: an image that cannot be read, or nothing read at all, is 3; a file name
    or text the data hold that cannot be encoded is 1."""
    from mammolens.io import ImageReadError
    from mammolens.parallel import NothingReadError

    if isinstance(e, (NothingReadError, ImageReadError)):
        return EXIT_NOTHING_READ
    if isinstance(e, UnicodeError):
        return EXIT_SOME_FAILED
    return EXIT_USAGE


def user_errors(fn: Callable) -> Callable:
    """Wrap a command: a user error becomes one ``error:`` line on stderr and its exit code."""

    @functools.wraps(fn)  # typer reads the options from the wrapped signature
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            if os.environ.get("MAMMOLENS_DEBUG"):
                raise
            from mammolens.io.paths import display_path  # imported on an error only: `--help` stays light

            typer.secho(f"error: {display_path(str(e))}", fg=typer.colors.RED, err=True)
            raise typer.Exit(exit_code(e)) from None

    return run


def _flags_take_no_value() -> None:
    """``--help`` lists on/off flags without a value type.

    Recent typer versions print ``<bool>`` after every flag (``--include-ids <bool>``, even ``--help``), so
    a user types ``--include-ids true`` and gets "unexpected extra argument". A flag takes no value;
    only options that take one keep their type.
    """
    option = getattr(getattr(typer, "core", None), "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "_mammolens_flags", False):
        return

    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        return shown(self, ctx)

    display_type_rich._mammolens_flags = True
    option.display_type_rich = display_type_rich


_flags_take_no_value()


class _App(typer.Typer):
    """A typer app whose commands all report user errors through :func:`user_errors`."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable) -> Callable:
            register(user_errors(fn))
            return fn

        return decorator


app = _App(
    name="mammolens",
    help="Vision-language foundation models for mammography: ingest, preprocess, train, evaluate, explain, predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold patient data
)


def _print_version(value: bool) -> None:
    if value:
        from mammolens._version import __version__

        typer.echo(f"mammolens {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more (never patient identifiers)."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """mammolens: vision-language foundation models for mammography."""
    import logging

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def show_progress(wanted: bool) -> bool:
    """Progress bars only when asked for and stderr is a terminal (redrawn bars make a mess of log files)."""
    import sys

    return bool(wanted) and sys.stderr.isatty() and not os.environ.get("CI")


# Exit codes of every command that processes files (documented in README "Exit codes").
EXIT_OK = 0  # every file done
EXIT_SOME_FAILED = 1  # some files failed: listed in errors.csv and summarised on the terminal
EXIT_USAGE = 2  # bad flag, missing path, bad value
EXIT_NOTHING_READ = 3  # nothing was read at all: empty folder, no file matched, every file failed

MAX_FAILED_SHOWN = 10


def report_failures(failures, errors_file, limit: int = MAX_FAILED_SHOWN) -> None:
    """One short ``FAILED file: reason`` line per failure (stderr), at most ``limit``, then a count."""
    from mammolens.io.paths import display_path

    failures = list(failures)
    for name, reason in failures[:limit]:
        reason = display_path(" ".join(str(reason).split()))
        typer.echo(f"FAILED {display_path(name)}: {reason[:157] + '...' if len(reason) > 160 else reason}", err=True)
    if len(failures) > limit:
        typer.echo(f"... and {len(failures) - limit} more, see {errors_file}", err=True)


def finish(n_done: int, n_failed: int, nothing_read: str) -> None:
    """Exit with the code for ``n_done`` files done and ``n_failed`` failed; when nothing was read,
    print ``nothing_read`` (which folder or flag is missing) first."""
    if n_done == 0:
        typer.secho(f"error: nothing was read: {nothing_read}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_NOTHING_READ)
    raise typer.Exit(EXIT_SOME_FAILED if n_failed else EXIT_OK)
