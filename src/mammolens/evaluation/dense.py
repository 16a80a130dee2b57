"""Dense-task ground truth and metrics: lesion masks on the cache tile, segmentation and detection scores.

Ground truth is read with ``evaluation.localization.lesion_mask_from_row`` (``lesion_mask`` file, circle or
box columns) in the stored image's pixels and moved onto the cache tile with the cache's own geometry
(:func:`mask_to_tile`: crop box → flip → letterbox resize, the forward of ``transforms.breast.to_original``),
so heads train and are scored on the grid the model sees. ``lesion_mask_kind`` says whether a mask is an
exact outline (``exact``) or a weak one (``circle``, ``box``: drawn from coordinates); every summary carries
the kinds it was computed on (``mask_kinds``) so a report can say "weak masks".

Segmentation (per image, pure numpy): :func:`segmentation_scores` → Dice, IoU, sensitivity, specificity.
Detection: boxes ``(x0, y0, x1, y1)`` in tile pixels (``x1``/``y1`` exclusive); a lesion is the bounding box
of its mask (one lesion per row: its several components are one finding). :func:`froc` counts a detection
as a hit when its centre lies inside a lesion box (several hits on one lesion count once; a hit on an
already found lesion is neither a true nor a false positive) and reads sensitivity at 0.125–8 false
positives per image; :func:`average_precision` is COCO's 101-point AP at IoU >= 0.5 with greedy matching.
Both are order-free under ties: operating points are taken only between distinct scores, so detections
with equal scores enter together, whatever order they come in. ``map50_torchmetrics`` is the maintained
implementation (torchmetrics, ``dense`` extra) the tests check :func:`average_precision` against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mammolens.evaluation.localization import lesion_mask_from_row, mean_with_ci

__all__ = ["FPPI", "SEG_METRICS", "TileMasks", "average_precision", "box_iou", "froc", "lesion_box", "mask_on_original",
           "map50_torchmetrics", "mask_to_tile", "row_geometry", "segmentation_scores", "segmentation_summary",
           "tile_masks"]

FPPI = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
SEG_METRICS = ("dice", "iou", "sensitivity", "specificity")
WEAK_KINDS = ("circle", "box")


# ------------------------------------------------------------------------------------------ geometry
def row_geometry(row, size: int, keep_aspect: bool = True) -> dict[str, Any]:
    """The ``preprocess_image`` geometry of a cache index row (``bbox``, ``flipped``, ``orig_h``/``orig_w``)."""
    from mammolens.transforms.breast import letterbox

    bbox = row["bbox"]
    y0, y1, x0, x1 = (int(v) for v in (bbox.split(",") if isinstance(bbox, str) else bbox))
    return {"bbox": (y0, y1, x0, x1), "flipped": bool(row["flipped"]), "size": int(size),
            "orig_shape": (int(row["orig_h"]), int(row["orig_w"])),
            "letterbox": letterbox(y1 - y0, x1 - x0, int(size), keep_aspect)}


def mask_to_tile(mask, info: dict[str, Any]) -> np.ndarray:
    """A mask in the stored image's pixels → boolean ``[S, S]`` on the cache tile (the inverse of
    ``transforms.breast.to_original``: crop to ``bbox``, flip when ``flipped``, letterbox resize; a pixel
    of the tile is lesion when at least half of it is)."""
    from PIL import Image

    m = np.asarray(mask, dtype=np.float32)
    y0, y1, x0, x1 = info["bbox"]
    crop = m[y0:y1, x0:x1]
    if info["flipped"]:
        crop = crop[:, ::-1]
    size = int(info["size"])
    top, nh, nw = (int(v) for v in info["letterbox"])
    out = np.zeros((size, size), dtype=bool)
    if crop.size:
        small = np.asarray(Image.fromarray(np.ascontiguousarray(crop), mode="F")
                           .resize((nw, nh), resample=Image.Resampling.BILINEAR), dtype=np.float32)
        out[top:top + nh, :nw] = small >= 0.5
    return out


class TileMasks:
    """Lesion masks of cache rows on the tile: ``masks`` bool ``[N, S, S]``, ``has_truth`` ``[N]`` (the row
    has an outline, or is a normal breast: an empty mask is truth too), ``kinds`` ``[N]`` (``exact``,
    ``circle``, ``box``, "" for none)."""

    def __init__(self, masks: np.ndarray, has_truth: np.ndarray, kinds: np.ndarray):
        self.masks, self.has_truth, self.kinds = masks, has_truth, kinds

    @property
    def weak(self) -> bool:
        """True when any lesion mask is a weak one (a circle or a box, not an outline)."""
        return bool(np.isin(self.kinds, WEAK_KINDS).any())

    @property
    def mask_kinds(self) -> list[str]:
        return sorted({str(k) for k in self.kinds if k})


def tile_masks(cache, rows: Sequence[int], normal_col: str = "pathology") -> TileMasks:
    """Ground-truth lesion masks of ``rows`` of a cache on its tile.

    A row with an outline (``lesion_mask``, circle or box) gets it; a row whose ``normal_col`` is ``normal``
    gets an empty mask (no lesion is truth too); any other row (an abnormal one without an outline) has no
    truth (``has_truth`` False) and is left out of training and scoring.
    """
    index = cache.index
    size = int(cache.cfg.size)
    keep_aspect = bool(getattr(cache.cfg, "keep_aspect", True))
    rows = np.asarray(rows, dtype=np.int64)
    masks = np.zeros((len(rows), size, size), dtype=bool)
    has = np.zeros(len(rows), dtype=bool)
    kinds = np.full(len(rows), "", dtype=object)
    for j, r in enumerate(rows):
        row = index.iloc[int(r)]
        shape = (int(row["orig_h"]), int(row["orig_w"]))
        full = lesion_mask_from_row(row, shape)
        if full is not None and full.any():
            masks[j] = mask_to_tile(full, row_geometry(row, size, keep_aspect))
            has[j] = True
            kind = str(row.get("lesion_mask_kind", "") or "")
            if not kind:
                path = row.get("lesion_mask", "")
                kind = "exact" if isinstance(path, str) and path else ("circle" if _finite_circle(row) else "box")
            kinds[j] = kind
        elif str(row.get(normal_col, "")) == "normal":
            has[j] = True
    return TileMasks(masks, has, kinds)


def _finite_circle(row) -> bool:
    try:
        return bool(np.isfinite(float(row.get("lesion_r"))))
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------------- segmentation
def segmentation_scores(y_true, y_pred) -> dict[str, float]:
    """Per-image ``{"dice", "iou", "sensitivity", "specificity"}`` of two boolean masks.

    Dice and IoU are 1.0 when both masks are empty; sensitivity is NaN without lesion pixels, specificity NaN
    without background pixels (left out of the means).
    """
    t, p = np.asarray(y_true, dtype=bool), np.asarray(y_pred, dtype=bool)
    if t.shape != p.shape:
        raise ValueError(f"masks must have the same shape, got {t.shape} (true) and {p.shape} (predicted)")
    tp = int((t & p).sum())
    fp = int((~t & p).sum())
    fn = int((t & ~p).sum())
    tn = int((~t & ~p).sum())
    return {"dice": 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn),
            "iou": 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn),
            "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
            "specificity": tn / (tn + fp) if tn + fp else float("nan")}


def segmentation_summary(per_image, groups=None, n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """``{metric: {"estimate", "lo", "hi", "n"}}``: the mean of each per-image metric (a DataFrame or dict of
    columns) with a patient-bootstrap CI (``groups`` = patient per image)."""
    return {k: mean_with_ci(np.asarray(per_image[k], dtype=np.float64), groups, n_boot, seed) for k in SEG_METRICS
            if k in per_image}


# ---------------------------------------------------------------------------------------- detection
def lesion_box(mask) -> tuple[float, float, float, float] | None:
    """``(x0, y0, x1, y1)`` of a mask's lesion pixels (``x1``, ``y1`` exclusive), None for an empty mask."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return None
    ys, xs = np.nonzero(m)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def box_iou(a, b) -> np.ndarray:
    """IoU matrix ``[len(a), len(b)]`` of boxes ``(x0, y0, x1, y1)``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _as_dets(dets) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes [K, 4], scores [K])`` from a list of ``(x0, y0, x1, y1, score)``."""
    d = np.asarray(dets, dtype=np.float64).reshape(-1, 5)
    return d[:, :4], d[:, 4]


