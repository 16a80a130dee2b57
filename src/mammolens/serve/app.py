"""Local web app: drop a study (DICOM/PNG files), see breast density per image, breast and exam.

The app is a thin layer over a predictor object with the protocol::

    predictor.predict_files(paths: list[Path]) -> {
        "images":  [{"file", "laterality", "view", "modality", "probs": {cls: p}, "pred", "dense",
                     "overlay_png": bytes | None}, ...],
        "breasts": [{"study", "laterality", "probs", "pred", "dense"}, ...],
        "exams":   [{"study", "probs", "pred", "dense"}, ...],
        "errors":  [{"file", "reason"}, ...],
        "classes": ["A", "B", "C", "D"],
    }

(``mammolens.inference.Predictor`` implements it.) Uploads stream into a per-request temporary folder
under sanitised basenames, within a byte limit counted as the body arrives and a pixel limit read from
each file's header (:mod:`mammolens.serve.upload`), and are deleted when the request ends. Foreign
Host/Origin headers are refused and security headers added (:mod:`mammolens.serve.security`); the
OpenAPI schema and docs pages are off unless ``api_docs=True``. Responses carry no patient identity: only
whitelisted result keys are returned, study identifiers are replaced by ``exam-1``, ``exam-2``… and
nothing about the files' content is logged.

FastAPI/uvicorn are imported lazily (``pip install -e ".[serve]"``).
"""

import base64
import ipaddress
import logging
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from mammolens._optional import optional_import
from mammolens.constants import DENSITY_CLASSES
from mammolens.serve.security import LOCAL_HOSTS, SecurityMiddleware, split_host
from mammolens.serve.upload import (
    BadUpload,
    PixelBudget,
    TooManyFiles,
    UploadAborted,
    UploadTooLarge,
    declared_geometry,
    receive_files,
    sanitize_filename,
    sniff_kind,
)

__all__ = [
    "MAX_PIXELS",
    "Predictor",
    "create_app",
    "is_loopback",
    "sanitize_filename",
    "sniff_kind",
    "serve",
    "served_hosts",
    "STATIC_DIR",
]

log = logging.getLogger("mammolens.serve")

STATIC_DIR = Path(__file__).parent / "static"
_SERVE_PURPOSE = "the web app"
_IMAGE_KEYS = ("file", "laterality", "view", "modality", "probs", "pred", "dense", "assessable", "quality_reason",
               "gradcam_class", "ood")
_BREAST_KEYS = ("study", "laterality", "probs", "pred", "dense")
_EXAM_KEYS = ("study", "probs", "pred", "dense")
_BODY_SLACK = 64 * 1024  # multipart framing on top of the files' bytes
MAX_PIXELS = 100_000_000  # per frame (width × height): 12× a full-field mammogram, ~0.4 GB as float32


class Predictor(Protocol):
    """What the app needs from a predictor."""

    def predict_files(self, paths: list[Path]) -> dict: ...


def _import_fastapi():
    fastapi = optional_import("fastapi", "serve", _SERVE_PURPOSE)
    # python-multipart (needed for uploads); its module was renamed in 0.0.13
    optional_import(("python_multipart", "multipart"), "serve", _SERVE_PURPOSE)
    return fastapi


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _num(v: Any) -> Any:
    """numpy scalars → Python numbers (JSON)."""
    if hasattr(v, "item") and not isinstance(v, (bytes, str)):
        return v.item()
    return v


def _clean(row: Mapping[str, Any], keys: tuple[str, ...], study_alias: dict[str, str],
           descriptions: Mapping[str, str] | None = None) -> dict:
    out: dict[str, Any] = {}
    for k in keys:
        if k not in row:
            continue
        v = row[k]
        if k == "study":
            v = study_alias.setdefault(str(v), f"exam-{len(study_alias) + 1}")
        elif k == "probs" and isinstance(v, Mapping):
            v = {str(c): float(p) for c, p in v.items()}
        elif k in ("dense", "ood"):
            v = None if v is None else bool(v)
        else:
            v = _num(v)
            v = None if v is None else (v if isinstance(v, (int, float, bool)) else str(v))
        out[k] = v
    if descriptions and out.get("pred") in descriptions:  # the task's own words for its class
        out["description"] = descriptions[out["pred"]]
    return out


