"""Pure numpy classification metrics with scikit-learn's argument order ``(y_true, y_score)``.

``y_true`` holds integer class indices ``0..K-1``; ``probs`` is ``[N, K]`` (rows sum to 1, e.g. a
softmax). AUC is computed from ranks (Mann-Whitney U with average ranks for ties), so it equals
``sklearn.metrics.roc_auc_score`` without depending on it. A one-vs-rest AUC whose class is absent
(or the only class present) is undefined: it is NaN with a warning, never an exception, so that a
small subgroup or a bootstrap replicate does not crash an evaluation.

The dense/non-dense split used throughout (``binary_metrics``): ``p(dense) = sum of the dense
classes' probabilities`` (C + D for BI-RADS density) and an image is called dense when
``p(dense) >= threshold`` (0.5).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "binary_auc",
    "binary_metrics",
    "brier_score",
    "check_labels",
    "check_probs",
    "cohen_kappa",
    "compute_metrics",
    "confusion_matrix",
    "dense_indices",
    "expected_calibration_error",
    "flatten_metrics",
    "macro_auc",
    "precision_recall_f1",
    "rankdata",
    "reliability_curve",
    "roc_auc_ovr",
    "roc_curve",
    "scalar_metrics",
    "val_metrics",
]


# --------------------------------------------------------------------------------------------- helpers
def check_labels(y_true) -> np.ndarray:
    """Class indices as a 1-D int64 array; raises ``ValueError`` for any other shape or non-integer values."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D class indices, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError("y_true must hold integer class indices (0..K-1)")
        y = y.astype(np.int64)
    return y.astype(np.int64, copy=False)


def check_probs(y: np.ndarray, probs) -> np.ndarray:
    """Probabilities as float64 ``[N, K]`` matching the labels ``y`` from :func:`check_labels`.

    Raises ``ValueError`` when the shape does not match or a label is not a class index (e.g. -1).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probs must be [N, K] with N = len(y_true) = {y.shape[0]}, got shape {p.shape}")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(
            f"y_true values must be class indices in 0..{p.shape[1] - 1}; found {y.min()}..{y.max()} "
            "(drop unlabelled rows, label -1, before computing metrics)"
        )
    return p


def _safe_div(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def rankdata(x) -> np.ndarray:
    """Average ranks (1-based), ties sharing the mean of their ranks; like ``scipy.stats.rankdata``.

    A 2-D ``x`` (``[M, n]``) is ranked row by row (along the last axis), as DeLong needs.
    """
    x = np.asarray(x)
    if x.ndim > 1:
        return np.stack([rankdata(row) for row in x.reshape(-1, x.shape[-1])]).reshape(x.shape)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # boundaries of runs of equal values
    new = np.r_[True, xs[1:] != xs[:-1]]
    run_id = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], xs.size]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1..end
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = avg[run_id]
    return ranks


# ------------------------------------------------------------------------------------------ accuracy
def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """``C[i, j]`` = number of samples of true class ``i`` predicted as ``j`` (``[K, K]`` int64)."""
    y, yp = check_labels(y_true), check_labels(y_pred)
    if y.shape != yp.shape:
        raise ValueError(f"y_true and y_pred lengths differ: {y.shape[0]} vs {yp.shape[0]}")
    k = num_classes if num_classes is not None else int(max(y.max(initial=-1), yp.max(initial=-1)) + 1)
    if y.size and (min(y.min(), yp.min()) < 0 or max(y.max(), yp.max()) >= k):
        raise ValueError(f"class indices must be in 0..{k - 1}")
    return np.bincount(y * k + yp, minlength=k * k).reshape(k, k).astype(np.int64)


def accuracy(y_true, y_pred) -> float:
    y, yp = check_labels(y_true), check_labels(y_pred)
    return float(np.mean(y == yp)) if y.size else float("nan")


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean recall over the classes present in ``y_true`` (sklearn's definition, ``adjusted=False``)."""
    cm = confusion_matrix(y_true, y_pred)
    support = cm.sum(1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(cm)[present] / support[present]))


