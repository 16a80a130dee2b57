"""Tests for mammolens.workflows (predict_to_dir, evaluate_run, explain_run) on a tiny trained run."""

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from _app_fixtures import app_env, zeroshot_run  # noqa: F401 — session fixtures
from mammolens.privacy import pseudonym
from mammolens.workflows import evaluate_run, explain_run, predict_to_dir

CLASSES = ["A", "B", "C", "D"]


def _no_ids(text: str, df: pd.DataFrame) -> None:
    assert "SYN" not in text
    for v in set(df["patient_id"]) | set(df["study_id"]):
        assert v not in text


# ----------------------------------------------------------------------------------- predict_to_dir
@pytest.fixture(scope="module")
def predicted(app_env, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("pred") / "out"
    bad = tmp_path_factory.mktemp("bad")
    (bad / "x.dcm").write_bytes(b"\x00not a dicom" * 20)
    res = predict_to_dir(app_env.run, [*app_env.study_dirs()[:2], bad / "x.dcm"], out, workers=0, progress=False)
    return res, out


def test_predict_to_dir_counts_and_tables(predicted, app_env):  # noqa: F811
    res, out = predicted
    assert (res["n_images"], res["n_breasts"], res["n_exams"], res["n_failed"], res["n_sr"]) == (8, 4, 2, 1, 2)
    images, exams = pd.read_csv(out / "images.csv"), pd.read_csv(out / "exams.csv")
    breasts, errors = pd.read_csv(out / "breasts.csv"), pd.read_csv(out / "errors.csv")
    assert len(images) == 8 and len(breasts) == 4 and len(exams) == 2
    np.testing.assert_allclose(exams[[f"prob_{c}" for c in CLASSES]].sum(axis=1), 1.0, atol=1e-5)
    assert list(errors.columns) == ["file", "reason"] and errors["file"].str.endswith("x.dcm").all()
    payload = json.loads((out / "results.json").read_text())
    assert payload["classes"] == CLASSES and len(payload["images"]) == 8 and len(payload["errors"]) == 1
    assert {e["study_id"] for e in payload["exams"]} == set(exams["study_id"])


def test_predict_to_dir_results_json_names_the_model(predicted, app_env):  # noqa: F811
    _, out = predicted
    model = json.loads((out / "results.json").read_text())["model"]
    # the model that made the numbers, not only the folder they were trained into
    assert model == {"name": "tiny-clip", "task": "density", "method": "contrastive", "run": app_env.run.name}


def test_predict_to_dir_writes_no_identifiers(predicted, app_env):  # noqa: F811
    _, out = predicted
    for name in ("images.csv", "breasts.csv", "exams.csv", "errors.csv", "results.json"):
        _no_ids((out / name).read_text(), app_env.df)
    assert not any("SYN" in p.name for p in (out / "overlays").iterdir())


def test_predict_to_dir_overlays_and_dicom(predicted, app_env):  # noqa: F811
    import pydicom

    _, out = predicted
    pngs = sorted((out / "overlays").glob("*.png"))
    h0, w0 = _orig_shape(app_env.study_files(0)[0])  # the cohort's images are all one size
    assert len(pngs) == 8 and all(Image.open(p).height == h0 and Image.open(p).width > w0 for p in pngs)
    exams = pd.read_csv(out / "exams.csv")
    src_uids = set(app_env.df["study_id"])
    for sid in exams["study_id"]:
        sr = pydicom.dcmread(out / "dicom" / sid / "density_sr.dcm")
        assert sr.Modality == "SR" and sr.StudyInstanceUID in src_uids
        scs = sorted((out / "dicom" / sid).glob("overlay_*.dcm"))
        assert len(scs) == 4
        sc = pydicom.dcmread(scs[0])
        assert sc.StudyInstanceUID == sr.StudyInstanceUID and sc.pixel_array.shape[0] == h0
        assert sc.pixel_array.shape[1:] == (Image.open(pngs[0]).width, 3)
    # the SR is in the source study of its exam
    src = pydicom.dcmread(app_env.study_files(0)[0], stop_before_pixels=True)
    from mammolens.inference import study_key

    sr0 = pydicom.dcmread(out / "dicom" / study_key(src.StudyInstanceUID, "") / "density_sr.dcm")
    assert sr0.StudyInstanceUID == src.StudyInstanceUID and sr0.PatientID == src.PatientID


def test_predict_to_dir_dicom_outputs_pass_the_validator(predicted, app_env, dciodvfy):  # noqa: F811
    """Every SR and overlay written for the synthetic cohort (four vendors, DBT among the sources): no
    dciodvfy error; warnings only for the declared private code and the source's missing Study ID."""
    _, out = predicted
    files = sorted((out / "dicom").glob("*/*.dcm"))
    assert files
    findings = {f.name: [ln for ln in dciodvfy(f) if "99MMLNS" not in ln and "Study ID" not in ln] for f in files}
    assert not any(findings.values()), {k: v for k, v in findings.items() if v}
    assert (app_env.df["modality"] == "DBT").any()  # DBT sources: laterality only in their functional groups


def test_predict_to_dir_include_ids_and_no_extras(app_env, tmp_path):  # noqa: F811
    res = predict_to_dir(app_env.run, [app_env.study_dirs()[0]], tmp_path, overlays=False, dicom=False,
                         include_ids=True, workers=0, progress=False)
    assert res["n_sr"] == 0 and res["n_failed"] == 0
    images = pd.read_csv(tmp_path / "images.csv")
    assert set(images["patient_id"]) == {app_env.df["patient_id"].iloc[0]}
    assert not (tmp_path / "overlays").exists() and not (tmp_path / "dicom").exists()


def _orig_shape(path) -> tuple[int, int]:
    from mammolens.io import read_image

    return read_image(path).pixels.shape


# ------------------------------------------------------------------------------------- evaluate_run
@pytest.fixture(scope="module")
def evaluated(app_env, zeroshot_run, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("eval")
    res = evaluate_run(app_env.run, app_env.manifest, out=out, compare=zeroshot_run, n_boot=50,
                       gallery_per_class=1, workers=0, device="cpu", progress=False)
    return res, out


def test_evaluate_run_outputs(evaluated, app_env):  # noqa: F811
    res, out = evaluated
    assert res["n_images"] == 48 and res["out_dir"] == str(out)
    assert {p.name for p in out.iterdir()} >= {"predictions.parquet", "metrics.json", "report.html"}
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_images"] == 48 and m["n_patients"] == 12 and m["n_boot"] == 50
    assert 0 <= m["metrics"]["accuracy"] <= 1 and 0 <= m["metrics"]["auc_macro"] <= 1
    assert res["metrics"]["accuracy"] == pytest.approx(m["metrics"]["accuracy"])
    ci = m["ci"]["accuracy"]
    assert ci["lo"] <= ci["estimate"] <= ci["hi"] and ci["estimate"] == pytest.approx(m["metrics"]["accuracy"])
    assert m["provenance"]["n_boot"] == 50 and m["provenance"]["preprocess"]["size"] == 64


def test_evaluate_run_says_simulated_and_reports_exams(evaluated, app_env):  # noqa: F811
    from mammolens.evaluation.report import SIMULATED_BANNER

    _, out = evaluated
    m = json.loads((out / "metrics.json").read_text())
    assert m["simulated"] is True  # the synthetic cohort's manifest marks its rows
    assert m["exam"]["n_exams"] == app_env.df["study_id"].nunique() == 12
    assert sum(b["count"] for b in m["reliability"]) == 48
    assert SIMULATED_BANNER in (out / "report.html").read_text()
    # 12 patients: subgroups of a few patients carry no statistic (null), never a 0-width interval
    sub = [r for r in m["subgroups"] if r["n_patients"] < 10]
    assert sub and all(r["accuracy"] is None and r["kappa_lo"] is None for r in sub)


def test_evaluate_run_predictions_pseudonymised(evaluated, app_env):  # noqa: F811
    _, out = evaluated
    preds = pd.read_parquet(out / "predictions.parquet")
    assert len(preds) == 48 and set(preds["pred"]) <= set(CLASSES)
    assert not set(preds["patient_id"]) & set(app_env.df["patient_id"])
    assert not set(preds["study_id"]) & set(app_env.df["study_id"])
    assert preds["patient_id"].nunique() == 12  # grouping survives the hashing
    # labels follow the manifest's density (rows matched through the keyed SOP UID pseudonym)
    truth = {pseudonym(u, "sop"): d for u, d in zip(app_env.df["sop_instance_uid"], app_env.df["density"])}
    assert (preds["label"] == [CLASSES.index(truth[u]) for u in preds["sop_instance_uid"]]).all()


def test_evaluate_run_writes_no_identifiers_or_absolute_paths(evaluated, app_env):  # noqa: F811
    _, out = evaluated
    preds = pd.read_parquet(out / "predictions.parquet")
    texts = {"predictions.parquet": preds.to_csv(index=False), "metrics.json": (out / "metrics.json").read_text(),
             "report.html": re.sub(r"base64,[A-Za-z0-9+/=]+", "", (out / "report.html").read_text()),  # no images
             "errors.csv": (out / "errors.csv").read_text(), "localization.csv": (out / "localization.csv").read_text()}
    uids = set(app_env.df["study_id"]) | set(app_env.df["sop_instance_uid"])
    for name, text in texts.items():
        assert "SYN" not in text, name  # the cohort's PatientIDs (and their folder names)
        assert not any(u in text for u in uids), name
        assert str(app_env.root) not in text and str(out) not in text and "/tmp/" not in text, name
    assert not any(p.is_absolute() for p in map(Path, preds["image_path"]))
    assert preds["image_path"].str.endswith(".dcm").all() and preds["image_path"].nunique() == 48
    # the cache built from the manifest (it holds the manifest) does not stay in the output folder
    assert {p.name for p in out.iterdir()} == {"predictions.parquet", "metrics.json", "report.html", "gradcam",
                                               "errors.csv", "localization.csv", "localization"}


def test_evaluate_run_localization_section_from_lesion_columns(evaluated, app_env):  # noqa: F811
    _, out = evaluated
    n_lesion_images = int(app_env.df["lesion_r"].notna().sum())
    assert n_lesion_images > 0  # the synthetic cohort's known lesions
    m = json.loads((out / "metrics.json").read_text())["localization"]
    assert m["n_images"] == n_lesion_images and set(m["summary"]) == {"text", "gradcam"}
    for kind in ("text", "gradcam"):
        pg = m["summary"][kind]["pointing_game"]
        assert pg["n"] == n_lesion_images and pg["lo"] <= pg["estimate"] <= pg["hi"] and 0 <= pg["estimate"] <= 1
    assert set(m["paired"]["text vs gradcam"]) == {"dice", "iou", "pointing_game", "hit"}
    per = pd.read_csv(out / "localization.csv")
    assert len(per) == 2 * n_lesion_images and per["dice"].between(0, 1).all()
    html = (out / "report.html").read_text()
    assert "id='localization'" in html and "Wilcoxon" in html
    assert len(list((out / "localization").glob("*_best_*.png"))) >= 1


def test_evaluate_run_include_ids_keeps_them(app_env, tmp_path):  # noqa: F811
    evaluate_run(app_env.run, app_env.cache, out=tmp_path, n_boot=10, gallery_per_class=0, workers=0,
                 device="cpu", progress=False, include_ids=True)
    preds = pd.read_parquet(tmp_path / "predictions.parquet")
    assert set(preds["patient_id"]) == set(app_env.df["patient_id"])
    assert set(preds["sop_instance_uid"]) == set(app_env.df["sop_instance_uid"])
    np.testing.assert_allclose(preds[[f"prob_{c}" for c in CLASSES]].sum(axis=1), 1.0, atol=1e-5)


def test_evaluate_run_report_has_roc_and_gallery(evaluated, app_env):  # noqa: F811
    _, out = evaluated
    html = (out / "report.html").read_text()
    assert "ROC" in html
    gallery = sorted((out / "gradcam").glob("*.png"))
    assert 1 <= len(gallery) <= 4
    h0, _ = _orig_shape(app_env.study_files(0)[0])
    embedded = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in re.findall(r"base64,([A-Za-z0-9+/=]+)", html)]
    for png in gallery:
        cls = png.stem.split("_")[0]
        assert f"GradCAM for class {cls}: p=" in html
        assert Image.open(png).height == h0  # drawn on the original image (re-read), not on the 64-px tile
        # embedded (the report may add a tEXt chunk to the PNG, so compare pixels, not bytes)
        assert any(np.array_equal(np.asarray(Image.open(png)), e) for e in embedded)


def test_evaluate_run_compare_delong(evaluated, zeroshot_run):  # noqa: F811
    _, out = evaluated
    m = json.loads((out / "metrics.json").read_text())
    cmp = m["compare"]
    assert cmp["n_matched"] == 48
    targets = [d["target"] for d in cmp["delong"]]
    assert targets[:4] == CLASSES
    for d in cmp["delong"]:
        assert 0 <= d["p"] <= 1 and d["diff"] == pytest.approx(d["auc_a"] - d["auc_b"])
    assert m["provenance"]["compare"].endswith(zeroshot_run.name)


def test_evaluate_run_reuses_matching_cache(app_env, tmp_path):  # noqa: F811
    res = evaluate_run(app_env.run, app_env.cache, out=tmp_path, n_boot=10, gallery_per_class=0, workers=0,
                       device="cpu", progress=False)
    assert res["n_images"] == 48 and not (tmp_path / "cache").exists()


def test_evaluate_run_rejects_mismatched_cache(app_env, tmp_path):  # noqa: F811
    from mammolens.data.cache import PreprocessCfg, build_cache

    other = build_cache(app_env.manifest, tmp_path / "c32", PreprocessCfg(size=32), workers=0, progress=False)
    with pytest.raises(ValueError, match="other preprocessing"):
        evaluate_run(app_env.run, other, out=tmp_path / "e", n_boot=10, workers=0, device="cpu", progress=False)
    with pytest.raises(FileNotFoundError, match="evaluation data not found"):
        evaluate_run(app_env.run, tmp_path / "missing.parquet", out=tmp_path / "e", n_boot=10, device="cpu",
                     progress=False)


# -------------------------------------------------------------------------------------- explain_run
def test_explain_run_png_per_image(app_env, tmp_path):  # noqa: F811
    files = app_env.study_files(0)[:3]
    recs = explain_run(app_env.run, files, tmp_path / "out", device="cpu")
    assert len(recs) == 3 and all("error" not in r for r in recs)
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pngs) == 3 and {r["overlay"] for r in recs} == {str(p) for p in pngs}
    h0, w0 = _orig_shape(files[0])
    assert all(Image.open(p).height == h0 and Image.open(p).width > w0 for p in pngs)
    assert [r["gradcam_class"] for r in recs] == [r["pred"] for r in recs]


