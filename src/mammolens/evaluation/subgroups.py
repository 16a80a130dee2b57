"""Per-subgroup performance (modality, vendor, view, laterality, age band, race, site) with CIs.

Every subgroup gets its own patient-level bootstrap. A subgroup in which a class is missing gets NaN
for that class's AUC (the macro AUC averages the defined ones); a subgroup with a single class has a
NaN macro AUC and a warning naming the subgroup — never a crash. Missing values form their own
``"(missing)"`` subgroup so that no image silently disappears from the table.

Too small for a statistic (NaN in the table, null in JSON, "–" in the report; ``note`` says why):

- fewer than ``min_patients`` patients (default 10; images when there is no patient column): every
  statistic. With so few patients the patient bootstrap draws from a handful of values and its
  interval is noise.
- one class present: the AUC and the kappa. Kappa is exactly 0 whatever the predictions when the
  truth has one class (observed = expected agreement), so ``0.000 (0.000–0.000)`` would say nothing.
  Accuracy stays: the fraction correct is still defined.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mammolens.constants import SUBGROUP_COLUMNS
from mammolens.evaluation.metrics import accuracy, check_labels, cohen_kappa, roc_auc_ovr
from mammolens.evaluation.stats import bootstrap_ci

__all__ = ["AGE_BANDS", "MIN_PATIENTS", "age_band", "subgroup_metrics"]

AGE_BANDS = ("<40", "40-49", "50-59", "60-69", "70+")
MISSING = "(missing)"
MIN_PATIENTS = 10
_METRICS = ("accuracy", "auc_macro", "kappa")


def age_band(age) -> pd.Series:
    """Age in years → ``<40, 40-49, 50-59, 60-69, 70+`` (missing/non-numeric → ``(missing)``)."""
    a = pd.to_numeric(pd.Series(age), errors="coerce")
    bands = pd.cut(a, bins=[-np.inf, 40, 50, 60, 70, np.inf], right=False, labels=list(AGE_BANDS))
    return bands.astype(object).where(a.notna(), MISSING).astype(str)


def _subgroup_fn(num_classes: int, kappa_weights: str | None):
    def fn(y, p):
        pred = p.argmax(1)
        aucs = roc_auc_ovr(y, p, warn=False)
        return {
            "accuracy": accuracy(y, pred),
            "auc_macro": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan"),
            "kappa": cohen_kappa(y, pred, kappa_weights, num_classes),
        }

    return fn


def subgroup_metrics(
    df: pd.DataFrame,
    prob_cols: Sequence[str],
    label_col: str,
    class_names: Sequence[str],
    by: Sequence[str] = SUBGROUP_COLUMNS,
    groups: str | None = "patient_id",
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    kappa_weights: str | None = "quadratic",
    min_size: int = 1,
    include_overall: bool = True,
    min_patients: int = MIN_PATIENTS,
) -> pd.DataFrame:
    """One row per (column, value): n images, n patients, accuracy, macro AUC, kappa, each with a CI.

    Args:
        df: predictions (one row per image); rows with label < 0 are ignored.
        prob_cols: probability columns in class order.
        by: subgroup columns; those absent from ``df`` are skipped. ``age_band`` is derived from ``age``
            when only ``age`` is present.
        groups: patient column for the patient-level bootstrap (None or absent: resample images).
        kappa_weights: weighting of the reported kappa (quadratic for ordinal density).
        min_size: subgroups with fewer images are left out.
        min_patients: subgroups with fewer patients keep their counts but no statistic (NaN).

    Returns:
        DataFrame with columns ``subgroup, value, n_images, n_patients``, ``<metric>, <metric>_lo,
        <metric>_hi`` for accuracy, auc_macro and kappa, and ``note`` (why statistics are missing, or
        ""); ``kappa_weights`` and ``min_patients`` are recorded in ``attrs``.
    """
    missing = [c for c in (*prob_cols, label_col) if c not in df.columns]
    if missing:
        raise ValueError(f"prediction frame lacks column(s) {missing}; expected prob_<class> columns and {label_col!r}")
    if len(prob_cols) != len(class_names):
        raise ValueError(f"{len(prob_cols)} probability columns for {len(class_names)} classes")
    data = df[df[label_col].astype(int) >= 0].copy()
    if "age_band" in by and "age_band" not in data.columns and "age" in data.columns:
        data["age_band"] = age_band(data["age"]).to_numpy()
    group_col = groups if groups and groups in data.columns else None
    k = len(class_names)
    fn = _subgroup_fn(k, kappa_weights)

    rows = []
    parts: list[tuple[str, str, pd.DataFrame]] = [("overall", "all", data)] if include_overall else []
    for col in by:
        if col not in data.columns:
            continue
        values = data[col].astype(object).where(data[col].notna() & (data[col].astype(str) != ""), MISSING)
        values = values.astype(str)
        order = [v for v in AGE_BANDS if v in set(values)] if col == "age_band" else sorted(set(values) - {MISSING})
        order += [v for v in sorted(set(values)) if v not in order]
        for v in order:
            parts.append((col, v, data[values.to_numpy() == v]))

    for col, value, part in parts:
        if len(part) < min_size or len(part) == 0:
            continue
        y = check_labels(part[label_col].astype(int).to_numpy())
        p = part[list(prob_cols)].to_numpy(dtype=np.float64)
        present = np.unique(y)
        if present.size < 2:
            warnings.warn(
                f"subgroup {col}={value}: only class {class_names[present[0]]} present "
                f"({len(part)} images); AUC is undefined (NaN)",
                RuntimeWarning,
                stacklevel=2,
            )
        row = {
            "subgroup": col,
            "value": value,
            "n_images": int(len(part)),
            "n_patients": int(part[group_col].nunique()) if group_col else np.nan,
        }
        n_units = row["n_patients"] if group_col else row["n_images"]
        undefined: tuple[str, ...] = ()
        note = ""
        if n_units < min_patients:
            undefined, note = _METRICS, f"fewer than {min_patients} {'patients' if group_col else 'images'}"
        elif present.size < 2:
            undefined, note = ("auc_macro", "kappa"), "one class only"
        res = None
        if len(undefined) < len(_METRICS):
            g = part[group_col].astype(str).to_numpy() if group_col else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = bootstrap_ci(fn, y, p, g, n_boot=n_boot, alpha=alpha, seed=seed)
        for key in _METRICS:
            for suffix, part_key in (("", "estimate"), ("_lo", "lo"), ("_hi", "hi")):
                row[f"{key}{suffix}"] = np.nan if key in undefined else res[part_key][key]
        row["note"] = note
        rows.append(row)
    cols = ["subgroup", "value", "n_images", "n_patients"] + [
        f"{k}{s}" for k in _METRICS for s in ("", "_lo", "_hi")
    ] + ["note"]
    out = pd.DataFrame(rows, columns=cols)
    out.attrs["kappa_weights"] = kappa_weights
    out.attrs["min_patients"] = min_patients
    out.attrs["n_boot"] = n_boot
    return out
