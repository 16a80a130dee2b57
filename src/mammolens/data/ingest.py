"""Scan a DICOM archive into a manifest: headers only (pixels are not decoded), parallel over processes.

Every file under ``root`` is looked at; DICOM is recognised by content (files without a suffix
included). Each readable mammography image becomes one manifest row (a multi-frame DBT file is one row,
``frame`` empty); anything else — non-DICOM files, DICOM without pixel data (SR, DICOMDIR), colour
images, truncated files — becomes one row of ``errors.csv`` with the reason. Images whose header says
they are not mammograms (DX/CR of another body part, flat-field/QC/phantom images; rules in
``mammolens.io.gating``) go to ``errors.csv`` as "not a mammogram: ...", and a For Processing image
whose view also exists For Presentation as "For Processing duplicate ...; not counted". Nothing is
logged per file, so patient identifiers never reach the logs.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from os import PathLike
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from mammolens.constants import MANIFEST_REQUIRED
from mammolens.io.gating import PROCESSING_DUPLICATE, mammography_gate, processing_duplicates
from mammolens.pipeline.executor import get_executor

log = logging.getLogger(__name__)

__all__ = ["ingest", "read_header", "scan_files"]

MANIFEST_FILE = "manifest.parquet"
ERRORS_FILE = "errors.csv"
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
    """Metadata of one mammography DICOM without decoding its pixels.

    Uses ``mammolens.io.dicom.read_dicom_meta`` when the reader provides it; otherwise reads the header
    with the pixel data deferred and checks the same things the pixel reader would (pixel data present,
    greyscale, and for uncompressed data that the file is long enough to hold it).

    Raises:
        ImageReadError: not DICOM, not a greyscale image, or truncated.
    """
    from mammolens.io import ImageReadError, is_dicom
    from mammolens.io import dicom as dcm

    path = Path(path)
    if hasattr(dcm, "read_dicom_meta"):
        return dict(dcm.read_dicom_meta(path))
    if not is_dicom(path):
        raise ImageReadError(path, "not a DICOM file")
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, defer_size=1024)  # big values (pixels) stay on disk
    except Exception as exc:  # noqa: BLE001 — pydicom raises assorted errors on broken headers
        raise ImageReadError(path, f"unreadable or truncated DICOM header ({type(exc).__name__}: {exc})") from exc
    dcm._check_image(path, ds)
    raw = ds._dict.get(0x7FE00010)  # the raw (deferred) element: its length and offset, value unread
    length = getattr(raw, "length", None)
    tell = getattr(raw, "value_tell", None)
    if length is not None and tell is not None and length != 0xFFFFFFFF:
        if tell + length > path.stat().st_size:
            raise ImageReadError(
                path, f"truncated: pixel data needs {length} bytes, the file holds {path.stat().st_size - tell}"
            )
    return dcm.dicom_meta(ds)


def _rel(path: str, base: Path) -> str:
    p = Path(path).resolve()
    try:
        common = os.path.commonpath([str(p), str(base)])
    except ValueError:  # different drives
        return str(p)
    return os.path.relpath(p, base) if common not in ("/", "") else str(p)


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

    Returns:
        ``(manifest, errors)``: the manifest as written (paths as written) and the errors
        (``path, reason``).
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
    log.info("ingest: %d files under %s, %d workers", len(files), root, workers)
    results: list[tuple[str, dict | None, str]] = []
    with tqdm(total=len(files), desc="ingest", unit="file", disable=not progress or not files) as bar:
        for i, meta, err in get_executor("local", workers=workers).map(read_header, files, ordered=False, timeout=timeout):
            results.append((files[i], meta, err or ""))
            bar.update(1)
    results.sort(key=lambda r: r[0])
    rows, errors, row_paths = [], [], []
    for path, meta, reason in results:
        gate_ok, gate_reason = mammography_gate(meta) if meta is not None else (True, "")
        if not gate_ok:  # "not a mammogram: ..." (io.gating): listed, never in the manifest
            meta, reason = None, gate_reason
        if meta is None:
            errors.append({"path": path, "reason": reason})
        elif not (meta.get("patient_id") or meta.get("study_instance_uid")):
            errors.append({"path": path, "reason": "no PatientID and no StudyInstanceUID: cannot group by patient"})
        else:
            rows.append(_row(path, meta, base))
            row_paths.append(path)
    # one view stored For Presentation and For Processing counts once (training and evaluation alike)
    dupes = processing_duplicates([{**r, "study": r["study_id"]} for r in rows])
    for i, twin in dupes.items():
        errors.append({"path": row_paths[i], "reason": f"{PROCESSING_DUPLICATE} ({Path(row_paths[twin]).name})"})
    rows = [r for i, r in enumerate(rows) if i not in dupes]
    errors.sort(key=lambda e: e["path"])
    cols = list(MANIFEST_REQUIRED) + list(EXTRA_COLUMNS)
    manifest = pd.DataFrame(rows, columns=cols)
    manifest["frame"] = manifest["frame"].astype("Int64")
    for c in ("age",):
        manifest[c] = pd.to_numeric(manifest[c], errors="coerce")
    for c in ("bits_stored", "n_frames"):
        manifest[c] = pd.to_numeric(manifest[c], errors="coerce").astype("Int64")
    manifest = validate_manifest(manifest, source=str(out / MANIFEST_FILE))
    write_manifest(manifest, out / MANIFEST_FILE)
    errors_df = pd.DataFrame(errors, columns=["path", "reason"])
    errors_df.to_csv(out / ERRORS_FILE, index=False)
    log.info("ingest: %d images in the manifest, %d files in errors.csv", len(manifest), len(errors_df))
    return manifest, errors_df
