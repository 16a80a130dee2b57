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
