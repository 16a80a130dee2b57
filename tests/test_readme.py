"""The README is the user's guide: its set-up and test commands are what CI runs, its docs links exist,
and it stays short (internals live in docs/)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"


def _section_block(text: str, heading: str) -> list[str]:
    """Command lines of the first fenced block under `## heading`."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S)
    assert block, f"no code block under '## {heading}'"
    return [ln.strip() for ln in block.group(1).splitlines() if ln.strip()]


def _ci_commands() -> list[str]:
    lines = []
    for ln in CI.read_text().splitlines():
        ln = ln.strip()
        if not ln or ln.startswith("#"):
            continue
        lines.append(re.sub(r"\s-q(?=\s)", "", ln))  # CI installs quietly; otherwise the same command
    return lines


def test_setup_block_is_what_ci_runs():
    setup = _section_block(README.read_text(), "Set-up")
    assert setup == [
        "python3 -m venv .venv && . .venv/bin/activate",
        'pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[all,dev]"',
    ]
    ci = _ci_commands()
    # `.ci/run` activates the venv on its own line; the pip line is the same command.
    assert "python3 -m venv .venv" in ci and ". .venv/bin/activate" in ci
    assert setup[1] in ci


def test_test_block_is_what_ci_runs():
    test = _section_block(README.read_text(), "Test command")
    assert test == ["python -m pytest -q -x --timeout=900"]
    assert CI.read_text().rstrip().splitlines()[-1].strip() == test[0]


def test_readme_names_shared_data_and_tools():
    text = README.read_text()
    assert "../shared/data" in text and "chromium" in text and "dciodvfy" in text


def test_docs_links_exist():
    links = re.findall(r"\]\(((?:docs/)[^)#\s]+|BENCHMARKS\.md)(?:#[^)]*)?\)", README.read_text())
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        assert (ROOT / link).is_file(), f"README links {link}, which does not exist"


def test_docs_internal_links_exist():
    for page in (ROOT / "docs").glob("*.md"):
        for link in re.findall(r"\]\(([^)#\s:]+\.(?:md|png))(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / link).resolve().is_file(), f"{page.name} links {link}, which does not exist"


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= 300, f"README has {n} lines; move internals to docs/"


# ------------------------------------------------------------------------- every code block is tested
# A fenced block is one of: the set-up (needs the network: CI runs it, the extras it names are checked here), the
# test command (what CI runs), the Python API (run in a temporary folder on generated files) or a command
# synopsis (CAPS placeholders, [optional] parts, a|b choices): each `mammolens COMMAND` exists and takes every
# `--flag` shown; `python -m MODULE` imports; `pip install -e ".[X]"` names extras of pyproject.toml.


def _blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```([a-z]*)[^\n]*\n(.*?)^```", text, re.S | re.M)]


def _command_lines(body: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", body)  # continuation lines
    return [ln.split("  #")[0].strip() for ln in joined.splitlines() if ln.strip()]


def _extras() -> set[str]:
    import tomllib

    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def _options() -> dict[str, set[str]]:
    import typer

    from mammolens.cli import app

    group = typer.main.get_command(app)
    return {name: {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", []))}
            for name, cmd in group.commands.items()}


def _check_line(line: str, options: dict[str, set[str]]) -> None:
    import importlib.util

    if line.startswith("mammolens "):
        words = line.split()
        assert words[1] in options, f"README shows `mammolens {words[1]}`, which is not a command"
        if words[1] == "import":  # mammolens import mias|cbis-ddsm|...: every name is an importer
            from mammolens.data.adapters import get_adapter

            for name in words[2].split("|"):
                get_adapter(name)
        for flag in re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", line.split("  #")[0]):
            assert flag in options[words[1]], f"README: `mammolens {words[1]}` has no option {flag} ({line})"
    elif line.startswith("python -m pytest"):
        assert line == CI.read_text().rstrip().splitlines()[-1].strip(), "the test command must be what CI runs"
    elif line.startswith("python -m "):
        module = line.split()[2]
        assert importlib.util.find_spec(module) is not None, f"README runs `python -m {module}`, which does not exist"
    elif line.startswith(("python3 -m venv", "pip install")):
        for group in re.findall(r'"\.\[([^\]]+)\]"', line):
            assert set(group.split(",")) <= _extras(), f"README installs extras {group} not in pyproject.toml"
    else:
        raise AssertionError(f"README code line not covered by a test: {line!r}")


def test_every_code_block_is_tested():
    blocks = _blocks(README.read_text())
    assert len(blocks) >= 15 and sum(lang == "python" for lang, _ in blocks) == 1
    options = _options()
    for lang, body in blocks:
        if lang == "python":
            continue  # test_python_api_block_runs
        for line in _command_lines(body):
            _check_line(line, options)


def test_install_commands_work_from_a_clone():
    """`pip install "mammolens[search]"` needs a package index that has mammolens; a clone installs with -e."""
    text = README.read_text() + "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    assert 'pip install "mammolens[' not in text
    named = set(re.findall(r'pip install -e "\.\[([a-z,-]+)\]"', text))
    assert named and all(set(n.split(",")) <= _extras() for n in named)
    from mammolens._optional import optional_import

    try:
        optional_import("mammolens_no_such_module", "search")
    except ImportError as e:
        assert 'pip install -e ".[search]"' in str(e)


def test_python_api_block_runs(tmp_path):
    """The README's Python API block, pasted into a fresh folder beside the clone's configs/ (about a minute)."""
    import os
    import shutil
    import subprocess
    import sys

    (code,) = [body for lang, body in _blocks(README.read_text()) if lang == "python"]
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    script = code + "\nassert len(out.images) and res['n_images'] and img.pixels.ndim == 2 and model is not None\n"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "runs" / "tiny_cpu" / "checkpoints").is_dir()
    assert list((tmp_path / "runs" / "tiny_cpu").glob("eval*/report.html"))