def froc(gt_boxes: Sequence[Sequence], dets: Sequence[Sequence], fppi: Sequence[float] = FPPI) -> dict[str, Any]:
    """FROC: lesion sensitivity at false positives per image (order-free under score ties).

    Args:
        gt_boxes: per image, its lesion boxes ``(x0, y0, x1, y1)`` (empty for a normal image).
        dets: per image, detections ``(x0, y0, x1, y1, score)``.
        fppi: the false-positive rates at which sensitivity is read.

    Returns:
        ``{"fppi", "sensitivity" (per rate), "mean_sensitivity" (their mean), "curve": (fp_per_image, sens),
        "n_lesions", "n_images"}``; sensitivity at a rate is the best of the thresholds whose false positives
        per image stay at or below it (NaN without lesions).
    """
    if len(gt_boxes) != len(dets):
        raise ValueError(f"got {len(gt_boxes)} ground-truth lists for {len(dets)} detection lists; one of each per image")
    n_img = len(gt_boxes)
    scores, hits_of, is_fp = [], [], []
    n_lesions = 0
    for gt, d in zip(gt_boxes, dets):
        g = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
        boxes, sc = _as_dets(d)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = ((cx[:, None] >= g[None, :, 0]) & (cx[:, None] < g[None, :, 2])
                  & (cy[:, None] >= g[None, :, 1]) & (cy[:, None] < g[None, :, 3]))  # [K, G]
        for k in range(len(sc)):
            scores.append(sc[k])
            hits_of.append({n_lesions + int(j) for j in np.flatnonzero(inside[k])})
            is_fp.append(not inside[k].any())
        n_lesions += len(g)
    scores_a = np.asarray(scores, dtype=np.float64)
    thresholds = np.unique(scores_a)[::-1]  # distinct scores, high to low: ties enter together
    fps, sens = [0.0], [0.0 if n_lesions else float("nan")]
    order = np.argsort(-scores_a, kind="stable")
    found: set[int] = set()
    fp, pos = 0, 0
    for t in thresholds:
        while pos < len(order) and scores_a[order[pos]] >= t:
            i = order[pos]
            found |= hits_of[i]
            fp += int(is_fp[i])
            pos += 1
        fps.append(fp / max(n_img, 1))
        sens.append(len(found) / n_lesions if n_lesions else float("nan"))
    fps_a, sens_a = np.asarray(fps), np.asarray(sens)
    at = [float(sens_a[fps_a <= f].max()) if n_lesions else float("nan") for f in fppi]
    return {"fppi": [float(f) for f in fppi], "sensitivity": at,
            "mean_sensitivity": float(np.mean(at)) if n_lesions else float("nan"),
            "curve": (fps_a, sens_a), "n_lesions": int(n_lesions), "n_images": int(n_img)}


