"""DICOM header text -> what the image shows: laterality, view, age, pixel spacing, vendor (no pixels).

The lowest module of the DICOM reader: ``io.gating`` (the mammography gate) and ``io.dicom`` (the pixel
reader and ``dicom_meta``) both read headers through it, and it imports neither. The rules are those of
``io.dicom``'s module docstring ("Metadata").
"""

from __future__ import annotations

import re

from mammolens.constants import VIEWS

__all__ = ["REFERENCE_KEYWORDS", "S2D_KEYWORDS", "age_of", "first_value", "functional_group_item", "header_text",
           "image_laterality", "is_s2d", "laterality_of", "mammo_view", "normalise_manufacturer", "pixel_spacing_of",
           "source_reference", "view_of"]

AGE_RANGE = (0.0, 120.0)
"""Ages (years) a ``PatientAge`` may give; anything else is left empty with a warning (``age_of``)."""

S2D_KEYWORDS = (
    "GENERATED_2D", "GENERATED 2D", "SYNTHETIC", "SYNTHESIZED", "SYNTHESISED", "C-VIEW", "CVIEW",
    "C VIEW", "V-PREVIEW", "VPREVIEW", "V PREVIEW", "S-VIEW", "SVIEW", "INSIGHT 2D", "INSIGHT2D",
    "2DSM", "S2D",
)

_VENDORS = (  # (substring of the lower-cased Manufacturer, normalised name); first match wins
    ("hologic", "Hologic"), ("lorad", "Hologic"),
    ("ge medical", "GE"), ("ge healthcare", "GE"), ("general electric", "GE"), ("gems", "GE"),
    ("siemens", "Siemens"), ("fuji", "Fujifilm"), ("philips", "Philips"), ("sectra", "Philips"),
    ("planmed", "Planmed"), ("giotto", "IMS"), ("agfa", "Agfa"), ("konica", "Konica Minolta"),
    ("carestream", "Carestream"), ("kodak", "Carestream"), ("canon", "Canon"), ("toshiba", "Canon"),
    ("metaltronica", "Metaltronica"), ("instrumentarium", "Instrumentarium"), ("varian", "Varian"),
)

_VIEW_MEANINGS = (  # (regex on the lower-cased code meaning, view); most specific first
    (r"exaggerated.*lateral", "XCCL"), (r"exaggerated.*medial", "XCCM"),
    (r"medio-?\s*lateral oblique", "MLO"), (r"latero-?\s*medial oblique", "LMO"),
    (r"cranio-?\s*caudal.*(cleavage|valley)", "CV"), (r"cranio-?\s*caudal", "CC"),
    (r"caudo-?\s*cranial", "FB"), (r"medio-?\s*lateral", "ML"), (r"latero-?\s*medial", "LM"),
    (r"superolateral.*inferomedial", "SIO"), (r"axillary tail", "AT"),
)
_VIEW_CODES = {  # SNOMED-RT (SRT) and SNOMED CT codes of CID 4014
    "R-10242": "CC", "399162004": "CC", "R-10226": "MLO", "399368009": "MLO",
    "R-10224": "ML", "399260004": "ML", "R-10228": "LM", "399352003": "LM",
    "R-1024A": "XCCL", "399192003": "XCCL", "R-1024B": "XCCM", "399101009": "XCCM",
    "R-10244": "FB", "399196000": "FB", "R-102D0": "SIO", "399188001": "SIO",
    "R-40AAA": "AT", "399265009": "AT",
}
_KNOWN_VIEWS = ("XCCL", "XCCM", "MLO", "CC", "ML", "LM", "FB", "SIO", "AT", "LMO", "CV")


