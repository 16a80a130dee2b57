"""Breast and exam aggregation on hand-built prediction frames."""

import numpy as np
import pandas as pd
import pytest

from mammolens.pipeline.aggregate import aggregate_breast, aggregate_exam

CLASSES = ["A", "B", "C", "D"]


def _frame(rows):
    # rows: (study, laterality, view, label, [pA, pB, pC, pD])
    df = pd.DataFrame(
        [dict(study_id=s, laterality=lat, view=v, label=lab, patient_id="P1", image_path=f"{s}{lat}{v}.dcm") for s, lat, v, lab, _ in rows]
    )
    probs = np.array([r[4] for r in rows], float)
    for i, c in enumerate(CLASSES):
        df[f"prob_{c}"] = probs[:, i]
    return df


ROWS = [
    ("S1", "L", "CC", 1, [0.1, 0.6, 0.2, 0.1]),
    ("S1", "L", "MLO", 1, [0.3, 0.4, 0.2, 0.1]),
    ("S1", "R", "CC", 2, [0.0, 0.2, 0.5, 0.3]),
    ("S1", "R", "MLO", -1, [0.0, 0.4, 0.4, 0.2]),
    ("S1", "R", "XCCL", -1, [0.0, 0.3, 0.6, 0.1]),  # a third view of the right breast
    ("S2", "L", "CC", 0, [0.7, 0.2, 0.1, 0.0]),  # a single-view exam
]


def test_aggregate_breast_mean_any_number_of_views():
    b = aggregate_breast(_frame(ROWS), CLASSES)
    assert b[["study_id", "laterality"]].values.tolist() == [["S1", "L"], ["S1", "R"], ["S2", "L"]]
    assert b["n_images"].tolist() == [2, 3, 1]
    np.testing.assert_allclose(b.loc[0, ["prob_A", "prob_B", "prob_C", "prob_D"]].astype(float), [0.2, 0.5, 0.2, 0.1])
    np.testing.assert_allclose(b.loc[1, ["prob_A", "prob_B", "prob_C", "prob_D"]].astype(float), [0.0, 0.3, 0.5, 0.2])
    assert b["pred"].tolist() == ["B", "C", "A"]
    assert b["label"].tolist() == [1, 2, 0]  # max known label, unlabelled views ignored
    assert b["patient_id"].tolist() == ["P1"] * 3


def test_aggregate_breast_max_renormalises():
    b = aggregate_breast(_frame(ROWS[:2]), CLASSES, how="max")
    raw = np.array([0.3, 0.6, 0.2, 0.1])
    np.testing.assert_allclose(b.loc[0, ["prob_A", "prob_B", "prob_C", "prob_D"]].astype(float), raw / raw.sum())
    assert b.loc[0, "pred"] == "B"


def test_aggregate_exam_densest_breast():
    e = aggregate_exam(_frame(ROWS), CLASSES)
    s1 = e[e.study_id == "S1"].iloc[0]
    # right breast mean [0, .3, .5, .2] has expected index 1.9 > left's 1.2 -> its probabilities
    np.testing.assert_allclose(s1[["prob_A", "prob_B", "prob_C", "prob_D"]].astype(float), [0.0, 0.3, 0.5, 0.2])
    assert s1["breast"] == "R" and s1["pred"] == "C" and s1["label"] == 2
    assert s1["n_breasts"] == 2 and s1["n_images"] == 5
    s2 = e[e.study_id == "S2"].iloc[0]
    assert s2["pred"] == "A" and s2["n_breasts"] == 1 and s2["n_images"] == 1


def test_aggregate_exam_pred_is_max_of_breast_classes():
    # left breast: argmax D with mass spread (expected index lower); right: confidently C (higher expected)
    rows = [
        ("S", "L", "CC", -1, [0.3, 0.0, 0.3, 0.4]),  # pred D, expected 0*.3+2*.3+3*.4 = 1.8
        ("S", "R", "CC", -1, [0.0, 0.0, 0.9, 0.1]),  # pred C, expected 2.1
    ]
    e = aggregate_exam(_frame(rows), CLASSES).iloc[0]
    assert e["pred"] == "D"  # the denser breast class (BI-RADS reports the denser breast)
    assert e["breast"] == "R"  # probabilities from the breast with the highest expected density
    assert e["prob_C"] == pytest.approx(0.9)
    assert e["label"] == -1


def test_aggregate_exam_mean_option():
    e = aggregate_exam(_frame(ROWS), CLASSES, how="mean")
    s1 = e[e.study_id == "S1"].iloc[0]
    np.testing.assert_allclose(s1[["prob_A", "prob_B", "prob_C", "prob_D"]].astype(float), [0.1, 0.4, 0.35, 0.15])
    assert s1["pred"] == "B"


def test_aggregate_errors_name_the_problem():
    with pytest.raises(ValueError, match="prob_D"):
        aggregate_breast(_frame(ROWS).drop(columns="prob_D"), CLASSES)
    with pytest.raises(ValueError, match="laterality"):
        aggregate_breast(_frame(ROWS).drop(columns="laterality"), CLASSES)
    with pytest.raises(ValueError, match="densest"):
        aggregate_exam(_frame(ROWS), CLASSES, how="median")
