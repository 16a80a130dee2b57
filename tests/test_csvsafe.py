"""Tests for mammolens.csvsafe: formula cells escaped, numbers kept, non-UTF-8 names written."""

import os

import pandas as pd

from mammolens.csvsafe import escape_cell, write_csv


def test_escape_cell_only_strings_starting_with_a_formula_character():
    for bad in ("=1+1", "+SUM(A1)", "-2+3", "@cmd", "\t=x", "\r=x"):
        assert escape_cell(bad) == "'" + bad
    for ok in ("a.dcm", "", "x=1", "study-abc"):
        assert escape_cell(ok) == ok
    assert escape_cell(-0.5) == -0.5 and escape_cell(None) is None and escape_cell(3) == 3


def test_write_csv_escapes_text_and_keeps_numbers(tmp_path):
    files = pd.Series(["=HYPERLINK(\"http://x\")", "ok.dcm", os.fsdecode(b"caf\xe9.dcm")], dtype=object)
    df = pd.DataFrame({"file": files,
                       "prob": [-0.5, 0.25, 1.0], "n": [-1, 2, 3]})
    write_csv(df, tmp_path / "t.csv")
    back = pd.read_csv(tmp_path / "t.csv")
    assert list(back["file"]) == ["'=HYPERLINK(\"http://x\")", "ok.dcm", "caf\\xe9.dcm"]
    assert list(back["prob"]) == [-0.5, 0.25, 1.0] and list(back["n"]) == [-1, 2, 3]
    assert df["file"].iloc[0].startswith("=")  # the caller's frame is not changed


def test_every_csv_the_commands_write_goes_through_write_csv():
    """No ``.to_csv(`` left in the package outside the shared writer (grep, as the issue asks). The manifest
    CSV is exempt: it is an input mammolens reads back, and an escaped path would no longer name its file."""
    from pathlib import Path

    import mammolens

    pkg = Path(mammolens.__file__).parent
    hits = [f"{p.relative_to(pkg)}:{i}" for p in pkg.rglob("*.py") if p.name != "csvsafe.py"
            and p.relative_to(pkg).as_posix() != "data/manifest.py"
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if ".to_csv(" in line]
    assert not hits, hits
