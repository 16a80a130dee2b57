"""The manifest: one row per image, the contract between ingest/import and everything downstream.

Columns (see ``constants.MANIFEST_REQUIRED``): ``image_path, patient_id, study_id, laterality (L/R),
view (CC/MLO/...), modality (DM/s2D/DBT), manufacturer, density (A-D or empty)``; optional
``age, race, site, split, frame, fold`` and any task label columns. Report columns (optional):
``report`` (free text; exam-level text is repeated on every view of the exam), ``report_id`` and
``report_source`` (one of ``REPORT_SOURCES``). Lesion geometry (optional): ``lesion_x, lesion_y,
lesion_r`` (pixels, origin top-left, in the image as stored; NaN when none), ``lesion_mask`` (path of a mask
image at the image's size, non-zero = lesion, resolved like ``image_path``; "" when none) and
``lesion_mask_kind`` (``exact`` outline, or ``circle``/``box``: a weak mask drawn from coordinates).
Report text is patient data: validation never quotes it and evaluation outputs drop it
(:func:`without_report_text`). Paths may be absolute or relative
to the manifest's folder (``resolve_paths``). Parquet is the native format; CSV is accepted.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import pandas as pd

from mammolens.constants import DENSITY_CLASSES, LATERALITIES, MANIFEST_REQUIRED, MODALITIES


REPORT_COLUMNS = ("report", "report_id", "report_source")
REPORT_SOURCES = ("annotations", "synthetic", "free-text", "")
"""Where report text comes from: dataset annotations written as text, the synthetic cohort, real reports."""
REPORT_TEXT_COLUMNS = ("report",)
"""Columns holding report text: they never leave the machine (dropped from evaluation outputs)."""
LESION_COLUMNS = ("lesion_x", "lesion_y", "lesion_r")


def without_report_text(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` without the report text columns (for anything written as a research output)."""
    return df.drop(columns=[c for c in REPORT_TEXT_COLUMNS if c in df.columns])


class ManifestError(ValueError):
    """A manifest failed validation; ``problems`` lists each (row, column, message)."""

    def __init__(self, source: str, problems: list[tuple[object, str, str]]):
        self.problems = problems
        shown = "\n".join(f"  row {r}, column {c!r}: {m}" for r, c, m in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"invalid manifest {source}: {len(problems)} problem(s)\n{shown}{more}")


def empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="string") for c in MANIFEST_REQUIRED})


