"""Uploads received within limits: bytes counted while the body streams in, pixels read from headers.

A multipart body is parsed as it arrives and each file part is written straight into the request's
temporary folder, so nothing is spooled elsewhere and the byte limit stops the transfer as soon as it
is crossed (chunked bodies have no Content-Length to check in advance). The pixel limit is checked
from each file's header (PNG IHDR, JPEG SOF, TIFF IFD, PGM header, DICOM Rows × Columns × Frames)
before anything decodes it: a few hundred kilobytes of PNG can declare gigabytes of pixels. A request
also has a pixel budget over all its files (``PixelBudget``, ``REQUEST_MAX_PIXELS``) and at most
``MAX_FILES`` files; a client that disconnects mid-upload costs one log line (``UploadAborted``).
"""

import importlib
import logging
import re
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mammolens._optional import optional_import

__all__ = [
    "MAX_FILES",
    "REQUEST_MAX_PIXELS",
    "BadUpload",
    "PixelBudget",
    "ReceivedFile",
    "TooManyFiles",
    "UploadAborted",
    "UploadTooLarge",
    "declared_geometry",
    "receive_files",
    "sanitize_filename",
    "sniff_kind",
]

log = logging.getLogger("mammolens.serve")

MAX_FILES = 64  # files per request: a study has 4-8 views; more is a folder dropped by mistake
REQUEST_MAX_PIXELS = 200_000_000  # declared pixels over all files of a request (frames counted): ~0.8 GB as float32
_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_HEAD = 132  # enough to see the DICOM preamble + "DICM"


class UploadTooLarge(ValueError):
    """The request is over the server's byte or file-count limit (HTTP 413)."""


class TooManyFiles(UploadTooLarge):
    """More file parts than the server accepts in one request (HTTP 413)."""


class BadUpload(ValueError):
    """The request body is not a usable multipart upload (HTTP 400)."""


class UploadAborted(BadUpload):
    """The client went away before the body was complete (logged as one line; no response can be sent)."""


class PixelBudget:
    """The pixels one request may bring, counted from each file's header (``declared_geometry``) before
    anything decodes it: a 154 KB PNG can declare 9000×9000 16-bit pixels (650 MB once decoded), and several
    of them in one request add up.

    Args:
        total: declared pixels (width × height × frames) allowed over all files of the request.
    """

    def __init__(self, total: int = REQUEST_MAX_PIXELS):
        if total <= 0:
            raise ValueError(f"the request pixel budget must be positive, got {total}")
        self.total, self.used = int(total), 0

    def take(self, geometry: tuple[int, int, int] | None) -> str | None:
        """Count a file's ``(width, height, frames)``; the reason it is refused (not counted) when it would
        cross the budget, else None. An unknown geometry (None) is not counted: the reader refuses it."""
        if geometry is None:
            return None
        w, h, frames = geometry
        n = int(w) * int(h) * max(int(frames), 1)
        if self.used + n > self.total:
            return (f"image too large for this request: {n / 1e6:.0f} M pixels on top of {self.used / 1e6:.0f} M "
                    f"already received, above the budget of {self.total / 1e6:g} M pixels per request "
                    "(send fewer or smaller files per request)")
        self.used += n
        return None

    def check(self, path: Path, kind: str | None) -> str | None:
        """:meth:`take` for a received file, its geometry read from its header."""
        try:
            return self.take(declared_geometry(path, kind))
        except ValueError as e:
            return str(e)


@dataclass
class ReceivedFile:
    """One uploaded file as stored in the request's temporary folder."""

    name: str  # sanitised, unique within the request
    path: Path
    head: bytes = b""  # first bytes, for sniffing the kind
    field: str = "files"  # the form field it came in (``sidecar``: the grouping CSV, not an image)
    original: str = ""  # the client's file name before sanitising (matched against a sidecar's paths)


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


def declared_geometry(path: Path, kind: str | None) -> tuple[int, int, int] | None:
    """``(width, height, frames)`` an image declares in its header, without decoding pixels.

    DICOM (``kind`` "dicom", or None for a ``.dcm`` without preamble) is read by pydicom up to the
    pixel data; rasters by PIL's lazy ``Image.open``, which parses only the header.

    Returns:
        The geometry, or None when the header cannot be parsed: the reader, built on the same
        libraries, cannot decode the file either and reports why.

    Raises:
        ValueError: PIL itself refuses the declared size as a decompression bomb.
    """
    if kind in ("dicom", None):
        import pydicom

        try:
            ds = pydicom.dcmread(
                path,
                stop_before_pixels=True,
                force=True,  # as the reader's fallback does
                specific_tags=["Rows", "Columns", "NumberOfFrames"],  # no other value is parsed
            )
            return int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), int(ds.get("NumberOfFrames", 1) or 1)
        except Exception:  # noqa: BLE001 - pydicom raises many types on malformed headers
            return None
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size[0], im.size[1], int(getattr(im, "n_frames", 1) or 1)
    except Image.DecompressionBombError as e:  # raised at open above 2 × PIL's own limit
        raise ValueError(f"image too large: {e}") from e
    except Exception:  # noqa: BLE001 - PIL raises many types on malformed headers
        return None


