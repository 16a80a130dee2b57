"""Uncertainty and tests: patient-level bootstrap CIs, DeLong for (correlated) AUCs, McNemar.

- ``bootstrap_ci`` resamples *patients* with replacement (all their images come along), because
  images of one patient are correlated; resampling images would give CIs that are too narrow.
  Percentile intervals; replicates where the metric is undefined (NaN, e.g. a class missing from the
  replicate) are skipped and counted in ``n_valid``.
- ``delong_test`` / ``delong_ci``: DeLong, DeLong & Clarke-Pearson (1988) variance of the empirical
  AUC, computed with the fast midrank algorithm of Sun & Xu (2014), O(n log n).
- ``mcnemar_test``: paired comparison of two classifiers' correctness; exact binomial when the
  discordant count is small (< 25), chi-square with continuity correction otherwise.
- Several images per patient: images of one patient are correlated, so the image-level DeLong and McNemar
  tests reject too often (simulated: 60 patients x 2-4 images, two equally good models; see
  ``tests/evaluation/test_stats.py``). Given ``groups`` (patient ids) with any patient holding more than
  one image, ``delong_test`` uses Obuchowski's (1997) clustered nonparametric AUC variance and
  ``mcnemar_test`` the clustered McNemar test of Durkalski et al. (2003); with one image per patient the
  classic tests are used. Both report which in ``"method"``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np

from mammolens.evaluation.metrics import check_labels, check_probs, rankdata, scalar_metrics

__all__ = [
    "bootstrap_ci",
    "bootstrap_indices",
    "clustered_delong_covariance",
    "delong_ci",
    "delong_covariance",
    "delong_test",
    "mcnemar_test",
    "metrics_with_ci",
    "paired_bootstrap",
]


# ------------------------------------------------------------------------------------------ bootstrap
def bootstrap_indices(n: int, groups=None, n_boot: int = 1000, seed: int = 0):
    """Yield ``n_boot`` index arrays resampling rows (``groups=None``) or whole groups with replacement.

    Group resampling draws G groups out of the G present and takes every row of each drawn group, so a
    replicate has a variable number of rows. Per-group row lists are precomputed once.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        for _ in range(n_boot):
            yield rng.integers(0, n, size=n)
        return
    g = np.asarray(groups)
    if g.shape[0] != n:
        raise ValueError(f"groups has {g.shape[0]} entries for {n} samples")
    _, codes = np.unique(g, return_inverse=True)
    order = np.argsort(codes, kind="stable")  # rows grouped by group
    counts = np.bincount(codes)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    n_groups = counts.size
    for _ in range(n_boot):
        pick = rng.integers(0, n_groups, size=n_groups)
        lengths = counts[pick]
        total = int(lengths.sum())
        # positions: for each picked group, starts[g] + 0..len-1, built without a Python loop
        offsets = np.repeat(starts[pick] - (np.cumsum(lengths) - lengths), lengths)
        yield order[offsets + np.arange(total)]


