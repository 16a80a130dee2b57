"""CBIS-DDSM (Curated Breast Imaging Subset of DDSM, TCIA).

Source layout (official release)::

    SRC/mass_case_description_train_set.csv   SRC/mass_case_description_test_set.csv
    SRC/calc_case_description_train_set.csv   SRC/calc_case_description_test_set.csv
    SRC/<image file path>                     e.g. Mass-Training_P_00001_LEFT_CC/1.3.6.../1.3.6.../000000.dcm
    (or SRC/CBIS-DDSM/<image file path>; the NBIA downloader writes
     SRC/CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/<date>-DDSM-NNNNN/
     1.000000-full mammogram images-NNNNN/1-1.dcm instead, which is found by searching the case folder
     for its full-mammogram series)

Columns used: ``patient_id``, ``breast density`` (calc files) or ``breast_density`` (mass files),
``left or right breast`` (LEFT/RIGHT), ``image view`` (CC/MLO), ``abnormality type`` (mass/calcification),
``pathology`` (MALIGNANT, BENIGN, BENIGN_WITHOUT_CALLBACK), ``assessment`` (BI-RADS), ``image file path``.
At least one of the four CSVs must be present; missing ones are skipped.

Mapping:
    * One manifest row per image: the CSVs have one row per abnormality, and a mass and a calcification
      case of the same breast and view are the same DDSM film stored twice, so rows are deduplicated by
      (patient, side, view); the first image path is kept.
    * ``density``: ACR/BI-RADS density 1-4 -> A-D (DDSM used the 4th-edition ACR categories 1-4, which
      correspond to the composition classes a-d); other values (e.g. 0) -> empty, reported.
    * ``pathology``: malignant if any abnormality on the image is MALIGNANT, else benign
      (BENIGN_WITHOUT_CALLBACK -> benign); ``birads``: the highest ``assessment`` of the image;
      ``abnormality``: mass, calcification or mass+calcification.
    * ``report`` (``report_source`` "annotations", ``report_id`` "cbis-<patient>-<side>-<view>"): structured
      text from the image's rows: density, side, abnormality, ``mass shape``/``mass margins`` and
      ``calc type``/``calc distribution`` (first non-empty value per image), pathology and BI-RADS.
    * ``split``: train/test from the file of the first row kept (mass and calc splits were drawn
      separately, so a few patients are "train" in one and "test" in the other: prefer
      ``data.splits.patient_kfold`` for patient-level evaluation).
    * ``study_id`` = patient (one DDSM case per patient id); ``modality`` "DM", ``manufacturer``
      "film-digitised (DDSM)": scanned film, not digital acquisitions.

Citation: R S Lee et al. (2017) "A curated mammography data set for use in computer-aided detection and
diagnosis research", Scientific Data 4:170177; TCIA doi:10.7937/K9/TCIA.2016.7O02S9CY.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mammolens.data.adapters._common import (
    RowError,
    add_report,
    finish,
    laterality,
    numeric_density,
    pick_column,
    read_table,
    view,
)

NAME = "cbis-ddsm"
MANUFACTURER = "film-digitised (DDSM)"
FILES = (
    "mass_case_description_train_set.csv",
    "mass_case_description_test_set.csv",
    "calc_case_description_train_set.csv",
    "calc_case_description_test_set.csv",
)


def _resolve(src: Path, rel: str) -> Path | None:
    rel = rel.strip().replace("\\", "/")
    for root in (src, src / "CBIS-DDSM"):
        if (root / rel).is_file():
            return (root / rel).resolve()
    case = rel.split("/")[0]
    for root in (src, src / "CBIS-DDSM"):
        if (root / case).is_dir():
            hits = sorted((root / case).glob("*/*full mammogram*/*.dcm")) or sorted((root / case).rglob("*.dcm"))
            if len(hits) == 1:
                return hits[0].resolve()
    return None


_NOT_FOUND = ("image file not found under SRC or SRC/CBIS-DDSM: download the image folders "
              "(e.g. Mass-Training_P_00001_LEFT_CC/) from TCIA next to the CSVs")


def load(src: str | Path, check_files: bool = True) -> pd.DataFrame:
    """Map the CBIS-DDSM case description CSVs to a manifest (one row per image).

    Args:
        src: folder holding the CSVs (and the images).
        check_files: resolve every image on disk (also the NBIA download layout); images not found are
            reported and skipped. With False the CSV paths are kept as they are, relative to ``src``.

    Returns:
        The validated manifest; ``df.attrs["errors"]`` lists rows skipped or partly mapped.
    """
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{NAME}: source folder {src} does not exist")
    found = [p for n in FILES for p in (src / n, src / "CBIS-DDSM" / n) if p.is_file()]
    if not found:
        raise FileNotFoundError(f"{NAME}: expected one of {', '.join(FILES)} in {src}; download the CSVs from TCIA")
    errors: list[RowError] = []
    images: dict[tuple[str, str, str], dict] = {}
    descriptors: dict[tuple[str, str, str], dict] = {}
    for csv in found:
        df = read_table(csv, NAME)
        c_pid = pick_column(df, ("patient_id",), NAME, csv.name)
        c_den = pick_column(df, ("breast density", "breast_density"), NAME, csv.name)
        c_lat = pick_column(df, ("left or right breast",), NAME, csv.name)
        c_view = pick_column(df, ("image view",), NAME, csv.name)
        c_path = pick_column(df, ("image file path",), NAME, csv.name)
        c_pat = pick_column(df, ("pathology",), NAME, csv.name)
        c_type = pick_column(df, ("abnormality type",), NAME, csv.name, required=False)
        c_bir = pick_column(df, ("assessment",), NAME, csv.name, required=False)
        c_desc = {k: pick_column(df, (k.replace("_", " "),), NAME, csv.name, required=False)
                  for k in ("mass_shape", "mass_margins", "calc_type", "calc_distribution")}
        kind = "calcification" if csv.name.startswith("calc") else "mass"
        split = "test" if "test" in csv.name else "train"
        for i, r in enumerate(df.to_dict("records")):
            lat, vw, pid = laterality(r[c_lat]), view(r[c_view]), r[c_pid]
            if not (pid and lat and vw and r[c_path]):
                errors.append(RowError(NAME, csv.name, i, "missing patient id, side, view or image path"))
                continue
            key = (pid, lat, vw)
            malignant = r[c_pat].upper() == "MALIGNANT"
            abn = (r[c_type] if c_type else kind).lower() or kind
            for k, col in c_desc.items():
                if col and r[col] and not descriptors.setdefault(key, {}).get(k):
                    descriptors[key][k] = r[col]  # the first described abnormality of the image
            if key in images:
                rec = images[key]
                rec["pathology"] = "malignant" if malignant or rec["pathology"] == "malignant" else "benign"
                if abn not in rec["abnormality"].split("+"):
                    rec["abnormality"] = "+".join(sorted([*rec["abnormality"].split("+"), abn], reverse=True))
                if c_bir and r[c_bir] > rec["birads"]:
                    rec["birads"] = r[c_bir]  # the image's highest assessment (single digits 0-5)
                continue
            density = numeric_density(r[c_den])
            if not density:
                errors.append(RowError(NAME, csv.name, i, f"density {r[c_den]!r} is not 1-4; kept empty", False))
            if check_files:
                path = _resolve(src, r[c_path])
                if path is None:
                    errors.append(RowError(NAME, csv.name, i, _NOT_FOUND))
                    continue
                path_s = str(path)
            else:
                path_s = str((src / r[c_path].strip()).resolve())
            images[key] = {
                "image_path": path_s,
                "patient_id": pid,
                "study_id": pid,
                "laterality": lat,
                "view": vw,
                "modality": "DM",
                "manufacturer": MANUFACTURER,
                "density": density,
                "split": split,
                "pathology": "malignant" if malignant else "benign",
                "abnormality": abn,
                "birads": r[c_bir] if c_bir else "",
            }
    for key, rec in images.items():
        facts = {**descriptors.get(key, {}), "density": rec["density"], "laterality": rec["laterality"],
                 "abnormality": rec["abnormality"], "pathology": rec["pathology"], "birads": rec["birads"]}
        add_report(rec, facts, "cbis-" + "-".join(key))
    return finish(list(images.values()), NAME, errors, extra_order=("split", "pathology", "abnormality"))
