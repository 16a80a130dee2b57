"""Helpers shared by the dataset adapters: source-file lookup, value mappings, row errors, finishing."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from mammolens.constants import DENSITY_CLASSES, MANIFEST_REQUIRED, VIEWS
from mammolens.data.manifest import validate_manifest
from mammolens.reports import annotation_report, stable_seed

log = logging.getLogger("mammolens.data.adapters")

_NUMERIC_DENSITY = {str(i + 1): c for i, c in enumerate(DENSITY_CLASSES)}


@dataclass(frozen=True)
class RowError:
    """A source row that was skipped or only partly mapped.

    Attributes:
        dataset: adapter name.
        file: label file the row came from (name only, no patient data).
        row: data row number in a table (0-based, header excluded), or 1-based line of a text file.
        reason: what was wrong; never contains patient identifiers.
        skipped: True when the row is absent from the manifest, False when kept with an empty field.
    """

    dataset: str
    file: str
    row: int
    reason: str
    skipped: bool = True


def errors_frame(errors: list[RowError]) -> pd.DataFrame:
    """Row errors as a DataFrame (columns dataset, file, row, reason, skipped)."""
    cols = ["dataset", "file", "row", "reason", "skipped"]
    return pd.DataFrame([asdict(e) for e in errors], columns=cols)


def find_file(src: Path, names: tuple[str, ...], dataset: str, hint: str = "") -> Path:
    """Return the first of ``names`` found in ``src`` (or one folder below it).

    Raises:
        FileNotFoundError: naming the expected file(s) and the dataset.
    """
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{dataset}: source folder {src} does not exist")
    if src.is_file() and src.name in names:
        return src
    for name in names:
        for cand in (src / name, *sorted(src.glob(f"*/{name}"))):
            if cand.is_file():
                return cand
    raise FileNotFoundError(
        f"{dataset}: expected {' or '.join(repr(n) for n in names)} in {src} (or one folder below); "
        f"{hint or 'point SRC at the folder of the official release'}"
    )


def read_table(path: Path, dataset: str) -> pd.DataFrame:
    """Read a CSV (any delimiter) or an Excel sheet as strings; empty cells become ''."""
    suffix = path.suffix.lower()
    if suffix in (".xls", ".xlsx"):
        try:
            df = pd.read_excel(path, dtype=str)
        except ImportError as e:  # xlrd / openpyxl are optional
            raise ImportError(
                f"{dataset}: reading {path.name} needs 'xlrd' (.xls) or 'openpyxl' (.xlsx): pip install xlrd openpyxl, "
                f"or save the sheet as CSV next to it"
            ) from e
    else:
        df = pd.read_csv(path, dtype=str, sep=None, engine="python", keep_default_na=False)
    df.columns = [str(c).strip() for c in df.columns]
    return df.fillna("").apply(lambda s: s.str.strip())


def pick_column(df: pd.DataFrame, names: tuple[str, ...], dataset: str, file: str, required: bool = True) -> str | None:
    """The first of ``names`` present in ``df`` (case-insensitive); raise ValueError if required and absent."""
    lower = {c.lower(): c for c in df.columns}
    for n in names:
        if n.lower() in lower:
            return lower[n.lower()]
    if required:
        raise ValueError(
            f"{dataset}: {file} has no column {' / '.join(repr(n) for n in names)}; found {list(df.columns)}. "
            f"Is this the official label file?"
        )
    return None


def numeric_density(value: object) -> str:
    """BI-RADS density coded 1-4 (also '1.0', 'DENSITY A', 'a') -> 'A'-'D'; anything else -> ''."""
    s = str(value).strip().upper().removeprefix("DENSITY").strip()
    if s in DENSITY_CLASSES:
        return s
    try:
        f = float(s)
    except ValueError:
        return ""
    return _NUMERIC_DENSITY.get(str(int(f)), "") if f == int(f) else ""


def laterality(value: object) -> str:
    """'L'/'LEFT'/'l' -> 'L', 'R'/'RIGHT' -> 'R', anything else -> ''."""
    s = str(value).strip().upper()
    return {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}.get(s, "")


def view(value: object) -> str:
    """A view code from ``constants.VIEWS`` (case-insensitive); unknown non-empty -> 'OTHER'."""
    s = str(value).strip().upper()
    if not s:
        return ""
    return s if s in VIEWS else "OTHER"


def add_report(row: dict, facts: dict, report_id: str) -> dict:
    """Write structured report text from the annotations ``facts`` into ``row`` (``report``, ``report_id``,
    ``report_source = "annotations"``); the phrasing is chosen by ``report_id``, so it is the same on
    every import."""
    row["report"] = annotation_report(facts, stable_seed(report_id))
    row["report_id"] = report_id
    row["report_source"] = "annotations"
    return row


def finish(rows: list[dict], dataset: str, errors: list[RowError], extra_order: tuple[str, ...] = ()) -> pd.DataFrame:
    """Build, order and validate the manifest; errors go to ``df.attrs['errors']`` and the log."""
    df = pd.DataFrame(rows)
    if "age" in df.columns and df["age"].isna().all():
        df = df.drop(columns="age")  # the source has no ages: absent, not a column of NaN
    for c in MANIFEST_REQUIRED:
        if c not in df.columns:
            df[c] = pd.Series(dtype="string")
    rest = [c for c in extra_order if c in df.columns] + [
        c for c in df.columns if c not in MANIFEST_REQUIRED and c not in extra_order
    ]
    df = validate_manifest(df[list(MANIFEST_REQUIRED) + rest].reset_index(drop=True), source=f"<{dataset} import>")
    if errors:
        n_skip = sum(e.skipped for e in errors)
        log.warning("%s: %d row issue(s) (%d skipped); first: file %s row %d: %s", dataset, len(errors), n_skip,
                    errors[0].file, errors[0].row, errors[0].reason)
    df.attrs["errors"] = list(errors)
    df.attrs["dataset"] = dataset
    return df
