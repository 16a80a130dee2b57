"""EMBED (Emory Breast Imaging Dataset), open-data release.

Source layout (official release)::

    SRC/EMBED_OpenData_clinical.csv   one row per finding: empi_anon, acc_anon, side (L/R/B or empty),
                                      asses (BI-RADS letter), tissueden (1-4; 5 = male), age_at_study,
                                      RACE_DESC, ETHNICITY_DESC (or ETHNIC_GROUP_DESC), ...
    SRC/EMBED_OpenData_metadata.csv   one row per image: empi_anon, acc_anon, anon_dicom_path,
                                      ImageLateralityFinal (L/R), ViewPosition, FinalImageType ('2D',
                                      'cview', ...), Manufacturer, spot_mag, ...
    SRC/<anon_dicom_path minus path_prefix>, e.g. SRC/cohort_1/<empi>/<study>/<image>.dcm

Mapping:
    * Join image metadata to clinical rows on ``acc_anon`` and side: clinical rows whose ``side`` is the
      image's laterality, 'B' (both) or empty; if none, any row of the exam. ``tissueden`` is an exam-level
      field repeated on every finding row; the first valid value is used.
    * ``density``: tissueden 1-4 -> A-D (BI-RADS 5th edition); 5 (male patient) and empty -> empty.
    * ``modality``: FinalImageType '2D' -> DM, 'cview' (Hologic C-View synthesized 2D) -> s2D; other types
      (ROI/secondary captures) are skipped and reported. Spot-compression/magnification views
      (``spot_mag`` = 1) are skipped and reported unless ``exclude_spot_mag=False``.
    * ``patient_id`` = empi_anon, ``study_id`` = acc_anon, ``manufacturer`` = Manufacturer,
      ``age`` = age_at_study, ``race`` = RACE_DESC (as written by EMBED, e.g. 'African American or Black',
      'Caucasian or White'), ``ethnicity`` = ETHNICITY_DESC, ``asses`` = BI-RADS assessment letter.
    * ``report`` (``report_source`` "annotations", ``report_id`` "embed-<acc_anon>-<side>", one per breast):
      structured text from density, side and the assessment (``asses`` letters A N B P S M K -> BI-RADS
      0 1 2 3 4 5 6). The finding descriptors of the clinical table are not used yet.
    * ``image_path``: ``anon_dicom_path`` is an absolute path on Emory's storage; ``path_prefix`` is removed
      and the rest is joined to SRC. Paths not starting with the prefix are joined to SRC as they are.

Citation: J J Jeong et al. (2023) "The EMory BrEast imaging Dataset (EMBED): A Racially Diverse, Granular
Dataset of 3.4 Million Screening and Diagnostic Mammographic Images", Radiology: Artificial Intelligence
5(1):e220047. Access under the EMBED data use agreement.
"""

from __future__ import annotations

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

NAME = "embed"
CLINICAL = "EMBED_OpenData_clinical.csv"
METADATA = "EMBED_OpenData_metadata.csv"
IMAGE_TYPES = {"2D": "DM", "CVIEW": "s2D"}
ASSESSMENT_BIRADS = {"A": "0", "N": "1", "B": "2", "P": "3", "S": "4", "M": "5", "K": "6"}
DEFAULT_PREFIX = "/mnt/NAS2/mammo/anon_dicom/"


def _first(values) -> str:
    return next((v for v in values if v), "")


