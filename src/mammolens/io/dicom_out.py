"""DICOM outputs a PACS can store: a density Structured Report and RGB overlay Secondary Captures.

Both objects join the *source study* (same StudyInstanceUID, patient module copied from the source
images) in a new series, and reference the images they were computed from, so a viewer files them
next to the mammograms.

Breast composition is coded with the concepts the DICOM Mammography CAD templates use:

=============================  ======  =============  ==============================================
item                           scheme  value          meaning
=============================  ======  =============  ==============================================
concept name                   DCM     111006         Breast composition
A (CID 6000)                   SCT     129716005      Almost entirely fat
B (CID 6000)                   SCT     129717001      Scattered fibroglandular densities
C (CID 6000)                   SCT     129718006      Heterogeneously dense
D (CID 6000)                   SCT     129719003      Extremely dense
class probability              DCM     122157         Probability (UCUM unit ``1``, range 0–1)
finding site                   SCT     363698007      Finding Site → 80248007 Left breast /
                                                      73056007 Right breast
dense flag (C or D)            99MMLNS dense          Dense breast tissue (BI-RADS C or D) → SCT
                                                      373066001 Yes / 373067005 No; it follows the
                                                      reported class (``Task.dense_flag``)
algorithm (TID 4019)           DCM     111001/111003  Algorithm Name / Algorithm Version
document title                 LN      18748-4        Diagnostic Imaging Report
=============================  ======  =============  ==============================================

Those codes are for the ``density`` task only. Any other task (MIAS F/G/D, dense/non-dense) is coded with
private ``99MMLNS`` codes ``<task>-<class>`` whose meanings are the task's class descriptions, under a concept
named after the task; a task without ``dense_classes`` gets no dense flag.

(DCM 111031 is "Image View", not breast composition.) The SR is a Comprehensive SR built with
highdicom content items; it does not claim conformance to TID 4000 (Mammography CAD) because
mammolens reports composition only.

Requires the ``dicom-out`` extra (``pip install -e ".[dicom-out]"``) for highdicom.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from mammolens._optional import optional_import
from mammolens.constants import DENSITY_CLASSES
from mammolens.io.dicom import image_laterality

__all__ = [
    "DENSE_FLAG_CODE",
    "DENSITY_CODES",
    "REFERENCE_KEYWORDS",
    "read_source_reference",
    "reference_dataset",
    "source_reference",
    "write_density_sr",
    "write_overlay_sc",
]

DENSITY_CODES: dict[str, Code] = {
    "A": codes.SCT.AlmostEntirelyFat,  # 129716005
    "B": codes.SCT.ScatteredFibroglandularDensities,  # 129717001
    "C": codes.SCT.HeterogeneouslyDense,  # 129718006
    "D": codes.SCT.ExtremelyDense,  # 129719003
}
"""BI-RADS density class → SNOMED CT code from CID 6000 "Overall Breast Composition"."""

DENSE_FLAG_CODE = Code("dense", "99MMLNS", "Dense breast tissue (BI-RADS C or D)")
"""Private code (a ``99`` coding scheme) for the binary dense flag; no standard concept exists."""

_LATERALITY_SITE = {"L": codes.SCT.LeftBreast, "R": codes.SCT.RightBreast}
_UNIT_ONE = Code("1", "UCUM", "no units")
_PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "OtherPatientIDsSequence",
    "IssuerOfPatientID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
_TYPE2_DEFAULTS = {
    "PatientName": "",
    "PatientID": "",
    "PatientBirthDate": "",
    "PatientSex": "",
    "AccessionNumber": "",
    "StudyID": "",
    "StudyDate": "",
    "StudyTime": "",
    "ReferringPhysicianName": "",
}
_SOP_SR_COMPREHENSIVE = "1.2.840.10008.5.1.4.1.1.88.33"
_SOP_SC = "1.2.840.10008.5.1.4.1.1.7"


def _highdicom():
    return optional_import("highdicom", "dicom-out", "writing DICOM SR/SC")


def _version() -> str:
    from mammolens._version import __version__

    return __version__


# what an SR / Secondary Capture copies from a source image (defined beside the header readers, so that io.dicom
# carries it with every read without importing this module and pydicom.sr)
from mammolens.io.header import REFERENCE_KEYWORDS, source_reference  # noqa: E402


def read_source_reference(path: str | Path) -> dict[str, str]:
    """:func:`source_reference` of a file's header (pixels never read); ``{}`` when it cannot be parsed."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size=4096,
                             specific_tags=[*REFERENCE_KEYWORDS, "SharedFunctionalGroupsSequence", "FrameLaterality"])
        return source_reference(ds)
    except Exception:  # noqa: BLE001 — not DICOM or broken: no reference, the DICOM outputs say why
        return {}


