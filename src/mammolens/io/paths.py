"""File names that are not valid UTF-8: shown escaped, found again from the escaped text.

On Linux a file name is bytes; Python decodes the bytes that are not UTF-8 (a Latin-1 ``é`` byte on a
share: ``caf\\xe9.dcm``) into lone surrogates, which no UTF-8 writer (parquet, CSV, a terminal, JSON)
accepts ("surrogates not allowed"). ``display_path`` turns such a name into printable UTF-8 text with
each undecodable byte written ``\\xNN``; ``resolve_path`` maps that text back to the file. Tables
(manifest, errors.csv, logs) store the displayed form, and the readers (``io.read_image``,
``io.dicom.read_dicom``) resolve it, so a manifest row names its file whatever bytes its name holds.
"""

from __future__ import annotations

import os
import re
from os import PathLike

__all__ = ["display_path", "resolve_path"]

_ESCAPE = re.compile(rb"\\x([0-9a-f]{2})")


def display_path(path: str | bytes | PathLike) -> str:
    """``path`` as valid UTF-8 text: bytes that are not UTF-8 become ``\\xNN`` (valid names are unchanged)."""
    raw = path if isinstance(path, bytes) else os.fsencode(os.fspath(path))
    return raw.decode("utf-8", "backslashreplace")


def resolve_path(text: str | PathLike) -> str:
    """The file a path or its :func:`display_path` text names: ``text`` itself when it exists or holds no
    ``\\xNN`` escape, else the name with the escapes turned back into bytes when that file exists."""
    text = os.fspath(text)
    if "\\x" not in text or os.path.lexists(text):
        return text
    candidate = os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8", "surrogateescape")))
    return candidate if os.path.lexists(candidate) else text