def task_words(task: Any, classes: Sequence[str] | None = None) -> dict:
    """The task's wording for the page (``Task.wording()``: title, class descriptions, dense rule and labels);
    a predictor without a task gets its class names only and no dense wording."""
    if isinstance(task, Mapping):
        return {k: task.get(k) for k in ("task", "title", "classes", "descriptions", "dense_classes", "dense_label",
                                         "non_dense_label")}
    if task is not None and hasattr(task, "wording"):
        return task.wording()
    names = [str(c) for c in (classes or getattr(task, "class_names", None) or DENSITY_CLASSES)]
    from mammolens.tasks import get_task

    density = get_task("density")
    if task is None and names == list(density.class_names):  # a bare predictor of the A-D classes
        return density.wording()
    return {"task": getattr(task, "name", None), "title": getattr(task, "description", None) or "",
            "classes": names, "descriptions": {c: "" for c in names}, "dense_classes": [],
            "dense_label": None, "non_dense_label": None}


def _to_response(raw: Mapping[str, Any]) -> dict:
    """Whitelist the predictor output and encode overlays as data URLs; files by basename only."""
    alias: dict[str, str] = {}
    classes = [str(c) for c in raw.get("classes", DENSITY_CLASSES)]
    words = task_words(raw.get("task"), classes)
    desc = dict(words.get("descriptions") or {})
    images = []
    for row in raw.get("images", []):
        img = _clean(row, _IMAGE_KEYS, alias, desc)
        if "file" in img:
            img["file"] = Path(str(img["file"])).name
        png = row.get("overlay_png")
        img["overlay"] = (
            "data:image/png;base64," + base64.b64encode(png).decode("ascii") if png else None
        )
        images.append(img)
    errors = [
        {
            "file": Path(str(e.get("file", ""))).name,
            "reason": str(e.get("reason", "")),
        }
        for e in raw.get("errors", [])
    ]
    return {
        "classes": classes,
        "descriptions": {c: desc.get(c, "") for c in classes},
        "task": words,
        "random_weights": str(raw["random_weights"]) if raw.get("random_weights") else None,
        "outside_training_distribution": bool(raw.get("outside_training_distribution", False)),
        "images": images,
        "breasts": [_clean(b, _BREAST_KEYS, alias, desc) for b in raw.get("breasts", [])],
        "exams": [_clean(x, _EXAM_KEYS, alias, desc) for x in raw.get("exams", [])],
        "errors": errors,
        "warnings": [str(w) for w in raw.get("warnings", [])],  # e.g. files without study information
    }


def _model_info(predictor: Any) -> dict:
    name = getattr(predictor, "model_name", None) or getattr(predictor, "name", None)
    classes = getattr(predictor, "classes", None) or getattr(predictor, "class_names", None)
    task = getattr(predictor, "task", None)
    if classes is None and task is not None:
        classes = getattr(task, "class_names", None)
    names = [str(c) for c in (classes or DENSITY_CLASSES)]
    reason = getattr(predictor, "random_weights", None)
    return {
        "model": str(name) if name else type(predictor).__name__,
        "task": getattr(task, "name", None) if task is not None else None,
        "classes": names,
        "wording": task_words(task, names),  # the page's header, class descriptions and dense labels
        "random_weights": str(reason) if isinstance(reason, str) and reason else None,
    }


