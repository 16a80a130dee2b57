"""Issue 21: outputs take their words from the task, never contradict themselves, and say loudly when a number
cannot be believed (training overlap, one class for everything, random weights, outside the training distribution).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from _app_fixtures import _CACHE, _train_cfg, app_env, zeroshot_run  # noqa: F401 — session fixtures
from mammolens.cli import app
from mammolens.tasks import get_task

runner = CliRunner()
DENSITY, MIAS = get_task("density"), get_task("mias")
TISSUE = {"name": "tissue3", "label_column": "density", "class_names": ["F", "G", "D"],
          "class_values": [["A"], ["B"], ["C", "D"]], "descriptions": ["fatty", "fatty-glandular", "dense-glandular"],
          "description": "MIAS background tissue: fatty, fatty-glandular, dense-glandular", "dense_classes": []}


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tissue_run(app_env):  # noqa: F811
    """A run of an F/G/D task without a dense rule (MIAS-like), 1 epoch on the shared cache."""
    if "tissue" not in _CACHE:
        from mammolens.train.loop import train

        _CACHE["tissue"] = Path(train(_train_cfg(app_env.cache, app_env.root / "run_tissue", task=TISSUE, epochs=1)))
    return _CACHE["tissue"]


# ------------------------------------------------------------------------------ one dense rule, task words
@pytest.mark.parametrize("probs, pred, dense", [
    ((0.0, 0.45, 0.30, 0.25), "B", False),  # P(C)+P(D) = 0.55, but B is reported: not dense (was "dense")
    ((0.30, 0.25, 0.45, 0.0), "C", True),  # P(C)+P(D) = 0.45, but C is reported: dense (was "not dense")
    ((0.0, 0.5, 0.5, 0.0), "B", False),  # a tie: the first class wins (argmax), the flag follows it
    ((0.1, 0.1, 0.1, 0.7), "D", True),
])
def test_dense_follows_the_reported_class_on_every_table(probs, pred, dense):
    from mammolens.pipeline.aggregate import add_dense, aggregate_exam, dense_indices

    assert DENSITY.dense_flag(pred) is dense and MIAS.dense_flag("D") is None and MIAS.dense_flag(None) is None
    df = pd.DataFrame([dict(zip([f"prob_{c}" for c in "ABCD"], probs), study_id="s", laterality="L")])
    df["pred"] = [c for c in "ABCD"][int(np.argmax(probs))]
    assert df["pred"].iloc[0] == pred
    exams = add_dense(aggregate_exam(df, list("ABCD")), list("ABCD"), dense_indices(list("ABCD"), ("C", "D")))
    assert exams["pred"].iloc[0] == pred and bool(exams["dense"].iloc[0]) is dense


def test_task_wording_has_no_dense_words_without_a_dense_rule():
    assert DENSITY.dense_words() == ("Dense (C/D)", "Not dense (A/B)")
    assert get_task("dense").dense_words() == ("Dense (dense)", "Not dense (non-dense)")
    w = MIAS.wording()
    assert w["dense_label"] is None and w["dense_classes"] == [] and w["descriptions"]["D"] == "dense-glandular"
    assert "BI-RADS" not in json.dumps(w) and MIAS.describe("D") == "dense-glandular" and MIAS.describe("X") == ""


def _sr_items(ds):
    out = []
    for it in ds.ContentSequence:
        out.append(it)
        out.extend(_sr_items(it) if "ContentSequence" in it else [])
    return out


@pytest.fixture
def exam(app_env):  # noqa: F811
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in app_env.study_files(0)]


def test_sr_dense_flag_follows_pred_and_refuses_a_contradiction(tmp_path, exam):
    pytest.importorskip("highdicom")
    from mammolens.io.dicom_out import write_density_sr

    res = {"pred": "B", "probs": {"A": 0.0, "B": 0.45, "C": 0.3, "D": 0.25}}  # P(C)+P(D) = 0.55
    sr = pydicom.dcmread(write_density_sr(exam, res, tmp_path / "a.dcm"))
    flags = [it.ConceptCodeSequence[0].CodeMeaning for it in _sr_items(sr)
             if it.ValueType == "CODE" and it.ConceptNameCodeSequence[0].CodeValue == "dense"]
    assert flags == ["No"]
    with pytest.raises(ValueError, match="dense must follow pred"):
        write_density_sr(exam, {**res, "dense": True}, tmp_path / "b.dcm")


def test_sr_of_a_mias_task_uses_its_own_words_and_no_dense_flag(tmp_path, exam):
    pytest.importorskip("highdicom")
    from mammolens.io.dicom_out import write_density_sr

    res = {"pred": "D", "probs": {"F": 0.1, "G": 0.2, "D": 0.7}, "task": MIAS,
           "breasts": [{"laterality": "L", "pred": "D", "probs": {"F": 0.1, "G": 0.2, "D": 0.7}}]}
    sr = pydicom.dcmread(write_density_sr(exam, res, tmp_path / "m.dcm"))
    meanings = {it.ConceptCodeSequence[0].CodeMeaning for it in _sr_items(sr) if it.ValueType == "CODE"}
    assert "dense-glandular" in meanings and "Extremely dense" not in meanings
    assert not any(it.ConceptNameCodeSequence[0].CodeValue == "dense" for it in _sr_items(sr) if it.ValueType == "CODE")
    assert sr.SeriesDescription == "mammolens mias"


def test_web_response_takes_descriptions_and_dense_rule_from_the_task():
    pytest.importorskip("fastapi")
    from mammolens.serve.app import _to_response

    raw = {"classes": ["F", "G", "D"], "task": MIAS.wording(), "random_weights": None,
           "images": [{"file": "/x/a.png", "probs": {"F": 0.1, "G": 0.2, "D": 0.7}, "pred": "D", "dense": None,
                       "assessable": True, "ood": False}],
           "exams": [{"study": "S", "probs": {"F": 0.1, "G": 0.2, "D": 0.7}, "pred": "D", "dense": None}]}
    out = _to_response(raw)
    assert out["exams"][0]["description"] == "dense-glandular" and out["exams"][0]["dense"] is None
    assert out["task"]["dense_label"] is None and out["task"]["title"].startswith("MIAS background tissue")
    assert "xtremely" not in json.dumps(out) and "BI-RADS" not in json.dumps(out)


# ------------------------------------------------------------------------------------- a run without dense
def test_predict_on_a_task_without_dense_rule_writes_its_words(tissue_run, app_env, tmp_path):  # noqa: F811
    out = tmp_path / "p"
    r = _invoke("predict", tissue_run, app_env.study_dirs()[0], "--out", out, "--workers", 0, "--device", "cpu",
                "--no-overlays")
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["task"]["title"].startswith("MIAS background tissue") and res["task"]["dense_label"] is None
    assert res["random_weights"] is None and res["outside_training_distribution"] in (True, False)
    for name in ("images.csv", "breasts.csv", "exams.csv"):
        assert "dense" not in pd.read_csv(out / name).columns
    sr = pydicom.dcmread(next((out / "dicom").glob("*/density_sr.dcm")))
    meanings = {it.ConceptCodeSequence[0].CodeMeaning for it in _sr_items(sr) if it.ValueType == "CODE"}
    assert meanings & {"fatty", "fatty-glandular", "dense-glandular"} and not meanings & {"Extremely dense",
                                                                                         "Almost entirely fat"}
    assert "task=tissue3" in str(sr.ContentSequence[5].TextValue)


# ------------------------------------------------------------------------------------- loud warnings
def _mixed_manifest(app_env, tmp_path) -> Path:  # noqa: F811
    """The run's own cohort (trained on) + 2 patients of another cohort (same IDs SYN0001.., other studies)."""
    from mammolens.data.synthetic import make_cohort

    ext = make_cohort(tmp_path / "ext", n_patients=2, seed=1000, image_size=(128, 104), sites=("external-site",))
    def absolute(df, root):  # image and mask paths, so the mixed manifest can live anywhere
        df = df.assign(image_path=[str(root / p) for p in df["image_path"]])
        if "lesion_mask" in df.columns:
            df["lesion_mask"] = [str(root / p) if p else "" for p in df["lesion_mask"]]
        return df

    own, ext = absolute(app_env.df, app_env.cohort), absolute(ext, tmp_path / "ext")
    path = tmp_path / "mixed.parquet"
    pd.concat([own, ext], ignore_index=True).to_parquet(path)
    return path