def average_precision(gt_boxes: Sequence[Sequence], dets: Sequence[Sequence], iou_threshold: float = 0.5) -> float:
    """AP at ``iou_threshold`` over images (one class): COCO's 101-point interpolated precision.

    Detections are matched greedily per image, highest score first, each to the unmatched ground-truth box
    of highest IoU >= the threshold. Precision/recall are taken only after every detection of a score has
    entered (order-free under ties). NaN when there is no ground-truth box.
    """
    if len(gt_boxes) != len(dets):
        raise ValueError(f"got {len(gt_boxes)} ground-truth lists for {len(dets)} detection lists; one of each per image")
    all_scores, all_tp = [], []
    n_gt = 0
    for gt, d in zip(gt_boxes, dets):
        g = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
        boxes, sc = _as_dets(d)
        n_gt += len(g)
        order = np.argsort(-sc, kind="stable")
        ious = box_iou(boxes, g)
        used = np.zeros(len(g), dtype=bool)
        for k in order:
            cand = np.where(~used & (ious[k] >= iou_threshold), ious[k], -1.0)
            j = int(np.argmax(cand)) if len(g) else -1
            tp = j >= 0 and cand[j] >= iou_threshold
            if tp:
                used[j] = True
            all_scores.append(sc[k])
            all_tp.append(tp)
    if n_gt == 0:
        return float("nan")
    s = np.asarray(all_scores, dtype=np.float64)
    tp = np.asarray(all_tp, dtype=bool)
    if not len(s):
        return 0.0
    order = np.argsort(-s, kind="stable")
    s, tp = s[order], tp[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
    last = np.r_[s[1:] != s[:-1], True]  # the last detection of each distinct score
    rec = ctp[last] / n_gt
    prec = ctp[last] / (ctp[last] + cfp[last])
    prec = np.maximum.accumulate(prec[::-1])[::-1]  # interpolated: best precision at any higher recall
    points = np.linspace(0, 1, 101)
    idx = np.searchsorted(rec, points, side="left")
    return float(np.mean(np.where(idx < len(prec), prec[np.minimum(idx, len(prec) - 1)], 0.0)))


def map50_torchmetrics(gt_boxes: Sequence[Sequence], dets: Sequence[Sequence]) -> float:
    """mAP@0.5 by torchmetrics' ``MeanAveragePrecision`` (``dense`` extra; the reference implementation)."""
    import torch

    from mammolens._optional import optional_import

    detection = optional_import("torchmetrics.detection", "dense")
    metric = detection.MeanAveragePrecision(iou_type="bbox", iou_thresholds=[0.5], backend="faster_coco_eval")
    preds, target = [], []
    for gt, d in zip(gt_boxes, dets):
        boxes, sc = _as_dets(d)
        g = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
        preds.append({"boxes": torch.as_tensor(boxes, dtype=torch.float32), "scores": torch.as_tensor(sc, dtype=torch.float32),
                      "labels": torch.zeros(len(sc), dtype=torch.int64)})
        target.append({"boxes": torch.as_tensor(g, dtype=torch.float32), "labels": torch.zeros(len(g), dtype=torch.int64)})
    metric.update(preds, target)
    return float(metric.compute()["map_50"])


def mask_on_original(display, prob_tile, geometry: dict[str, Any], *, weak: bool = False,
                     threshold: float = 0.5) -> np.ndarray:
    """A head's lesion probability on the tile drawn on the original image (its display copy), with the
    geometry of every heat map (``transforms.breast.to_original``, ``explain.overlay.render_heatmap``).

    Args:
        display: ``[H, W]`` grey display copy (``Prepared.display``).
        prob_tile: ``[S, S]`` lesion probability on the tile (``SegmentationHead.probabilities``).
        geometry: that image's ``Prepared.geometry``.
        weak: the head was trained on weak masks (circles/boxes): said in the title.
        threshold: below it the image stays grey.

    Returns:
        uint8 RGB ``[H, W + P, 3]`` (image and colour-bar panel).
    """
    from mammolens.explain.overlay import render_heatmap
    from mammolens.transforms.breast import to_original

    m = to_original(np.asarray(prob_tile, dtype=np.float32), geometry, out_shape=np.shape(display))
    method = "segmentation (weak masks)" if weak else "segmentation"
    return render_heatmap(display, np.clip(m, 0, 1), "lesion", None, method=method, threshold=threshold)
