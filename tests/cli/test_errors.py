"""User errors reach the terminal through one handler (``cli._app.user_errors``), for every command alike."""

import pytest
from typer.testing import CliRunner

from mammolens.cli import app

runner = CliRunner()


def _missing_file_cases(tmp):
    """(command args, text the error must name): each command class given a path that does not exist."""
    gone = tmp / "gone"
    cfg = tmp / "c.yaml"
    cfg.write_text(f"model: tiny-clip\nepochs: 1\nout_dir: {tmp / 'run'}\ndata:\n  cache: {gone}\n")
    return {
        "ingest": (["ingest", gone, "--out", tmp / "o"], "gone"),
        "import": (["import", "mias", gone, "--out", tmp / "o"], "gone"),
        "preprocess": (["preprocess", gone, "--out", tmp / "o", "--workers", 0], "gone"),
        "train": (["train", "--config", cfg], "gone"),
        "cv": (["cv", "--config", cfg, "--folds", 2], "gone"),
        "evaluate": (["evaluate", gone, "--data", tmp / "x.parquet"], "gone"),
        "explain": (["explain", gone, tmp, "--out", tmp / "e"], "gone"),
        "predict": (["predict", gone, tmp, "--out", tmp / "p", "--workers", 0], "gone"),
        "serve": (["serve", gone], "gone"),
        "bench": (["bench", "--only", "nonsense"], "nonsense"),  # no path to miss: a bad value instead
    }


COMMANDS = ["ingest", "import", "preprocess", "train", "cv", "evaluate", "explain", "predict", "serve", "bench"]


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_user_error_is_one_line_exit_2(command, tmp_path, monkeypatch):
    monkeypatch.delenv("MAMMOLENS_DEBUG", raising=False)
    args, named = _missing_file_cases(tmp_path)[command]
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 2, (r.output, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], r.stderr
    assert "Traceback" not in r.output


@pytest.mark.parametrize("command", ["ingest", "predict"])
def test_cli_debug_env_shows_the_exception(command, tmp_path, monkeypatch):
    monkeypatch.setenv("MAMMOLENS_DEBUG", "1")
    args, _ = _missing_file_cases(tmp_path)[command]
    r = runner.invoke(app, [str(a) for a in args])
    assert isinstance(r.exception, FileNotFoundError) and "gone" in str(r.exception)
    assert r.stderr == ""


def test_cli_commands_catch_no_user_errors_themselves():
    """No command turns an exception into an exit code itself: that is cli._app.user_errors' job."""
    import ast
    from pathlib import Path

    import mammolens.cli as cli

    local = []
    for path in sorted(Path(cli.__file__).parent.glob("*.py")):
        if path.name == "_app.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ExceptHandler) and any(
                isinstance(s, ast.Raise) and s.exc is not None and "Exit" in ast.unparse(s.exc) for s in node.body
            ):
                local.append(f"{path.name}:{node.lineno}")
    assert local == []
