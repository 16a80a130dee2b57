"""Patient-level splits: no patient in two parts, stratification, determinism."""

import numpy as np
import pandas as pd
import pytest

from mammolens.data.splits import patient_kfold, train_val_test_split


def _cohort(n_patients=200, seed=0, unlabelled=0.0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        density = rng.choice(list("ABCD"), p=[0.1, 0.4, 0.4, 0.1])
        if rng.random() < unlabelled:
            density = ""
        for _ in range(int(rng.integers(1, 5))):  # 1-4 images per patient, same density
            rows.append({"patient_id": f"p{p:04d}", "density": density})
    return pd.DataFrame(rows)


def test_patient_kfold_no_patient_in_two_folds():
    df = _cohort()
    folds = patient_kfold(df, k=5)
    assert folds.name == "fold" and folds.index.equals(df.index)
    assert sorted(folds.unique()) == [0, 1, 2, 3, 4]
    assert df.assign(fold=folds).groupby("patient_id")["fold"].nunique().max() == 1


def test_patient_kfold_every_fold_has_every_class_and_close_proportions():
    df = _cohort()
    folds = patient_kfold(df, k=5)
    overall = df["density"].value_counts(normalize=True)
    for f in range(5):
        part = df.loc[folds == f, "density"].value_counts(normalize=True)
        assert set(part.index) == set("ABCD")
        assert (part.reindex(overall.index) - overall).abs().max() < 0.05


def test_patient_kfold_deterministic_for_seed():
    df = _cohort()
    a, b = patient_kfold(df, k=5, seed=3), patient_kfold(df, k=5, seed=3)
    assert a.equals(b)
    assert not a.equals(patient_kfold(df, k=5, seed=4))


def test_patient_kfold_unlabelled_rows_assigned_by_group():
    df = _cohort(unlabelled=0.3)
    folds = patient_kfold(df, k=4)
    assert (folds >= 0).all() and folds.notna().all()
    assert df.assign(fold=folds).groupby("patient_id")["fold"].nunique().max() == 1
    unl = folds[df["density"] == ""]
    assert set(unl.unique()) == {0, 1, 2, 3}  # spread like a class


def test_patient_kfold_errors():
    df = _cohort(n_patients=3)
    with pytest.raises(ValueError, match="3 patient group"):
        patient_kfold(df, k=5)
    with pytest.raises(ValueError, match="'label'"):
        patient_kfold(df, label_col="label")
    bad = df.copy()
    bad.loc[0, "patient_id"] = ""
    with pytest.raises(ValueError, match="empty 'patient_id'"):
        patient_kfold(bad, k=2)


def test_train_val_test_split_fractions_by_patient():
    df = _cohort(n_patients=400)
    split = train_val_test_split(df, val=0.1, test=0.2, seed=0)
    assert split.name == "split" and set(split) == {"train", "val", "test"}
    assert df.assign(split=split).groupby("patient_id")["split"].nunique().max() == 1
    per_patient = df.assign(split=split).drop_duplicates("patient_id")["split"].value_counts(normalize=True)
    assert abs(per_patient["test"] - 0.2) < 0.03
    assert abs(per_patient["val"] - 0.1) < 0.03
    overall = df["density"].value_counts(normalize=True)
    for part in ("train", "val", "test"):
        props = df.loc[split == part, "density"].value_counts(normalize=True).reindex(overall.index)
        assert (props - overall).abs().max() < 0.06
    assert split.equals(train_val_test_split(df, val=0.1, test=0.2, seed=0))


def test_train_val_test_split_zero_val_and_bad_fractions():
    df = _cohort(n_patients=50)
    split = train_val_test_split(df, val=0, test=0.25)
    assert set(split) == {"train", "test"}
    with pytest.raises(ValueError, match="val \\+ test < 1"):
        train_val_test_split(df, val=0.5, test=0.5)


def _index():
    """8 patients × 2 images; p0's images are DBT, p7 is the test split, p6 unlabelled, p5's image 1 failed."""
    rows = []
    for p in range(8):
        for i in range(2):
            rows.append({"patient_id": f"p{p}", "modality": "DBT" if p == 0 else "DM",
                         "split": "test" if p == 7 else ("val" if p in (1, 2) else "train"),
                         "fold": p % 2, "status": "failed" if (p, i) == (5, 1) else "done"})
    labels = np.array([-1 if r["patient_id"] == "p6" else 0 for r in rows])
    return pd.DataFrame(rows), labels


def test_split_rows_precedence_and_filters():
    from mammolens.data.splits import split_rows

    index, labels = _index()
    patients = index["patient_id"].to_numpy()
    tr, va = split_rows(index, labels)  # the split column holds val rows
    assert set(patients[va]) == {"p1", "p2"} and set(patients[tr]) == {"p0", "p3", "p4", "p5"}
    assert 11 not in tr  # p5's failed image
    tr, va = split_rows(index, labels, fold=1)  # a fold wins over the split column
    assert set(patients[va]) == {"p1", "p3", "p5"} and "p7" not in set(patients[tr])  # test rows never used
    tr, va = split_rows(index, labels, modalities=["DBT"], split_column="none", val_frac=0.0)
    assert set(patients[tr]) == {"p0"} and len(va) == 0
    tr, va = split_rows(index, labels, split_column="none", val_frac=0.5, seed=3)
    assert not set(patients[tr]) & set(patients[va]) and len(set(patients[va])) == 4  # round(0.5 × 7 labelled)
    assert np.array_equal(va, split_rows(index, labels, split_column="none", val_frac=0.5, seed=3)[1])
    with pytest.raises(ValueError, match="no 'fold' column"):
        split_rows(index.drop(columns="fold"), labels, fold=0)


def test_split_rows_old_import_path_takes_the_train_cfg():
    from mammolens.train.config import TrainCfg
    from mammolens.train.loop import split_rows

    index, labels = _index()
    cfg = TrainCfg(data={"fold": 1})
    tr, va = split_rows(index, labels, cfg)
    assert set(index["patient_id"].to_numpy()[va]) == {"p1", "p3", "p5"}
    with pytest.raises(ValueError, match="no labelled training rows"):
        split_rows(index, np.full(len(index), -1), cfg)
