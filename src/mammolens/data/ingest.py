"""Scan a DICOM archive into a manifest: headers only (pixels are not decoded), parallel over processes.

Every file under ``root`` is looked at; DICOM is recognised by content (files without a suffix
included). Each readable mammography image becomes one manifest row (a multi-frame DBT file is one row,
``frame`` empty); anything else — non-DICOM files, DICOM without pixel data (SR, DICOMDIR), colour
images, truncated files — becomes one row of ``errors.csv`` with the reason. Images whose header says
they are not mammograms (DX/CR of another body part, flat-field/QC/phantom images; rules in
``mammolens.io.gating``) go to ``errors.csv`` as "not a mammogram: ...", and a For Processing image
whose view also exists For Presentation as "For Processing duplicate ...; not counted"; a file holding
a SOPInstanceUID already seen as "duplicate SOPInstanceUID ...; not counted" (the first file in path order
is kept). A header field out of range (``PatientAge 130Y``) never drops a file: the field is left empty
and the file gets a ``kind=warning`` row. ``errors.csv`` columns: ``ERRORS_COLUMNS``.

Nothing is logged per file, and ``errors.csv`` carries no identity unless ``include_ids``: paths relative
to ``root``, identifier components and words pseudonymised (``privacy.scrub_report``); library warnings
are captured per file (``parallel.capture_messages``). Non-UTF-8 file names are stored as
``io.display_path`` text, which the readers resolve.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from os import PathLike
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import pandas as pd

from mammolens.constants import MANIFEST_REQUIRED
from mammolens.io.gating import PROCESSING_DUPLICATE, mammography_gate, processing_duplicates
from mammolens.io.paths import display_path
from mammolens.pipeline.executor import get_executor
from mammolens.privacy import ids_of, known_identifiers, scrub_report

log = logging.getLogger(__name__)

__all__ = ["ERRORS_COLUMNS", "KIND_ERROR", "KIND_WARNING", "ingest", "read_header", "scan_files"]

MANIFEST_FILE = "manifest.parquet"
ERRORS_FILE = "errors.csv"
KIND_ERROR, KIND_WARNING = "error", "warning"
ERRORS_COLUMNS = ("path", "reason", "kind")
"""Columns of ingest's ``errors.csv``: ``kind`` is ``error`` (the file is not in the manifest) or ``warning``
(the file is in the manifest, a header field was left empty)."""
EXTRA_COLUMNS = (
    "age", "frame", "sop_instance_uid", "series_instance_uid", "study_instance_uid", "model",
    "presentation_intent", "photometric", "bits_stored", "transfer_syntax", "n_frames", "pixel_spacing",
)


def scan_files(root: str | PathLike, patterns: Sequence[str] = ("*",), exclude: Sequence[str | PathLike] = ()) -> list[Path]:
    """Files under ``root`` (recursive, sorted) whose name matches one of ``patterns``; hidden files and
    folders and anything under ``exclude`` are skipped."""
    root = Path(root)
    excl = {Path(e).resolve() for e in exclude}
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and (d / n).resolve() not in excl)
        for name in sorted(filenames):
            if name.startswith(".") or not any(fnmatch.fnmatch(name, p) for p in patterns):
                continue
            out.append(d / name)
    return out


def read_header(path: str | PathLike) -> dict[str, Any]:
    """Metadata of one mammography DICOM without decoding its pixels (``io.dicom.read_dicom_header``: the
    header checks the pixel reader makes — pixel data present, greyscale, not truncated, a complete DBT).

    Raises:
        ImageReadError: not DICOM, not a greyscale image, or truncated.
    """
    from mammolens.io.dicom import read_dicom_header

    return read_dicom_header(path)


def _header_task(path: str) -> dict[str, Any]:
    """One file in a worker: ``{"meta": ...}``, or ``{"error": reason, "ids": the file's identifiers}`` so that
    the parent can scrub the reason (pydicom's messages, captured per file, may quote a UID or a name)."""
    from mammolens.io.dicom import header_identifiers
    from mammolens.parallel import capture_messages, describe_error

    notes: list[str] = []
    try:
        with capture_messages(notes):
            return {"meta": read_header(path)}
    except Exception as exc:  # noqa: BLE001 - recorded per file; BaseException (decoder panics) goes to run_tasks
        with capture_messages([]):
            ids = header_identifiers(path)
        return {"error": describe_error(exc, notes), "ids": ids}


def _rel(path: str, base: Path) -> str:
    """``path`` relative to ``base`` when they share a folder (else absolute), as ``display_path`` text
    (the readers resolve it back to the file: ``io.paths``)."""
    p = Path(path).resolve()
    try:
        common = os.path.commonpath([str(p), str(base)])
    except ValueError:  # different drives
        return display_path(p)
    return display_path(os.path.relpath(p, base) if common not in ("/", "") else p)


def _row(path: str, meta: dict, base: Path) -> dict[str, Any]:
    pid = str(meta.get("patient_id") or "")
    study = str(meta.get("study_instance_uid") or "")
    return {
        "image_path": _rel(path, base),
        "patient_id": pid or study,  # a study belongs to one patient: a safe grouping key
        "study_id": study,
        "laterality": str(meta.get("laterality") or ""),
        "view": str(meta.get("view") or ""),
        "modality": str(meta.get("modality") or ""),
        "manufacturer": str(meta.get("manufacturer") or ""),
        "density": str(meta.get("density") or ""),
        "age": meta.get("age"),
        "frame": None,
        "sop_instance_uid": str(meta.get("sop_instance_uid") or ""),
        "series_instance_uid": str(meta.get("series_instance_uid") or ""),
        "study_instance_uid": study,
        "model": str(meta.get("model") or ""),
        "presentation_intent": str(meta.get("presentation_intent") or ""),
        "photometric": str(meta.get("photometric") or ""),
        "bits_stored": meta.get("bits_stored"),
        "transfer_syntax": str(meta.get("transfer_syntax") or ""),
        "n_frames": meta.get("n_frames"),
        "pixel_spacing": "" if meta.get("pixel_spacing") is None else ",".join(str(x) for x in meta["pixel_spacing"]),
    }


def ingest(
    root: str | PathLike,
    out_dir: str | PathLike,
    workers: int | None = None,
    progress: bool = True,
    patterns: Sequence[str] = ("*",),
    timeout: float | None = None,
    include_ids: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scan ``root`` and write ``out_dir/manifest.parquet`` and ``out_dir/errors.csv``.

    Args:
        root: the archive folder.
        out_dir: where the manifest goes; image paths are written relative to it when they share a
            parent folder (the manifest can move with the archive).
        workers: header-reading processes (default all cores; 0/1 in this process).
        progress: show a progress bar.
        patterns: file-name globs to consider (default every file; DICOM is detected by content).
        timeout: seconds per file before its worker is killed and replaced (default
            ``MAMMOLENS_FILE_TIMEOUT`` or 120; see ``mammolens.parallel``).
        include_ids: keep identifiers in ``errors.csv`` (paths stay relative to ``root``).

    Returns:
        ``(manifest, errors)``: the manifest as written (paths as written) and ``errors.csv`` as written:
        ``path, reason, kind`` (``ERRORS_COLUMNS``; module docstring).
    """
    from tqdm.auto import tqdm

    from mammolens.data.manifest import validate_manifest, write_manifest

    root, out = Path(root), Path(out_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"archive folder not found: {root}")
    out.mkdir(parents=True, exist_ok=True)
    base = out.resolve()
    files = [str(p) for p in scan_files(root, patterns, exclude=[out])]
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    workers = max(0, min(workers, len(files)))
    log.info("ingest: %d files under %s, %d workers", len(files), display_path(root), workers)
    results: list[tuple[str, dict | None, str, dict]] = []
    with tqdm(total=len(files), desc="ingest", unit="file", disable=not progress or not files) as bar:
        for i, res, err in get_executor("local", workers=workers).map(_header_task, files, ordered=False,
                                                                       timeout=timeout):
            res = res or {}
            results.append((files[i], res.get("meta"), err or res.get("error") or "", res.get("ids") or {}))
            bar.update(1)
    results.sort(key=lambda r: r[0])
    rows, errors, row_paths, warned = [], [], [], []
    seen_sop: dict[str, str] = {}  # SOPInstanceUID -> the first file that holds it
    for path, meta, reason, _ in results:
        gate_ok, gate_reason = mammography_gate(meta) if meta is not None else (True, "")
        if not gate_ok:  # "not a mammogram: ..." (io.gating): listed, never in the manifest
            meta, reason = None, gate_reason
        sop = str((meta or {}).get("sop_instance_uid") or "")
        if meta is None:
            errors.append({"path": path, "reason": reason})
        elif not (meta.get("patient_id") or meta.get("study_instance_uid")):
            errors.append({"path": path, "reason": "no PatientID and no StudyInstanceUID: cannot group by patient"})
        elif sop and sop in seen_sop:  # one image stored twice (copied exports): counted once
            errors.append({"path": path, "reason": "duplicate SOPInstanceUID: the same image as {twin}; not counted",
                           "twin": seen_sop[sop]})
        else:
            if sop:
                seen_sop[sop] = path
            rows.append(_row(path, meta, base))
            row_paths.append(path)
            if meta.get("header_warnings"):
                warned.append({"path": path, "reason": "; ".join(meta["header_warnings"]), "kind": KIND_WARNING})
    # one view stored For Presentation and For Processing counts once (training and evaluation alike)
    dupes = processing_duplicates([{**r, "study": r["study_id"]} for r in rows])
    for i, twin in dupes.items():
        errors.append({"path": row_paths[i], "reason": f"{PROCESSING_DUPLICATE} ({{twin}})", "twin": row_paths[twin],
                       "twin_name": True})
    rows = [r for i, r in enumerate(rows) if i not in dupes]
    kept = {p for i, p in enumerate(row_paths) if i not in dupes}
    errors += [w for w in warned if w["path"] in kept]
    errors = _scrub_errors(errors, results, root, include_ids)
    errors.sort(key=lambda e: (e["path"], e["kind"]))
    cols = list(MANIFEST_REQUIRED) + list(EXTRA_COLUMNS)
    manifest = pd.DataFrame(rows, columns=cols)
    manifest["frame"] = manifest["frame"].astype("Int64")
    for c in ("age",):
        manifest[c] = pd.to_numeric(manifest[c], errors="coerce")
    for c in ("bits_stored", "n_frames"):
        manifest[c] = pd.to_numeric(manifest[c], errors="coerce").astype("Int64")
    manifest = validate_manifest(manifest, source=str(out / MANIFEST_FILE))
    write_manifest(manifest, out / MANIFEST_FILE)
    errors_df = pd.DataFrame(errors, columns=list(ERRORS_COLUMNS))
    from mammolens.csvsafe import write_csv

    write_csv(errors_df, out / ERRORS_FILE)  # formula cells escaped (mammolens.csvsafe)
    n_warn = int((errors_df["kind"] == KIND_WARNING).sum())
    log.info("ingest: %d images in the manifest, %d files in errors.csv, %d warnings", len(manifest),
             len(errors_df) - n_warn, n_warn)
    return manifest, errors_df


def _scrub_errors(errors: list[dict], results: list, root: Path, include_ids: bool) -> list[dict]:
    """``errors.csv`` rows: paths relative to ``root``; without ``include_ids``, every path component and
    reason word that holds an identifier (the file's own, or any the job saw) pseudonymised
    (``privacy.scrub_report``)."""
    own = {path: [*ids_of(meta or {}), *ids_of(ids)] for path, meta, _, ids in results}
    known = {} if include_ids else known_identifiers(own.values())
    # names and accession numbers of the whole job, matched inside components ("ZZNAME^ALICE_broken.dcm" has
    # no header of its own): PatientName words in any case or order, accession numbers as substrings
    shared = sorted({(k, str(v)) for ids in own.values() for k, v in ids if k in ("name", "accession")})
    out = []
    for e in errors:
        ids = [] if include_ids else [*own.get(e["path"], []), *shared]
        path, reason = scrub_report(e["path"], e["reason"], ids, root, known)
        if "twin" in e:  # the other file's path, scrubbed with its own identifiers
            twin_ids = [] if include_ids else [*own.get(e["twin"], []), *shared]
            twin = scrub_report(e["twin"], "", twin_ids, root, known)[0]
            reason = reason.replace("{twin}", twin.rsplit("/", 1)[-1] if e.get("twin_name") else twin)
        out.append({"path": path, "reason": reason, "kind": e.get("kind", KIND_ERROR)})
    return out
