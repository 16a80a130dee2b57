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

(``mammolens.inference.Predictor`` implements it.) Uploads go to a per-request temporary folder under
sanitised basenames and are deleted when the request ends. Responses carry no patient identity: only
whitelisted result keys are returned, study identifiers are replaced by ``exam-1``, ``exam-2``… and
nothing about the files' content is logged.

FastAPI/uvicorn are imported lazily (``pip install "mammolens[serve]"``).
"""

import base64
import ipaddress
import logging
import re
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from mammolens.constants import DENSITY_CLASSES, DENSITY_DESCRIPTIONS

__all__ = [
    "Predictor",
    "create_app",
    "is_loopback",
    "sanitize_filename",
    "sniff_kind",
    "serve",
    "STATIC_DIR",
]

log = logging.getLogger("mammolens.serve")

STATIC_DIR = Path(__file__).parent / "static"
_SERVE_EXTRA = 'the web app needs FastAPI and uvicorn: pip install "mammolens[serve]"'
_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_IMAGE_KEYS = ("file", "laterality", "view", "modality", "probs", "pred", "dense")
_BREAST_KEYS = ("study", "laterality", "probs", "pred", "dense")
_EXAM_KEYS = ("study", "probs", "pred", "dense")
_CHUNK = 1 << 20


class Predictor(Protocol):
    """What the app needs from a predictor."""

    def predict_files(self, paths: list[Path]) -> dict: ...


def _import_fastapi():
    try:
        import fastapi  # noqa: F401

        try:  # python-multipart (needed for uploads); module renamed in 0.0.13
            import python_multipart  # noqa: F401
        except ImportError:
            import multipart  # noqa: F401
    except ImportError as e:
        raise ImportError(_SERVE_EXTRA) from e
    return fastapi


def sanitize_filename(name: str | None, fallback: str = "upload") -> str:
    """Reduce a client-supplied filename to a safe basename (no folders, no traversal).

    ``'../../etc/passwd'`` → ``'passwd'``, ``'C:\\x\\a b.dcm'`` → ``'a_b.dcm'``, ``'..'`` → fallback.
    """
    base = PurePosixPath((name or "").replace("\\", "/")).name
    base = _SAFE_CHARS.sub("_", base).lstrip(".")
    base = base[-120:].lstrip(".")  # keep the suffix when shortening
    return base or fallback


def sniff_kind(head: bytes) -> str | None:
    """File kind from its first bytes: ``"dicom"``, ``"png"``, ``"jpeg"``, ``"tiff"``, ``"pgm"``."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:2] in (b"P2", b"P5"):
        return "pgm"
    return None


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


def _clean(row: Mapping[str, Any], keys: tuple[str, ...], study_alias: dict[str, str]) -> dict:
    out: dict[str, Any] = {}
    for k in keys:
        if k not in row:
            continue
        v = row[k]
        if k == "study":
            v = study_alias.setdefault(str(v), f"exam-{len(study_alias) + 1}")
        elif k == "probs" and isinstance(v, Mapping):
            v = {str(c): float(p) for c, p in v.items()}
        elif k == "dense":
            v = None if v is None else bool(v)
        else:
            v = _num(v)
            v = None if v is None else (v if isinstance(v, (int, float, bool)) else str(v))
        out[k] = v
    if out.get("pred") in DENSITY_DESCRIPTIONS:
        out["description"] = DENSITY_DESCRIPTIONS[out["pred"]]
    return out


def _to_response(raw: Mapping[str, Any]) -> dict:
    """Whitelist the predictor output and encode overlays as data URLs; files by basename only."""
    alias: dict[str, str] = {}
    images = []
    for row in raw.get("images", []):
        img = _clean(row, _IMAGE_KEYS, alias)
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
    classes = [str(c) for c in raw.get("classes", DENSITY_CLASSES)]
    return {
        "classes": classes,
        "descriptions": {c: DENSITY_DESCRIPTIONS.get(c, "") for c in classes},
        "images": images,
        "breasts": [_clean(b, _BREAST_KEYS, alias) for b in raw.get("breasts", [])],
        "exams": [_clean(x, _EXAM_KEYS, alias) for x in raw.get("exams", [])],
        "errors": errors,
        "warnings": [str(w) for w in raw.get("warnings", [])],  # e.g. files without study information
    }