def create_app(
    predictor: Predictor,
    max_upload_mb: float = 200,
    max_pixels: int = MAX_PIXELS,
    allowed_hosts: Sequence[str] = LOCAL_HOSTS,
    api_docs: bool = False,
):
    """Build the FastAPI app around a loaded predictor.

    Args:
        predictor: object with ``predict_files(paths) -> dict`` (see module docstring).
        max_upload_mb: total size limit of one upload request, counted while it streams in; larger
            requests get HTTP 413.
        max_pixels: largest image area (width × height of one frame, from its header) passed to the
            predictor; larger files are listed in ``errors`` and never decoded. A multi-frame (DBT) file is
            also held to the reader's whole-file budget (``mammolens.io.max_pixels_limit()``).
        allowed_hosts: names the Host header may carry, ``host`` (any port) or ``host:port``; other
            requests get HTTP 400 (DNS rebinding). Uploads whose Origin is another site get 403.
        api_docs: serve ``/openapi.json``, ``/docs`` and ``/redoc`` (off: they describe the API to
            any page that can reach it).

    Returns:
        A ``fastapi.FastAPI`` application (run it with uvicorn, or :func:`serve`).
    """
    fastapi = _import_fastapi()  # first: a missing extra is reported before any bad value
    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    app = _secured_app(fastapi, allowed_hosts, api_docs)
    info = _model_info(predictor)
    _add_page_routes(app, info, max_upload_mb, max_pixels)
    _add_predict_route(app, predictor, info, max_upload_mb, max_pixels)
    return app


def _secured_app(fastapi, allowed_hosts: Sequence[str], api_docs: bool):
    """An empty FastAPI app behind the security middleware, with the static files mounted and the
    API docs pages on only when asked for."""
    from fastapi.staticfiles import StaticFiles

    from mammolens._version import __version__

    docs = {"openapi_url": "/openapi.json", "docs_url": "/docs", "redoc_url": "/redoc"} if api_docs else {}
    app = fastapi.FastAPI(
        title="mammolens",
        version=__version__,
        **({"openapi_url": None, "docs_url": None, "redoc_url": None} | docs),
    )
    SecurityMiddleware(None, allowed_hosts)  # malformed or empty allowed_hosts fail here, not at the first request
    docs_paths = ["/docs", "/redoc"] if api_docs else []
    app.add_middleware(SecurityMiddleware, allowed_hosts=allowed_hosts, docs_paths=docs_paths)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _add_page_routes(app, info: dict, max_upload_mb: float, max_pixels: int) -> None:
    """``/`` (the page) and ``/api/health`` (version, limits, model)."""
    from fastapi.responses import FileResponse

    from mammolens._version import __version__

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/health")
    def health():
        return {
            "status": "ok",
            "version": __version__,
            "max_upload_mb": max_upload_mb,
            "max_pixels": max_pixels,
            **info,
        }


def _too_large(max_upload_mb: float):
    """The HTTP 413 of an upload above the request limit."""
    from fastapi import HTTPException

    return HTTPException(
        status_code=413,
        detail=f"upload too large: the limit is {max_upload_mb:g} MB per request "
        "(start the server with --max-upload-mb to change it, or send fewer files)",
    )


def _pixel_error(path: Path, kind: str | None, max_pixels: int) -> str | None:
    """Why a file must not be decoded, from its header alone; None when it may."""
    try:
        geometry = declared_geometry(path, kind)
    except ValueError as e:
        return str(e)
    if geometry is None:
        return None  # unreadable header: the predictor's reader reports why
    w, h, frames = geometry
    size = f"{w}×{h}" + (f"×{frames} frames" if frames > 1 else "")
    if w * h > max_pixels:
        return (
            f"image too large: {size} = {w * h / 1e6:.0f} M pixels per frame, above this server's limit "
            f"of {max_pixels / 1e6:g} M pixels (start the server with --max-pixels to raise it)"
        )
    from mammolens.io import max_pixels_limit  # numpy: not at import (`mammolens --help` imports this module)

    budget = max_pixels_limit()
    if w * h * frames > budget:
        return (
            f"image too large: {size} = {w * h * frames / 1e6:.0f} M pixels in all, above the reader's "
            f"budget of {budget / 1e6:g} M pixels (set MAMMOLENS_MAX_PIXELS to raise it)"
        )
    return None


