"""mini-MIAS (Mammographic Image Analysis Society MiniMammographic Database).

Source layout (official release, 322 images)::

    SRC/Info.txt                     README + label table "REFNUM BG CLASS SEVERITY X Y RADIUS"
    SRC/mdbNNN.pgm                   1024x1024 8-bit PGM (original), or
    SRC/images/mdbNNN.png|.pgm       (the same pixels converted; both locations are searched)

Label rows look like ``mdb001 G CIRC B 535 425 197``. Quirks handled: free text before and after the
table, blank lines, trailing spaces, several rows for one image (several lesions: one manifest row per
image, lesions aggregated), abnormal rows without coordinates (``mdb216 D CALC M *NOTE 3*`` and
``mdb059 F CIRC B``: widely distributed calcifications, no centre given).

Mapping:
    * ``patient_id``: films come in pairs of one woman (001/002, 003/004, ...), so the patient is the
      pair: ``mias_p001`` for mdb001+mdb002 (161 patients); ``study_id`` is the same.
    * ``laterality``: the ANATOMY, not Info.txt's note: even reference numbers are RIGHT breasts, odd
      numbers LEFT (``laterality_of``). Every digitised film is stored mirrored: its lead marker letters
      and film numbers read backwards. Un-mirrored, the even films' markers read "R" (6 of 6 even films
      with a visible marker looked at: mdb002/004/006/010/012/014) and their chest wall lies on the image
      right (stored: chest wall at the left edge in 133/161 even films, at the right edge in 160/161 odd
      films), which is the standard display of a right breast. Info.txt says even = left, which holds
      only for the mirrored pixels. The cache orients by the detected chest-wall side (``flip: left``,
      ``use_laterality: false``), so the images do not change; the report text and the breast a lesion
      is attributed to do (docs/datasets.md).
    * ``view`` MLO for every film; ``modality`` "DM" and ``manufacturer`` "film-digitised (MIAS)": these
      are scanned screen-film mammograms (200 um pixels), not digital acquisitions, and the manufacturer
      string makes them a separate subgroup in every evaluation.
    * ``density`` is left EMPTY. MIAS grades background tissue in three classes (F fatty, G
      fatty-glandular, D dense-glandular), which do not correspond one-to-one with the four BI-RADS
      composition classes A-D; any A-D mapping would invent labels. The MIAS grade is kept in its own task
      column ``mias_density`` (F/G/D), used by the ``mias`` task.
    * ``abnormality``: the class (CALC, CIRC, SPIC, MISC, ARCH, ASYM, NORM); several distinct classes on
      one image are joined with "+". ``pathology``: normal (NORM), malignant if any lesion is M, else
      benign. ``lesion_x``, ``lesion_y``, ``lesion_r``: centre and radius in pixels of the first lesion
      listed, with ``y`` converted from MIAS' bottom-left origin to the top-left image origin
      (``1024 - y``); NaN when no coordinates are given. ``n_lesions``: number of label rows with
      coordinates; ``lesion_circles`` ("x y r; x y r", same origin) lists all of them when there are several.
      ``lesion_mask_kind`` "circle" where there are coordinates: the circle is a weak mask (a lesion's
      enclosing circle, not its outline), and dense-head outputs say so.
    * ``report`` (``report_source`` "annotations", ``report_id`` "mias-mdbNNN"): BI-RADS-lexicon text from
      the label row (``reports.annotation_report``): the composition in words (MIAS F/G/D is not an ACR
      a-d category, so no letter is given), the finding (CIRC circumscribed mass, SPIC mass with
      spiculated margins, MISC mass with indistinct margins, CALC calcifications, ARCH architectural
      distortion, ASYM asymmetry), the side, and the lesion's level on the MLO view (superior / at the
      level of the nipple / inferior, from the centre's third of the image height). It cannot say: the
      quadrant or clock face (one MLO view fixes no inner/outer), depth, size in mm, calcification
      morphology or distribution, an assessment category (MIAS has none), and never the pathology (B/M),
      which stays in the ``pathology`` label column.

Citation: J Suckling et al. (1994) "The Mammographic Image Analysis Society Digital Mammogram Database",
Excerpta Medica, International Congress Series 1069, pp. 375-378. Licence: research use only, see
Licence.txt of the release.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from mammolens.data.adapters._common import RowError, add_report, find_file, finish

NAME = "mias"
MANUFACTURER = "film-digitised (MIAS)"
TISSUE = ("F", "G", "D")
CLASSES = ("CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM")
_ROW = re.compile(r"^mdb(\d{3})\b")


def laterality_of(number: int) -> str:
    """The breast of film ``mdbNNN``: "R" for even numbers, "L" for odd (the anatomy; see the module
    docstring for the evidence and why this is the reverse of Info.txt's note)."""
    return "R" if int(number) % 2 == 0 else "L"


def _image_index(src: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for folder in (src, src / "images", src / "pgm"):
        if folder.is_dir():
            for p in folder.iterdir():
                if p.suffix.lower() in (".png", ".pgm", ".tif", ".tiff") and p.stem.startswith("mdb"):
                    index.setdefault(p.stem, p.resolve())  # first location wins: PNG/PGM both are the same pixels
    return index


def parse_info(path: Path, errors: list[RowError] | None = None) -> pd.DataFrame:
    """Parse the label rows of ``Info.txt``: one row per line (ref, tissue, abnormality, severity, x, y, r).

    Lines that start like a label row but cannot be parsed are appended to ``errors``.
    """
    errors = [] if errors is None else errors
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        line = line.strip()
        if not _ROW.match(line):
            continue
        tok = line.split()
        if len(tok) < 3 or tok[1] not in TISSUE or tok[2] not in CLASSES:
            errors.append(RowError(NAME, path.name, lineno, "label row is not 'mdbNNN F|G|D CLASS ...'"))
            continue
        severity = tok[3] if len(tok) > 3 and tok[3] in ("B", "M") else ""
        coords: list[float] = []
        if len(tok) >= 7 and not tok[4].startswith("*"):
            try:
                coords = [float(t) for t in tok[4:7]]
            except ValueError:
                errors.append(RowError(NAME, path.name, lineno, "lesion coordinates are not numbers", skipped=False))
        rows.append(
            {
                "line": lineno,
                "ref": tok[0],
                "number": int(tok[0][3:]),
                "tissue": tok[1],
                "abnormality": tok[2],
                "severity": severity,
                "x": coords[0] if coords else np.nan,
                "y": coords[1] if coords else np.nan,
                "r": coords[2] if coords else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=["line", "ref", "number", "tissue", "abnormality", "severity", "x", "y", "r"])


def load(src: str | Path, image_size: int = 1024) -> pd.DataFrame:
    """Map a mini-MIAS release to a manifest (one row per image); see the module docstring.

    Args:
        src: folder holding ``Info.txt`` (and the images).
        image_size: image height in pixels, used to flip the y origin.

    Returns:
        The validated manifest; ``df.attrs["errors"]`` lists rows skipped or partly mapped.
    """
    src = Path(src)
    info = find_file(src, ("Info.txt", "info.txt", "README"), NAME, "the MIAS release ships it next to the images")
    errors: list[RowError] = []
    labels = parse_info(info, errors)
    if labels.empty:
        raise ValueError(f"{NAME}: {info} holds no label rows like 'mdb001 G CIRC B 535 425 197'")
    images = _image_index(info.parent)
    rows = []
    for ref, g in labels.groupby("ref", sort=True):
        path = images.get(ref)
        if path is None:
            errors.append(RowError(NAME, info.name, int(g["line"].iloc[0]), f"no image file for {ref} (.png/.pgm)"))
            continue
        if g["tissue"].nunique() > 1:
            errors.append(RowError(NAME, info.name, int(g["line"].iloc[0]), f"{ref}: conflicting tissue grades", False))
        number = int(g["number"].iloc[0])
        classes = list(dict.fromkeys(g["abnormality"]))
        if classes != ["NORM"]:
            classes = [c for c in classes if c != "NORM"]
        pathology = "normal" if classes == ["NORM"] else ("malignant" if (g["severity"] == "M").any() else "benign")
        with_xy = g.dropna(subset=["x", "y"])
        first = with_xy.iloc[0] if len(with_xy) else None
        pair = (number + 1) // 2
        lesion_y = float(image_size - first["y"]) if first is not None else np.nan
        region = "" if first is None else ("upper", "middle", "lower")[min(2, max(0, int(3 * lesion_y / image_size)))]
        # no severity / pathology in the text: it is a biopsy result, kept as the label column
        facts = {"tissue": g["tissue"].iloc[0], "laterality": laterality_of(number), "abnormality": classes,
                 "mlo_level": region}
        rows.append(add_report(
            {
                "image_path": str(path),
                "patient_id": f"mias_p{pair:03d}",
                "study_id": f"mias_p{pair:03d}",
                "laterality": laterality_of(number),
                "view": "MLO",
                "modality": "DM",
                "manufacturer": MANUFACTURER,
                "density": "",
                "mias_density": g["tissue"].iloc[0],
                "abnormality": "+".join(classes),
                "pathology": pathology,
                "lesion_x": float(first["x"]) if first is not None else np.nan,
                "lesion_y": lesion_y,
                "lesion_r": float(first["r"]) if first is not None else np.nan,
                "n_lesions": len(with_xy),
                "lesion_mask_kind": "circle" if first is not None else "",  # a weak mask: MIAS gives circles
                # every lesion of a film with several (localization ground truth is their union)
                "lesion_circles": "; ".join(f"{x:g} {image_size - y:g} {r:g}" for x, y, r in
                                            with_xy[["x", "y", "r"]].to_numpy()) if len(with_xy) > 1 else "",
                "image_id": ref,
            }, facts, f"mias-{ref}"))
    return finish(rows, NAME, errors, extra_order=("mias_density", "abnormality", "pathology"))
