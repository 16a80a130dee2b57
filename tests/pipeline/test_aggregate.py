"""Breast and exam aggregation on hand-built prediction frames."""

import numpy as np
import pandas as pd
import pytest

from mammolens.pipeline.aggregate import aggregate_breast, aggregate_exam

CLASSES = ["A", "B", "C", "D"]


def _frame(rows):
    # rows: (study, laterality, view, label, [pA, pB, pC, pD])
    df = pd.DataFrame(
        [dict(study_id=s, laterality=lat, view=v, label=lab, patient_id="P1", image_path=f"{s}{lat}{v}.dcm")
         for s, lat, v, lab, _ in rows]
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


# ------------------------------------------------------------------------------------- the dense rule
def test_task_dense_classes_per_registered_task():
    from mammolens.tasks import get_task

    got = {n: get_task(n).dense_classes for n in ("density", "dense", "mias", "pathology", "abnormality")}
    assert got == {"density": ("C", "D"), "dense": ("dense",), "mias": (), "pathology": (), "abnormality": ()}


def test_task_dense_classes_round_trip_validation_and_legacy_default():
    from mammolens.tasks import Task, dense_classes_of, get_task, resolve_task, task_dict

    t = Task(name="two", label_column="c", class_names=("fatty", "heavy"), dense_classes=("heavy",))
    assert Task.from_dict(t.to_dict()) == t and resolve_task(task_dict(t)) == t
    assert t.to_dict()["dense_classes"] == ["heavy"]
    with pytest.raises(ValueError, match=r"dense_classes \['X'\] are not among"):
        Task(name="two", label_column="c", class_names=("a", "b"), dense_classes=("X",))
    # no field (a YAML file, a task stored by an older mammolens): the registered task's, else the old rule
    assert Task(name="y", label_column="c", class_names=("fatty", "dense")).dense_classes == ("dense",)
    assert Task(name="y", label_column="d", class_names=("A", "B", "C", "D")).dense_classes == ("C", "D")
    assert Task(name="y", label_column="d", class_names=("F", "G", "D")).dense_classes == ()
    old = task_dict(get_task("dense"))
    del old["dense_classes"]
    assert resolve_task(old).dense_classes == ("dense",)
    assert dense_classes_of(type("Stub", (), {"class_names": ("A", "B", "C", "D")})()) == ("C", "D")


def test_add_dense_and_dense_indices():
    from mammolens.pipeline.aggregate import add_dense, dense_indices

    assert dense_indices(CLASSES, ("C", "D")) == [2, 3]
    assert dense_indices(CLASSES, ()) is None and dense_indices(["F", "G", "D"], ("C",)) is None
    e = add_dense(aggregate_exam(_frame(ROWS), CLASSES), CLASSES, [2, 3])
    assert (e["dense"] == e["pred"].isin(["C", "D"])).all()  # the flag follows the reported class
    assert "dense" not in add_dense(aggregate_exam(_frame(ROWS), CLASSES), CLASSES, None)


def test_old_density_run_reports_dense_as_before(tmp_path):
    """A run stored before ``Task.dense_classes`` (its checkpoint's task has no such field) still gets the
    C+D rule in Predictor (images, breasts, exams) and in evaluate."""
    import torch
    from PIL import Image

    from _run_fixtures import old_run
    from mammolens.data.synthetic import render_breast
    from mammolens.inference import Predictor
    from mammolens.models.run import load_run
    from mammolens.tasks import dense_classes_of
    from mammolens.transforms.quality import QualityCfg

    run_dir = old_run("contrastive", tmp_path / "run")
    assert "dense_classes" not in torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)["task"]
    assert dense_classes_of(load_run(run_dir).task) == ("C", "D")  # what evaluate_run passes
    p = Predictor.from_run(run_dir, device="cpu", workers=0, quality=QualityCfg(ood=False))
    (tmp_path / "imgs").mkdir()
    for i, (lat, view) in enumerate([("L", "CC"), ("L", "MLO"), ("R", "CC")]):
        img = render_breast(np.random.default_rng(i), (128, 104), lat, view, 0.4)[0]
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(tmp_path / "imgs" / f"x_{lat}_{view}.png")
    res = p.predict(tmp_path / "imgs")
    assert len(res.images) == 3 and res.images["assessable"].all() and len(res.exams) == 3
    for df in (res.images, res.breasts, res.exams):
        assert (df["dense"] == (df["prob_C"] + df["prob_D"] >= 0.5)).all()


def test_old_import_path_still_works():
    from mammolens.evaluation import aggregate_exam as from_package
    from mammolens.evaluation.aggregate import aggregate_breast as old_breast
    from mammolens.pipeline.aggregate import aggregate_breast as new_breast

    assert old_breast is new_breast and from_package is aggregate_exam