async def _receive_uploads(request, tmpdir: Path, limit: int, max_upload_mb: float) -> list:
    """Stream the request's files into ``tmpdir`` (bytes counted as they arrive: chunked bodies have no
    Content-Length); a bad, oversized or empty upload becomes its HTTP error."""
    from fastapi import HTTPException

    try:
        uploads = await receive_files(
            request.stream(),
            request.headers.get("content-type", ""),
            tmpdir,
            max_bytes=limit,
            max_body=limit + _BODY_SLACK,
        )
    except TooManyFiles as e:
        raise HTTPException(status_code=413, detail=str(e)) from e
    except UploadTooLarge as e:
        raise _too_large(max_upload_mb) from e
    except UploadAborted as e:  # logged once by receive_files; the client is gone
        raise HTTPException(status_code=400, detail=str(e)) from None
    except BadUpload as e:
        raise HTTPException(status_code=400, detail=str(e)) from e
    if not uploads:
        raise HTTPException(
            status_code=400,
            detail="no files received: send multipart/form-data with one or more 'files' parts",
        )
    return uploads


def _screen_uploads(uploads: list, max_pixels: int) -> tuple[list[Path], list[dict]]:
    """``(paths the predictor may read, errors)``: files of an unsupported type, too many pixels (from
    their header) or beyond the request's pixel budget (``upload.PixelBudget``, all files together) are
    listed in errors and deleted, never decoded."""
    paths: list[Path] = []
    errors: list[dict] = []
    budget = PixelBudget()  # declared pixels over all files of this request
    for up in uploads:
        kind = sniff_kind(up.head)
        if kind is None and not up.name.lower().endswith((".dcm", ".dicom")):
            reason = "unsupported file type: expected DICOM (.dcm) or PNG/JPEG/TIFF/PGM"
        else:
            reason = _pixel_error(up.path, kind, max_pixels) or budget.check(up.path, kind)
        if reason is not None:
            errors.append({"file": up.name, "reason": reason})
            up.path.unlink()
            continue
        paths.append(up.path)
    return paths, errors


SIDECAR_FIELD = "sidecar"  # the form field of the grouping CSV (``predict --sidecar``'s columns)
_SIDECAR_MAX_BYTES = 1024 * 1024


