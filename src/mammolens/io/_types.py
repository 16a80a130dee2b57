"""Types shared by the readers: the decoded image and the read error."""

from __future__ import annotations

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
    """An image could not be read; ``path`` names the file and the message says why."""

    def __init__(self, path: str | PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


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
