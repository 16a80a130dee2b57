"""``python -m mammolens.train --config FILE [--set key=value ...] [--folds K]``; also the torchrun entry
point: ``torchrun --nproc-per-node N -m mammolens.train --config FILE`` (DDP, one process per GPU).

The ``mammolens train`` command itself (``cli/train.py``): one parser, the same options and errors.
An entry point, so it sits in the application layer beside ``cli`` (``tests/test_layout.py``).
"""

from __future__ import annotations

import sys

PROG = "python -m mammolens.train"


def main(argv: list[str] | None = None) -> int:
    """Run ``mammolens train`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    import typer

    from mammolens.cli import app  # registers every command

    command = typer.main.get_command(app).commands["train"]
    try:
        command.main(args=list(sys.argv[1:] if argv is None else argv), prog_name=PROG, standalone_mode=True)
    except SystemExit as e:  # click ends every run with one (0 on success)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