def _multipart():
    # python-multipart < 0.0.13 named its module "multipart"
    pkg = optional_import(("python_multipart", "multipart"), "serve", "uploads to the web app").__name__
    parser = importlib.import_module(f"{pkg}.multipart")
    errors = importlib.import_module(f"{pkg}.exceptions")
    return parser.MultipartParser, parser.parse_options_header, errors.FormParserError


class _FileWriter:
    """Parser callbacks: each file part goes to ``dest``; plain form fields are dropped."""

    def __init__(self, dest: Path, max_bytes: int, max_files: int, parse_options_header):
        self.dest, self.max_bytes, self.max_files = dest, max_bytes, max_files
        self.files: list[ReceivedFile] = []
        self.file_bytes = 0
        self._parse = parse_options_header
        self._field, self._value = bytearray(), bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._fh = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.close,
        }

    def on_part_begin(self) -> None:
        self._headers = {}

    def on_header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def on_headers_finished(self) -> None:
        _, opts = self._parse(self._headers.get(b"content-disposition", b""))
        if b"filename" not in opts:
            return  # a plain field: its bytes still count toward the body limit
        if len(self.files) >= self.max_files:
            raise TooManyFiles(f"too many files: the limit is {self.max_files} per request (send fewer files)")
        safe = sanitize_filename(opts[b"filename"].decode("utf-8", "replace"), fallback=f"upload-{len(self.files) + 1}")
        stored, n = safe, 1
        while (self.dest / stored).exists():  # duplicate names kept apart
            stem, dot, suf = safe.partition(".")
            stored = f"{stem}-{n}{dot}{suf}"
            n += 1
        field = opts.get(b"name", b"files").decode("utf-8", "replace")
        self.files.append(ReceivedFile(stored, self.dest / stored, field=field,
                                       original=opts[b"filename"].decode("utf-8", "replace")))
        self._fh = (self.dest / stored).open("wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._fh is None:
            return
        chunk = data[start:end]
        self.file_bytes += len(chunk)
        if self.file_bytes > self.max_bytes:
            raise UploadTooLarge("files over the byte limit")
        rec = self.files[-1]
        if len(rec.head) < _HEAD:
            rec.head += chunk[: _HEAD - len(rec.head)]
        self._fh.write(chunk)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def receive_files(
    chunks: AsyncIterator[bytes],
    content_type: str,
    dest: Path,
    *,
    max_bytes: int,
    max_body: int,
    max_files: int = MAX_FILES,
) -> list[ReceivedFile]:
    """Parse a ``multipart/form-data`` body as it streams in, writing file parts into ``dest``.

    Args:
        chunks: the request body (``request.stream()``).
        content_type: the request's Content-Type header (carries the boundary).
        dest: an existing, empty folder for the files.
        max_bytes: limit on the files' bytes together.
        max_body: limit on the raw body (files + multipart framing + other fields).
        max_files: limit on the number of file parts.

    Returns:
        The files in upload order.

    Raises:
        UploadTooLarge: a limit was crossed; reading stopped there, at most one chunk past it.
        UploadAborted: the client disconnected mid-body (one log line, no traceback).
        BadUpload: not multipart/form-data, or a malformed body.
    """
    MultipartParser, parse_options_header, FormParserError = _multipart()
    ctype, opts = parse_options_header(content_type)
    if ctype != b"multipart/form-data" or not opts.get(b"boundary"):
        raise BadUpload("no files received: send multipart/form-data with one or more 'files' parts")
    writer = _FileWriter(dest, max_bytes, max_files, parse_options_header)
    parser = MultipartParser(opts[b"boundary"], writer.callbacks())
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > max_body:  # checked before the chunk is parsed or written
                raise UploadTooLarge("request body over the byte limit")
            parser.write(chunk)
        parser.finalize()
    except FormParserError as e:
        raise BadUpload(f"malformed multipart body: {e}") from e
    except Exception as e:
        if type(e).__name__ != "ClientDisconnect":  # starlette's, without importing the web stack here
            raise
        log.info("upload aborted by the client after %d bytes", received)
        raise UploadAborted("upload aborted by the client") from None
    finally:
        writer.close()
    return writer.files