def _multi(value) -> bool:
    from pydicom.multival import MultiValue

    return isinstance(value, (list, tuple, MultiValue))


def _valid(elem) -> bool:
    """Whether an element's value is one a validator accepts (VR format, and for PatientOrientation two
    direction codes made of A/P/L/R/H/F: a view name such as ``CC`` found there is refused)."""
    from pydicom import config
    from pydicom.valuerep import validate_value

    if elem.VR == "SQ":
        return True
    try:
        values = elem.value if _multi(elem.value) else [elem.value]
        for v in values:
            if v is not None and not isinstance(v, bytes):
                validate_value(elem.VR, v, config.RAISE)
    except Exception:  # noqa: BLE001 — pydicom raises ValueError or others on a malformed value
        return False
    if elem.keyword == "PatientOrientation":
        parts = list(elem.value) if _multi(elem.value) else [p for p in str(elem.value).split("\\") if p]
        return len(parts) == 2 and all(p and set(p) <= set("APLRHF") for p in map(str, parts))
    return True


def reference_dataset(ref: Mapping[str, str]) -> Dataset:
    """A header-only source dataset built from a :func:`source_reference` dict; values that do not
    validate are left out (the writers then fill their Type 2 placeholders)."""
    ds = Dataset()
    for kw, value in ref.items():
        if kw not in REFERENCE_KEYWORDS or value in (None, ""):
            continue
        trial = Dataset()
        try:
            setattr(trial, kw, value.split("\\") if "\\" in str(value) else value)
            elem = trial[kw]
        except Exception:  # noqa: BLE001, S112 — a value that cannot be set is left out
            continue
        if _valid(elem):
            ds.add(elem)
    return ds


def _header(ds: Dataset) -> Dataset:
    """Header-only copy of a source dataset (no pixels) with Type 2 study/patient fields present; only
    values that validate are copied (a non-conformant source value must not stop the output)."""
    out = Dataset()
    for elem in ds:
        if elem.keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            continue
        try:
            if not _valid(elem):
                continue
        except Exception:  # noqa: BLE001, S112 — an element whose value cannot even be parsed
            continue
        out.add(copy.deepcopy(elem))
    out.file_meta = copy.deepcopy(getattr(ds, "file_meta", Dataset()))
    for key, default in _TYPE2_DEFAULTS.items():
        if key not in out:
            setattr(out, key, default)
    return out


def _check_sources(source_datasets: Sequence[Dataset]) -> list[Dataset]:
    if not source_datasets:
        raise ValueError("write_density_sr needs at least one source dataset (the exam's images)")
    for i, ds in enumerate(source_datasets):
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            if not getattr(ds, key, None):
                raise ValueError(
                    f"source dataset {i} has no {key}; pass the DICOM datasets the prediction was "
                    "made from (read with pydicom.dcmread)"
                )
    studies = {str(ds.StudyInstanceUID) for ds in source_datasets}
    if len(studies) > 1:
        raise ValueError(
            f"source datasets come from {len(studies)} studies; write one SR per exam (study)"
        )
    return [_header(ds) for ds in source_datasets]


