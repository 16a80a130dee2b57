"""Answer complete studies: ``predict_to_dir`` (the one image path, gates, quality checks, DICOM outputs), then
deterministic UIDs on every output and a Mammography CAD SR beside the Comprehensive SR.

UIDs are ``pydicom.uid.generate_uid(entropy_srcs=[run, StudyInstanceUID, role, ...])``: the same study answered by
the same run gets the same Series and SOP Instance UIDs (a PACS replaces, not duplicates, a resend).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from mammolens.node.spool import Spool, atomic_write

log = logging.getLogger("mammolens.node")

__all__ = ["Answer", "answer_studies", "result_uid", "run_fingerprint"]

_OBSERVER_UID = ("121012", "DCM")  # Device Observer UID


@dataclass
class Answer:
    """The answer of one study: result files (in the spool) or why there is none."""

    key: str
    files: list[Path] = field(default_factory=list)
    error: str = ""
    notes: list[str] = field(default_factory=list)  # refused images, a CAD SR that could not be made...


def run_fingerprint(run_dir: str | Path, which: str = "best") -> str:
    """16 hex digits of the SHA-256 of the run's checkpoint: "the same run" for deterministic UIDs."""
    import hashlib

    from mammolens.run import RunFolder

    path = RunFolder(run_dir).checkpoint(which)
    if not path.is_file():
        path = RunFolder(run_dir).checkpoint("last")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def result_uid(run: str, study_uid: str, role: str, *extra: str) -> str:
    """The deterministic UID of one result object (or series) of ``study_uid`` answered by ``run``."""
    return generate_uid(entropy_srcs=["mammolens-node", run, study_uid, role, *map(str, extra)])


def _set_observer(items, uid: str) -> None:
    for item in items or []:
        name = (item.get("ConceptNameCodeSequence") or [None])[0]
        if name is not None and (name.CodeValue, name.CodingSchemeDesignator) == _OBSERVER_UID and "UID" in item:
            item.UID = uid
        _set_observer(item.get("ContentSequence"), uid)


def _restamp(src: Path, dst: Path, series: str, sop: str, spool: Spool, observer: str | None = None) -> Path:
    ds = pydicom.dcmread(src)
    ds.SeriesInstanceUID, ds.SOPInstanceUID = series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    if observer:
        _set_observer(ds.get("ContentSequence"), observer)
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    atomic_write(dst, buf.getvalue(), spool.root / "tmp")
    return dst


def _evidence_uids(sr: Path) -> set[str]:
    ds = pydicom.dcmread(sr, stop_before_pixels=True)
    return {str(s.ReferencedSOPInstanceUID) for st in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
            for se in st.get("ReferencedSeriesSequence", []) for s in se.get("ReferencedSOPSequence", [])}


def _cad_sr(spool: Spool, key: str, study_uid: str, run: str, sr: Path, breasts: list[dict], classes: list[str],
            model: str, out: Path) -> Path:
    from mammolens.io.cad_sr import write_cad_sr
    from mammolens.io.dicom_out import read_source_reference, reference_dataset

    used = _evidence_uids(sr)
    refs = [read_source_reference(f) for f in spool.mammo_files(key)]
    sources = [reference_dataset(r) for r in refs if r.get("SOPInstanceUID") in used]
    result = {"model": {"name": model},
              "breasts": [{"laterality": b["laterality"], "pred": b["pred"],
                           "probs": {c: float(b[f"prob_{c}"]) for c in classes if f"prob_{c}" in b}} for b in breasts]}
    tmp = spool.root / "tmp" / f"cad-{key}.dcm"
    write_cad_sr(sources, result, tmp, uids={"series": result_uid(run, study_uid, "cad-series"),
                                             "sop": result_uid(run, study_uid, "cad-sr"),
                                             "observer": result_uid(run, study_uid, "observer")})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.replace(out)
    return out


def _collect(spool: Spool, key: str, study_uid: str, run: str, produced: Path, payload: dict, model: str) -> Answer:
    ans = Answer(key)
    dest = spool.result_dir(key, run)
    shutil.rmtree(dest, ignore_errors=True)
    sr = produced / "density_sr.dcm"
    if not sr.is_file():
        return ans
    ans.files.append(_restamp(sr, dest / "density_sr.dcm", result_uid(run, study_uid, "density-series"),
                              result_uid(run, study_uid, "density-sr"), spool,
                              observer=result_uid(run, study_uid, "observer")))
    overlay_series = result_uid(run, study_uid, "overlay-series")
    for sc in sorted(produced.glob("overlay_*.dcm")):
        src = pydicom.dcmread(sc, stop_before_pixels=True)
        ref = str(src.SourceImageSequence[0].ReferencedSOPInstanceUID)
        ans.files.append(_restamp(sc, dest / sc.name, overlay_series, result_uid(run, study_uid, "overlay", ref), spool))
    breasts = [b for b in payload.get("breasts", []) if b.get("study_id") == key and b.get("laterality") in ("L", "R")]
    try:
        ans.files.append(_cad_sr(spool, key, study_uid, run, sr, breasts, list(payload.get("classes", [])), model,
                                 dest / "cad_sr.dcm"))
    except (ValueError, AttributeError, KeyError) as e:  # e.g. a task whose classes are not BI-RADS A-D
        ans.notes.append(f"no Mammography CAD SR: {e}")
    return ans


def answer_studies(predictor, spool: Spool, run: str, studies: dict[str, str], overlays: bool = True) -> list[Answer]:
    """Predict the complete studies ``{key: StudyInstanceUID}`` in one pass and put each one's results (UIDs made
    deterministic, plus the CAD SR) under ``spool.result_dir(key, run)``. A study without an assessable image
    gets an ``Answer`` with ``error`` (the reasons, as ``predict`` words them, without identifiers)."""
    from mammolens.workflows import predict_to_dir

    work = spool.root / "tmp" / f"predict-{run}"
    shutil.rmtree(work, ignore_errors=True)
    inputs = [spool.study_dir(k) / "mammo" for k in studies]
    res = predict_to_dir(predictor, inputs, work, overlays=overlays, dicom=True, include_ids=False, progress=False)
    payload = json.loads((work / "results.json").read_text(encoding="utf-8"))
    model = f"mammolens:{getattr(predictor, 'name', 'model')}"
    answers = []
    for key, uid in studies.items():
        try:
            ans = _collect(spool, key, uid, run, work / "dicom" / key, payload, model)
        except Exception as e:  # noqa: BLE001 — one study's failure never stops the others
            ans = Answer(key, error=f"results not written ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
        if not ans.files and not ans.error:
            names = {f.name for f in spool.mammo_files(key)}  # hashed SOP UIDs: unique across studies
            reasons = sorted({str(e["reason"]) for e in res["errors"]
                              if Path(str(e.get("file", ""))).name in names or str(e.get("file", "")) == key})
            refused = [str(r.get("quality_reason") or "") for r in payload.get("images", []) if r.get("study_id") == key]
            reasons += sorted({r for r in refused if r})
            ans.error = "no assessable mammogram" + (": " + "; ".join(reasons)[:400] if reasons else "")
        answers.append(ans)
    shutil.rmtree(work, ignore_errors=True)
    return answers
