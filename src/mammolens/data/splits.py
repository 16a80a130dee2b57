"""Patient-level splits: stratified group k-fold and train/val/test, so no patient is in two parts; and
``split_rows``, the training/validation rows of a cache index for one run.

Rows without a label (empty or NaN in ``label_col``) are kept: they form their own stratum, so they are
spread over the folds like a class, and they always follow their patient's group.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

__all__ = ["patient_kfold", "train_val_test_split", "split_rows", "VAL_NAMES"]

_UNLABELLED = "__unlabelled__"
VAL_NAMES = ("val", "valid", "validation", "dev")  # split-column values that mean validation


def _strata(df: pd.DataFrame, label_col: str, group_col: str) -> tuple[np.ndarray, np.ndarray]:
    for col in (label_col, group_col):
        if col not in df.columns:
            raise ValueError(f"column {col!r} is not in the DataFrame (columns: {list(df.columns)})")
    groups = df[group_col].astype("string").fillna("")
    if (groups == "").any():
        n = int((groups == "").sum())
        raise ValueError(f"{n} row(s) have an empty {group_col!r}; every row needs a group for a patient-level split")
    labels = df[label_col].astype("string").fillna("").replace("", _UNLABELLED)
    return labels.to_numpy(dtype=object), groups.to_numpy(dtype=object)


def _kfold_ids(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(pd.unique(groups))
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if n_groups < k:
        raise ValueError(f"cannot make {k} folds from {n_groups} patient group(s); lower k or add patients")
    folds = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "least populated class has fewer members than n_splits" is expected for rare classes
        warnings.filterwarnings("ignore", message=".*least populated class.*", category=UserWarning)
        for fold, (_, test_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            folds[test_idx] = fold
    assert (folds >= 0).all()
    return folds


def patient_kfold(
    df: pd.DataFrame, k: int = 5, label_col: str = "density", group_col: str = "patient_id", seed: int = 0
) -> pd.Series:
    """Assign each row a fold id 0..k-1, stratified by ``label_col`` and grouped by ``group_col``.

    Uses scikit-learn's ``StratifiedGroupKFold(shuffle=True, random_state=seed)``: all rows of a patient
    share a fold and class proportions per fold are kept close to the overall ones.

    Args:
        df: a manifest (any DataFrame with the two columns).
        k: number of folds.
        label_col: stratification column; empty/NaN values are their own stratum.
        group_col: grouping column (patient).
        seed: shuffling seed; the result is deterministic for a given seed and row order.

    Returns:
        Series of int fold ids named ``fold``, aligned with ``df.index``.

    Raises:
        ValueError: missing columns, empty group ids, or fewer patients than folds.
    """
    labels, groups = _strata(df, label_col, group_col)
    return pd.Series(_kfold_ids(labels, groups, k, seed), index=df.index, name="fold")


def train_val_test_split(
    df: pd.DataFrame,
    val: float = 0.1,
    test: float = 0.2,
    label_col: str = "density",
    group_col: str = "patient_id",
    seed: int = 0,
) -> pd.Series:
    """Split rows into train/val/test by patient, stratified by ``label_col``.

    The test part is one fold of a ``round(1 / test)``-fold stratified group split, and the validation
    part one fold of a ``round((1 - test) / val)``-fold split of the rest, so the fractions are met up to
    the fold granularity (and patient sizes).

    Args:
        df: a manifest.
        val: fraction of patients for validation (0 for none).
        test: fraction of patients for test (0 for none).
        label_col: stratification column; empty/NaN values are their own stratum.
        group_col: grouping column (patient).
        seed: seed for both splits.

    Returns:
        Series of "train"/"val"/"test" named ``split``, aligned with ``df.index``.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val and test must be fractions in [0, 1) with val + test < 1, got val={val}, test={test}")
    labels, groups = _strata(df, label_col, group_col)
    split = np.full(len(df), "train", dtype=object)
    rest = np.arange(len(df))
    if test > 0:
        k = max(2, round(1 / test))
        folds = _kfold_ids(labels, groups, k, seed)
        split[folds == 0] = "test"
        rest = np.flatnonzero(folds != 0)
    if val > 0:
        k = max(2, round((1 - test) / val))
        folds = _kfold_ids(labels[rest], groups[rest], k, seed + 1)
        split[rest[folds == 0]] = "val"
    return pd.Series(split, index=df.index, name="split")


def split_rows(index: pd.DataFrame, labels: np.ndarray, *, split_column: str = "split", fold: int | None = None,
               val_frac: float = 0.2, modalities=(), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positional rows of a cache index for training and validation (disjoint by patient).

    Order of precedence: ``fold`` with a ``fold`` column (its rows are validation); ``split_column``
    holding train/val (``VAL_NAMES``); otherwise a random ``val_frac`` of patients (``seed``). Unlabelled
    (``labels < 0``), failed (``status`` not done), test and filtered-out (``modalities``) rows are dropped.

    Raises:
        ValueError: ``fold`` is set but the index has no ``fold`` column.
    """
    keep = labels >= 0
    if "status" in index.columns:
        keep &= (index["status"].astype(str) == "done").to_numpy()
    if modalities:
        keep &= index["modality"].astype(str).isin(modalities).to_numpy()
    split = index[split_column].astype(str).str.lower().to_numpy() if split_column in index.columns else None
    if split is not None:
        keep &= split != "test"
    if fold is not None:
        if "fold" not in index.columns:
            raise ValueError(f"data.fold={fold} but the cache index has no 'fold' column; add one or unset data.fold")
        is_val = (index["fold"].to_numpy() == fold)
    elif split is not None and np.isin(split[keep], VAL_NAMES).any():
        is_val = np.isin(split, VAL_NAMES)
    else:
        patients = index["patient_id"].astype(str).to_numpy()
        uniq = np.unique(patients[keep])
        rng = np.random.default_rng(seed)
        n_val = int(round(val_frac * len(uniq)))
        if val_frac > 0 and len(uniq) > 1:
            n_val = min(max(n_val, 1), len(uniq) - 1)
        val_patients = set(rng.permutation(uniq)[:n_val].tolist())
        is_val = np.array([p in val_patients for p in patients], dtype=bool)
    return np.flatnonzero(keep & ~is_val), np.flatnonzero(keep & is_val)
