"""Raster reader for PNG/PGM/TIFF/JPEG mammograms (mini-MIAS, CBIS-DDSM PNG exports, ...).

Rules: greyscale only, normalised by the *bit depth* of the file, never by its min/max, so the same
tissue keeps the same value across images: 8-bit (``L``) / 255, 16-bit (``I;16*``, and Pillow's 32-bit
``I`` mode, which holds 16-bit PNG/PGM/TIFF data) / 65535, 1-bit as 0/1, float TIFF kept when already
in [0, 1]. RGB(A) or palette images whose colour channels are identical are reduced to one channel;
real colour is refused. Multi-page TIFFs give their first page. No header metadata exists, so
laterality/view are None-equivalent ("") and the display convention is assumed MONOCHROME2.

Refused before decoding: a declared size over the pixel budget (``max_pixels``, see
``mammolens.io.max_pixels_limit``) or over Pillow's decompression-bomb threshold
(``PIL.Image.MAX_IMAGE_PIXELS``, 89 M pixels by default). Refused after: NaN/Inf values, and a PNG that
ends before its IEND chunk (truncated, even when the rows before the cut happened to decode).
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

from mammolens.io._types import ImageReadError, MammoImage, check_pixel_budget, empty_meta, image_read_guard

READER_VERSION = "1.0"


def read_raster(path: str | PathLike, *, max_pixels: int | None = None) -> MammoImage:
    """Read a greyscale raster into a float32 ``[H, W]`` image in [0, 1].

    Args:
        path: the file.
        max_pixels: pixel budget (default ``$MAMMOLENS_MAX_PIXELS`` or 1.2e9).

    Raises:
        FileNotFoundError: no such file.
        ImageReadError: unreadable, a colour image (not a greyscale mammogram), over the pixel budget
            or Pillow's decompression-bomb limit, NaN/Inf values, or any other failure reading it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    with image_read_guard(path):
        return _read_raster(path, max_pixels)


def _png_complete(path: Path) -> bool:
    """True when the PNG holds its closing IEND chunk (junk after it is tolerated)."""
    import mmap

    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return mm.rfind(b"IEND") >= 0


def _read_raster(path: Path, max_pixels: int | None) -> MammoImage:
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a mammogram is far below it
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            check_pixel_budget(path, img.size[1], img.size[0], 1, max_pixels)
            img.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageReadError(path, f"refused as a decompression bomb ({exc}); raise PIL.Image.MAX_IMAGE_PIXELS "
                             "if the image is genuine") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(path, f"not a readable PNG/PGM/TIFF/JPEG image ({exc})") from exc
    fmt = img.format or path.suffix.lstrip(".").upper()
    if fmt == "PNG" and not _png_complete(path):  # zlib may yield every row before the cut: still a broken file
        raise ImageReadError(path, "truncated PNG: the file ends before its IEND chunk")
    mode = img.mode
    n_pages = int(getattr(img, "n_frames", 1) or 1)
    reduced = False
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGB", "RGBA", "LA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            raise ImageReadError(path, f"{mode} colour image: not a greyscale mammogram")
        arr = np.asarray(img)
        if mode == "LA":
            arr = arr[..., 0]
        else:
            rgb = arr[..., :3]
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise ImageReadError(path, f"{mode} image with differing colour channels: not a greyscale mammogram")
            arr = rgb[..., 0]
        reduced = True
        bits, scale = 8, 255.0
    elif mode == "L":
        arr, bits, scale = np.asarray(img), 8, 255.0
    elif mode == "1":
        arr, bits, scale = np.asarray(img), 1, 1.0
    elif mode.startswith("I;16") or mode == "I":
        arr, bits, scale = np.asarray(img), 16, 65535.0
        if mode == "I" and arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
            raise ImageReadError(path, "32-bit integer image with values outside 0-65535: not a 16-bit greyscale mammogram")
    elif mode == "F":
        arr, bits, scale = np.asarray(img), 32, 1.0
        if not np.isfinite(arr).all():
            raise ImageReadError(path, "float image with NaN/Inf values")
        if arr.size and (float(np.nanmin(arr)) < 0 or float(np.nanmax(arr)) > 1):
            raise ImageReadError(path, "float image with values outside [0, 1]; convert it to 8/16-bit first")
    else:
        raise ImageReadError(path, f"unsupported image mode {mode!r}")
    pixels = arr.astype(np.float32)
    if scale != 1.0:
        pixels *= np.float32(1.0 / scale)
    np.clip(pixels, 0.0, 1.0, out=pixels)
    meta = empty_meta()
    meta.update(photometric="MONOCHROME2", bits_stored=bits, n_frames=1, laterality="", view="")
    conversion = {
        "reader": "mammolens.io.images",
        "reader_version": READER_VERSION,
        "format": fmt,
        "mode": mode,
        "bits": bits,
        "scale": scale,
        "rgb_reduced": reduced,
        "pages": n_pages,
        "voi": "none",
        "inverted": False,
    }
    return MammoImage(pixels=pixels, meta=meta, conversion=conversion, path=str(path))


__all__ = ["READER_VERSION", "read_raster"]
