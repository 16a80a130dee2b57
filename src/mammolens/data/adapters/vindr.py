"""VinDr-Mammo (PhysioNet, 5,000 four-view exams from Vietnam).

Source layout (official release)::

    SRC/breast-level_annotations.csv   study_id, series_id, laterality (L/R), view_position (CC/MLO),
                                       height, width, breast_birads ('BI-RADS 1'..'BI-RADS 5'),
                                       breast_density ('DENSITY A'..'DENSITY D'), split (training/test),
                                       image_id
    SRC/images/<study_id>/<image_id>.dicom
    SRC/metadata.csv                   optional; when it has 'SOP Instance UID' matching image_id and
                                       'Manufacturer' / "Patient's Age", those fill manufacturer and age

Mapping:
    * ``patient_id`` = ``study_id``: VinDr-Mammo publishes no patient identifier (one exam per woman in
      the release), so the study is the grouping unit for patient-level splits.
    * ``density``: 'DENSITY A'..'DENSITY D' -> A-D (BI-RADS 5th edition, as annotated by the radiologists);
      anything else -> empty, reported.
    * ``birads``: 'BI-RADS 4' -> '4'. ``split``: training -> train, test -> test (the official split).
    * ``report`` (``report_source`` "annotations", ``report_id`` "vindr-<image_id>"): structured text from
      density, side, BI-RADS and, when ``finding_annotations.csv`` is present, the image's
      ``finding_categories`` (e.g. "['Mass', 'Suspicious Calcification']"; "No Finding" -> normal).
    * ``modality`` "DM"; ``manufacturer`` from metadata.csv when available, else "" (not in the label file).

Citation: H T Nguyen et al. (2023) "VinDr-Mammo: A large-scale benchmark dataset for computer-aided
diagnosis in full-field digital mammography", Scientific Data 10:277; PhysioNet doi:10.13026/br2v-7517.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from mammolens.data.adapters._common import (
    RowError,
    add_report,
    find_file,
    finish,
    laterality,
    numeric_density,
    pick_column,
    read_table,
    view,
)

NAME = "vindr"
LABELS = "breast-level_annotations.csv"


def _metadata(folder: Path) -> dict[str, dict]:
    path = folder / "metadata.csv"
    if not path.is_file():
        return {}
    meta = read_table(path, NAME)
    c_uid = pick_column(meta, ("SOP Instance UID", "image_id"), NAME, path.name, required=False)
    if c_uid is None:
        return {}
    c_man = pick_column(meta, ("Manufacturer",), NAME, path.name, required=False)
    c_age = pick_column(meta, ("Patient's Age", "PatientAge"), NAME, path.name, required=False)
    out = {}
    for r in meta.to_dict("records"):
        age = re.match(r"^0*(\d+)Y?$", r[c_age]) if c_age else None
        out[r[c_uid]] = {"manufacturer": r[c_man] if c_man else "", "age": float(age.group(1)) if age else None}
    return out


def _findings(folder: Path) -> dict[str, list[str]]:
    """image_id -> finding categories from ``finding_annotations.csv`` (optional file)."""
    path = folder / "finding_annotations.csv"
    if not path.is_file():
        return {}
    table = read_table(path, NAME)
    c_img = pick_column(table, ("image_id",), NAME, path.name, required=False)
    c_cat = pick_column(table, ("finding_categories",), NAME, path.name, required=False)
    if c_img is None or c_cat is None:
        return {}
    out: dict[str, list[str]] = {}
    for r in table.to_dict("records"):
        cats = re.findall(r"[A-Za-z][A-Za-z ]*[A-Za-z]", r[c_cat])  # "['Mass', 'Focal Asymmetry']"
        seen = out.setdefault(r[c_img], [])
        seen.extend(c for c in cats if c not in seen)
    return out


def load(src: str | Path, check_files: bool = True) -> pd.DataFrame:
    """Map VinDr-Mammo's breast-level annotations to a manifest (one row per image).

    Args:
        src: folder holding ``breast-level_annotations.csv`` and ``images/``.
        check_files: skip (and report) rows whose DICOM file is missing.

    Returns:
        The validated manifest; ``df.attrs["errors"]`` lists rows skipped or partly mapped.
    """
    src = Path(src)
    labels = find_file(src, (LABELS,), NAME, "download it with the images from PhysioNet (vindr-mammo)")
    root = labels.parent.resolve()
    df = read_table(labels, NAME)
    cols = {k: pick_column(df, (k,), NAME, labels.name) for k in
            ("study_id", "image_id", "laterality", "view_position", "breast_density", "split")}
    c_bir = pick_column(df, ("breast_birads",), NAME, labels.name, required=False)
    meta = _metadata(root)
    findings = _findings(root)
    errors: list[RowError] = []
    rows = []
    for i, r in enumerate(df.to_dict("records")):
        study, image = r[cols["study_id"]], r[cols["image_id"]]
        lat = laterality(r[cols["laterality"]])
        if not (study and image and lat):
            errors.append(RowError(NAME, labels.name, i, "missing study_id, image_id or laterality"))
            continue
        path = root / "images" / study / f"{image}.dicom"
        if check_files and not path.is_file():
            errors.append(RowError(NAME, labels.name, i, "DICOM file images/<study_id>/<image_id>.dicom not found"))
            continue
        density = numeric_density(r[cols["breast_density"]])
        if not density:
            errors.append(RowError(NAME, labels.name, i, f"density {r[cols['breast_density']]!r} not A-D; kept empty",
                                   False))
        m = meta.get(image, {})
        split = r[cols["split"]].lower()
        birads = re.sub(r"(?i)^bi-?rads\s*", "", r[c_bir]) if c_bir else ""
        facts = {"density": density, "laterality": lat, "birads": birads}
        if image in findings:
            facts["abnormality"] = findings[image]
        rows.append(add_report(
            {
                "image_path": str(path),
                "patient_id": study,
                "study_id": study,
                "laterality": lat,
                "view": view(r[cols["view_position"]]),
                "modality": "DM",
                "manufacturer": m.get("manufacturer", ""),
                "density": density,
                "age": m.get("age"),
                "split": {"training": "train", "train": "train", "test": "test"}.get(split, split),
                "birads": birads,
                "image_id": image,
            }, facts, f"vindr-{image}"))
    return finish(rows, NAME, errors, extra_order=("age", "split", "birads"))
