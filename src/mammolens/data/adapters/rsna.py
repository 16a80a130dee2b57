"""RSNA Screening Mammography Breast Cancer Detection (Kaggle 2022/23).

Source layout (official competition data)::

    SRC/train.csv      site_id, patient_id, image_id, laterality (L/R), view (CC/MLO/AT/LM/ML/LMO), age,
                       cancer, biopsy, invasive, BIRADS, implant, density (A-D or empty), machine_id,
                       difficult_negative_case
    SRC/train_images/<patient_id>/<image_id>.dcm
    (test.csv + test_images/ have no labels: ``csv="test.csv", images="test_images"``)

Mapping:
    * ``patient_id`` as given; ``study_id`` = patient (the release has one screening exam per patient and
      no study identifier).
    * ``density``: A-D as given, empty stays empty (about half of the images have no density).
    * ``site`` = ``site_id``; ``manufacturer`` "" (the CSV only has an anonymised ``machine_id``, kept as
      its own column; the vendor is in the DICOM header and filled by ``mammolens ingest``).
    * Task label columns kept: ``cancer`` (0/1), ``biopsy``, ``invasive``, ``birads`` (from BIRADS),
      ``implant``, ``difficult_negative_case``. ``modality`` "DM".

Citation: RSNA Screening Mammography Breast Cancer Detection, Kaggle (2022),
https://www.kaggle.com/competitions/rsna-breast-cancer-detection (data from BreastScreen Victoria and
Emory/EMBED; competition rules govern use).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mammolens.data.adapters._common import (
    RowError,
    find_file,
    finish,
    laterality,
    numeric_density,
    pick_column,
    read_table,
    view,
)

NAME = "rsna"
LABEL_COLUMNS = ("cancer", "biopsy", "invasive", "implant", "difficult_negative_case", "machine_id")


def load(
    src: str | Path, csv: str = "train.csv", images: str = "train_images", check_files: bool = True
) -> pd.DataFrame:
    """Map the RSNA competition CSV to a manifest (one row per image).

    Args:
        src: folder holding ``train.csv`` and ``train_images/``.
        csv: label file name (``test.csv`` for the unlabelled test set).
        images: image folder name next to the CSV.
        check_files: skip (and report) rows whose DICOM file is missing.

    Returns:
        The validated manifest; ``df.attrs["errors"]`` lists rows skipped or partly mapped.
    """
    src = Path(src)
    labels = find_file(src, (csv,), NAME, "download the competition data from Kaggle (rsna-breast-cancer-detection)")
    root = labels.parent.resolve()
    df = read_table(labels, NAME)
    c = {k: pick_column(df, (k,), NAME, labels.name) for k in ("patient_id", "image_id", "laterality", "view")}
    opt = {k: pick_column(df, (k,), NAME, labels.name, required=False) for k in
           ("site_id", "age", "density", "BIRADS", *LABEL_COLUMNS)}
    errors: list[RowError] = []
    rows = []
    for i, r in enumerate(df.to_dict("records")):
        pid, image, lat = r[c["patient_id"]], r[c["image_id"]], laterality(r[c["laterality"]])
        if not (pid and image and lat):
            errors.append(RowError(NAME, labels.name, i, "missing patient_id, image_id or laterality"))
            continue
        path = root / images / pid / f"{image}.dcm"
        if check_files and not path.is_file():
            errors.append(RowError(NAME, labels.name, i, f"DICOM file {images}/<patient_id>/<image_id>.dcm not found"))
            continue
        raw_density = r[opt["density"]] if opt["density"] else ""
        density = numeric_density(raw_density)
        if raw_density and not density:
            errors.append(RowError(NAME, labels.name, i, f"density {raw_density!r} not A-D; kept empty", False))
        age = pd.to_numeric(r[opt["age"]], errors="coerce") if opt["age"] else float("nan")
        row = {
            "image_path": str(path),
            "patient_id": pid,
            "study_id": pid,
            "laterality": lat,
            "view": view(r[c["view"]]),
            "modality": "DM",
            "manufacturer": "",
            "density": density,
            "age": float(age),
            "site": r[opt["site_id"]] if opt["site_id"] else "",
            "birads": r[opt["BIRADS"]].removesuffix(".0") if opt["BIRADS"] else "",
            "image_id": image,
        }
        for k in LABEL_COLUMNS:
            if opt[k]:
                v = pd.to_numeric(r[opt[k]], errors="coerce")
                row[k] = r[opt[k]] if k == "machine_id" else (pd.NA if pd.isna(v) else int(v))
        rows.append(row)
    df_out = finish(rows, NAME, errors, extra_order=("age", "site", "cancer"))
    for k in LABEL_COLUMNS:
        if k in df_out.columns and k != "machine_id":
            df_out[k] = df_out[k].astype("Int64")
    return df_out