class _Words:
    """The coded words of one task in the SR: class codes, their concept name, the dense rule and its code.

    The ``density`` task (classes A-D) uses SNOMED CT CID 6000 and DCM "Breast composition"; any other task
    (MIAS F/G/D, dense/non-dense, findings) gets private ``99MMLNS`` codes whose meanings are the task's own
    class descriptions, so a MIAS "D" (dense-glandular) is never coded as BI-RADS D (extremely dense).
    """

    def __init__(self, task=None):
        names = tuple(getattr(task, "class_names", DENSITY_CLASSES))
        self.birads = names == tuple(DENSITY_CLASSES)
        self.task = task
        if self.birads:
            self.classes, self.concept = dict(DENSITY_CODES), codes.DCM.BreastComposition
        else:
            descs = list(getattr(task, "descriptions", names))
            self.classes = {c: Code(f"{task.name}-{c}"[:16], "99MMLNS", str(d)[:64]) for c, d in zip(names, descs)}
            self.concept = Code(str(task.name)[:16], "99MMLNS", str(task.description or task.name)[:64])
        dense = tuple(getattr(task, "dense_classes", ("C", "D"))) if task is not None else ("C", "D")
        self.dense_classes = dense
        self.dense_code = DENSE_FLAG_CODE if self.birads and dense == ("C", "D") else (
            Code("dense", "99MMLNS", f"Dense breast tissue ({'/'.join(dense)})"[:64]) if dense else None)
        self.series = "mammolens breast density" if self.birads else f"mammolens {getattr(task, 'name', '')}"[:64]


def _probs(d: Mapping[str, Any], where: str, words: _Words | None = None) -> dict[str, float]:
    words = words or _Words()
    probs = d.get("probs")
    if not isinstance(probs, Mapping) or not probs:
        raise ValueError(f"{where}: expected 'probs' as a mapping class -> probability, got {probs!r}")
    out = {}
    for k, v in probs.items():
        if k not in words.classes:
            kind = "density class" if words.birads else f"{words.task.name} class"
            raise ValueError(f"{where}: unknown {kind} {k!r}; expected one of {list(words.classes)}")
        v = float(v)
        if not 0.0 <= v <= 1.0 or not np.isfinite(v):
            raise ValueError(f"{where}: probability for {k} must lie in [0, 1], got {v}")
        out[k] = v
    return out


def _pred(d: Mapping[str, Any], probs: dict[str, float], where: str, words: _Words | None = None) -> str:
    words = words or _Words()
    pred = d.get("pred") or max(probs, key=probs.get)
    if pred not in words.classes:
        raise ValueError(f"{where}: 'pred' must be one of {list(words.classes)}, got {pred!r}")
    return pred


def _composition_items(hd, d: Mapping[str, Any], where: str, words: _Words | None = None) -> list:
    """CODE class + NUM probability per class + dense flag (all CONTAINS); no dense flag for a task without
    dense classes. The flag follows ``pred`` (``Task.dense_flag``): a ``dense`` that contradicts it is refused."""
    words = words or _Words()
    probs = _probs(d, where, words)
    pred = _pred(d, probs, where, words)
    dense = pred in words.dense_classes if words.dense_code is not None else None
    if dense is not None and d.get("dense") is not None and bool(d["dense"]) != dense:
        raise ValueError(f"{where}: 'dense' is {bool(d['dense'])} but the reported class {pred!r} is "
                         f"{'' if dense else 'not '}one of the dense classes {list(words.dense_classes)}; "
                         "dense must follow pred (docs/outputs.md)")
    items = [
        hd.sr.CodeContentItem(
            name=words.concept,
            value=words.classes[pred],
            relationship_type="CONTAINS",
        )
    ]
    for cls in words.classes:
        if cls not in probs:
            continue
        num = hd.sr.NumContentItem(
            name=codes.DCM.Probability,
            value=round(probs[cls], 6),
            unit=_UNIT_ONE,
            relationship_type="CONTAINS",
        )
        # which class this probability is for
        num.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.CodeContentItem(
                    name=words.concept,
                    value=words.classes[cls],
                    relationship_type="HAS CONCEPT MOD",
                )
            ]
        )
        items.append(num)
    if dense is not None:
        items.append(
            hd.sr.CodeContentItem(
                name=words.dense_code,
                value=codes.SCT.Yes if dense else codes.SCT.No,
                relationship_type="CONTAINS",
            )
        )
    return items


def _image_refs(hd, headers: Sequence[Dataset], laterality: str | None) -> list:
    items = []
    for ds in headers:
        if laterality is not None and image_laterality(ds) != laterality:
            continue
        items.append(
            hd.sr.ImageContentItem(
                name=codes.SCT.Source,
                referenced_sop_class_uid=ds.SOPClassUID,
                referenced_sop_instance_uid=ds.SOPInstanceUID,
                relationship_type="INFERRED FROM",
            )
        )
    return items


