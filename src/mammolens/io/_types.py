"""Types shared by the readers: the decoded image and the read error."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from os import PathLike

import numpy as np

META_KEYS = (
    "sop_instance_uid",
    "study_instance_uid",
    "series_instance_uid",
    "patient_id",
    "laterality",
    "view",
    "modality",
    "manufacturer",
    "model",
    "presentation_intent",
    "photometric",
    "bits_stored",
    "transfer_syntax",
    "n_frames",
    "pixel_spacing",
    "age",
)
"""Keys every ``MammoImage.meta`` holds (missing values are "" for text, None otherwise)."""

_NONE_KEYS = ("bits_stored", "n_frames", "pixel_spacing", "age")


def empty_meta() -> dict:
    """A meta dict with every key of ``META_KEYS`` set to its missing value."""
    return {k: (None if k in _NONE_KEYS else "") for k in META_KEYS}


class ImageReadError(ValueError):
    """An image could not be read; ``path`` names the file (``io.paths.display_path`` text: printable
    UTF-8 whatever bytes the name holds) and the message says why."""

    def __init__(self, path: str | PathLike, problem: str):
        from mammolens.io.paths import display_path

        self.path = display_path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


DEFAULT_MAX_PIXELS = 1_200_000_000
"""Most pixels one read may decode (Rows x Columns x frames decoded): a DBT stack of ~140 frames of
3328 x 2560 fits, a 65535 x 65535 image (4.3e9) does not. ``MAMMOLENS_MAX_PIXELS`` overrides it."""

MAX_PIXELS_ENV = "MAMMOLENS_MAX_PIXELS"


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The pixel budget: ``max_pixels`` when given, else ``$MAMMOLENS_MAX_PIXELS``, else ``DEFAULT_MAX_PIXELS``."""
    if max_pixels is not None:
        value, source = max_pixels, "max_pixels"
    elif os.environ.get(MAX_PIXELS_ENV, "").strip():
        value, source = os.environ[MAX_PIXELS_ENV].strip(), MAX_PIXELS_ENV
    else:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(float(value))
    except (TypeError, ValueError):
        limit = 0
    if limit <= 0:
        raise ValueError(f"{source} must be a positive number of pixels (e.g. 1.2e9), got {value!r}")
    return limit


def check_pixel_budget(path: str | PathLike, rows: int, columns: int, frames: int, max_pixels: int | None) -> None:
    """Refuse, before anything is decoded, an image whose declared size exceeds the pixel budget."""
    limit = max_pixels_limit(max_pixels)
    n = rows * columns * frames
    if n > limit:
        raise ImageReadError(
            path, f"declared size {rows} x {columns}{f' x {frames:,} frames' if frames > 1 else ''} = {n:,} pixels "
            f"exceeds the pixel budget of {limit:,} (max_pixels= or ${MAX_PIXELS_ENV} raise it); not decoded")


@contextmanager
def image_read_guard(path: str | PathLike):
    """Turn every failure while reading ``path`` into ``ImageReadError`` (``FileNotFoundError`` stays).

    Decoders written in Rust raise pyo3's ``PanicException``, a ``BaseException`` that ``except
    Exception`` misses; it, ``MemoryError`` and any other error become ``ImageReadError`` here, so one
    bad file never ends a batch. Only ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit`` pass.
    """
    try:
        yield
    except (ImageReadError, FileNotFoundError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except MemoryError as exc:
        raise ImageReadError(path, f"out of memory while reading ({exc or 'MemoryError'}); the header probably "
                             "declares far more pixels than the file holds") from exc
    except BaseException as exc:  # noqa: BLE001 - decoder panics derive from BaseException
        raise ImageReadError(path, f"the reader failed on this file ({type(exc).__name__}: {exc}); the file is "
                             "corrupt or not conformant") from exc


@dataclass
class MammoImage:
    """A decoded mammogram.

    Attributes:
        pixels: float32 in [0, 1], ``[H, W]`` (``[F, H, W]`` for ``dbt="frames"``), MONOCHROME2
            display convention (bright = dense tissue).
        meta: header metadata, keys ``META_KEYS`` (plus reader-specific extras).
        conversion: exactly how ``pixels`` were made from the stored values (JSON-serialisable).
        path: the file read.
    """

    pixels: np.ndarray
    meta: dict = field(default_factory=empty_meta)
    conversion: dict = field(default_factory=dict)
    path: str = ""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)
