"""One CSV writer for every table the commands write: safe to open in a spreadsheet, safe to encode.

``write_csv(df, path)`` is ``df.to_csv(path, index=False)`` with two guarantees:

- a text cell that begins with ``=``, ``+``, ``-``, ``@`` (or a tab / carriage return, which some
  spreadsheets skip before such a character) is prefixed with ``'`` so that Excel, LibreOffice and Google
  Sheets show it as text instead of running it as a formula (CSV formula injection: a file or folder name
  such as ``=HYPERLINK(...)`` lands in ``images.csv``). Numbers (``-0.5``) stay numbers: only string cells
  are escaped;
- a string holding bytes that are not UTF-8 (a file name on a Latin-1 share arrives as lone surrogates)
  is written with those bytes shown escaped (``caf\\xe9.dcm``) instead of failing with "surrogates not
  allowed".

Low level (pandas only, layer 1): used by ``data``, ``workflows`` and ``study``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from mammolens.privacy import display_path

__all__ = ["FORMULA_PREFIXES", "escape_cell", "safe_frame", "write_csv"]

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def escape_cell(value: object) -> object:
    """A cell safe for a spreadsheet: a string starting with a formula character gets a leading ``'``;
    anything that is not a string is returned unchanged."""
    if not isinstance(value, str):
        return value
    value = display_path(value)
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def safe_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose string cells (and column names) are escaped with :func:`escape_cell`."""
    out = df.copy()
    for col in out.columns:
        s = out[col]
        if s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
            out[col] = s.map(escape_cell).astype(object)
    out.columns = [escape_cell(c) for c in out.columns]
    return out


def write_csv(df: pd.DataFrame, path: str | os.PathLike, **kw) -> Path:
    """Write ``df`` as CSV (no index unless ``index=True``) through :func:`safe_frame`; returns the path."""
    kw.setdefault("index", False)
    path = Path(path)
    safe_frame(df).to_csv(path, **kw)
    return path
