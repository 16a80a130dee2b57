"""Image input: one documented reader for mammography DICOM (``io.dicom``) and rasters (``io.images``).

``read_image(path)`` decides by content: a file with the DICOM preamble (``DICM`` at byte 128), or one
pydicom can parse without it, goes to ``read_dicom``; PNG/PGM/TIFF/JPEG go to ``read_raster``.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from mammolens.io._types import META_KEYS, ImageReadError, MammoImage, empty_meta

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
    from mammolens.io.dicom import _looks_like_headerless_dicom

    return _looks_like_headerless_dicom(path)


def read_image(path: str | PathLike, **kw) -> MammoImage:
    """Read a mammogram from DICOM (by content) or PNG/PGM/TIFF/JPEG (by suffix).

    Args:
        path: the file.
        **kw: passed to ``read_dicom`` (``dbt``, ``slab``, ``frame``, ``apply_voi``, ...); ignored
            for rasters.

    Raises:
        FileNotFoundError: no such file.
        ImageReadError: neither a readable DICOM nor a supported raster.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    if is_dicom(path):
        from mammolens.io.dicom import read_dicom

        return read_dicom(path, **kw)
    if path.suffix.lower() in RASTER_SUFFIXES:
        from mammolens.io.images import read_raster

        return read_raster(path)
    raise ImageReadError(
        path,
        f"not a DICOM file and suffix {path.suffix!r} is not a supported raster "
        f"({', '.join(RASTER_SUFFIXES)})",
    )


__all__ = ["META_KEYS", "ImageReadError", "MammoImage", "empty_meta", "is_dicom", "read_image"]