def test_evaluate_on_training_patients_says_so_and_exclude_train_drops_them(app_env, tmp_path):  # noqa: F811
    data = _mixed_manifest(app_env, tmp_path)
    n_own = len(app_env.df)
    r = _invoke("evaluate", app_env.run, "--data", data, "--out", tmp_path / "e1", "--n-boot", 10, "--gallery", 0,
                "--workers", 0, "--device", "cpu")
    assert r.exit_code == 0, r.output
    line = f"WARNING: {n_own} of {n_own + 8} images (12 patient(s)) are from this run's training or validation set"
    assert line in r.output and "--exclude-train" in r.output
    m = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    assert [w["count"] for w in m["warnings"] if w["id"] == "train-overlap"] == [n_own]
    assert "id='train-overlap'" in (tmp_path / "e1" / "report.html").read_text()

    r = _invoke("evaluate", app_env.run, "--data", data, "--out", tmp_path / "e2", "--n-boot", 10, "--gallery", 0,
                "--workers", 0, "--device", "cpu", "--exclude-train")
    assert r.exit_code == 0, r.output
    assert f"note: {n_own} image(s) of 12 patient(s) in this run's training or validation set were excluded" in r.output
    m = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert m["metrics"]["n"] == 8 and m["warnings"][0]["level"] == "note"
    assert not (tmp_path / "e2" / "report.html").read_text().count("class='banner warning' id='train-overlap'")


