"""Zero-shot segmentation and localization metrics: pure numpy functions on maps and masks.

A map (GradCAM, text-to-patch, FActOR; ``[H, W]`` floats) becomes a mask by a threshold (fixed, Otsu,
or the top k% of the breast) applied inside the breast mask only. Masks are compared with a lesion
outline (Dice, IoU); the map's peak with the lesion (pointing game, hit at a distance); peak
detections over images give FROC-style sensitivity at false positives per image. Per-image values
summarise as a mean with a patient-bootstrap CI (``evaluation.stats.bootstrap_indices``); two map kinds
on the same images compare by a paired t test and a Wilcoxon signed-rank test.

Ground truth comes from the manifest: a ``lesion_mask`` file path, or a circle ``lesion_x, lesion_y,
lesion_r`` (column, row, radius in the stored image's pixels, origin top-left; mini-MIAS, the synthetic
cohort), or a box ``lesion_x0, lesion_y0, lesion_x1, lesion_y1`` (VinDr).
"""

from __future__ import annotations

from typing import Any
from collections.abc import Sequence

import numpy as np

from mammolens.evaluation.stats import bootstrap_indices
from mammolens.transforms.breast import otsu_threshold

__all__ = [
    "BOX_COLUMNS",
    "CIRCLE_COLUMNS",
    "circle_mask",
    "dice",
    "froc",
    "has_lesion_columns",
    "hit_at_distance",
    "iou",
    "lesion_mask_from_row",
    "localization_scores",
    "map_to_mask",
    "mean_with_ci",
    "paired_tests",
    "peak",
    "pointing_game",
]

CIRCLE_COLUMNS = ("lesion_x", "lesion_y", "lesion_r")
BOX_COLUMNS = ("lesion_x0", "lesion_y0", "lesion_x1", "lesion_y1")
THRESHOLDS = ("fixed", "otsu", "topk")


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true, dtype=bool), np.asarray(y_pred, dtype=bool)
    if t.shape != p.shape:
        raise ValueError(f"masks must have the same shape, got {t.shape} (true) and {p.shape} (predicted); "
                         "map the prediction to the lesion mask's geometry first (transforms.breast.to_original).")
    return t, p


def dice(y_true, y_pred) -> float:
    """Dice ``2|A∩B| / (|A| + |B|)`` of two boolean masks; 1.0 when both are empty."""
    t, p = _pair(y_true, y_pred)
    denom = int(t.sum()) + int(p.sum())
    return 1.0 if denom == 0 else 2.0 * int((t & p).sum()) / denom


def iou(y_true, y_pred) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    t, p = _pair(y_true, y_pred)
    union = int((t | p).sum())
    return 1.0 if union == 0 else int((t & p).sum()) / union


def peak(y_map, region=None) -> tuple[int, int]:
    """``(row, col)`` of the map's maximum (inside ``region`` when given; first one on ties)."""
    m = np.asarray(y_map, dtype=np.float64)
    if region is not None:
        region = np.asarray(region, dtype=bool)
        if region.shape != m.shape:
            raise ValueError(f"region {region.shape} and map {m.shape} must have the same shape.")
        if region.any():
            m = np.where(region, m, -np.inf)
    m = np.nan_to_num(m, nan=-np.inf)
    r, c = np.unravel_index(int(np.argmax(m)), m.shape)
    return int(r), int(c)


def pointing_game(y_true, y_map, region=None) -> float:
    """1.0 when the map's peak lies inside the lesion mask, else 0.0 (Zhang et al. 2018)."""
    t = np.asarray(y_true, dtype=bool)
    if t.shape != np.shape(y_map):
        raise ValueError(f"lesion mask {t.shape} and map {np.shape(y_map)} must have the same shape.")
    return float(t[peak(y_map, region)])


def hit_at_distance(y_true, y_map, distance: float, region=None) -> float:
    """1.0 when the map's peak lies within ``distance`` pixels of a lesion pixel (0 inside), else 0.0."""
    t = np.asarray(y_true, dtype=bool)
    if not t.any():
        return 0.0
    r, c = peak(y_map, region)
    rr, cc = np.nonzero(t)
    return float(np.sqrt(((rr - r) ** 2 + (cc - c) ** 2).min()) <= distance)


