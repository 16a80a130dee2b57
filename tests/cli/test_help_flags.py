"""`--help` of every command: on/off flags are shown without a value type (they take none)."""

import re

import pytest
import typer
from typer.testing import CliRunner

from mammolens.cli import app

COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)
# what a flag looked like when help made it seem to take a value: "--include-ids <bool>", "BOOLEAN", ...
VALUE_MARKERS = re.compile(r"<bool>|BOOLEAN|\[default: (False|True)\]", re.IGNORECASE)


def _help(*args: str) -> str:
    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert res.exit_code == 0, res.output
    return res.output


def test_every_command_is_checked():
    assert {"demo", "evaluate", "import", "ingest", "predict", "preprocess", "serve", "train", "bench"} <= set(COMMANDS)


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_shows_flags_without_a_value(command):
    text = _help(*([command] if command else []))
    assert "--help" in text
    assert not VALUE_MARKERS.search(text), VALUE_MARKERS.findall(text)


def test_help_keeps_types_of_options_that_take_a_value():
    text = _help("predict")
    assert re.search(r"--batch-size\s+(<int>|INTEGER)", text) and re.search(r"--include-ids\s+Put patient ID", text)
    assert re.search(r"--overlays\s+--no-overlays\s+GradCAM", text)


def test_flags_patch_is_idempotent():
    from mammolens.cli._app import _flags_take_no_value

    before = getattr(typer.core.TyperOption, "display_type_rich", None)
    _flags_take_no_value()
    assert getattr(typer.core.TyperOption, "display_type_rich", None) is before


def test_python_dash_m_mammolens_runs_the_cli():
    import os
    import subprocess
    import sys
    from pathlib import Path

    import mammolens

    env = {**os.environ, "PYTHONPATH": str(Path(mammolens.__file__).parents[1]), "COLUMNS": "200"}
    res = subprocess.run([sys.executable, "-m", "mammolens", "demo", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--patients" in res.stdout and not VALUE_MARKERS.search(res.stdout)