def test_run_folder_split_json_holds_pseudonyms_only(app_env):  # noqa: F811
    text = (app_env.run / "split.json").read_text()
    split = json.loads(text)
    assert len(split["train"]) + len(split["val"]) == len(app_env.df) and "SYN" not in text
    assert all(k.startswith("exam-") for k in split["train"])


def test_zeroshot_on_random_weights_is_flagged_everywhere(zeroshot_run, app_env, tmp_path):  # noqa: F811
    from mammolens.inference import Predictor
    from mammolens.workflows import evaluate_run

    summary = json.loads((zeroshot_run / "summary.json").read_text())
    assert "random weights" in summary["lineage"]["random_weights"]
    p = Predictor.from_run(zeroshot_run, device="cpu", workers=0)
    assert "random weights" in p.random_weights
    assert "random weights" in p.predict_files(app_env.study_files(0)[:1])["random_weights"]
    ev = evaluate_run(zeroshot_run, app_env.manifest, out=tmp_path / "ev", n_boot=5, gallery_per_class=0, workers=0,
                      device="cpu", progress=False)
    assert any(w["id"] == "random-weights" for w in ev["warnings"])
    assert "id='random-weights'" in (tmp_path / "ev" / "report.html").read_text()
    # a trained tiny-clip (random init by design) is not flagged
    assert Predictor.from_run(app_env.run, device="cpu", workers=0).random_weights is None


def test_registered_tower_without_its_weights_warns_at_build_time():
    from mammolens.models import create_model
    from mammolens.models.factory import random_weights_reason

    assert random_weights_reason("tiny-clip", None, "contrastive") is None
    assert random_weights_reason("biomedclip", "hf-hub:org/repo") is None
    assert "zeroshot" in random_weights_reason("tiny-clip", None, "zeroshot")
    with pytest.warns(UserWarning, match="random weights: biomedclip was built without its pretrained weights"):
        create_model("biomedclip", image_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_model("tiny-clip", image_size=32)  # random by design: no warning


def test_set_outside_the_training_distribution_is_reported(app_env):  # noqa: F811
    from mammolens.inference import Predictor
    from mammolens.models.ood import load_ood

    p = Predictor.from_run(app_env.run, device="cpu", workers=0)
    assert p.ood is not None and p.ood.set_threshold is not None
    own = p.predict(app_env.study_dirs()[0])
    assert not own.outside  # its own kind of image
    p.ood.info["set_threshold"] = 0.0  # every set is "far" now
    out = p.predict_files(app_env.study_files(0))
    assert out["outside_training_distribution"] and all(i["ood"] for i in out["images"])
    assert any("outside the training distribution" in w for w in out["warnings"])
    assert load_ood(app_env.run).set_threshold > 0


def test_explain_names_the_sidecar_only_because_it_takes_one(app_env, tmp_path, caplog):  # noqa: F811
    """The hint names an option of the command that prints it: explain has --sidecar (cli/explain.py)."""
    from typer.testing import CliRunner

    from mammolens.cli import app
    from mammolens.workflows import explain_run

    assert "--sidecar" in CliRunner().invoke(app, ["explain", "--help"], env={"COLUMNS": "200"}).output
    png = tmp_path / "x.png"
    png.write_bytes(app_env.mammogram_png(0))
    with caplog.at_level("WARNING"):
        explain_run(app_env.run, [png], tmp_path / "out", device="cpu")
    assert "without study information" in caplog.text
