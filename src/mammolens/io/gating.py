"""What gets a density: the header gate (only mammograms) and the For Processing dedupe.

Gate rules (``mammography_gate``), in order:

1. Quality-control images are rejected: ``FLATFIELD``/``FLAT FIELD``, ``QC``, ``PHANTOM``, ``TEST
   PATTERN`` or ``CALIBRATION`` in ImageType, SeriesDescription or ProtocolName, or BodyPartExamined
   ``PHANTOM``.
2. Modality ``MG`` or a mammography SOP class (digital mammography For Presentation/For Processing,
   breast tomosynthesis, breast projection) is accepted.
3. Anything else (DX, CR, secondary capture, no Modality) is accepted only when the header says it
   shows a breast: BodyPartExamined ``BREAST``, or, when BodyPartExamined is empty, a mammography view
   (CC, MLO, ML, ...) in ViewPosition or ViewCodeSequence. A BodyPartExamined naming another part
   (CHEST, ABDOMEN, HAND...) is rejected whatever the view says ("not a mammogram: DX image of CHEST"),
   and so is an image with neither.

Rasters (PNG/TIFF/...) have no header and pass the gate; rows of a manifest made by a dataset adapter
carry no gate result and pass too. Dedupe (``processing_duplicates``): when the same view (study,
laterality, view, modality) exists For Presentation and For Processing, only For Presentation counts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from mammolens.io.header import header_text, mammo_view

__all__ = [
    "GATE_KEYWORDS", "MAMMOGRAPHY_SOP_CLASSES", "NOT_A_MAMMOGRAM", "PROCESSING_DUPLICATE", "gate_header",
    "mammography_gate", "processing_duplicates",
]

MAMMOGRAPHY_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.2": "digital mammography (For Presentation)",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "digital mammography (For Processing)",
    "1.2.840.10008.5.1.4.1.1.13.1.3": "breast tomosynthesis",
    "1.2.840.10008.5.1.4.1.1.13.1.4": "breast projection (For Presentation)",
    "1.2.840.10008.5.1.4.1.1.13.1.5": "breast projection (For Processing)",
}
_SOP_NAMES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture",
}
# word-bounded (letters/digits on neither side) so "QC" does not match inside "AQCUIRE" and
# "FLAT_FIELD" / "FLAT-FIELD" are caught
_QC_RE = re.compile(r"(?<![A-Z0-9])(FLAT[\s_-]?FIELD|QC|PHANTOM|TEST[\s_-]?PATTERN|CALIBRATION)(?![A-Z0-9])")
_QC_FIELDS = ("ImageType", "SeriesDescription", "ProtocolName")
NOT_A_MAMMOGRAM = "not a mammogram"
PROCESSING_DUPLICATE = "For Processing duplicate of a For Presentation image; not counted"
GATE_KEYWORDS = ("Modality", "SOPClassUID", "BodyPartExamined", *_QC_FIELDS)
"""Header keywords ``gate_header`` reads."""
_MAMMO_VIEW_SOURCES = ("ViewPosition", "ViewCodeSequence")


def gate_header(header: Mapping[str, str], view: str = "", view_source: str = "") -> tuple[bool, str]:
    """The gate rules on header text.

    Args:
        header: ``{keyword: text}`` for the keywords of ``GATE_KEYWORDS`` (multi-valued elements
            joined with backslashes); missing keywords count as empty.
        view: the view the reader found (``io.header.mammo_view``), used by rule 3.
        view_source: the attribute the view came from; only ViewPosition/ViewCodeSequence count.

    Returns:
        ``(ok, reason)``: ``reason`` is "" when accepted, else "not a mammogram: " and why
        ("not a mammogram: DX image of ABDOMEN").
    """
    def text(kw: str) -> str:
        return str(header.get(kw) or "").strip().upper()

    body = text("BodyPartExamined")
    for kw in _QC_FIELDS:
        m = _QC_RE.search(text(kw))
        if m:
            return False, f"{NOT_A_MAMMOGRAM}: quality-control image ({kw} says {m.group(1)})"
    if body == "PHANTOM":
        return False, f"{NOT_A_MAMMOGRAM}: quality-control image (BodyPartExamined PHANTOM)"
    modality, sop = text("Modality"), text("SOPClassUID")
    if modality == "MG" or sop in MAMMOGRAPHY_SOP_CLASSES:
        return True, ""
    if body == "BREAST":
        return True, ""
    if not body and view and view != "OTHER" and view_source in _MAMMO_VIEW_SOURCES:
        return True, ""
    kind = modality or _SOP_NAMES.get(sop, "") or "DICOM"
    part = f"of {body}" if body else "without a breast body part or a mammography view"
    return False, f"{NOT_A_MAMMOGRAM}: {kind} image {part}"


def mammography_gate(ds_or_meta: Any) -> tuple[bool, str]:
    """Whether an image is a mammogram by its header (module docstring: the rules), and if not, why.

    Args:
        ds_or_meta: a pydicom ``Dataset``, or a meta dict (``MammoImage.meta``, a manifest row). A
            dict carrying ``gate_ok``/``gate_reason`` (set by ``io.dicom.dicom_meta``) returns them; a
            dict without them (raster, adapter row) is accepted.

    Returns:
        ``(ok, reason)``: ``reason`` is "" when accepted.
    """
    if not isinstance(ds_or_meta, Mapping):  # a Dataset: the rules on its header (as io.dicom.dicom_meta does)
        return gate_header({kw: header_text(ds_or_meta, kw) for kw in GATE_KEYWORDS}, *mammo_view(ds_or_meta))
    if ds_or_meta.get("gate_ok") is None:
        return True, ""
    return bool(ds_or_meta["gate_ok"]), str(ds_or_meta.get("gate_reason") or "")


def processing_duplicates(records: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """For Processing images that have a For Presentation copy of the same view.

    Args:
        records: one mapping per image with ``study``, ``laterality``, ``view``, ``modality`` and
            ``presentation_intent``; records with an empty study, laterality or view never pair.

    Returns:
        ``{index of the For Processing record: index of its For Presentation twin}``.
    """
    def key(r: Mapping[str, Any]) -> tuple | None:
        k = tuple(str(r.get(c) or "") for c in ("study", "laterality", "view", "modality"))
        return k if all(k[:3]) else None

    presentation: dict[tuple, int] = {}
    for i, r in enumerate(records):
        k = key(r)
        if k is not None and str(r.get("presentation_intent") or "").upper() == "FOR PRESENTATION":
            presentation.setdefault(k, i)
    out: dict[int, int] = {}
    for i, r in enumerate(records):
        k = key(r)
        if k in presentation and str(r.get("presentation_intent") or "").upper() == "FOR PROCESSING":
            out[i] = presentation[k]
    return out
