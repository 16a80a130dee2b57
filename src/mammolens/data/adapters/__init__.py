"""Public-dataset adapters: each maps one dataset's own label files and layout to the manifest.

``ADAPTERS`` is the registry (name -> :class:`Adapter`); ``import_dataset(name, src, out)`` runs one and
optionally writes ``out/manifest.parquet`` (+ ``out/errors.csv``). Every adapter module documents the
source layout it expects, its density mapping and the dataset's citation.

Example:
    >>> from mammolens.data.adapters import import_dataset
    >>> df = import_dataset("mias", "data/mini-mias", out="data/mias")  # doctest: +SKIP
    >>> df.attrs["errors"]  # rows skipped or partly mapped (RowError)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import pandas as pd

from mammolens.data.adapters import cbis_ddsm, embed, inbreast, mias, rsna, vindr
from mammolens.data.adapters._common import RowError, errors_frame
from mammolens.data.manifest import write_manifest


@dataclass(frozen=True)
class Adapter:
    """A registered dataset adapter.

    Attributes:
        name: registry name used by ``mammolens import NAME``.
        load: ``load(src, **kw) -> DataFrame`` (validated manifest, ``attrs["errors"]``).
        title: human-readable dataset name.
        expects: the main label file(s) the adapter looks for in SRC.
        label_columns: task label columns the adapter adds besides ``density``.
    """

    name: str
    load: Callable[..., pd.DataFrame]
    title: str
    expects: str
    label_columns: tuple[str, ...] = ()


ADAPTERS: dict[str, Adapter] = {
    a.name: a
    for a in (
        Adapter("mias", mias.load, "mini-MIAS", "Info.txt + images/mdbNNN.png|pgm", ("mias_density", "pathology")),
        Adapter("cbis-ddsm", cbis_ddsm.load, "CBIS-DDSM", "mass_/calc_case_description_{train,test}_set.csv",
                ("pathology",)),
        Adapter("vindr", vindr.load, "VinDr-Mammo", "breast-level_annotations.csv + images/", ("birads",)),
        Adapter("rsna", rsna.load, "RSNA Screening Mammography", "train.csv + train_images/", ("cancer",)),
        Adapter("embed", embed.load, "EMBED", "EMBED_OpenData_clinical.csv + EMBED_OpenData_metadata.csv", ()),
        Adapter("inbreast", inbreast.load, "INbreast", "INbreast.csv|.xls + AllDICOMs/", ("birads",)),
    )
}
_ALIASES = {"mini-mias": "mias", "cbis": "cbis-ddsm", "cbis_ddsm": "cbis-ddsm", "ddsm": "cbis-ddsm",
            "vindr-mammo": "vindr", "rsna-bcd": "rsna"}


def list_adapters() -> list[str]:
    """Names accepted by :func:`import_dataset` (aliases excluded)."""
    return list(ADAPTERS)


def get_adapter(name: str) -> Adapter:
    """Look up an adapter by name or alias (case-insensitive).

    Raises:
        ValueError: unknown name, listing the choices.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in ADAPTERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(ADAPTERS)}")
    return ADAPTERS[key]


def import_dataset(name: str, src: str | PathLike, out: str | PathLike | None = None, **kw) -> pd.DataFrame:
    """Map a public dataset to a manifest and optionally write it.

    Args:
        name: adapter name (``list_adapters()``).
        src: the dataset's folder, as released.
        out: folder to write ``manifest.parquet`` (and ``errors.csv`` when rows were skipped); None writes
            nothing.
        **kw: adapter options (see each module's ``load``), e.g. ``check_files=False``.

    Returns:
        The validated manifest, one row per image; ``df.attrs["errors"]`` holds the :class:`RowError` list.
    """
    adapter = get_adapter(name)
    df = adapter.load(Path(src), **kw)
    if out is not None:
        out = Path(out)
        errors = df.attrs.get("errors", [])
        plain = df.copy(deep=False)
        plain.attrs = {}  # RowErrors go to errors.csv, not into the Parquet metadata
        write_manifest(plain, out / "manifest.parquet")
        err_path = out / "errors.csv"
        if errors:
            from mammolens.csvsafe import write_csv

            write_csv(errors_frame(errors), err_path)
        elif err_path.exists():
            err_path.unlink()  # stale from an earlier import
    return df


def summarize(df: pd.DataFrame, label_columns: tuple[str, ...] = ()) -> dict[str, dict[str, int]]:
    """Counts per value of ``density`` and of each label column present ('' shown as 'missing').

    Returns:
        ``{"images": {"total": N}, "patients": {"total": P}, "density": {...}, <label>: {...}}``.
    """
    out: dict[str, dict[str, int]] = {"images": {"total": len(df)}}
    if "patient_id" in df.columns:
        out["patients"] = {"total": int(df["patient_id"].nunique())}
    for col in ("density", "modality", *label_columns):
        if col in df.columns:
            values = df[col].astype("string").fillna("").replace("", "missing")
            out[col] = {str(k): int(v) for k, v in values.value_counts().sort_index().items()}
    return out


__all__ = ["ADAPTERS", "Adapter", "RowError", "errors_frame", "get_adapter", "import_dataset", "list_adapters",
           "summarize"]