def test_explain_run_class_and_errors(app_env, tmp_path):  # noqa: F811
    f = app_env.study_files(0)[0]
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"garbage")
    shutil.copy(f, tmp_path / f.name)
    recs = explain_run(app_env.run, [tmp_path / f.name, bad], tmp_path / "d", class_name="D", device="cpu")
    assert [("error" in r) for r in recs] == [False, True] and recs[1]["file"] == "bad.dcm"
    default = explain_run(app_env.run, [tmp_path / f.name], tmp_path / "p", device="cpu")
    a = np.asarray(Image.open(recs[0]["overlay"]), dtype=float)
    b = np.asarray(Image.open(default[0]["overlay"]), dtype=float)
    assert a.shape == b.shape
    if default[0]["pred"] != "D":  # another class, another heat map
        assert np.abs(a - b).mean() > 0
    with pytest.raises(ValueError, match="not one of this run's classes"):
        explain_run(app_env.run, [bad], tmp_path / "z", class_name="Z", device="cpu")


def test_predict_to_dir_sr_skips_not_assessable_image(app_env, tmp_path):  # noqa: F811
    """A constant image in a study: reported not assessable, absent from the SR; the others are referenced."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    study = tmp_path / "study"
    shutil.copytree(app_env.study_dirs()[0], study)
    src = next(p for p in sorted(study.iterdir())
               if pydicom.dcmread(p, stop_before_pixels=True).get("NumberOfFrames", 1) in (1, "1"))
    ds = pydicom.dcmread(src)
    arr = ds.pixel_array
    ds.PixelData = np.full_like(arr, int(arr.max()) // 2).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(study / "flat.dcm", enforce_file_format=True)
    good = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in study.iterdir() if p.name != "flat.dcm"}
    res = predict_to_dir(app_env.run, [study], tmp_path / "out", overlays=False, workers=0, progress=False)
    assert res["n_sr"] == 1 and res["n_not_assessable"] == 1 and res["n_images"] == 5
    images = pd.read_csv(tmp_path / "out" / "images.csv")
    flat = images[images["file"] == "flat.dcm"].iloc[0]
    assert not flat["assessable"] and "constant image" in flat["quality_reason"] and pd.isna(flat["pred"])
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    row = next(r for r in payload["images"] if r["file"] == "flat.dcm")
    assert row["prob_A"] is None and row["pred"] is None and row["assessable"] is False
    (sr_path,) = (tmp_path / "out" / "dicom").glob("*/density_sr.dcm")
    refs = {e.value for e in pydicom.dcmread(sr_path).iterall() if e.keyword == "ReferencedSOPInstanceUID"}
    assert ds.SOPInstanceUID not in refs and good <= refs


# ------------------------------------------------------------------------------------------ configs
def test_every_config_loads_and_tiny_cpu_uses_the_demo_cache():
    import inspect

    from mammolens.train.config import load_cfg
    from mammolens.workflows import run_demo

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 3
    cfgs = {p.stem: load_cfg(p) for p in configs}
    demo = inspect.signature(run_demo).parameters
    tiny = cfgs["tiny_cpu"]
    assert Path(tiny.data.cache) == Path(demo["out"].default) / "cache"  # where run_demo builds it
    assert tiny.image_size == demo["size"].default and tiny.model == "tiny-clip"


# ------------------------------------------------------------------------ zero-shot findings, retrieval
def test_evaluate_zeroshot_abnormality_with_retrieval(app_env, tmp_path):  # noqa: F811
    """A ``method: zeroshot`` run of the ``abnormality`` finding task evaluates like any task, and the
    evaluation adds retrieval metrics (finding labels; reports when the manifest has them)."""
    from mammolens.evaluation.retrieval import retrieval_metrics, same_label
    from mammolens.train.config import TrainCfg
    from mammolens.train.loop import train

    run = train(TrainCfg(data={"cache": str(app_env.cache), "val_frac": 0.25}, task="abnormality",
                         model="tiny-clip", image_size=64, method="zeroshot", batch_size=16, precision="fp32",
                         augment=False, workers=0, out_dir=str(tmp_path / "zs")))
    df = app_env.df.copy()
    df["image_path"] = [str(app_env.cohort / p) for p in df["image_path"]]
    df["report"] = [f"secret-report {p}: {'no finding' if p == 'normal' else 'a mass'}" for p in df["pathology"]]
    manifest = tmp_path / "with_reports.parquet"
    df.to_parquet(manifest, index=False)
    res = evaluate_run(run, manifest, out=tmp_path / "eval", n_boot=10, gallery_per_class=0, workers=0,
                       device="cpu", progress=False)
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["provenance"]["method"] == "zeroshot" and 0 <= res["metrics"]["auc_macro"] <= 1
    ret = m["retrieval"]
    assert set(ret) == {"image_to_text", "text_to_image", "image_to_image", "image_to_report", "report_to_image"}
    n_abnormal = int((df["pathology"] != "normal").sum())
    assert ret["image_to_image"]["n_queries"] == 48 and ret["text_to_image"]["n_queries"] == 2
    assert ret["image_to_text"]["recall@5"] == 1.0  # two classes: the right one is always in the top 5
    assert ret["report_to_image"]["n_queries"] == df["study_id"].nunique()
    for direction in ret.values():
        assert 0 <= direction["mAP"] <= 1 and direction["median_rank"] >= 1
    assert 0 < n_abnormal < 48
    # the image→image numbers are those of the pure function on the run's own embeddings
    from mammolens.data.cache import open_cache
    from mammolens.models.run import load_run
    from mammolens.search import embed_cache

    preds = pd.read_parquet(tmp_path / "eval" / "predictions.parquet")
    emb = embed_cache(load_run(run).model, open_cache(app_env.cache), preds["cache_row"].to_numpy())
    want = retrieval_metrics(same_label(preds["label"], preds["label"]), emb @ emb.T, ignore=np.eye(48, dtype=bool))
    assert ret["image_to_image"]["mAP"] == pytest.approx(want["mAP"], abs=1e-4)
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "id='retrieval'" in html and "image to report" in html
    for name in ("metrics.json", "report.html"):
        assert "secret-report" not in (tmp_path / "eval" / name).read_text()
    assert "report" not in preds.columns
