"""A Mammography CAD SR (DICOM TID 4000) with the breast composition a run predicts.

The document a mammography-aware viewer or a CAD-results workflow (IHE Mammography CAD) expects, beside the
Comprehensive SR of :mod:`mammolens.io.dicom_out` that generic viewers render. Content tree::

    CONTAINER  (111036, DCM, "Mammography CAD Report")            TID 4000
      HAS CONCEPT MOD  Language of Content Item and Descendants   TID 1204
      HAS OBS CONTEXT  Observer Type = Device, Device Observer UID / Name    TID 1001/1004
      CONTAINS CONTAINER Image Library                             TID 4020
        CONTAINS IMAGE (one per source image) + HAS ACQ CONTEXT Image Laterality
      CONTAINS CODE CAD Processing and Findings Summary = All algorithms succeeded; with(out) findings  TID 4001
        CONTAINS CONTAINER Individual Impression/Recommendation   TID 4003 (one per breast)
          CONTAINS CODE Breast composition = CID 6000 value          TID 4007
            HAS CONCEPT MOD Laterality = Left/Right breast
            HAS PROPERTIES NUM Probability (UCUM 1), one per class (class name in a TEXT modifier)
            INFERRED FROM IMAGE (the breast's images in the library)
          CONTAINS SCOORD POINT Center of a finding (only with findings: a run with a detection or map head)
      CONTAINS CODE Summary of Detections = Not Attempted | Succeeded   (TID 4015 Detection Performed below)
      CONTAINS CODE Summary of Analyses = Succeeded                  (TID 4016 Analysis Performed below)
        INFERRED FROM CODE Analysis Performed = Breast composition analysis
          HAS CONCEPT MOD TEXT Algorithm Name / Algorithm Version

Every UID of the document can be given (``uids``), so that the same study predicted by the same run gives the
same SOP Instance UID (a PACS deduplicates a resend). Built with highdicom content items (the ``dicom-out``
extra); written as a Mammography CAD SR Storage instance (``1.2.840.10008.5.1.4.1.1.88.50``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from mammolens._optional import optional_import
from mammolens.io.dicom import image_laterality
from mammolens.io.dicom_out import DENSITY_CODES

__all__ = ["MAMMOGRAPHY_CAD_SR", "write_cad_sr"]

MAMMOGRAPHY_CAD_SR = "1.2.840.10008.5.1.4.1.1.88.50"
"""Mammography CAD SR Storage SOP Class UID."""

_SITE = {"L": codes.SCT.LeftBreast, "R": codes.SCT.RightBreast}
_IMAGE_LATERALITY = Code("111027", "DCM", "Image Laterality")
_IMPRESSION = Code("111034", "DCM", "Individual Impression/Recommendation")  # codedict's has a U+200B
_ENGLISH = Code("en", "RFC5646", "English")
_UNIT_ONE = Code("1", "UCUM", "no units")


_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")


def _evidence(ds: Dataset) -> Dataset:
    """A copy of a source header with the type-2 patient/study fields highdicom reads present (empty if unknown)."""
    out = copy.deepcopy(ds)
    for kw in _TYPE2:
        if kw not in out:
            setattr(out, kw, "")
    return out


def _hd():
    return optional_import("highdicom", "dicom-out", "writing the Mammography CAD SR")


def _version() -> str:
    from mammolens._version import __version__

    return __version__


def _image(hd, ds: Dataset, relationship: str):
    return hd.sr.ImageContentItem(name=codes.DCM.SourceImage,
                                  referenced_sop_class_uid=ds.SOPClassUID,
                                  referenced_sop_instance_uid=ds.SOPInstanceUID,
                                  relationship_type=relationship)


def _library(hd, sources: Sequence[Dataset]):
    lib = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type="CONTAINS")
    items = []
    for ds in sources:
        item = _image(hd, ds, "CONTAINS")
        lat = image_laterality(ds)
        if lat in _SITE:
            item.ContentSequence = hd.sr.ContentSequence([hd.sr.CodeContentItem(
                name=_IMAGE_LATERALITY, value=codes.SCT.Left if lat == "L" else codes.SCT.Right,
                relationship_type="HAS ACQ CONTEXT")])
        items.append(item)
    lib.ContentSequence = hd.sr.ContentSequence(items)
    return lib


def _composition(hd, breast: Mapping[str, Any], sources: Sequence[Dataset]):
    """TID 4003 individual impression holding the TID 4007 breast composition of one breast."""
    lat = breast["laterality"]
    probs = {str(k): float(v) for k, v in dict(breast.get("probs") or {}).items()}
    pred = str(breast.get("pred") or (max(probs, key=probs.get) if probs else ""))
    if pred not in DENSITY_CODES:
        raise ValueError(f"breast {lat}: predicted class {pred!r} is not a BI-RADS density class A-D "
                         "(the Mammography CAD SR codes breast composition only)")
    comp = hd.sr.CodeContentItem(name=codes.DCM.BreastComposition, value=DENSITY_CODES[pred],
                                 relationship_type="CONTAINS")
    kids = [hd.sr.CodeContentItem(name=codes.SCT.Laterality, value=_SITE[lat], relationship_type="HAS CONCEPT MOD")]
    for cls, p in probs.items():  # one Probability per class, the class as its concept modifier
        num = hd.sr.NumContentItem(name=codes.DCM.Probability, value=round(min(max(p, 0.0), 1.0), 6),
                                   unit=_UNIT_ONE, relationship_type="HAS PROPERTIES")
        if cls in DENSITY_CODES:
            num.ContentSequence = hd.sr.ContentSequence([hd.sr.CodeContentItem(
                name=codes.DCM.BreastComposition, value=DENSITY_CODES[cls], relationship_type="HAS CONCEPT MOD")])
        kids.append(num)
    kids += [_image(hd, ds, "INFERRED FROM") for ds in sources if image_laterality(ds) == lat]
    comp.ContentSequence = hd.sr.ContentSequence(kids)
    box = hd.sr.ContainerContentItem(name=_IMPRESSION, relationship_type="CONTAINS")
    box.ContentSequence = hd.sr.ContentSequence([comp])
    return box


def _performed(hd, summary: Code, performed: Code, value: Code, algorithm: str):
    item = hd.sr.CodeContentItem(name=summary, value=codes.DCM.Succeeded, relationship_type="CONTAINS")
    done = hd.sr.CodeContentItem(name=performed, value=value, relationship_type="INFERRED FROM")
    done.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=codes.DCM.AlgorithmName, value=algorithm[:64], relationship_type="HAS CONCEPT MOD"),
        hd.sr.TextContentItem(name=codes.DCM.AlgorithmVersion, value=_version(), relationship_type="HAS CONCEPT MOD"),
    ])
    item.ContentSequence = hd.sr.ContentSequence([done])
    return item


def write_cad_sr(source_datasets: Sequence[Dataset], result: Mapping[str, Any], out_path: str | Path, *,
                 uids: Mapping[str, str] | None = None, series_number: int = 9903,
                 manufacturer: str = "mammolens") -> Path:
    """Write the exam's per-breast composition as a Mammography CAD SR (TID 4000) in the source study.

    Args:
        source_datasets: the exam's source images (headers: ``io.dicom_out.reference_dataset`` of each
            source reference is enough); one StudyInstanceUID.
        result: ``{"breasts": [{"laterality": "L"|"R", "pred": "C", "probs": {"A": ..}}, ...],
            "model": {"name": ..}}`` (what ``workflows`` hands ``io.dicom_out.write_density_sr``).
        out_path: the file to write (folders are created).
        uids: ``series``, ``sop`` and ``observer`` UIDs (deterministic ones from the DICOM node); new random
            UIDs for any left out.
        series_number: SeriesNumber of the new series.
        manufacturer: Manufacturer of the instance.

    Returns:
        The path written.
    """
    hd = _hd()
    sources = [_evidence(ds) for ds in source_datasets]
    if not sources:
        raise ValueError("a Mammography CAD SR needs at least one source image")
    studies = {str(ds.StudyInstanceUID) for ds in sources}
    if len(studies) != 1:
        raise ValueError(f"the source images belong to {len(studies)} studies; one CAD SR covers one study")
    uids = dict(uids or {})
    breasts = [b for b in result.get("breasts") or [] if b.get("laterality") in _SITE]
    if not breasts:
        raise ValueError("no breast-level result with laterality L or R: nothing to report in a CAD SR")
    model = dict(result.get("model") or {})
    algorithm = str(model.get("name") or result.get("model_name") or "mammolens")

    root = hd.sr.ContainerContentItem(name=codes.DCM.MammographyCADReport, template_id="4000")
    children = [
        hd.sr.CodeContentItem(name=codes.DCM.LanguageOfContentItemAndDescendants, value=_ENGLISH,
                              relationship_type="HAS CONCEPT MOD"),
        hd.sr.CodeContentItem(name=codes.DCM.ObserverType, value=codes.DCM.Device, relationship_type="HAS OBS CONTEXT"),
        hd.sr.UIDRefContentItem(name=codes.DCM.DeviceObserverUID, value=uids.get("observer") or generate_uid(),
                                relationship_type="HAS OBS CONTEXT"),
        hd.sr.TextContentItem(name=codes.DCM.DeviceObserverName, value="mammolens", relationship_type="HAS OBS CONTEXT"),
        _library(hd, sources),
    ]
    findings = [f for f in result.get("findings") or [] if f]
    summary = hd.sr.CodeContentItem(
        name=codes.DCM.CADProcessingAndFindingsSummary, relationship_type="CONTAINS",
        value=codes.DCM.AllAlgorithmsSucceededWithFindings if findings else codes.DCM.AllAlgorithmsSucceededWithoutFindings)
    summary.ContentSequence = hd.sr.ContentSequence([_composition(hd, b, sources) for b in breasts])
    children.append(summary)
    detections = hd.sr.CodeContentItem(name=codes.DCM.SummaryOfDetections, value=codes.DCM.NotAttempted,
                                       relationship_type="CONTAINS")
    children.append(detections)
    children.append(_performed(hd, codes.DCM.SummaryOfAnalyses, codes.DCM.AnalysisPerformed,
                               codes.SCT.BreastCompositionAnalysis, algorithm))
    root.ContentSequence = hd.sr.ContentSequence(children)

    sr = hd.sr.ComprehensiveSR(
        evidence=sources, content=root, series_instance_uid=uids.get("series") or generate_uid(),
        series_number=series_number, sop_instance_uid=uids.get("sop") or generate_uid(), instance_number=1,
        manufacturer=manufacturer, is_complete=True, is_final=False, is_verified=False)
    sr.SOPClassUID = MAMMOGRAPHY_CAD_SR
    sr.file_meta.MediaStorageSOPClassUID = MAMMOGRAPHY_CAD_SR
    sr.SeriesDescription = "mammolens Mammography CAD SR"
    sr.SoftwareVersions = _version()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(out_path, enforce_file_format=True)
    return out_path