def precision_recall_f1(y_true, y_pred, num_classes: int | None = None) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support (``[K]`` each); 0/0 gives 0 as in sklearn."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    pred_pos, support = cm.sum(0), cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(pred_pos > 0, tp / np.maximum(pred_pos, 1), 0.0)
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def cohen_kappa(y_true, y_pred, weights: str | None = None, num_classes: int | None = None) -> float:
    """Cohen's kappa; ``weights`` None (nominal), ``"linear"`` or ``"quadratic"`` (ordinal classes).

    ``kappa = 1 - sum(W * O) / sum(W * E)`` with ``O`` the observed confusion matrix, ``E`` the
    product of its marginals and ``W`` the disagreement weights (Cohen 1968).
    """
    cm = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    k = cm.shape[0]
    n = cm.sum()
    if n == 0:
        return float("nan")
    expected = np.outer(cm.sum(1), cm.sum(0)) / n
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    if weights is None:
        w = (i != j).astype(np.float64)
    elif weights == "linear":
        w = np.abs(i - j).astype(np.float64)
    elif weights == "quadratic":
        w = ((i - j) ** 2).astype(np.float64)
    else:
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")
    denom = float((w * expected).sum())
    if denom == 0:
        return float("nan")
    return float(1.0 - (w * cm).sum() / denom)