def _breasts(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    breasts = result.get("breasts") or []
    if isinstance(breasts, Mapping):  # {"L": {...}, "R": {...}}
        breasts = [{"laterality": k, **v} for k, v in breasts.items()]
    out = []
    for b in breasts:
        lat = str(b.get("laterality", "")).upper()
        if lat not in _LATERALITY_SITE:
            raise ValueError(f"breast result laterality must be 'L' or 'R', got {lat!r}")
        out.append({**b, "laterality": lat})
    return out


def _model_info(result: Mapping[str, Any]) -> tuple[str, str]:
    model = result.get("model") or {}
    if isinstance(model, str):
        model = {"name": model}
    name = str(model.get("name") or result.get("model_name") or "unknown")
    version = str(model.get("version") or result.get("model_version") or "")
    return name, version


def _strip_patient(ds: Dataset) -> None:
    for key in _PATIENT_KEYWORDS:
        if key in ds:
            if key in _TYPE2_DEFAULTS:
                setattr(ds, key, "")
            else:
                delattr(ds, key)


def _save(ds: Dataset, out_path: str | Path, include_patient: bool) -> Path:
    """Stamp the software version, drop patient identity unless kept, write ``out_path`` (folders made)."""
    ds.SoftwareVersions = _version()
    if not include_patient:
        _strip_patient(ds)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out_path, enforce_file_format=True)
    return out_path


def write_density_sr(
    source_datasets: Sequence[Dataset],
    result: Mapping[str, Any],
    out_path: str | Path,
    *,
    include_patient: bool = True,
    series_number: int = 9901,
    manufacturer: str = "mammolens",
) -> Path:
    """Write the exam's breast density as a Comprehensive SR that joins the source study.

    Args:
        source_datasets: the exam's source images (pydicom datasets, pixels not needed); all must
            share one StudyInstanceUID. They become the SR's evidence
            (CurrentRequestedProcedureEvidenceSequence) and INFERRED FROM image references.
        result: exam-level result ``{"pred": "C", "probs": {"A": .., ..}, "dense": True,
            "breasts": [{"laterality": "L", "pred", "probs", "dense"}, ...] (or {"L": {...}}),
            "model": {"name": .., "version": ..}}`` (``model_name``/``model_version`` keys also
            accepted). ``pred`` defaults to the arg-max; the dense flag is ``pred in task.dense_classes``
            (a given ``dense`` must agree). Optional ``"task"``: the run's ``Task`` (default: BI-RADS A-D
            density); another task is coded with private codes carrying its own class descriptions, and
            gets no dense flag without ``dense_classes``. Optional ``"random_weights"``: the reason text,
            written into the algorithm parameters.
        out_path: file to write (parent folders are created).
        include_patient: copy the patient module from the source (what a PACS needs); ``False``
            empties patient name/ID/birth date/sex and accession number.
        series_number: SeriesNumber of the new SR series.
        manufacturer: Manufacturer of the SR instance.

    Returns:
        The path written.
    """
    hd = _highdicom()
    headers = _check_sources(source_datasets)
    model_name, model_version = _model_info(result)
    words = _Words(result.get("task"))

    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport)
    children: list = []
    children.append(
        hd.sr.CodeContentItem(
            name=codes.DCM.ObserverType, value=codes.DCM.Device, relationship_type="HAS OBS CONTEXT"
        )
    )
    children.append(
        hd.sr.UIDRefContentItem(
            name=codes.DCM.DeviceObserverUID,
            value=generate_uid(),
            relationship_type="HAS OBS CONTEXT",
        )
    )
    children.append(
        hd.sr.TextContentItem(
            name=codes.DCM.DeviceObserverName, value="mammolens", relationship_type="HAS OBS CONTEXT"
        )
    )
    children.append(
        hd.sr.TextContentItem(
            name=codes.DCM.AlgorithmName, value="mammolens", relationship_type="HAS CONCEPT MOD"
        )
    )
    children.append(
        hd.sr.TextContentItem(
            name=codes.DCM.AlgorithmVersion, value=_version(), relationship_type="HAS CONCEPT MOD"
        )
    )
    params = f"model={model_name}" + (f" version={model_version}" if model_version else "")
    if words.task is not None:
        params += f" task={words.task.name}"
    if result.get("random_weights"):
        params += f"; WARNING {result['random_weights']}"
    children.append(
        hd.sr.TextContentItem(
            name=codes.DCM.AlgorithmParameters, value=params, relationship_type="HAS CONCEPT MOD"
        )
    )

    exam = hd.sr.ContainerContentItem(
        name=codes.SCT.BreastCompositionAnalysis, relationship_type="CONTAINS"
    )
    exam.ContentSequence = hd.sr.ContentSequence(
        _composition_items(hd, result, "exam result", words) + _image_refs(hd, headers, None)
    )
    children.append(exam)

    for b in _breasts(result):
        lat = b["laterality"]
        box = hd.sr.ContainerContentItem(
            name=codes.SCT.BreastCompositionAnalysis, relationship_type="CONTAINS"
        )
        site = hd.sr.CodeContentItem(
            name=codes.SCT.FindingSite, value=_LATERALITY_SITE[lat], relationship_type="HAS CONCEPT MOD"
        )
        box.ContentSequence = hd.sr.ContentSequence(
            [site]
            + _composition_items(hd, b, f"breast {lat} result", words)
            + _image_refs(hd, headers, lat)
        )
        children.append(box)
    root.ContentSequence = hd.sr.ContentSequence(children)

    sr = hd.sr.ComprehensiveSR(
        evidence=headers,
        content=root,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=False,  # a machine result, not a verified report
        is_verified=False,
    )
    scheme = Dataset()
    scheme.CodingSchemeDesignator = DENSE_FLAG_CODE.scheme_designator
    scheme.CodingSchemeName = "mammolens private codes"
    scheme.CodingSchemeResponsibleOrganization = "mammolens"
    sr.CodingSchemeIdentificationSequence = [scheme]
    sr.SeriesDescription = words.series
    return _save(sr, out_path, include_patient)