def _sidecar_for(uploads: list, tmpdir: Path) -> tuple[list, Path | None]:
    """``(image uploads, rewritten sidecar CSV or None)``. The uploaded sidecar's ``path`` cells are matched to
    the uploaded images by file name (the upload keeps basenames only) and rewritten to the stored names;
    rows of files not in this upload are dropped. A second sidecar, an unreadable CSV or one whose rows
    match none of the images is a :class:`BadUpload` (HTTP 400)."""
    import csv
    import io

    sidecars = [u for u in uploads if u.field == SIDECAR_FIELD]
    images = [u for u in uploads if u.field != SIDECAR_FIELD]
    if not sidecars:
        return images, None
    if len(sidecars) > 1:
        raise BadUpload(f"{len(sidecars)} sidecar CSVs received: send at most one")
    side = sidecars[0]
    try:
        if side.path.stat().st_size > _SIDECAR_MAX_BYTES:
            raise BadUpload(f"sidecar {side.name}: over {_SIDECAR_MAX_BYTES // 1024} KB; one row per image is enough")
        rows = list(csv.reader(io.StringIO(side.path.read_text(encoding="utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as e:
        raise BadUpload(f"sidecar {side.name}: not a readable CSV ({e})") from None
    finally:
        side.path.unlink(missing_ok=True)
    if not rows or "path" not in [c.strip().lower() for c in rows[0]]:
        raise BadUpload(f"sidecar {side.name}: needs a header with a path column (path, patient, study, laterality, "
                        "view)")
    col = [c.strip().lower() for c in rows[0]].index("path")
    stored: dict[str, str] = {}
    for up in images:
        for key in (up.original, Path(up.original.replace("\\", "/")).name, up.name):
            stored.setdefault(key, up.name)
    kept = [rows[0]]
    for r in rows[1:]:
        if col < len(r) and r[col].strip():
            cell = r[col].strip()
            name = stored.get(cell) or stored.get(Path(cell.replace("\\", "/")).name)
            if name is not None:
                kept.append([*r[:col], f"../{name}", *r[col + 1:]])
    if len(kept) == 1:
        raise BadUpload(f"sidecar {side.name}: none of its paths names an uploaded file; give the image file names "
                        "in its path column")
    folder = tmpdir / ".sidecar"  # a folder of its own: the CSV's paths are relative to it
    folder.mkdir()
    out = folder / "sidecar.csv"
    with out.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(kept)
    return images, out


def _add_predict_route(app, predictor: Predictor, info: dict, max_upload_mb: float, max_pixels: int) -> None:
    """``POST /api/predict``: receive → screen → predict (one at a time) → whitelisted response."""
    from fastapi import HTTPException, Request  # annotations must resolve at runtime: no __future__ import
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    limit = int(max_upload_mb * 1024 * 1024)
    lock = threading.Lock()  # one prediction at a time: the model is shared and not re-entrant

    def predict_locked(paths: list[Path], sidecar: Path | None = None) -> dict:
        with lock:  # a predictor without sidecar support is called as before
            return predictor.predict_files(paths, sidecar=sidecar) if sidecar else predictor.predict_files(paths)

    @app.post("/api/predict")
    async def predict(request: Request):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit + _BODY_SLACK:
            raise _too_large(max_upload_mb)  # refuse before reading the body
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="mammolens-upload-") as tmp:
            tmpdir = Path(tmp)
            uploads = await _receive_uploads(request, tmpdir, limit, max_upload_mb)
            try:
                images, sidecar = _sidecar_for(uploads, tmpdir)
            except BadUpload as e:
                raise HTTPException(status_code=400, detail=str(e)) from None
            paths, errors = _screen_uploads(images, max_pixels)
            if paths:
                try:
                    raw = await run_in_threadpool(predict_locked, paths, sidecar)
                except (ValueError, FileNotFoundError) as e:
                    # messages name temp files only; map them back to upload names
                    msg = str(e).replace(str(tmpdir / ".sidecar") + "/", "").replace(str(tmpdir) + "/", "")
                    raise HTTPException(status_code=422, detail=msg) from e
            else:
                raw = {"images": [], "breasts": [], "exams": [], "errors": []}
            out = _to_response(raw)
        out["errors"] = errors + out["errors"]
        out["model"] = info["model"]
        out["elapsed_s"] = round(time.perf_counter() - t0, 3)
        log.info(
            "predict: %d file(s), %d image(s), %d error(s) in %.2f s",
            len(uploads),
            len(out["images"]),
            len(out["errors"]),
            out["elapsed_s"],
        )
        return JSONResponse(out)


def served_hosts(host: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """Host-header names a server bound to ``host:port`` answers to: loopback names, the bound
    address (unless a wildcard) and ``extra``, each with ``port`` unless it names its own."""
    names = list(LOCAL_HOSTS)
    if host not in ("0.0.0.0", "::", ""):
        names.append(f"[{host}]" if ":" in host else host)
    names += list(extra)
    out = []
    for name in names:
        h, p = split_host(name)  # ValueError names a malformed --allowed-host
        out.append(f"{h}:{p or port}")
    return list(dict.fromkeys(out))


def serve(
    predictor: Predictor,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 200,
    log_level: str = "info",
    warn_public: bool = True,
    max_pixels: int = MAX_PIXELS,
    allowed_hosts: Sequence[str] = (),
    api_docs: bool = False,
) -> None:
    """Run the app with uvicorn (blocking). Binding to a non-loopback host logs a warning.

    ``allowed_hosts`` are added to the loopback names and the bound address (see :func:`served_hosts`).
    """
    uvicorn = optional_import("uvicorn", "serve", _SERVE_PURPOSE)
    if warn_public and not is_loopback(host):
        log.warning(
            "binding to %s makes the server reachable from other machines; it has no "
            "authentication and is meant for local use (use --host 127.0.0.1)",
            host,
        )
    app = create_app(
        predictor,
        max_upload_mb=max_upload_mb,
        max_pixels=max_pixels,
        allowed_hosts=served_hosts(host, port, allowed_hosts),
        api_docs=api_docs,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