def _model_info(predictor: Any) -> dict:
    name = getattr(predictor, "model_name", None) or getattr(predictor, "name", None)
    classes = getattr(predictor, "classes", None) or getattr(predictor, "class_names", None)
    task = getattr(predictor, "task", None)
    if classes is None and task is not None:
        classes = getattr(task, "class_names", None)
    return {
        "model": str(name) if name else type(predictor).__name__,
        "task": getattr(task, "name", None) if task is not None else None,
        "classes": [str(c) for c in (classes or DENSITY_CLASSES)],
    }


def create_app(predictor: Predictor, max_upload_mb: float = 200):
    """Build the FastAPI app around a loaded predictor.

    Args:
        predictor: object with ``predict_files(paths) -> dict`` (see module docstring).
        max_upload_mb: total size limit of one upload request; larger requests get HTTP 413.

    Returns:
        A ``fastapi.FastAPI`` application (run it with uvicorn, or :func:`serve`).
    """
    fastapi = _import_fastapi()  # annotations below must resolve at runtime: no __future__ import
    from fastapi import HTTPException, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles

    from mammolens import __version__

    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
    limit = int(max_upload_mb * 1024 * 1024)
    info = _model_info(predictor)
    lock = threading.Lock()  # one prediction at a time: the model is shared and not re-entrant

    app = fastapi.FastAPI(title="mammolens", version=__version__, docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def too_large() -> HTTPException:
        return HTTPException(
            status_code=413,
            detail=f"upload too large: the limit is {max_upload_mb:g} MB per request "
            "(start the server with --max-upload-mb to change it, or send fewer files)",
        )

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/health")
    def health():
        return {"status": "ok", "version": __version__, "max_upload_mb": max_upload_mb, **info}

    def _predict(paths: list[Path]) -> dict:
        with lock:
            return predictor.predict_files(paths)

    @app.post("/api/predict")
    async def predict(request: Request):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit + 64 * 1024:
            raise too_large()  # refuse before reading the body
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="mammolens-upload-") as tmp:
            tmpdir = Path(tmp)
            total = 0
            paths: list[Path] = []
            errors: list[dict] = []
            async with request.form(max_files=2000) as form:
                uploads = [v for _, v in form.multi_items() if hasattr(v, "read")]
                if not uploads:
                    raise HTTPException(
                        status_code=400,
                        detail="no files received: send multipart/form-data with one or more 'files' parts",
                    )
                for i, up in enumerate(uploads):
                    safe = sanitize_filename(up.filename, fallback=f"upload-{i + 1}")
                    stored = safe
                    n = 1
                    while (tmpdir / stored).exists():
                        stem, dot, suf = safe.partition(".")
                        stored = f"{stem}-{n}{dot}{suf}"
                        n += 1
                    dest = tmpdir / stored
                    head = b""
                    with dest.open("wb") as fh:
                        while chunk := await up.read(_CHUNK):
                            total += len(chunk)
                            if total > limit:
                                raise too_large()
                            if len(head) < 132:
                                head += chunk[: 132 - len(head)]
                            fh.write(chunk)
                    kind = sniff_kind(head)
                    if kind is None and not stored.lower().endswith((".dcm", ".dicom")):
                        errors.append(
                            {
                                "file": stored,
                                "reason": "unsupported file type: expected DICOM (.dcm) or "
                                "PNG/JPEG/TIFF/PGM",
                            }
                        )
                        continue
                    paths.append(dest)
            if paths:
                try:
                    raw = await run_in_threadpool(_predict, paths)
                except (ValueError, FileNotFoundError) as e:
                    # messages name temp files only; map them back to upload names
                    msg = str(e).replace(str(tmpdir) + "/", "")
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

    return app


def serve(
    predictor: Predictor,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 200,
    log_level: str = "info",
    warn_public: bool = True,
) -> None:
    """Run the app with uvicorn (blocking). Binding to a non-loopback host logs a warning."""
    try:
        import uvicorn
    except ImportError as e:
        raise ImportError(_SERVE_EXTRA) from e
    if warn_public and not is_loopback(host):
        log.warning(
            "binding to %s makes the server reachable from other machines; it has no "
            "authentication and is meant for local use (use --host 127.0.0.1)",
            host,
        )
    app = create_app(predictor, max_upload_mb=max_upload_mb)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