def froc(y_true_masks: Sequence[np.ndarray], peaks: Sequence[Sequence[tuple[int, int, float]]],
         fppi: Sequence[float] = (0.125, 0.25, 0.5, 1, 2, 4, 8)) -> dict[str, Any]:
    """FROC-style sensitivity at false positives per image for peak detections.

    Args:
        y_true_masks: one boolean lesion mask per image (empty for normal images); each mask counts as one
            lesion.
        peaks: per image, detections ``(row, col, score)``; a detection inside the lesion is a true
            positive (several inside it count once), any other one a false positive.
        fppi: false-positive rates per image at which sensitivity is read.

    Returns:
        ``{"fppi": [...], "sensitivity": [...], "curve": (fp_per_image [M], sensitivity [M])}``; the
        sensitivity at a rate is that of the lowest threshold whose false positives per image stay at or
        below it. Tied scores are one threshold (one curve point), so the input order does not matter.
    """
    if len(y_true_masks) != len(peaks):
        raise ValueError(f"got {len(y_true_masks)} masks for {len(peaks)} detection lists; pass one of each per image.")
    n_img = len(y_true_masks)
    n_lesions = sum(bool(np.asarray(m, dtype=bool).any()) for m in y_true_masks)
    events = []  # (score, image, is_tp)
    for i, (m, dets) in enumerate(zip(y_true_masks, peaks)):
        m = np.asarray(m, dtype=bool)
        for r, c, score in dets:
            events.append((float(score), i, bool(m[int(r), int(c)])))
    events.sort(key=lambda e: -e[0])
    found, fp, fps, sens = set(), 0, [0.0], [0.0]
    for j, (score, i, tp) in enumerate(events):
        if tp:
            found.add(i)
        else:
            fp += 1
        if j + 1 < len(events) and events[j + 1][0] == score:
            continue  # tied detections pass a threshold together: one curve point, whatever their order
        fps.append(fp / max(n_img, 1))
        sens.append(len(found) / n_lesions if n_lesions else float("nan"))
    fps_a, sens_a = np.asarray(fps), np.asarray(sens)
    at = [float(sens_a[fps_a <= f].max()) if n_lesions else float("nan") for f in fppi]
    return {"fppi": [float(f) for f in fppi], "sensitivity": at, "curve": (fps_a, sens_a)}


def map_to_mask(y_map, method: str = "otsu", *, value: float = 0.5, top_percent: float = 10.0,
                breast=None) -> np.ndarray:
    """A boolean mask from a map, inside the breast mask only.

    Args:
        y_map: ``[H, W]`` map.
        method: ``"fixed"`` (``map >= value``), ``"otsu"`` (Otsu's threshold of the map values inside the
            breast) or ``"topk"`` (the ``top_percent`` % highest values of the breast).
        breast: boolean breast mask ``[H, W]``; None uses the whole image.
    """
    m = np.nan_to_num(np.asarray(y_map, dtype=np.float64), nan=0.0)
    region = np.ones(m.shape, dtype=bool) if breast is None else np.asarray(breast, dtype=bool)
    if region.shape != m.shape:
        raise ValueError(f"breast mask {region.shape} and map {m.shape} must have the same shape.")
    if method not in THRESHOLDS:
        raise ValueError(f"unknown threshold method {method!r}; choose one of {list(THRESHOLDS)}.")
    vals = m[region]
    if vals.size == 0:
        return np.zeros(m.shape, dtype=bool)
    if method == "fixed":
        thr = float(value)
    elif method == "otsu":
        if vals.max() - vals.min() < 1e-12:
            return np.zeros(m.shape, dtype=bool)
        thr = otsu_threshold(vals)
        return region & (m > thr)
    else:
        if not 0 < top_percent <= 100:
            raise ValueError(f"top_percent must be in (0, 100], got {top_percent}.")
        k = max(1, int(round(vals.size * top_percent / 100.0)))
        thr = float(np.sort(vals)[-k])
    return region & (m >= thr)


def circle_mask(shape: tuple[int, int], x: float, y: float, r: float) -> np.ndarray:
    """Boolean disc of radius ``r`` around column ``x``, row ``y`` (pixel centres, origin top-left)."""
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (cc - float(x)) ** 2 + (rr - float(y)) ** 2 <= float(r) ** 2


def has_lesion_columns(columns) -> bool:
    """True when a manifest names lesion outlines (mask path, circle or box columns)."""
    cols = set(columns)
    return "lesion_mask" in cols or set(CIRCLE_COLUMNS) <= cols or set(BOX_COLUMNS) <= cols


def _finite(v) -> bool:
    try:
        return bool(np.isfinite(float(v)))
    except (TypeError, ValueError):
        return False