def load(
    src: str | Path,
    path_prefix: str = DEFAULT_PREFIX,
    exclude_spot_mag: bool = True,
    check_files: bool = False,
) -> pd.DataFrame:
    """Map EMBED's clinical and metadata CSVs to a manifest (one row per 2D / C-View image).

    Args:
        src: folder holding both CSVs; images are looked up under it (see ``path_prefix``).
        path_prefix: leading part of ``anon_dicom_path`` to replace by ``src``.
        exclude_spot_mag: skip spot-compression and magnification views.
        check_files: skip (and report) images missing on disk (off by default: EMBED has millions of files
            and is often used partially mounted).

    Returns:
        The validated manifest; ``df.attrs["errors"]`` lists rows skipped or partly mapped.
    """
    src = Path(src)
    clin_path = find_file(src, (CLINICAL,), NAME, "request EMBED open data access and download both CSVs")
    meta_path = find_file(src, (METADATA,), NAME, "request EMBED open data access and download both CSVs")
    root = meta_path.parent.resolve()
    clin = read_table(clin_path, NAME)
    meta = read_table(meta_path, NAME)
    cc = {k: pick_column(clin, (k,), NAME, clin_path.name) for k in ("acc_anon", "tissueden")}
    c_side = pick_column(clin, ("side",), NAME, clin_path.name, required=False)
    c_age = pick_column(clin, ("age_at_study",), NAME, clin_path.name, required=False)
    c_race = pick_column(clin, ("RACE_DESC",), NAME, clin_path.name, required=False)
    c_eth = pick_column(clin, ("ETHNICITY_DESC", "ETHNIC_GROUP_DESC"), NAME, clin_path.name, required=False)
    c_ass = pick_column(clin, ("asses",), NAME, clin_path.name, required=False)
    mc = {k: pick_column(meta, (k,), NAME, meta_path.name) for k in
          ("empi_anon", "acc_anon", "anon_dicom_path", "ImageLateralityFinal", "ViewPosition", "FinalImageType")}
    m_man = pick_column(meta, ("Manufacturer",), NAME, meta_path.name, required=False)
    m_spot = pick_column(meta, ("spot_mag",), NAME, meta_path.name, required=False)

    by_exam: dict[str, list[dict]] = {}
    for r in clin.to_dict("records"):
        by_exam.setdefault(r[cc["acc_anon"]], []).append(r)

    errors: list[RowError] = []
    rows = []
    for i, r in enumerate(meta.to_dict("records")):
        modality = IMAGE_TYPES.get(r[mc["FinalImageType"]].upper())
        if modality is None:
            errors.append(RowError(NAME, meta_path.name, i, f"FinalImageType {r[mc['FinalImageType']]!r} skipped"))
            continue
        if exclude_spot_mag and m_spot and r[m_spot] not in ("", "0", "0.0", "False", "nan"):
            errors.append(RowError(NAME, meta_path.name, i, "spot compression / magnification view skipped"))
            continue
        lat, pid, acc = laterality(r[mc["ImageLateralityFinal"]]), r[mc["empi_anon"]], r[mc["acc_anon"]]
        raw = r[mc["anon_dicom_path"]].replace("\\", "/")
        if not (lat and pid and acc and raw):
            errors.append(RowError(NAME, meta_path.name, i, "missing empi_anon, acc_anon, laterality or path"))
            continue
        rel = raw[len(path_prefix):] if path_prefix and raw.startswith(path_prefix) else raw
        path = Path(rel) if Path(rel).is_absolute() else root / rel.lstrip("/")
        if check_files and not path.is_file():
            errors.append(RowError(NAME, meta_path.name, i, "DICOM file not found (check path_prefix)"))
            continue
        exam = by_exam.get(acc, [])
        if not exam:
            errors.append(RowError(NAME, meta_path.name, i, "no clinical row for this exam; density empty", False))
        sided = [c for c in exam if not c_side or c[c_side].upper() in (lat, "B", "")] or exam
        density = numeric_density(_first(c[cc["tissueden"]] for c in sided))
        age = pd.to_numeric(_first(c[c_age] for c in exam) if c_age else "", errors="coerce")
        asses = _first(c[c_ass] for c in sided) if c_ass else ""
        facts = {"density": density, "laterality": lat, "birads": ASSESSMENT_BIRADS.get(asses.upper(), "")}
        rows.append(add_report(
            {
                "image_path": str(path),
                "patient_id": pid,
                "study_id": acc,
                "laterality": lat,
                "view": view(r[mc["ViewPosition"]]),
                "modality": modality,
                "manufacturer": r[m_man] if m_man else "",
                "density": density,
                "age": float(age),
                "race": _first(c[c_race] for c in exam) if c_race else "",
                "ethnicity": _first(c[c_eth] for c in exam) if c_eth else "",
                "asses": asses,
            }, facts, f"embed-{acc}-{lat}"))
    return finish(rows, NAME, errors, extra_order=("age", "race", "ethnicity"))
