"""``PreprocessCfg``: how an image becomes a cache row.

It sits in the transforms layer, below both ``transforms.breast`` (which applies it) and ``data.cache``
(which stores it), so neither imports the other; ``mammolens.data.cache.PreprocessCfg`` re-exports it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["PreprocessCfg"]

_FLIPS = ("left", "none")


@dataclass
class PreprocessCfg:
    """How images become cache rows (stored in every cache and every checkpoint).

    Attributes:
        size: output side S (images are ``[S, S]``).
        keep_aspect: letterbox (True) or stretch (False) to the square.
        crop: crop to the breast's bounding box.
        mask_background: zero everything outside the breast mask (removes film labels and markers).
        margin: crop margin as a fraction of the image's longest side.
        flip: ``"left"`` puts the chest wall on the image left; ``"none"`` keeps the stored orientation.
        use_laterality: orient by the header's laterality instead of the image itself (auto-detection
            is the default because header laterality and display orientation disagree in some archives).
        dbt: how the reader reduces multi-frame DBT to one image (``mammolens.io.read_image(dbt=...)``).
        dtype: storage type; only ``"uint16"`` (pixels * 65535) is supported.
    """

    size: int = 224
    keep_aspect: bool = True
    crop: bool = True
    mask_background: bool = True
    margin: float = 0.0
    flip: str = "left"
    use_laterality: bool = False
    dbt: str = "mip"
    dtype: str = "uint16"

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 8:
            raise ValueError(f"PreprocessCfg.size must be an integer >= 8, got {self.size!r}")
        if self.flip not in _FLIPS:
            raise ValueError(f"PreprocessCfg.flip must be one of {_FLIPS}, got {self.flip!r}")
        if not 0.0 <= float(self.margin) < 0.5:
            raise ValueError(f"PreprocessCfg.margin is a fraction of the longest side in [0, 0.5), got {self.margin!r}")
        if self.dtype != "uint16":
            raise ValueError(f"PreprocessCfg.dtype must be 'uint16', got {self.dtype!r}")
        if not isinstance(self.dbt, str) or not self.dbt:
            raise ValueError(f"PreprocessCfg.dbt must be a non-empty string such as 'mip', got {self.dbt!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PreprocessCfg:
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PreprocessCfg field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)