def lesion_mask_from_row(row, shape: tuple[int, int]) -> np.ndarray | None:
    """The lesion outline of one manifest row in the stored image's ``shape``; None when it has none.

    Looks at ``lesion_mask`` (an image file; non-zero = lesion, same size as the image), then
    ``lesion_circles`` ("x y r; x y r": every lesion of a film with several, their union), then the circle
    ``lesion_x, lesion_y, lesion_r``, then the box ``lesion_x0, lesion_y0, lesion_x1, lesion_y1``.
    """
    path = row.get("lesion_mask") if hasattr(row, "get") else None
    if isinstance(path, str) and path.strip():
        from mammolens.io import read_image

        m = read_image(path).pixels > 0
        if m.ndim == 3:
            m = m.max(axis=0)
        if m.shape != tuple(shape):
            raise ValueError(f"lesion mask {path} is {m.shape[0]}x{m.shape[1]} px but its image is "
                             f"{shape[0]}x{shape[1]}; save the mask at the image's size.")
        return m
    get = row.get if hasattr(row, "get") else (lambda k, d=None: d)
    circles = get("lesion_circles")
    if isinstance(circles, str) and circles.strip():  # several lesions: "x y r; x y r" (mini-MIAS), their union
        m = np.zeros(shape, dtype=bool)
        for part in circles.split(";"):
            x, y, r = (float(v) for v in part.split())
            m |= circle_mask(shape, x, y, r)
        return m
    if all(_finite(get(k)) for k in CIRCLE_COLUMNS):
        return circle_mask(shape, float(get("lesion_x")), float(get("lesion_y")), float(get("lesion_r")))
    if all(_finite(get(k)) for k in BOX_COLUMNS):
        x0, y0, x1, y1 = (float(get(k)) for k in BOX_COLUMNS)
        m = np.zeros(shape, dtype=bool)
        m[max(int(np.floor(y0)), 0): int(np.ceil(y1)) + 1, max(int(np.floor(x0)), 0): int(np.ceil(x1)) + 1] = True
        return m
    return None


def localization_scores(y_true, y_map, breast=None, *, method: str = "otsu", top_percent: float = 10.0,
                        value: float = 0.5, distance: float | None = None) -> dict[str, float]:
    """Per-image ``{"dice", "iou", "pointing_game", "hit"}`` of one map against one lesion mask.

    ``hit`` is :func:`hit_at_distance` with ``distance`` (default: 5% of the image's longer side).
    """
    t = np.asarray(y_true, dtype=bool)
    mask = map_to_mask(y_map, method, value=value, top_percent=top_percent, breast=breast)
    dist = 0.05 * max(t.shape) if distance is None else distance
    return {"dice": dice(t, mask), "iou": iou(t, mask), "pointing_game": pointing_game(t, y_map, breast),
            "hit": hit_at_distance(t, y_map, dist, breast)}


def mean_with_ci(values, groups=None, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """Mean of per-image values with a (patient-)bootstrap percentile CI; NaN values are dropped."""
    v = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(v)
    g = None if groups is None else np.asarray(groups)[keep]
    v = v[keep]
    if v.size == 0:
        return {"estimate": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    reps = np.array([v[idx].mean() for idx in bootstrap_indices(v.size, g, n_boot, seed)])
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return {"estimate": float(v.mean()), "lo": float(lo), "hi": float(hi), "n": int(v.size)}


def paired_tests(a, b, groups=None) -> dict[str, float]:
    """Paired comparison of two map kinds on the same images: mean difference ``a - b``, paired t test and
    Wilcoxon signed-rank p-values (NaN when undefined, e.g. all differences zero).

    ``groups`` (the patient of each image): the images of one patient are not independent, so the
    differences are first averaged per patient and the tests run over patients (``n`` counts patients;
    ``n_images`` the images). Without groups every image is its own unit.
    """
    from scipy import stats

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same images: {x.shape} vs {y.shape}.")
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    n_images = int(d.size)
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != x.shape:
            raise ValueError(f"groups must give one patient per image: {g.shape} vs {x.shape}.")
        _, inv = np.unique(g[keep].astype(str), return_inverse=True)
        d = np.bincount(inv, weights=d) / np.bincount(inv) if d.size else d  # per-patient mean differences
    out = {"mean_diff": float(d.mean()) if d.size else float("nan"), "n": int(d.size), "n_images": n_images,
           "t_p": float("nan"), "wilcoxon_p": float("nan")}
    if d.size >= 2 and np.any(d != 0):
        out["t_p"] = float(stats.ttest_1samp(d, 0.0).pvalue)
        out["wilcoxon_p"] = float(stats.wilcoxon(d).pvalue)
    return out