def validate_manifest(df: pd.DataFrame, source: str = "<DataFrame>", require_density: bool = False) -> pd.DataFrame:
    """Check the schema and values; return a normalised copy (string columns, '' for missing density).

    Raises:
        ManifestError: naming the row and column of every problem found.
    """
    problems: list[tuple[object, str, str]] = []
    missing = [c for c in MANIFEST_REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(source, [("-", c, "required column is missing") for c in missing])
    out = df.copy()
    for col in ("image_path", "patient_id", "study_id", "laterality", "view", "modality", "manufacturer", "density"):
        out[col] = out[col].astype("string").fillna("")
    for idx, value in out["image_path"].items():
        if not value:
            problems.append((idx, "image_path", "empty path"))
    for idx, value in out["patient_id"].items():
        if not value:
            problems.append((idx, "patient_id", "empty patient id (needed for patient-level splits)"))
    for col, allowed in (("laterality", LATERALITIES), ("modality", MODALITIES)):
        bad = ~out[col].isin(allowed + ("",))
        for idx, value in out.loc[bad, col].items():
            problems.append((idx, col, f"{value!r} is not one of {', '.join(allowed)} (or empty)"))
    bad = ~out["density"].isin(DENSITY_CLASSES + ("",))
    for idx, value in out.loc[bad, "density"].items():
        problems.append((idx, "density", f"{value!r} is not one of {', '.join(DENSITY_CLASSES)} (or empty)"))
    if require_density:
        for idx in out.index[out["density"] == ""]:
            problems.append((idx, "density", "missing, but this step needs a density label"))
    for col in ("report", "report_id", "report_source", "lesion_mask"):
        if col in out.columns:
            out[col] = out[col].astype("string").fillna("")
    if "report_source" in out.columns:
        bad = ~out["report_source"].isin(REPORT_SOURCES)
        for idx, value in out.loc[bad, "report_source"].items():
            problems.append((idx, "report_source", f"{value!r} is not one of {', '.join(REPORT_SOURCES[:-1])} "
                                                   f"(or empty)"))
    for col in LESION_COLUMNS:
        if col in out.columns:
            num = pd.to_numeric(out[col], errors="coerce")
            bad = (out[col].notna() & num.isna() & (out[col].astype("string").fillna("") != "")) | (num < 0)
            for idx, value in out.loc[bad, col].items():
                problems.append((idx, col, f"{value!r} is not a pixel coordinate (a number >= 0, or empty)"))
            out[col] = num.astype(float)
    if "age" in out.columns:
        age = pd.to_numeric(out["age"], errors="coerce")
        bad = (out["age"].notna() & age.isna()) | (age < 0) | (age > 120)
        for idx, value in out.loc[bad, "age"].items():
            problems.append((idx, "age", f"{value!r} is not an age in years (0-120)"))
        out["age"] = age
    if problems:
        raise ManifestError(source, problems)
    return out


def read_manifest(path: str | PathLike, validate: bool = True, resolve_paths: bool = True) -> pd.DataFrame:
    """Read a manifest (.parquet or .csv); relative image paths are resolved against its folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest not found: {path}")
    if path.suffix.lower() == ".csv":
        text_cols = {c: str for c in ("patient_id", "study_id", "density", "report", "report_id")}
        _check_delimiter(path)
        df = pd.read_csv(path, dtype=text_cols, keep_default_na=False)
    elif path.suffix.lower() in (".parquet", ".pq"):
        _check_parquet(path)
        df = pd.read_parquet(path)
    else:
        raise ValueError(f"{path}: a manifest must be .parquet or .csv, got {path.suffix!r}")
    if validate:
        df = validate_manifest(df, source=str(path))
    if resolve_paths:
        root = path.resolve().parent
        df["image_path"] = [p if Path(p).is_absolute() else str(root / p) for p in df["image_path"]]
        if "lesion_mask" in df.columns:  # mask files resolve like images ("" = no mask)
            df["lesion_mask"] = [p if not p or Path(p).is_absolute() else str(root / p)
                                 for p in df["lesion_mask"].astype("string").fillna("")]
    return df


def _check_delimiter(path: Path) -> None:
    """A CSV whose header line has no comma but semicolons (or tabs) was written with another delimiter (a
    spreadsheet in a comma-decimal locale): say so, instead of a parser error or "required column is missing"."""
    with open(path, encoding="utf-8", errors="replace") as f:
        name = f.readline().strip()
    if "," in name:
        return
    for sep, what in ((";", "semicolon"), ("\t", "tab")):
        if sep in name:
            raise ValueError(f"{path}: this CSV is {what}-delimited (header {name[:60]!r}); mammolens reads "
                             "comma-separated manifests: save it with commas (pandas: df.to_csv(path, index=False)).")


def _check_parquet(path: Path) -> None:
    """A file named ``.parquet`` that is not Parquet (no ``PAR1`` magic): name what it is."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:4] == b"PAR1":
        return
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace")
    if b"\0" not in head and ("," in first or ";" in first or "\t" in first):
        raise ValueError(f"{path}: this file is a CSV (text) named .parquet, not Parquet; rename it to "
                         f"{path.with_suffix('.csv').name} (mammolens reads both).")
    raise ValueError(f"{path}: not a Parquet file (it does not start with the Parquet magic bytes); pass a "
                     ".parquet written by pandas/pyarrow or a .csv.")


def write_manifest(df: pd.DataFrame, path: str | PathLike) -> Path:
    """Validate and write (format by suffix). Returns the path written."""
    path = Path(path)
    df = validate_manifest(df, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path
