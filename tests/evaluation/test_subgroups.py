"""Subgroup table: one row per value, CIs, age bands, skipped columns, single-class subgroups."""

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score

from mammolens.evaluation.subgroups import age_band, subgroup_metrics

CLASSES = ["A", "B", "C", "D"]
PROBS = [f"prob_{c}" for c in CLASSES]


def _frame(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    df = pd.DataFrame(p, columns=PROBS)
    df["label"] = y
    df["patient_id"] = [f"P{i // 2:04d}" for i in range(n)]
    df["modality"] = np.where(np.arange(n) % 2 == 0, "DM", "DBT")
    df["view"] = rng.choice(["CC", "MLO"], n)
    df["age"] = rng.integers(30, 90, n)
    return df


def test_age_band_edges():
    out = age_band([39, 40, 49.9, 50, 69, 70, 95, None, "x"]).tolist()
    assert out == ["<40", "40-49", "40-49", "50-59", "60-69", "70+", "70+", "(missing)", "(missing)"]


def test_subgroup_metrics_rows_values_and_cis():
    df = _frame()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every subgroup here has all classes: no warning expected
        out = subgroup_metrics(df, PROBS, "label", CLASSES, n_boot=50)
    # race, site, manufacturer, laterality absent -> skipped; age -> age_band
    assert set(out["subgroup"]) == {"overall", "modality", "view", "age_band"}
    dm = out[(out.subgroup == "modality") & (out.value == "DM")].iloc[0]
    part = df[df.modality == "DM"]
    pred = part[PROBS].to_numpy().argmax(1)
    assert dm.n_images == len(part) and dm.n_patients == part.patient_id.nunique()
    assert dm.accuracy == pytest.approx(accuracy_score(part.label, pred))
    assert dm.kappa == pytest.approx(cohen_kappa_score(part.label, pred, weights="quadratic"))
    assert dm.auc_macro == pytest.approx(roc_auc_score(part.label, part[PROBS].to_numpy(), multi_class="ovr"))
    for m in ("accuracy", "auc_macro", "kappa"):
        assert (out[f"{m}_lo"] <= out[m]).all() and (out[m] <= out[f"{m}_hi"]).all()
    bands = out[out.subgroup == "age_band"]["value"].tolist()
    assert bands == ["<40", "40-49", "50-59", "60-69", "70+"]
    assert out[out.subgroup == "age_band"].n_images.sum() == len(df)


def test_subgroup_single_class_gives_nan_auc_and_warning():
    df = _frame()
    df["site"] = "s1"
    one = df.index[:20]
    df.loc[one, "site"] = "tiny"
    df.loc[one, "label"] = 2
    with pytest.warns(RuntimeWarning, match="site=tiny"):
        out = subgroup_metrics(df, PROBS, "label", CLASSES, by=("site",), n_boot=20)
    tiny = out[out.value == "tiny"].iloc[0]
    assert np.isnan(tiny.auc_macro)
    assert tiny.n_images == 20
    assert np.isfinite(tiny.accuracy)


def test_subgroup_missing_values_and_unlabelled_rows():
    df = _frame(200)
    df["race"] = ["white", ""] * 100
    df.loc[:9, "label"] = -1  # unlabelled rows are ignored
    out = subgroup_metrics(df, PROBS, "label", CLASSES, by=("race",), n_boot=10, include_overall=False)
    assert out["value"].tolist() == ["white", "(missing)"]
    assert out["n_images"].sum() == 190


def test_subgroup_metrics_rejects_missing_columns():
    with pytest.raises(ValueError, match="prob_D"):
        subgroup_metrics(_frame().drop(columns="prob_D"), PROBS, "label", CLASSES)


def test_subgroup_too_small_or_one_class_has_no_statistic():
    df = _frame()  # 2 images per patient
    df["site"] = "big"
    df.loc[df.index[:20], "site"] = "one-class"  # 10 patients, all class C
    df.loc[df.index[:20], "label"] = 2
    df.loc[df.index[20:38], "site"] = "small"  # 9 patients: below the minimum of 10
    with pytest.warns(RuntimeWarning, match="site=one-class"):
        out = subgroup_metrics(df, PROBS, "label", CLASSES, by=("site",), n_boot=20, include_overall=False)
    one = out[out.value == "one-class"].iloc[0]
    assert one.note == "one class only" and np.isfinite(one.accuracy)
    # kappa would be exactly 0 with a 0-0 interval: reported as missing, not as a number
    assert np.isnan([one.kappa, one.kappa_lo, one.kappa_hi, one.auc_macro, one.auc_macro_lo]).all()
    small = out[out.value == "small"].iloc[0]
    assert small.n_patients == 9 and small.note == "fewer than 10 patients"
    assert np.isnan([small[f"{m}{s}"] for m in ("accuracy", "auc_macro", "kappa") for s in ("", "_lo", "_hi")]).all()
    big = out[out.value == "big"].iloc[0]
    assert big.note == "" and np.isfinite([big.accuracy, big.auc_macro, big.kappa]).all()
    assert out.attrs["min_patients"] == 10