def _percentile_ci(reps: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # reps: [B, M]
    valid = np.isfinite(reps)
    n_valid = valid.sum(0)
    lo = np.full(reps.shape[1], np.nan)
    hi = np.full(reps.shape[1], np.nan)
    for m in range(reps.shape[1]):
        v = reps[valid[:, m], m]
        if v.size:
            lo[m], hi[m] = np.quantile(v, [alpha / 2, 1 - alpha / 2])
    return lo, hi, n_valid


def bootstrap_ci(
    metric_fn: Callable,
    y_true,
    y_score,
    groups=None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """Percentile bootstrap CI of ``metric_fn(y_true, y_score)`` (scalar, array or dict of scalars).

    Args:
        metric_fn: pure function of ``(y_true[idx], y_score[idx])``.
        groups: one id per sample (e.g. patient_id) to resample whole groups; None resamples samples.

    Returns:
        ``{"estimate", "lo", "hi", "n_valid", "n_boot", "alpha"}``; for a dict-valued metric each of
        estimate/lo/hi/n_valid is a dict with the same keys.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    y = np.asarray(y_true)
    s = np.asarray(y_score)
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} samples but y_score has {s.shape[0]}")
    estimate = metric_fn(y, s)
    keys = list(estimate) if isinstance(estimate, dict) else None

    def _vec(v) -> np.ndarray:
        if keys is not None:
            return np.array([v[k] for k in keys], dtype=np.float64)
        return np.atleast_1d(np.asarray(v, dtype=np.float64))

    reps = np.empty((n_boot, _vec(estimate).size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # undefined AUCs in replicates are expected
        for b, idx in enumerate(bootstrap_indices(y.shape[0], groups, n_boot, seed)):
            reps[b] = _vec(metric_fn(y[idx], s[idx]))
    lo, hi, n_valid = _percentile_ci(reps, alpha)
    if keys is not None:
        return {
            "estimate": {k: float(estimate[k]) for k in keys},
            "lo": dict(zip(keys, lo.tolist())),
            "hi": dict(zip(keys, hi.tolist())),
            "n_valid": dict(zip(keys, n_valid.tolist())),
            "n_boot": n_boot,
            "alpha": alpha,
        }
    scalar = np.ndim(estimate) == 0
    est = float(estimate) if scalar else np.asarray(estimate, dtype=np.float64)
    return {
        "estimate": est,
        "lo": float(lo[0]) if scalar else lo,
        "hi": float(hi[0]) if scalar else hi,
        "n_valid": int(n_valid[0]) if scalar else n_valid,
        "n_boot": n_boot,
        "alpha": alpha,
    }


def metrics_with_ci(
    y_true,
    probs,
    class_names: Sequence[str],
    groups=None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    dense_classes: Sequence[str] | None = ("C", "D"),
) -> dict[str, dict]:
    """Bootstrap CIs for every scalar of :func:`~mammolens.evaluation.metrics.scalar_metrics`.

    Returns:
        ``{metric_key: {"estimate", "lo", "hi", "n_valid"}}`` (JSON-serialisable floats/ints).
    """
    y = check_labels(y_true)
    p = check_probs(y, probs)

    def fn(yy, pp):
        return scalar_metrics(yy, pp, class_names, dense_classes, warn=False)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = bootstrap_ci(fn, y, p, groups, n_boot, alpha, seed)
    return {
        k: {
            "estimate": res["estimate"][k],
            "lo": res["lo"][k],
            "hi": res["hi"][k],
            "n_valid": int(res["n_valid"][k]),
        }
        for k in res["estimate"]
    }


# --------------------------------------------------------------------------------------------- DeLong
def _structural_components(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong's per-sample structural components (midrank algorithm of Sun & Xu 2014).

    Returns:
        ``(y bool [n], aucs [M], v_pos [M, m], v_neg [M, n])``: ``v_pos[r, i]`` is the fraction of negatives
        a positive outranks (ties 1/2), ``v_neg[r, j]`` the fraction of positives outranking a negative.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))  # [M, n]
    if s.shape[1] != y.size:
        raise ValueError(f"scores have {s.shape[1]} samples but y_true has {y.size}")
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positives and 2 negatives, got {m} and {n}")
    x, z = s[:, y], s[:, ~y]  # [M, m], [M, n]
    tx, ty = rankdata(x), rankdata(z)  # midranks per score row
    tz = rankdata(np.concatenate([x, z], axis=1))  # [M, m + n]
    aucs = tz[:, :m].sum(1) / (m * n) - (m + 1.0) / (2.0 * n)
    v_pos = (tz[:, :m] - tx) / n  # [M, m]
    v_neg = 1.0 - (tz[:, m:] - ty) / m  # [M, n]
    return y, aucs, v_pos, v_neg


def delong_covariance(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance for ``M`` scores of the same samples (Sun & Xu 2014).

    Args:
        y_true: binary labels ``[n]`` (1 = positive).
        scores: ``[M, n]`` (or ``[n]`` for one score).

    Returns:
        ``(aucs [M], cov [M, M])``.
    """
    y, aucs, v_pos, v_neg = _structural_components(y_true, scores)
    sx = np.atleast_2d(np.cov(v_pos))
    sy = np.atleast_2d(np.cov(v_neg))
    return aucs, sx / int(y.sum()) + sy / int((~y).sum())


def clustered_delong_covariance(y_true, scores, groups) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their covariance with patients as clusters (Obuchowski 1997, Biometrics 53:567-578).

    The AUC is the usual one over all positive/negative image pairs. Its variance sums the structural
    components per cluster: with ``I`` clusters, ``m_i``/``n_i`` positives/negatives in cluster ``i`` and
    ``D10_i = sum(v_pos in i) - m_i AUC``, ``D01_i = sum(v_neg in i) - n_i AUC``:
    ``S10 = I/((I-1) M) sum D10 D10'``, ``S01 = I/((I-1) N) sum D01 D01'``,
    ``S11 = I/(I-1) sum D10 D01'`` and ``cov = S10/M + S01/N + (S11 + S11')/(M N)``.
    With one image per cluster this is DeLong's covariance times ``I (M-1) / ((I-1) M)`` for the positive
    part (and the same for the negative part), i.e. nearly the same.

    Args:
        y_true: binary labels ``[n]``.
        scores: ``[M, n]`` (or ``[n]``).
        groups: cluster (patient) id per sample ``[n]``.

    Returns:
        ``(aucs [M], cov [M, M])``.
    """
    y, aucs, v_pos, v_neg = _structural_components(y_true, scores)
    g = np.asarray(groups)
    if g.shape != y.shape:
        raise ValueError(f"groups has {g.shape[0] if g.ndim else 0} entries for {y.size} samples; give one id per image")
    _, codes = np.unique(g, return_inverse=True)
    n_clusters = int(codes.max()) + 1
    if n_clusters < 2:
        raise ValueError("the clustered DeLong variance needs at least 2 clusters (patients)")
    m, n = int(y.sum()), int((~y).sum())
    m_i = np.bincount(codes[y], minlength=n_clusters)  # [I]
    n_i = np.bincount(codes[~y], minlength=n_clusters)
    d10 = np.stack([np.bincount(codes[y], weights=v, minlength=n_clusters) for v in v_pos]) - aucs[:, None] * m_i
    d01 = np.stack([np.bincount(codes[~y], weights=v, minlength=n_clusters) for v in v_neg]) - aucs[:, None] * n_i
    f = n_clusters / (n_clusters - 1.0)
    s10 = f * (d10 @ d10.T) / m
    s01 = f * (d01 @ d01.T) / n
    s11 = f * (d10 @ d01.T)
    return aucs, s10 / m + s01 / n + (s11 + s11.T) / (m * n)


def _has_clusters(groups, n: int) -> bool:
    """True when ``groups`` is given and some group holds more than one of the ``n`` samples."""
    if groups is None:
        return False
    g = np.asarray(groups)
    if g.shape[0] != n:
        raise ValueError(f"groups has {g.shape[0]} entries for {n} samples; give one patient id per image")
    return len(np.unique(g)) < n


def _norm_p_two_sided(z: float) -> float:
    return float(math.erfc(abs(z) / math.sqrt(2.0)))


def delong_ci(y_true, score, alpha: float = 0.05) -> dict[str, float]:
    """AUC with its DeLong standard error and Wald CI (clipped to [0, 1])."""
    aucs, cov = delong_covariance(y_true, score)
    se = math.sqrt(max(float(cov[0, 0]), 0.0))
    q = NormalDist().inv_cdf(1 - alpha / 2)
    auc = float(aucs[0])
    return {"auc": auc, "se": se, "lo": max(0.0, auc - q * se), "hi": min(1.0, auc + q * se)}


def delong_test(y_true, score_a, score_b, alpha: float = 0.05, groups=None) -> dict:
    """Two-sided test of ``AUC_a == AUC_b`` for two scores of the same samples.

    Args:
        groups: patient id per sample; when a patient has several samples the variance is Obuchowski's
            clustered one (:func:`clustered_delong_covariance`), otherwise DeLong's.

    Returns:
        ``auc_a, auc_b, diff (a - b), var (of diff), z, p``, the Wald CI ``lo, hi`` of diff and ``method``.
    """
    both = np.vstack([score_a, score_b])
    if _has_clusters(groups, both.shape[1]):
        method = "clustered DeLong (Obuchowski 1997)"
        aucs, cov = clustered_delong_covariance(y_true, both, groups)
    else:
        method = "DeLong"
        aucs, cov = delong_covariance(y_true, both)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:  # identical rankings: no evidence of a difference
        z, p = (0.0, 1.0) if abs(diff) < 1e-12 else (math.copysign(math.inf, diff), 0.0)
        se = 0.0
    else:
        se = math.sqrt(var)
        z = diff / se
        p = _norm_p_two_sided(z)
    q = NormalDist().inv_cdf(1 - alpha / 2)
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "diff": diff,
        "var": max(var, 0.0),
        "z": float(z),
        "p": float(p),
        "lo": diff - q * se,
        "hi": diff + q * se,
        "method": method,
    }


# -------------------------------------------------------------------------------------------- McNemar
def _binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided p of ``k`` successes in ``n`` Bernoulli(0.5) trials (doubling the smaller tail)."""
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return float(min(1.0, 2.0 * tail))


def mcnemar_test(
    correct_a=None,
    correct_b=None,
    *,
    b: int | None = None,
    c: int | None = None,
    exact: bool | None = None,
    correction: bool = True,
    groups=None,
) -> dict:
    """McNemar test on paired correctness, or directly on the discordant counts ``b`` and ``c``.

    With ``groups`` (patient id per sample) where a patient has several samples, the clustered test of
    Durkalski et al. (2003, Stat Med 22:2417-2428) is used instead:
    ``X^2 = (sum_i (b_i - c_i))^2 / sum_i (b_i - c_i)^2`` over patients, chi-square with 1 df; with one
    sample per patient it equals the uncorrected McNemar statistic.

    ``b`` = a right and b wrong, ``c`` = a wrong and b right. ``exact=None`` picks the exact binomial
    test when ``b + c < 25``, otherwise chi-square (1 df) with Edwards' continuity correction
    (``correction``) — ``(|b - c| - 1)^2 / (b + c)``.

    Returns:
        ``{"b", "c", "n_discordant", "statistic", "p", "method"}`` (statistic is NaN for exact).
    """
    if b is None or c is None:
        if correct_a is None or correct_b is None:
            raise ValueError("give either correct_a and correct_b, or the discordant counts b and c")
        ca, cb = np.asarray(correct_a).astype(bool), np.asarray(correct_b).astype(bool)
        if ca.shape != cb.shape:
            raise ValueError(f"correct_a and correct_b differ in length: {ca.size} vs {cb.size}")
        b, c = int(np.sum(ca & ~cb)), int(np.sum(~ca & cb))
        if _has_clusters(groups, ca.size):
            return _clustered_mcnemar(ca, cb, groups)
    elif groups is not None:
        raise ValueError("groups needs the paired correctness (correct_a, correct_b), not the counts b and c")
    b, c = int(b), int(c)
    nd = b + c
    if exact is None:
        exact = nd < 25
    if nd == 0:
        return {"b": b, "c": c, "n_discordant": 0, "statistic": 0.0, "p": 1.0, "method": "no discordant pairs"}
    if exact:
        return {"b": b, "c": c, "n_discordant": nd, "statistic": float("nan"), "p": _binom_two_sided(b, nd),
                "method": "exact binomial"}
    num = max(abs(b - c) - (1.0 if correction else 0.0), 0.0) ** 2
    stat = num / nd
    p = float(math.erfc(math.sqrt(stat / 2.0)))  # chi-square with 1 df survival function
    method = "chi-square, continuity corrected" if correction else "chi-square"
    return {"b": b, "c": c, "n_discordant": nd, "statistic": float(stat), "p": p, "method": method}


def _clustered_mcnemar(ca: np.ndarray, cb: np.ndarray, groups) -> dict:
    """Durkalski et al. (2003) clustered McNemar on per-patient discordant counts."""
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    d = np.bincount(codes, weights=(ca & ~cb).astype(np.float64)) - np.bincount(codes, weights=(~ca & cb).astype(np.float64))
    b, c = int(np.sum(ca & ~cb)), int(np.sum(~ca & cb))
    method = "clustered McNemar (Durkalski 2003)"
    den = float(np.sum(d**2))
    if den == 0:
        return {"b": b, "c": c, "n_discordant": b + c, "statistic": 0.0, "p": 1.0, "method": method}
    stat = float(d.sum()) ** 2 / den
    return {"b": b, "c": c, "n_discordant": b + c, "statistic": stat, "p": float(math.erfc(math.sqrt(stat / 2.0))),
            "method": method}


def paired_bootstrap(metric_fn, y_true, probs_a, probs_b, groups, n_boot: int = 1000, seed: int = 0,
                     alpha: float = 0.05) -> dict[str, float]:
    """Difference ``metric(a) − metric(b)`` on the same rows, with a paired patient-bootstrap CI and p.

    Each replicate resamples patients (``groups``) once and scores both models on the same rows; p is
    the two-sided bootstrap p-value ``2 * min(#(d <= 0) + 1, #(d >= 0) + 1) / (n + 1)`` (capped at 1).

    Returns:
        ``{"diff", "lo", "hi", "p", "n_valid"}``.
    """
    y, a, b = np.asarray(y_true), np.asarray(probs_a), np.asarray(probs_b)
    diff = metric_fn(y, a) - metric_fn(y, b)
    reps = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for idx in bootstrap_indices(len(y), groups, n_boot, seed):
            reps.append(metric_fn(y[idx], a[idx]) - metric_fn(y[idx], b[idx]))
    d = np.asarray(reps, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not d.size or not math.isfinite(diff):
        return {"diff": float(diff), "lo": math.nan, "hi": math.nan, "p": math.nan, "n_valid": int(d.size)}
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    # (count + 1) / (n + 1): a finite number of replicates cannot show p = 0
    p = min(1.0, 2.0 * min(np.sum(d <= 0) + 1, np.sum(d >= 0) + 1) / (d.size + 1))
    return {"diff": float(diff), "lo": float(lo), "hi": float(hi), "p": p, "n_valid": int(d.size)}
