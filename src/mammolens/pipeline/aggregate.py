"""Breast- and exam-level aggregation of image-level predictions.

The rule (what ``Predictor`` and ``mammolens predict`` report):

- **Breast** = the images of one ``(study_id, laterality)``, whatever their number of views (1, 2,
  3, 4 ...). ``how="mean"`` (default): the mean of the image probabilities; ``how="max"``: the
  per-class maximum, renormalised to sum 1. ``pred`` is the argmax class.
- **Exam** = one ``study_id``. BI-RADS reports the density of the denser breast, so with
  ``how="densest"`` (default) the exam class is the maximum (in class order) of the breast classes
  and the exam probabilities are those of the breast with the highest expected class index
  ``sum_k k * p_k``; ``how="mean"`` averages the breast probabilities and takes their argmax.
- The label of a breast/exam is the maximum known label of its images (-1 when none is known).
- ``dense`` (``add_dense``): the row's ``pred`` is one of the task's ``Task.dense_classes`` (BI-RADS C
  and D for ``density``, ``dense`` for ``dense``): the flag follows the reported class, never a separate
  threshold (docs/outputs.md); tasks without dense classes get no ``dense`` column.

Class order is ``class_names`` order and is taken as ordinal (A < B < C < D for density).
Input frames follow the predictions contract: ``prob_<class>`` columns (and optionally ``label``,
``patient_id``, ``image_path``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["add_dense", "aggregate_breast", "aggregate_exam", "dense_indices"]

DENSE_THRESHOLD = 0.5

_KEEP_FIRST = ("patient_id", "modality", "manufacturer", "age", "race", "site")


def _prob_cols(df: pd.DataFrame, class_names: Sequence[str]) -> list[str]:
    cols = [f"prob_{c}" for c in class_names]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"predictions lack probability column(s) {missing}; expected prob_<class> for {list(class_names)}")
    return cols


def _require(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs column(s) {missing}; found {list(df.columns)}")


def _group_label(df: pd.DataFrame, keys: list[str]) -> pd.Series | None:
    if "label" not in df.columns:
        return None
    return df.groupby(keys, sort=True, dropna=False)["label"].max().astype(int)


def aggregate_breast(
    predictions: pd.DataFrame,
    class_names: Sequence[str],
    how: str = "mean",
    keys: Sequence[str] = ("study_id", "laterality"),
) -> pd.DataFrame:
    """One row per breast: ``study_id, laterality, n_images, [label], prob_<class>..., pred``."""
    if how not in ("mean", "max"):
        raise ValueError(f"breast aggregation must be 'mean' or 'max', got {how!r}")
    class_names = list(class_names)
    keys = list(keys)
    _require(predictions, keys, "breast aggregation")
    cols = _prob_cols(predictions, class_names)
    grouped = predictions.groupby(keys, sort=True, dropna=False)
    probs = grouped[cols].mean() if how == "mean" else grouped[cols].max()
    values = probs.to_numpy(dtype=np.float64)  # [B, K]
    if how == "max":
        values = values / np.clip(values.sum(1, keepdims=True), 1e-12, None)
    out = pd.DataFrame(values, columns=cols, index=probs.index)
    out.insert(0, "n_images", grouped.size().astype(int))
    label = _group_label(predictions, keys)
    if label is not None:
        out.insert(1, "label", label)
    for c in _KEEP_FIRST:
        if c in predictions.columns and c not in keys:
            out[c] = grouped[c].first()
    out["pred"] = np.asarray(class_names, dtype=object)[values.argmax(1)]
    return out.reset_index()


def aggregate_exam(
    predictions: pd.DataFrame,
    class_names: Sequence[str],
    how: str = "densest",
    breast_how: str = "mean",
    study_key: str = "study_id",
) -> pd.DataFrame:
    """One row per exam from image-level predictions (breasts are aggregated first).

    Returns:
        ``study_id, n_breasts, n_images, [label], prob_<class>..., pred`` and, for ``how="densest"``,
        ``breast`` (the laterality whose probabilities are reported).
    """
    if how not in ("densest", "mean"):
        raise ValueError(f"exam aggregation must be 'densest' or 'mean', got {how!r}")
    class_names = list(class_names)
    breasts = aggregate_breast(predictions, class_names, how=breast_how, keys=(study_key, "laterality"))
    cols = _prob_cols(breasts, class_names)
    k = len(class_names)
    p = breasts[cols].to_numpy(dtype=np.float64)  # [B, K]
    breasts = breasts.assign(
        _expected=p @ np.arange(k, dtype=np.float64),
        _pred_idx=p.argmax(1),
    )
    rows = []
    for study, part in breasts.groupby(study_key, sort=True, dropna=False):
        row: dict = {study_key: study, "n_breasts": int(len(part)), "n_images": int(part["n_images"].sum())}
        if "label" in part.columns:
            row["label"] = int(part["label"].max())
        if how == "densest":
            best = part.iloc[int(np.argmax(part["_expected"].to_numpy()))]
            probs = best[cols].to_numpy(dtype=np.float64)
            pred_idx = int(part["_pred_idx"].max())
            row["breast"] = best["laterality"]
        else:
            probs = part[cols].to_numpy(dtype=np.float64).mean(0)
            pred_idx = int(probs.argmax())
        row.update(dict(zip(cols, probs.tolist())))
        for c in _KEEP_FIRST:
            if c in part.columns:
                row[c] = part[c].iloc[0]
        row["pred"] = class_names[pred_idx]
        rows.append(row)
    return pd.DataFrame(rows)


def dense_indices(class_names: Sequence[str], dense_classes: Sequence[str] | None) -> list[int] | None:
    """Indices (in ``class_names`` order) of the classes that count as dense; None when the task has none
    (``dense_classes`` empty or None, or none of them among ``class_names``)."""
    wanted = set(dense_classes or ())
    idx = [i for i, c in enumerate(class_names) if c in wanted]
    return idx or None


def add_dense(df: pd.DataFrame, class_names: Sequence[str], dense: Sequence[int] | None) -> pd.DataFrame:
    """Set ``df["dense"]`` (in place, and return ``df``): the row's reported class ``pred`` is one of the dense
    classes ``dense`` (indices, see ``dense_indices``), the rule of ``Task.dense_flag``, so ``pred`` and
    ``dense`` never disagree. Nothing is added when ``dense`` is None."""
    if dense is not None:
        df["dense"] = df["pred"].isin([class_names[i] for i in dense]).astype(bool)
    return df
