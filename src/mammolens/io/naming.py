"""Laterality and view from raster file names, and the sidecar CSV that groups rasters into exams.

Rasters carry no header, so the file name is the only hint: it is split into tokens at anything that is
not a letter or digit (``demo_L_CC.png`` -> ``DEMO``, ``L``, ``CC``), case-insensitively, and a token is
read as a side (``L``, ``R``, ``LEFT``, ``RIGHT``), a view (``CC``, ``MLO``, ``ML``, ``LM``, ``XCCL``,
``XCCM``, ``FB``, ``SIO``, ``AT``) or both (``LCC``, ``RMLO``). Whole tokens only, so ``CLOSE.png`` and
``scan.png`` name nothing; a name that gives two different sides or views gives neither.
"""

from __future__ import annotations

import csv
import re
from os import PathLike
from pathlib import Path

from mammolens.constants import LATERALITIES, VIEWS

__all__ = ["SIDECAR_COLUMNS", "parse_view_name", "read_sidecar"]

_SIDES = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}
_NAME_VIEWS = tuple(v for v in VIEWS if v != "OTHER")
_COMBINED = re.compile(rf"(L|R|LEFT|RIGHT)({'|'.join(_NAME_VIEWS)})")
SIDECAR_COLUMNS = ("path", "patient", "study", "laterality", "view")
"""Columns of a sidecar CSV; ``path`` is required, the others may be absent or empty."""


def parse_view_name(name: str | PathLike) -> tuple[str, str]:
    """``(laterality, view)`` named by a file name (module docstring: the rules); "" where none or ambiguous.

    >>> parse_view_name("mdb001_R_MLO.png"), parse_view_name("LCC.png"), parse_view_name("CLOSE.png")
    (('R', 'MLO'), ('L', 'CC'), ('', ''))
    """
    sides, views = set(), set()
    for tok in re.split(r"[^A-Z0-9]+", Path(name).stem.upper()):
        if tok in _SIDES:
            sides.add(_SIDES[tok])
        elif tok in _NAME_VIEWS:
            views.add(tok)
        elif m := _COMBINED.fullmatch(tok):
            sides.add(_SIDES[m.group(1)])
            views.add(m.group(2))
    return (sides.pop() if len(sides) == 1 else ""), (views.pop() if len(views) == 1 else "")


def read_sidecar(path: str | PathLike) -> dict[Path, dict[str, str]]:
    """Read and check a sidecar CSV (``path, patient, study, laterality, view``).

    ``path`` is relative to the CSV's folder or absolute; ``laterality`` is L/R (LEFT/RIGHT accepted),
    ``view`` one of ``constants.VIEWS``; empty cells mean "not known".

    Returns:
        ``{resolved image path: {"patient", "study", "laterality", "view"}}``.

    Raises:
        FileNotFoundError: the CSV is missing.
        ValueError: a missing ``path`` column, unknown columns, a bad value, a duplicate or missing image;
            the message names the CSV row (1 = first data row) and column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sidecar CSV not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header, *rows = list(csv.reader(fh)) or [[]]
    except (csv.Error, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({e})") from e
    columns = [c.strip().lower() for c in header]
    unknown = [c for c in columns if c not in SIDECAR_COLUMNS]
    if "path" not in columns or unknown:
        raise ValueError(f"{path}: columns must be {', '.join(SIDECAR_COLUMNS)} (path required); "
                         f"found {', '.join(columns) or 'none'}")
    out: dict[Path, dict[str, str]] = {}
    for n, values in enumerate(rows, start=1):
        where = f"{path}, row {n}"
        got = dict(zip(columns, values))
        rec = {c: got.get(c, "").strip() for c in SIDECAR_COLUMNS}
        if not rec["path"]:
            raise ValueError(f"{where}, column path: empty")
        image = Path(rec["path"]) if Path(rec["path"]).is_absolute() else path.parent / rec["path"]
        if not image.is_file():
            raise ValueError(f"{where}, column path: no such file {rec['path']!r}")
        lat = _SIDES.get(rec["laterality"].upper(), rec["laterality"].upper())
        if lat and lat not in LATERALITIES:
            raise ValueError(f"{where}, column laterality: {rec['laterality']!r} is not L or R")
        view = rec["view"].upper()
        if view and view not in VIEWS:
            raise ValueError(f"{where}, column view: {rec['view']!r} is not one of {', '.join(VIEWS)}")
        key = image.resolve()
        if key in out:
            raise ValueError(f"{where}, column path: {rec['path']!r} is listed twice")
        out[key] = {"patient": rec["patient"], "study": rec["study"], "laterality": lat, "view": view}
    return out