def write_overlay_sc(
    source_ds: Dataset,
    rgb_uint8: np.ndarray,
    out_path: str | Path,
    description: str,
    *,
    series_instance_uid: str | None = None,
    series_number: int = 9902,
    instance_number: int = 1,
    include_patient: bool = True,
) -> Path:
    """Write an RGB heat-map overlay as a Secondary Capture image in the source image's study.

    Args:
        source_ds: the image the overlay was computed from; its patient/study modules are copied and
            it is referenced in SourceImageSequence.
        rgb_uint8: ``[H, W, 3]`` uint8 image.
        out_path: file to write (parent folders are created).
        description: human-readable text (SeriesDescription, DerivationDescription).
        series_instance_uid: reuse one series for all overlays of an exam (new UID when None).
        series_number: SeriesNumber of the overlay series.
        instance_number: InstanceNumber of this image in the series.
        include_patient: ``False`` empties patient name/ID/birth date/sex and accession number.

    Returns:
        The path written.
    """
    hd = _highdicom()
    rgb = np.asarray(rgb_uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(
            f"overlay must be a uint8 array [H, W, 3], got dtype {rgb.dtype} shape {rgb.shape}"
        )
    for key in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not getattr(source_ds, key, None):
            raise ValueError(f"source dataset has no {key}; pass the DICOM image the overlay belongs to")
    ref = _header(source_ds)
    lat = image_laterality(ref)  # also the enhanced FrameLaterality (DBT) and text, as the reader finds it
    orientation = getattr(ref, "PatientOrientation", None)  # only a valid one survives _header
    known_orientation = bool(orientation) and "PatientOrientation" in ref and _valid(ref["PatientOrientation"])
    # highdicom needs an orientation for PATIENT coordinates; a placeholder is blanked below
    kw: dict[str, Any] = {
        "coordinate_system": "PATIENT",
        "patient_orientation": tuple(orientation) if known_orientation else ("A", "F"),
    }
    if lat in ("L", "R"):
        kw["laterality"] = lat
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=np.ascontiguousarray(rgb),
        photometric_interpretation="RGB",
        bits_allocated=8,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer="mammolens",
        **kw,
    )
    src = Dataset()
    src.ReferencedSOPClassUID = source_ds.SOPClassUID
    src.ReferencedSOPInstanceUID = source_ds.SOPInstanceUID
    sc.SourceImageSequence = [src]
    sc.SeriesDescription = description[:64]
    sc.DerivationDescription = description[:1024]
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "NO"
    if not known_orientation:
        sc.PatientOrientation = ""  # Type 2: present, unknown
    return _save(sc, out_path, include_patient)
