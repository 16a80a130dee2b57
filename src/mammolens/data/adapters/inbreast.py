"""INbreast (Centro Hospitalar de S. Joao, Porto; 410 full-field digital mammograms, Siemens).

Source layout (official release)::

    SRC/INbreast.csv (';'-separated) or SRC/INbreast.xls   columns 'Patient ID', 'Patient age',
        'Laterality' (L/R), 'View' (CC/MLO), 'Acquisition date', 'File Name', 'ACR' (1-4), 'Bi-Rads'
    SRC/AllDICOMs/<File Name>_<patient hash>_MG_<L|R>_<CC|ML>_ANON.dcm

Mapping:
    * Images are matched by the leading ``File Name`` token of the DICOM name.
    * ``patient_id``: 'Patient ID' when given; the release replaces it by 'removed', so the patient hash
      (second token of the DICOM name) is used instead. ``study_id`` = patient + acquisition date.
    * ``density``: ACR 1-4 -> A-D (ACR/BI-RADS 4th-edition density categories as graded in INbreast);
      empty or other values -> empty, reported.
    * ``birads`` = 'Bi-Rads' as written (e.g. '4c'); ``age`` from 'Patient age' when numeric;
      ``modality`` "DM", ``manufacturer`` "SIEMENS" (all images: MammoNovation).
    * ``report`` (``report_source`` "annotations", ``report_id`` "inbreast-<File Name>"): structured text
      from density, side and BI-RADS.
    * Reading ``INbreast.xls`` needs ``xlrd``; the CSV needs nothing extra and is preferred when both exist.

Citation: I C Moreira et al. (2012) "INbreast: toward a full-field digital mammographic database",
Academic Radiology 19(2):236-248.
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

NAME = "inbreast"
MANUFACTURER = "SIEMENS"


def load(src: str | Path) -> pd.DataFrame:
    """Map the INbreast label sheet and ``AllDICOMs/`` to a manifest (one row per image).

    Args:
        src: folder holding ``INbreast.csv`` (or ``.xls``) and ``AllDICOMs/``.

    Returns:
        The validated manifest; ``df.attrs["errors"]`` lists rows skipped or partly mapped.
    """
    src = Path(src)
    labels = find_file(src, ("INbreast.csv", "INbreast.xls", "INbreast.xlsx"), NAME,
                       "the release ships INbreast.csv/.xls next to AllDICOMs/")
    root = labels.parent.resolve()
    dicom_dir = root / "AllDICOMs"
    if not dicom_dir.is_dir():
        raise FileNotFoundError(f"{NAME}: expected the image folder {dicom_dir} (AllDICOMs/ of the release)")
    files: dict[str, Path] = {}
    for p in sorted(dicom_dir.glob("*.dcm")):
        files.setdefault(p.name.split("_")[0], p)
    df = read_table(labels, NAME)
    c = {k: pick_column(df, (k,), NAME, labels.name) for k in ("Laterality", "View", "File Name", "ACR")}
    c_pid = pick_column(df, ("Patient ID",), NAME, labels.name, required=False)
    c_age = pick_column(df, ("Patient age",), NAME, labels.name, required=False)
    c_date = pick_column(df, ("Acquisition date",), NAME, labels.name, required=False)
    c_bir = pick_column(df, ("Bi-Rads",), NAME, labels.name, required=False)
    errors: list[RowError] = []
    rows = []
    for i, r in enumerate(df.to_dict("records")):
        name = r[c["File Name"]].removesuffix(".0")
        if not name:
            continue  # blank spreadsheet line
        path = files.get(name)
        if path is None:
            errors.append(RowError(NAME, labels.name, i, "no AllDICOMs/<File Name>_*.dcm file"))
            continue
        parts = path.stem.split("_")
        given = r[c_pid] if c_pid else ""
        pid = given if given and given.lower() != "removed" else (parts[1] if len(parts) > 1 else name)
        lat = laterality(r[c["Laterality"]]) or (laterality(parts[3]) if len(parts) > 3 else "")
        if not lat:
            errors.append(RowError(NAME, labels.name, i, "laterality is not L or R"))
            continue
        density = numeric_density(r[c["ACR"]])
        if not density:
            errors.append(RowError(NAME, labels.name, i, f"ACR {r[c['ACR']]!r} is not 1-4; kept empty", False))
        age = pd.to_numeric(r[c_age], errors="coerce") if c_age else float("nan")
        date = r[c_date].removesuffix(".0") if c_date else ""
        birads = r[c_bir] if c_bir else ""
        rows.append(add_report(
            {
                "image_path": str(path.resolve()),
                "patient_id": pid,
                "study_id": f"{pid}_{date}" if date else pid,
                "laterality": lat,
                "view": view(r[c["View"]]),
                "modality": "DM",
                "manufacturer": MANUFACTURER,
                "density": density,
                "age": float(age) if 0 <= age <= 120 else float("nan"),
                "birads": birads,
                "image_id": name,
            }, {"density": density, "laterality": lat, "birads": birads}, f"inbreast-{name}"))
    return finish(rows, NAME, errors, extra_order=("age", "birads"))
