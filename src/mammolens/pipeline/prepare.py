"""``prepare``: one file (or manifest row, or image already in memory) → the model's tile, in one place.

Every surface that turns an image into a tile goes through this function: the cache builder
(``data.cache``), ``Predictor.predict`` / ``predict_array`` (``inference``), the evaluate/explain
galleries and the sentence maps (``workflows``) and, through ``Predictor``, the web page. The steps,
in order:

1. read: ``io.read_image`` (or the caller's ``reader``), ``dbt=PreprocessCfg.dbt``, or ``frame=`` for a
   row that names one frame of a stack (a reader that returns the whole stack has the frame taken here);
2. header gate: ``io.gating.mammography_gate`` on the header meta (a DX abdomen, a For Processing
   duplicate's header...) → ``status="refused"``;
3. quality gate: ``transforms.quality.check_image`` with ``QualityCfg`` (skipped when ``quality`` is
   None or disabled) → ``status="not_assessable"``;
4. preprocess: ``transforms.breast.preprocess_image`` (the cache recipe) → uint16 ``[S, S]`` tile;
5. geometry: ``preprocess_image``'s ``info`` dict (``bbox``, ``flipped``, ``orig_shape``, ``letterbox``...),
   what ``transforms.breast.to_original`` needs to draw a map back on the original image;
6. display copy (``display > 0``): ``transforms.breast.display_copy``, a uint8 copy of the original
   with longest side ``<= display``, for heat maps.

``source`` is a path, a manifest row (a mapping, ``pd.Series`` or ``itertuples`` row with
``image_path`` and optional ``frame`` and ``laterality``), or an image already read: a ``MammoImage``
(its header meta is gated) or an array ``[H, W]`` in [0, 1] (no header: not gated).

Laterality for the chest-wall flip: ``laterality=`` when given (``""`` = detect from the image), else a
row's ``laterality`` column, else the header's.

A file that cannot be read raises (``ImageReadError``, ``FileNotFoundError``, a ``ValueError`` for a
frame out of range): the ``Executor`` running ``prepare`` records the reason. Gate and quality failures
are not errors but ``Prepared`` records with ``pixels=None`` and the ``reason``.

Layer 3 (beside ``data``): no torch, no models; picklable inputs and outputs, so it runs in workers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import numpy as np

from mammolens.transforms.config import PreprocessCfg
from mammolens.transforms.quality import QualityCfg

__all__ = ["PREPARED_META_KEYS", "STATUSES", "Prepared", "parse_frame", "prepare"]

PREPARED_META_KEYS = ("laterality", "view", "modality", "manufacturer", "presentation_intent", "study_instance_uid",
                      "sop_instance_uid", "patient_id")
"""Header keys ``Prepared.meta`` carries (what Predictor's rows, grouping and privacy scrubbing read)."""

STATUSES = ("ok", "refused", "not_assessable")

try:  # pandas is a core dependency; kept optional here so this module imports without it
    from pandas import NA as _NA
except ImportError:  # pragma: no cover
    _NA = object()


@dataclass
class Prepared:
    """What ``prepare`` made of one image.

    Attributes:
        status: ``"ok"``, ``"refused"`` (the header gate: not a mammogram) or ``"not_assessable"`` (the
            quality gate).
        reason: why not ok (``""`` when ok); the gate's or ``check_image``'s reason.
        pixels: the uint16 ``[S, S]`` tile, or None when not ok.
        meta: the header keys of ``PREPARED_META_KEYS`` (values None when the source has no header).
        geometry: ``preprocess_image``'s info (empty when not ok).
        display: uint8 display copy of the original (``display > 0`` and ok), else None.
        conversion: the reader's conversion record (``MammoImage.conversion``; ``{}`` for an array).
        reference: a DICOM source's identity for the DICOM outputs (``io.dicom_out.source_reference``, read
            with the image: ``meta["source_reference"]`` of ``read_dicom``); ``{}`` for other sources.
    """

    status: str
    reason: str = ""
    pixels: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    geometry: dict[str, Any] = field(default_factory=dict)
    display: np.ndarray | None = None
    conversion: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def parse_frame(frame: Any) -> int | None:
    """A manifest ``frame`` value as an int, or None when empty (NaN, ``""``, ``<NA>``, None)."""
    if frame is None or frame is _NA or (isinstance(frame, float) and np.isnan(frame)):
        return None
    s = str(frame).strip()
    if s in ("", "nan", "<NA>", "None", "NaT"):
        return None
    return int(float(s))


def _row_get(row: Any, key: str) -> Any:
    if isinstance(row, Mapping):
        return row.get(key)
    if hasattr(row, "index") and hasattr(row, "get") and not isinstance(row, tuple):  # pd.Series
        return row.get(key)
    return getattr(row, key, None)  # an itertuples row


def _is_row(source: Any) -> bool:
    if isinstance(source, (str, PathLike, np.ndarray)) or hasattr(source, "pixels"):
        return False
    return _row_get(source, "image_path") is not None


def _default_reader(path: str, **kw):
    from mammolens.io import read_image

    return read_image(path, lazy=True, **kw)  # a DICOM's stored values + value table: no full float32 copy


def prepare(
    source: Any,
    pre: PreprocessCfg,
    quality: QualityCfg | None = None,
    *,
    display: int = 0,
    laterality: str | None = None,
    frame: Any = None,
    reader: Callable[..., Any] | None = None,
) -> Prepared:
    """Read → header gate → quality gate → preprocess → geometry → display copy (module docstring).

    Args:
        source: a path, a manifest row (``image_path``, optional ``frame``, ``laterality``), a
            ``MammoImage`` or an array ``[H, W]`` / ``[F, H, W]`` in [0, 1].
        pre: the preprocessing recipe (the run's or the cache's ``PreprocessCfg``).
        quality: the quality gate's thresholds; None skips the gate.
        display: longest side of the display copy; 0 = none.
        laterality: overrides the row's / header's laterality (``""``: detect from the image).
        frame: the frame of a stack to take (overrides a row's ``frame``).
        reader: ``f(path, dbt=...)`` / ``f(path, frame=...)`` returning a ``MammoImage`` or an array
            (default ``io.read_image``).

    Raises:
        ImageReadError, FileNotFoundError: the file cannot be read.
        ValueError: ``frame`` is out of range for the stack the reader returned.
    """
    if isinstance(pre, dict):
        pre = PreprocessCfg.from_dict(pre)
    if isinstance(quality, dict):
        quality = QualityCfg.from_dict(quality)
    if _is_row(source):
        if frame is None:
            frame = _row_get(source, "frame")
        if laterality is None:
            lat = _row_get(source, "laterality")
            laterality = "" if lat is None or (isinstance(lat, float) and np.isnan(lat)) or lat is _NA else str(lat)
        source = str(_row_get(source, "image_path"))
    fr = parse_frame(frame)
    if isinstance(source, (str, PathLike)):
        read = reader or _default_reader
        img = read(str(source), frame=fr) if fr is not None else read(str(source), dbt=pre.dbt)
    else:
        img = source
    raw_meta = getattr(img, "meta", None) or {}
    meta = {k: raw_meta.get(k) for k in PREPARED_META_KEYS}
    conversion = dict(getattr(img, "conversion", None) or {})
    reference = dict(raw_meta.get("source_reference") or {})

    from mammolens.io.gating import mammography_gate

    gate_ok, gate_reason = mammography_gate(raw_meta)
    if not gate_ok:  # a DX abdomen must never be preprocessed, trained on or predicted
        return Prepared("refused", gate_reason, meta=meta, conversion=conversion, reference=reference)
    # a StoredImage (the default reader's DICOM) is reduced band by band: its full float32 image is only made
    # for a display copy or a tiny image
    pixels = img if hasattr(img, "bands") else np.asarray(getattr(img, "pixels", img))
    if fr is not None and len(pixels.shape) == 3:  # a reader that returned the whole stack
        if not 0 <= fr < pixels.shape[0]:
            raise ValueError(f"frame {fr} out of range: the file has {pixels.shape[0]} frames")
        pixels = pixels[fr]
    from mammolens.transforms.breast import display_copy, preprocess_reduced, reduce_image

    if quality is not None and quality.enabled:  # measured on preprocessing's working copy and mask: one mask
        from mammolens.transforms.quality import check_image, check_reduced

        if len(pixels.shape) not in (2, 3) or min(pixels.shape[-2:]) < quality.min_side:
            q = check_image(_full(pixels), quality, size=pre.size)  # the shape and size checks, nothing reduced
            if not q.ok:
                return Prepared("not_assessable", q.reason, meta=meta, conversion=conversion, reference=reference)
        red = reduce_image(pixels, pre.size)
        q = check_reduced(red, quality)
        if not q.ok:
            return Prepared("not_assessable", q.reason, meta=meta, conversion=conversion, reference=reference)
    else:
        red = reduce_image(pixels, pre.size)

    if laterality is None:
        laterality = meta.get("laterality") or None
    tile, info = preprocess_reduced(red, pre, laterality=laterality)
    shown = display_copy(_full(pixels), display)[0] if display > 0 else None
    return Prepared("ok", "", tile, meta, info, shown, conversion, reference)


def _full(pixels: Any) -> np.ndarray:
    """The float32 image of an array or a ``StoredImage`` (made on first use)."""
    return pixels.pixels if hasattr(pixels, "bands") else pixels
