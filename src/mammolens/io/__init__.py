"""Image input: one documented reader for mammography DICOM (``io.dicom``) and rasters (``io.images``).

``read_image(path)`` decides by content: a file with the DICOM preamble (``DICM`` at byte 128), or one
pydicom can parse without it, goes to ``read_dicom``; PNG/PGM/TIFF/JPEG go to ``read_raster``. Paths may
be given as ``display_path`` text (undecodable bytes escaped ``\\xNN``; see ``io.paths``).
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from mammolens.io._types import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    META_KEYS,
    ImageReadError,
    MammoImage,
    empty_meta,
    image_read_guard,
    max_pixels_limit,
)
from mammolens.io.paths import display_path, resolve_path

RASTER_SUFFIXES = (".png", ".pgm", ".pnm", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def is_dicom(path: str | PathLike) -> bool:
    """True when the file is DICOM: ``DICM`` at offset 128, or a preamble-less dataset pydicom can parse."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    if path.suffix.lower() in RASTER_SUFFIXES:
        return False
    from mammolens.io.dicom import looks_like_headerless_dicom

    return looks_like_headerless_dicom(path)


def read_image(path: str | PathLike, **kw) -> MammoImage:
    """Read a mammogram from DICOM (by content) or PNG/PGM/TIFF/JPEG (by suffix).

    Args:
        path: the file.
        **kw: passed to ``read_dicom`` (``dbt``, ``slab``, ``frame``, ``apply_voi``, ``max_pixels``, ...);
            rasters take only ``max_pixels``.

    Raises:
        FileNotFoundError: no such file.
        ImageReadError: neither a readable DICOM nor a supported raster, or any failure reading it
            (corrupt data, a header that disagrees with the data, over the pixel budget, a decoder panic).
    """
    path = Path(resolve_path(path))
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {display_path(path)}")
    with image_read_guard(path):
        dicom = is_dicom(path)
    if dicom:
        from mammolens.io.dicom import read_dicom

        return read_dicom(path, **kw)
    if path.suffix.lower() in RASTER_SUFFIXES:
        from mammolens.io.images import read_raster

        return read_raster(path, max_pixels=kw.get("max_pixels"))
    raise ImageReadError(
        path,
        f"not a DICOM file and suffix {path.suffix!r} is not a supported raster "
        f"({', '.join(RASTER_SUFFIXES)})",
    )


__all__ = ["DEFAULT_MAX_PIXELS", "MAX_PIXELS_ENV", "META_KEYS", "ImageReadError", "MammoImage", "display_path",
           "empty_meta", "image_read_guard", "is_dicom", "max_pixels_limit", "read_image", "resolve_path"]