# ---------------------------------------------------------------------------------------- helpers
def first_value(value):
    """First item of a multi-valued element (or the value itself)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0] if len(value) else None
    return value


def functional_group_item(ds, seq_keyword: str, frame: int | None):
    """Item of a functional-group macro: per-frame (for ``frame``) first, then shared, else None."""
    for fg_name, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        fg = ds.get(fg_name)
        if not fg or idx is None or idx >= len(fg):
            continue
        seq = fg[idx].get(seq_keyword)
        if seq:
            return seq[0]
    return None


def header_text(ds, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def normalise_manufacturer(name: str) -> str:
    """Canonical vendor name (``"GE MEDICAL SYSTEMS"`` -> ``"GE"``); unknown names are returned stripped."""
    low = (name or "").strip().lower()
    for key, canonical in _VENDORS:
        if key in low:
            return canonical
    if re.match(r"^ims\b", low):
        return "IMS"
    if re.match(r"^ge\b", low):
        return "GE"
    return (name or "").strip()


_SIDE_RE = {
    side: re.compile(rf"\b({word}|{side})\b|\b{side}_|\b{side}(CC|MLO|ML|LM|XCCL|XCCM|FB|SIO|AT)\b")
    for side, word in (("L", "LEFT"), ("R", "RIGHT"))
}


def _laterality_from_text(text: str) -> str:
    """"L"/"R" when exactly one side is named in free text ("LCC", "RIGHT MLO", "L_CC"), else ""."""
    t = text.upper()
    left, right = bool(_SIDE_RE["L"].search(t)), bool(_SIDE_RE["R"].search(t))
    return ("L" if left else "R") if left != right else ""


def _view_from_text(text: str) -> str:
    t = text.upper()
    for view in _KNOWN_VIEWS:
        if re.search(rf"(\b|[LR_]){view}\b", t):
            return view
    return ""


def laterality_of(ds) -> tuple[str, str]:
    for kw in ("ImageLaterality", "Laterality"):
        v = header_text(ds, kw).upper()
        if v in ("L", "R"):
            return v, kw
    item = functional_group_item(ds, "FrameAnatomySequence", 0)
    if item is not None and str(item.get("FrameLaterality", "")).upper() in ("L", "R"):
        return str(item.FrameLaterality).upper(), "FrameLaterality"
    for kw in ("SeriesDescription", "ViewPosition", "ProtocolName", "StudyDescription", "ImageComments"):
        v = _laterality_from_text(header_text(ds, kw))
        if v:
            return v, kw
    return "", ""


def image_laterality(ds) -> str:
    """``"L"``, ``"R"`` or ``""`` for a dataset, by the reader's rule: ImageLaterality, Laterality, the
    enhanced FrameLaterality, then free text (SeriesDescription, ViewPosition, ProtocolName...)."""
    return laterality_of(ds)[0]


def view_of(ds) -> tuple[str, str]:
    vp = header_text(ds, "ViewPosition").upper().replace(" ", "")
    if vp:
        if vp in _KNOWN_VIEWS:
            return vp, "ViewPosition"
        found = _view_from_text(vp)
        if found:
            return found, "ViewPosition"
    for item in ds.get("ViewCodeSequence", []) or []:
        code = str(item.get("CodeValue", "")).strip()
        if code in _VIEW_CODES:
            return _VIEW_CODES[code], "ViewCodeSequence"
        meaning = str(item.get("CodeMeaning", "")).lower()
        for pattern, view in _VIEW_MEANINGS:
            if re.search(pattern, meaning):
                return view, "ViewCodeSequence"
    for kw in ("SeriesDescription", "ProtocolName", "ImageComments"):
        found = _view_from_text(header_text(ds, kw))
        if found:
            return found, kw
    return ("OTHER", "ViewPosition") if vp else ("", "")


def age_of(ds, warnings: list[str] | None = None) -> float | None:
    """``PatientAge`` (``nnnD/W/M/Y``) in years; None when absent, unparseable or outside ``AGE_RANGE``
    (``130Y``, ``999Y``, ``-5Y``, text), in which case a line saying so is appended to ``warnings``."""
    raw = header_text(ds, "PatientAge")
    m = re.fullmatch(r"(\d{1,3})([DWMY]?)", raw.upper())
    if not m:
        if raw and warnings is not None:
            warnings.append(f"PatientAge {raw[:16]!r} is not a DICOM age (nnnD/W/M/Y); age left empty")
        return None
    n = int(m.group(1))
    age = float({"D": n / 365.25, "W": n / 52.18, "M": n / 12.0}.get(m.group(2), n))
    if not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
        if warnings is not None:
            warnings.append(f"PatientAge {raw!r} is outside {AGE_RANGE[0]:g}-{AGE_RANGE[1]:g} years; age left empty")
        return None
    return age


def _spacing_pair(value) -> tuple[float, float] | None:
    """Two positive finite numbers, else None."""
    if value is None or isinstance(value, (str, bytes)) or len(value) != 2:
        return None
    try:
        pair = (float(value[0]), float(value[1]))
    except (TypeError, ValueError):
        return None
    return pair if all(0 < v < 1e6 for v in pair) else None  # NaN fails the comparison


def pixel_spacing_of(ds, warnings: list[str] | None = None) -> tuple[tuple[float, float] | None, str]:
    """``(row, column)`` spacing in mm and where it came from: ``PixelSpacing``, ``ImagerPixelSpacing``, then
    the enhanced ``PixelMeasuresSequence``. A value that is not two positive numbers is skipped with a
    line in ``warnings``; ``(None, "")`` when none is usable."""
    item = functional_group_item(ds, "PixelMeasuresSequence", 0)
    for src, kw, where in ((ds, "PixelSpacing", "PixelSpacing"), (ds, "ImagerPixelSpacing", "ImagerPixelSpacing"),
                           (item, "PixelSpacing", "PixelMeasuresSequence")):
        if src is None:
            continue
        try:
            value = src.get(kw)
        except Exception:  # noqa: BLE001 - pydicom raises on a value it cannot convert
            value = "?"
        if value is None:
            continue
        pair = _spacing_pair(value)
        if pair is not None:
            return pair, where
        if warnings is not None:
            warnings.append(f"{where} {str(value)[:40]!r} is not two positive numbers; ignored")
    return None, ""


def mammo_view(ds) -> tuple[str, str]:
    """``view_of`` in the manifest vocabulary (``constants.VIEWS``): views outside it (LMO, CV) are ``OTHER``."""
    view, source = view_of(ds)
    return ("OTHER" if view and view not in VIEWS else view), source


def is_s2d(ds) -> bool:
    text = (header_text(ds, "ImageType") + " " + header_text(ds, "SeriesDescription")).upper()
    return any(k in text for k in S2D_KEYWORDS)


REFERENCE_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality", "PatientOrientation",
    "ImageLaterality", "Laterality", "BodyPartExamined",
)
"""What an SR or Secondary Capture needs from a source image: patient and study modules, the reference UIDs,
laterality and orientation (``source_reference``)."""


def source_reference(ds) -> dict[str, str]:
    """The ``REFERENCE_KEYWORDS`` of a parsed header as plain strings (picklable, a few hundred bytes): what a
    worker that already read the header hands on so that the DICOM outputs need no second read. The
    laterality is the one the reader finds (also the enhanced FrameLaterality of a DBT volume)."""
    out: dict[str, str] = {}
    for kw in REFERENCE_KEYWORDS:
        try:
            value = ds.get(kw)
            if value is None or (isinstance(value, (list, tuple)) and not value):
                continue
            out[kw] = "\\".join(map(str, value)) if _is_multi(value) else str(value)
        except Exception:  # noqa: BLE001, S112 — a value pydicom cannot parse is simply not copied
            continue
    try:
        lat = image_laterality(ds)
    except Exception:  # noqa: BLE001
        lat = ""
    if lat in ("L", "R"):
        out["ImageLaterality"] = lat
    return out


def _is_multi(value) -> bool:
    from pydicom.multival import MultiValue

    return isinstance(value, (list, tuple, MultiValue))