# ----------------------------------------------------------------------------------------------- AUC
def binary_auc(y_true, y_score) -> float:
    """AUC of a binary problem (``y_true`` in {0, 1}) from ranks; NaN when one class is missing."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(y_score, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_ovr(y_true, probs, class_names: Sequence[str] | None = None, warn: bool = True) -> np.ndarray:
    """One-vs-rest AUC per class (``[K]``); NaN with a warning for a class absent or present alone."""
    y = check_labels(y_true)
    p = check_probs(y, probs)
    out = np.full(p.shape[1], np.nan)
    undefined = []
    for k in range(p.shape[1]):
        out[k] = binary_auc(y == k, p[:, k])
        if np.isnan(out[k]):
            undefined.append(class_names[k] if class_names is not None else str(k))
    if undefined and warn:
        warnings.warn(
            f"one-vs-rest AUC undefined (NaN) for class(es) {', '.join(undefined)}: the class is absent "
            f"or the only one present among {y.size} samples",
            RuntimeWarning,
            stacklevel=2,
        )
    return out


def macro_auc(y_true, probs, warn: bool = True) -> float:
    """Unweighted mean of the defined one-vs-rest AUCs (NaN when none is defined)."""
    aucs = roc_auc_ovr(y_true, probs, warn=warn)
    return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")


def roc_curve(y_true, y_score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr, thresholds)`` at every distinct score, starting at (0, 0)."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(y_score, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = (last + 1 - tps).astype(np.float64)
    p, n = y.sum(), (~y).sum()
    tpr = np.r_[0.0, tps / p] if p else np.full(last.size + 1, np.nan)
    fpr = np.r_[0.0, fps / n] if n else np.full(last.size + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, s[last]]


# ---------------------------------------------------------------------------------------- calibration
def expected_calibration_error(y_true, probs, n_bins: int = 15, classwise: bool = False) -> float:
    """ECE with equal-width bins over [0, 1] (bins ``(lo, hi]``, the first also holding 0).

    Top-label (default): ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` with conf the maximum probability
    and acc whether the argmax is right (Guo et al. 2017). ``classwise=True``: the mean over classes of
    the ECE of ``p_k`` against the indicator ``y == k`` (Kull et al. 2019).
    """
    y = check_labels(y_true)
    p = check_probs(y, probs)
    if y.size == 0:
        return float("nan")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")

    def _ece(conf: np.ndarray, hit: np.ndarray) -> float:
        b = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
        s_conf = np.bincount(b, weights=conf, minlength=n_bins)
        s_hit = np.bincount(b, weights=hit.astype(np.float64), minlength=n_bins)
        return float(np.abs(s_hit - s_conf).sum() / conf.size)  # = sum |B|/N * |acc - conf|

    if classwise:
        return float(np.mean([_ece(p[:, k], y == k) for k in range(p.shape[1])]))
    return _ece(p.max(1), p.argmax(1) == y)


def reliability_curve(y_true, probs, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Top-label reliability diagram data: per bin ``count``, mean ``confidence`` and ``accuracy``."""
    y = check_labels(y_true)
    p = check_probs(y, probs)
    conf, hit = p.max(1), (p.argmax(1) == y).astype(np.float64)
    b = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    cnt = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, weights=conf, minlength=n_bins) / cnt
        acc = np.bincount(b, weights=hit, minlength=n_bins) / cnt
    edges = np.linspace(0, 1, n_bins + 1)
    return {"edges": edges, "count": cnt, "confidence": mean_conf, "accuracy": acc}


def brier_score(y_true, probs) -> float:
    """Multi-class Brier score: mean over samples of ``sum_k (p_k - 1[y = k])^2`` (range 0..2)."""
    y = check_labels(y_true)
    p = check_probs(y, probs)
    if y.size == 0:
        return float("nan")
    onehot = np.zeros_like(p)
    onehot[np.arange(y.size), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


# ---------------------------------------------------------------------------------------- binary split
def binary_metrics(y_true, probs, positive: Sequence[int], threshold: float = 0.5) -> dict[str, float]:
    """Dense-vs-non-dense style split: positives are the classes in ``positive``.

    Returns AUC of ``p(positive) = sum of those classes' probabilities``, and sensitivity,
    specificity, PPV, NPV, accuracy at ``p(positive) >= threshold`` plus the counts tp/fp/tn/fn.
    """
    y = check_labels(y_true)
    p = check_probs(y, probs)
    pos = np.asarray(list(positive), dtype=np.int64)
    if pos.size == 0 or pos.min() < 0 or pos.max() >= p.shape[1]:
        raise ValueError(f"positive classes must be indices in 0..{p.shape[1] - 1}, got {list(positive)}")
    truth = np.isin(y, pos)
    score = p[:, pos].sum(1)
    called = score >= threshold
    tp = int(np.sum(truth & called))
    fp = int(np.sum(~truth & called))
    tn = int(np.sum(~truth & ~called))
    fn = int(np.sum(truth & ~called))
    return {
        "auc": binary_auc(truth, score),
        "sensitivity": _safe_div(tp, tp + fn),
        "specificity": _safe_div(tn, tn + fp),
        "ppv": _safe_div(tp, tp + fp),
        "npv": _safe_div(tn, tn + fn),
        "accuracy": _safe_div(tp + tn, y.size),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


# ------------------------------------------------------------------------------------------- bundles
def dense_indices(class_names: Sequence[str], dense_classes: Sequence[str] | None) -> list[int] | None:
    """Indices of ``dense_classes`` in ``class_names``; None unless they split the classes into two non-empty sides."""
    if not dense_classes:
        return None
    idx = [i for i, c in enumerate(class_names) if c in set(dense_classes)]
    return idx if 0 < len(idx) < len(class_names) else None


def scalar_metrics(
    y_true,
    probs,
    class_names: Sequence[str],
    dense_classes: Sequence[str] | None = ("C", "D"),
    n_bins: int = 15,
    warn: bool = True,
) -> dict[str, float]:
    """The flat scalar metrics that get confidence intervals (keys like ``auc/A``, ``dense/sensitivity``)."""
    y = check_labels(y_true)
    p = check_probs(y, probs)
    k = p.shape[1]
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} probability columns")
    pred = p.argmax(1)
    cm = confusion_matrix(y, pred, k)
    aucs = roc_auc_ovr(y, p, class_names, warn=warn)
    prf = precision_recall_f1(y, pred, k)
    out: dict[str, float] = {
        "accuracy": accuracy(y, pred),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "auc_macro": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan"),
        "kappa": cohen_kappa(y, pred, None, k),
        "kappa_linear": cohen_kappa(y, pred, "linear", k),
        "kappa_quadratic": cohen_kappa(y, pred, "quadratic", k),
        "f1_macro": float(np.mean(prf["f1"][cm.sum(1) > 0])) if cm.sum() else float("nan"),
        "ece": expected_calibration_error(y, p, n_bins),
        "ece_classwise": expected_calibration_error(y, p, n_bins, classwise=True),
        "brier": brier_score(y, p),
    }
    for i, name in enumerate(class_names):
        out[f"auc/{name}"] = float(aucs[i])
        out[f"recall/{name}"] = float(prf["recall"][i])
        out[f"precision/{name}"] = float(prf["precision"][i])
        out[f"f1/{name}"] = float(prf["f1"][i])
    dense = dense_indices(class_names, dense_classes)
    if dense is not None:
        b = binary_metrics(y, p, dense)
        for key in ("auc", "sensitivity", "specificity", "ppv", "npv", "accuracy"):
            out[f"dense/{key}"] = b[key]
    return out


def compute_metrics(
    y_true,
    probs,
    class_names: Sequence[str],
    dense_classes: Sequence[str] | None = ("C", "D"),
    n_bins: int = 15,
) -> dict:
    """All metrics in one JSON-serialisable dict (floats, lists; NaN where undefined).

    Keys: ``n``, ``class_names``, ``accuracy``, ``balanced_accuracy``, ``auc_macro``, ``auc_per_class``,
    ``kappa`` / ``kappa_linear`` / ``kappa_quadratic``, ``f1_macro``, ``per_class`` (precision, recall,
    f1, support), ``confusion_matrix`` (rows true, columns predicted), ``ece``, ``ece_classwise``,
    ``brier``, ``dense`` (binary split on ``dense_classes`` when they are among the classes) and
    ``scalars`` (the flat dict from :func:`scalar_metrics`).
    """
    y = check_labels(y_true)
    p = check_probs(y, probs)
    scal = scalar_metrics(y, p, class_names, dense_classes, n_bins)
    pred = p.argmax(1)
    prf = precision_recall_f1(y, pred, p.shape[1])
    out = {
        "n": int(y.size),
        "class_names": list(class_names),
        "accuracy": scal["accuracy"],
        "balanced_accuracy": scal["balanced_accuracy"],
        "auc_macro": scal["auc_macro"],
        "auc_per_class": {c: scal[f"auc/{c}"] for c in class_names},
        "kappa": scal["kappa"],
        "kappa_linear": scal["kappa_linear"],
        "kappa_quadratic": scal["kappa_quadratic"],
        "f1_macro": scal["f1_macro"],
        "per_class": {
            c: {
                "precision": float(prf["precision"][i]),
                "recall": float(prf["recall"][i]),
                "f1": float(prf["f1"][i]),
                "support": int(prf["support"][i]),
            }
            for i, c in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y, pred, p.shape[1]).tolist(),
        "ece": scal["ece"],
        "ece_classwise": scal["ece_classwise"],
        "brier": scal["brier"],
        "scalars": scal,
    }
    dense = dense_indices(class_names, dense_classes)
    if dense is not None:
        out["dense"] = {"classes": [class_names[i] for i in dense], "threshold": 0.5, **binary_metrics(y, p, dense)}
    return out


def flatten_metrics(metrics: dict) -> dict[str, float]:
    """The flat scalar view of a :func:`compute_metrics` dict."""
    return dict(metrics["scalars"])


def val_metrics(labels, probs, class_names: Sequence[str]) -> dict[str, float]:
    """The validation scalars of a training epoch (one ``metrics.jsonl`` line): ``val_macro_auc``,
    ``val_balanced_accuracy``, ``val_accuracy``, ``val_nll`` and ``val_recall_<class>``; ``{}`` for no rows."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    if len(labels) == 0:
        return {}
    k = probs.shape[1]
    pred = probs.argmax(1)
    rec = precision_recall_f1(labels, pred, num_classes=k)["recall"]
    nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))
    out = {
        "val_macro_auc": macro_auc(labels, probs, warn=False),
        "val_balanced_accuracy": balanced_accuracy(labels, pred),
        "val_accuracy": float(np.mean(pred == labels)),
        "val_nll": nll,
    }
    out.update({f"val_recall_{c}": float(r) for c, r in zip(class_names, rec)})
    return out
