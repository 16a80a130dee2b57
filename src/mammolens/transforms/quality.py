"""Image quality gate (pure numpy): is an image a plausible mammogram the model may assess?

``check_image`` runs on the reader's output, before preprocessing. In order:

1. shape: a 2-D ``[H, W]`` image (a ``[F, H, W]`` stack is reduced by its maximum, as the cache does);
2. size: the shorter side is at least ``QualityCfg.min_side`` pixels;
3. finite: no NaN/Inf pixel;
4. not constant: pixel standard deviation above ``min_std``;
5. breast area: the fraction of the image covered by ``breast_mask`` lies in
   ``[min_breast_fraction, max_breast_fraction]`` (measured: synthetic cohort 0.39–0.66, mini-MIAS
   films 0.17–0.93; a white text page 0.98–1.0, noise images 0.0–0.003);
6. texture: inside the breast mask the pixel standard deviation is at least ``min_foreground_std``
   (measured: synthetic ≥ 0.078, mini-MIAS ≥ 0.136; the blank white part of a text page ~0), and at most
   ``max_edge_fraction`` of them lie on a sharp edge, a gradient ``|d/dx| + |d/dy|`` above 0.15 per
   1/256 of the longest side (measured: synthetic cohorts at 128 and 512 px ≤ 0.092, mini-MIAS ≤ 0.058;
   light-on-dark text pages 0.22–0.68), which catches text and graphics the area check misses (dark
   text on a white page fills the image and fails the area check).

The first failing check gives the reason; an image that fails is reported "not assessable" and never
gets a density. The out-of-distribution score against the training embeddings is the model-side
check (``mammolens.models.ood``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mammolens.transforms.breast import Reduced, reduce_image

QUALITY_VERSION = 2
"""Version of ``check_image``'s checks: bump it when a check or its measure changes, so that caches built
with the old gate (their ``cache.json`` records it) are rebuilt rather than silently reused. 2: measured on
preprocessing's working copy and its breast mask (one mask per image instead of two; same verdicts on the
synthetic cohort, mini-MIAS and the rejection cases of tests/transforms/test_quality.py)."""

_WORK_SIDE = 256  # the checks run on a block-mean copy this size: the mask is computed at this size anyway
_EDGE = 0.15  # |d/dx| + |d/dy| of a sharp edge on the working copy (tissue texture stays below it)


@dataclass
class QualityCfg:
    """Thresholds of the image quality gate.

    Attributes:
        enabled: run the gate at all (off: every readable image is predicted, as before).
        min_side: smallest accepted shorter side in pixels.
        min_std: smallest accepted pixel standard deviation (pixels in [0, 1]); below it the image is constant.
        min_breast_fraction: smallest accepted breast-mask fraction of the image.
        max_breast_fraction: largest accepted breast-mask fraction (a page or a full-field photo fills it all).
        min_foreground_std: smallest accepted pixel standard deviation inside the breast mask (tissue has texture).
        max_edge_fraction: largest accepted share of breast pixels on a sharp edge (text and graphics are
            mostly edges; breast tissue is smooth at this scale).
        ood: use the run's out-of-distribution model (``ood.npz``) when the run has one.
    """

    enabled: bool = True
    min_side: int = 64
    min_std: float = 1e-3
    min_breast_fraction: float = 0.05
    max_breast_fraction: float = 0.98
    min_foreground_std: float = 0.02
    max_edge_fraction: float = 0.15
    ood: bool = True

    def __post_init__(self):
        if not 0.0 <= self.min_breast_fraction < self.max_breast_fraction <= 1.0:
            raise ValueError("QualityCfg needs 0 <= min_breast_fraction < max_breast_fraction <= 1, got "
                             f"{self.min_breast_fraction} and {self.max_breast_fraction}")
        if self.min_side < 1:
            raise ValueError(f"QualityCfg.min_side must be >= 1, got {self.min_side}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> QualityCfg:
        return cls(**(d or {}))


@dataclass
class QualityResult:
    """Outcome of ``check_image``: ``ok``, the ``reason`` when not (``""`` when ok) and the measures."""

    ok: bool
    reason: str = ""
    measures: dict[str, float] = field(default_factory=dict)


def check_image(pixels: np.ndarray, cfg: QualityCfg | None = None, size: int = 224) -> QualityResult:
    """Run the image checks (see the module docstring) on an image as read (``[H, W]`` or ``[F, H, W]``).

    The checks measure the working copy preprocessing makes for an output of ``size`` px
    (``transforms.breast.reduce_image``) and its breast mask, so that ``pipeline.prepare`` pays for one mask,
    not two (``check_reduced``).

    Returns:
        ``QualityResult``; ``reason`` starts with ``"not assessable: "`` and names the failed check.
    """
    cfg = cfg or QualityCfg()
    if not cfg.enabled:
        return QualityResult(True)
    img = np.asarray(pixels)
    if img.ndim not in (2, 3):
        return QualityResult(False, f"not assessable: expected a 2-D image, got shape {tuple(img.shape)}", {})
    if min(img.shape[-2:]) < cfg.min_side:  # before reducing: a tiny image has no working copy worth making
        return check_reduced(None, cfg, shape=img.shape[-2:])
    return check_reduced(reduce_image(img, size), cfg)


def check_reduced(red: Reduced | None, cfg: QualityCfg | None = None, shape=None) -> QualityResult:
    """The checks on a ``reduce_image`` result (its mask computed here and kept on ``red`` for preprocessing).

    Measures: the shorter side of the original; finiteness and pixel std of the working copy (block means
    of ``red.scale`` pixels); breast fraction, foreground std and edge fraction on the mask's own working copy
    (longest side <= 256) and its mask, exactly the mask preprocessing crops with.
    """
    cfg = cfg or QualityCfg()
    m: dict[str, float] = {}

    def fail(why: str) -> QualityResult:
        return QualityResult(False, f"not assessable: {why}", m)

    if not cfg.enabled:
        return QualityResult(True)
    h, w = (int(v) for v in (shape if red is None else red.orig_shape))
    m["short_side"] = float(min(h, w))
    if min(h, w) < cfg.min_side:
        return fail(f"image too small ({h}x{w} px; the shorter side must be >= {cfg.min_side})")
    work = red.work
    if not np.isfinite(work).all():  # a NaN/Inf pixel makes its block mean non-finite
        return fail("image has NaN or infinite pixel values")
    m["std"] = float(work.std())
    if m["std"] <= cfg.min_std:
        return fail(f"constant image (pixel std {m['std']:.2g} <= {cfg.min_std:g})")
    red.compute_mask()
    small, mask = red.small, red.small_mask
    m["breast_fraction"] = float(mask.mean())
    if not cfg.min_breast_fraction <= m["breast_fraction"] <= cfg.max_breast_fraction:
        return fail(f"implausible breast area ({m['breast_fraction']:.1%} of the image; expected "
                    f"{cfg.min_breast_fraction:.0%}-{cfg.max_breast_fraction:.0%})")
    m["foreground_std"] = float(small[mask].std())
    if m["foreground_std"] < cfg.min_foreground_std:
        return fail(f"not a mammogram: the foreground is flat (pixel std {m['foreground_std']:.2g} < "
                    f"{cfg.min_foreground_std:g})")
    gy, gx = np.gradient(small)
    # gradients per 1/256 of the image, so that a small image's pixel noise is not taken for edges
    grad = (np.abs(gx) + np.abs(gy)) * (max(small.shape) / _WORK_SIDE)
    m["edge_fraction"] = float(np.mean(grad[mask] > _EDGE))
    if m["edge_fraction"] > cfg.max_edge_fraction:
        return fail(f"not a mammogram (text or graphics?): {m['edge_fraction']:.0%} of the foreground is sharp "
                    f"edges (> {cfg.max_edge_fraction:.0%})")
    return QualityResult(True, "", m)
