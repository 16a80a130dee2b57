"""Tests for mammolens.inference (Predictor, find_images, PredictionResult) on a tiny trained run."""

import hashlib
import io
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from _app_fixtures import app_env  # noqa: F401 — session fixture
from mammolens.inference import PredictionResult, Predictor, find_images, study_key
from mammolens.privacy import pseudonym

CLASSES = ["A", "B", "C", "D"]
PROBS = [f"prob_{c}" for c in CLASSES]


@pytest.fixture(scope="module")
def predictor(app_env):  # noqa: F811
    return Predictor.from_run(app_env.run, device="cpu", workers=0, batch_size=8)


@pytest.fixture(scope="module")
def png_predictor(predictor):
    """The run without its out-of-distribution model: PNGs drawn by ``render_breast`` (not through the
    cohort's DICOM pipeline) lie outside the training distribution, and these tests are about other things."""
    return Predictor(predictor.model, predictor.task, predictor.preprocess, device="cpu", workers=0, batch_size=8)


@pytest.fixture(scope="module")
def study_result(predictor, app_env):  # noqa: F811
    return predictor.predict(app_env.study_dirs()[0])


def _breast(shape=(128, 104), seed=0) -> np.ndarray:
    """A simulated mammogram as uint8 (noise would fail the quality gate)."""
    from mammolens.data.synthetic import render_breast

    img = render_breast(np.random.default_rng(seed), shape, "L", "CC", 0.4)[0]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _write_pngs(folder, n=3, shape=(128, 104), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(_breast(shape, seed + i)).save(p)
        out.append(p)
    return out


# ------------------------------------------------------------------------------------- find_images
def test_find_images_walks_folders_filters_and_sorts(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.dcm", "a.PNG", "sub/c.tiff", "sub/IM0001", "notes.txt", ".hidden.dcm"):
        (tmp_path / name).write_bytes(b"x")
    got = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert got == ["a.PNG", "b.dcm", "sub/IM0001", "sub/c.tiff"]
    # an explicit file is taken whatever its suffix; several inputs are concatenated in order
    assert find_images([tmp_path / "notes.txt", tmp_path / "b.dcm"]) == [tmp_path / "notes.txt", tmp_path / "b.dcm"]


def test_find_images_missing_input_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        find_images(tmp_path / "nope")


def test_study_key_is_stable_keyed_pseudonym():
    k = study_key("1.2.3.4", "fallback")
    assert k == study_key("1.2.3.4", "other") and k.startswith("study-") and "1.2.3.4" not in k
    assert study_key("", "dirA") != study_key("", "dirB")
    # keyed (HMAC), not an unsalted hash anyone can recompute from a guessed UID
    assert k == pseudonym("1.2.3.4", "study") and k[6:16] != hashlib.sha1(b"1.2.3.4").hexdigest()[:10]


# ---------------------------------------------------------------------------------------- predict
def test_from_run_loads_classes_and_preprocessing(predictor):
    assert predictor.class_names == CLASSES
    assert predictor.preprocess.size == 64
    assert predictor.name == "run"


def test_from_run_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        Predictor.from_run(tmp_path / "missing")


def test_predict_study_frames_and_probabilities(study_result, app_env):  # noqa: F811
    res = study_result
    assert isinstance(res, PredictionResult) and res.class_names == CLASSES
    assert len(res.images) == 4 and res.n_failed == 0 and res.errors.empty
    assert sorted(res.images["file"]) == sorted(p.name for p in app_env.study_files(0))
    for df in (res.images, res.breasts, res.exams):
        np.testing.assert_allclose(df[PROBS].sum(axis=1), 1.0, atol=1e-5)
        assert ((df[PROBS] >= 0) & (df[PROBS] <= 1)).all().all()
        assert set(df["pred"]) <= set(CLASSES)
        # pred is the argmax of the row's probabilities
        assert (df["pred"] == [CLASSES[i] for i in df[PROBS].to_numpy().argmax(1)]).all()
        # dense = the reported class is C or D (Task.dense_flag)
        assert (df["dense"] == df["pred"].isin(["C", "D"])).all()
    assert sorted(res.breasts["laterality"]) == ["L", "R"]
    assert len(res.exams) == 1 and res.exams["n_images"].iloc[0] == 4
    # breast = mean of its images' probabilities
    for lat, grp in res.images.groupby("laterality"):
        b = res.breasts[res.breasts["laterality"] == lat].iloc[0]
        np.testing.assert_allclose(b[PROBS].to_numpy(float), grp[PROBS].mean().to_numpy(), atol=1e-6)


def test_predict_exam_is_densest_breast(predictor, app_env):  # noqa: F811
    # several studies at once: <= 2 breasts per study, exam = max breast class (A < B < C < D)
    res = predictor.predict(app_env.study_dirs()[:4])
    assert len(res.images) == 16 and res.exams["study_id"].nunique() == 4
    assert res.breasts.groupby("study_id").size().max() <= 2
    for sid, grp in res.breasts.groupby("study_id"):
        exam = res.exams[res.exams["study_id"] == sid].iloc[0]
        assert exam["pred"] == max(grp["pred"], key=CLASSES.index)


@pytest.mark.parametrize("n_views", [1, 3])
def test_predict_partial_study_still_aggregates(predictor, app_env, n_views):  # noqa: F811
    files = app_env.study_files(1)[:n_views]
    res = predictor.predict(files)
    assert len(res.images) == n_views and len(res.exams) == 1
    assert res.exams["n_images"].iloc[0] == n_views
    assert res.breasts["n_images"].sum() == n_views
    assert len(res.breasts) == res.images["laterality"].nunique() <= 2
    np.testing.assert_allclose(res.exams[PROBS].sum(axis=1), 1.0, atol=1e-5)


def test_predict_outputs_pseudonyms_not_ids(study_result, predictor, app_env):  # noqa: F811
    df, uid = app_env.df, app_env.df["study_id"].iloc[0]
    for frame in (study_result.images, study_result.breasts, study_result.exams):
        assert "patient_id" not in frame and "study_instance_uid" not in frame
        assert not frame.astype(str).apply(lambda s: s.str.contains("SYN")).any().any()
    sid = study_result.exams["study_id"].iloc[0]
    assert sid != uid and uid not in sid and sid == study_key(uid, "")
    # several studies: the file column holds the patient folders, pseudonymised unless include_ids
    two = predictor.predict(app_env.study_dirs()[:2])
    assert not two.images["file"].str.contains("SYN").any()
    assert two.images["file"].str.startswith("patient-").all()
    assert predictor.predict(app_env.study_dirs()[:2], include_ids=True).images["file"].str.startswith("SYN").all()
    with_ids = predictor.predict(app_env.study_dirs()[0], include_ids=True)
    assert set(with_ids.images["patient_id"]) == {df["patient_id"].iloc[0]}
    assert set(with_ids.images["study_instance_uid"]) == {uid}
    # the pseudonymous key is the same with or without identifiers
    assert set(with_ids.images["study_id"]) == {sid}


def test_predict_explain_gives_overlay_png_bytes(predictor, app_env):  # noqa: F811
    res = predictor.predict(app_env.study_files(0)[:2], explain=True)
    assert len(res.images) == 2
    from mammolens.explain.overlay import heatmap_panel_width
    from mammolens.io import read_image

    for png, f, row in zip(res.images["overlay_png"], app_env.study_files(0)[:2], res.images.itertuples()):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        im = Image.open(io.BytesIO(png))
        h, w = read_image(f).pixels.shape  # drawn on the original image, not on the 64-px model tile
        assert im.mode == "RGB" and im.size == (w + heatmap_panel_width(h, row.pred, getattr(row, f"prob_{row.pred}")), h)
    assert list(res.images["gradcam_class"]) == list(res.images["pred"])


def test_predict_explain_to_dir_and_class(predictor, app_env, tmp_path):  # noqa: F811
    res = predictor.predict(app_env.study_files(0)[:2], explain=True, overlay_dir=tmp_path, class_name="A")
    assert "overlay_png" not in res.images
    paths = list(map(str, res.images["overlay"]))
    assert len(paths) == 2 and all(p.endswith("_gradcam.png") for p in paths)
    assert set(res.images["gradcam_class"]) == {"A"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.split("/")[-1] for p in paths)
    with pytest.raises(ValueError, match="not one of this run's classes"):
        predictor.predict(app_env.study_files(0)[:1], explain=True, class_name="Z")


def test_predict_bad_files_listed_in_errors(predictor, app_env, tmp_path):  # noqa: F811
    study = tmp_path / "study"
    shutil.copytree(app_env.study_dirs()[0], study)
    (study / "x.dcm").write_bytes(b"\x00garbage" * 50)
    (study / "README").write_text("not an image")  # suffix-less files are tried (DICOM archives)
    (study / "notes.txt").write_text("skipped: not an image suffix")
    res = predictor.predict(study)
    assert len(res.images) == 4 and res.n_failed == 2
    assert sorted(res.errors["file"]) == ["README", "x.dcm"]
    assert res.errors["reason"].str.len().min() > 10
    assert "x.dcm" not in set(res.images["file"])


def test_predict_only_bad_files_gives_empty_frames(predictor, tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"garbage")
    res = predictor.predict(tmp_path)
    assert res.images.empty and res.breasts.empty and res.exams.empty
    assert list(res.errors["file"]) == ["x.dcm"]
    assert set(PROBS) <= set(res.images.columns)


def test_predict_png_without_metadata(png_predictor, tmp_path):
    files = _write_pngs(tmp_path / "pngs", n=2)
    res = png_predictor.predict(files)
    assert len(res.images) == 2 and res.n_failed == 0
    np.testing.assert_allclose(res.exams[PROBS].sum(axis=1), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------- gating + grouping
def test_predict_loose_pngs_are_one_exam_each_with_one_warning(predictor, tmp_path, caplog):
    files = _write_pngs(tmp_path / "pngs", n=3)
    with caplog.at_level("WARNING", logger="mammolens.inference"):
        res = predictor.predict(files)
    assert len(res.images) == 3 and len(res.exams) == 3 and res.images["study_id"].nunique() == 3
    assert res.warnings == ["3 image file(s) without study information: each treated as its own exam; "
                            "give --sidecar to group them"]
    assert sum("without study information" in r.getMessage() for r in caplog.records) == 1


def test_predict_file_names_give_laterality_and_view(predictor, tmp_path):
    folder = tmp_path / "web"
    folder.mkdir()
    for name in ("demo_L_CC.png", "demo_R_CC.png", "CLOSE.png"):
        shutil.copy(_write_pngs(tmp_path / "src", n=1)[0], folder / name)
    res = predictor.predict(folder)
    got = dict(zip(res.images["file"], zip(res.images["laterality"], res.images["view"])))
    assert got == {"demo_L_CC.png": ("L", "CC"), "demo_R_CC.png": ("R", "CC"), "CLOSE.png": ("", "")}
    assert sorted(res.breasts["laterality"]) == ["L", "R", "unknown"]
    web = predictor.predict_files(sorted(folder.iterdir())[1:])  # the two demo files, as the web page sends them
    assert sorted(b["laterality"] for b in web["breasts"]) == ["L", "R"]
    assert web["warnings"] and "2 image file(s)" in web["warnings"][0]


def test_predict_sidecar_groups_files_into_exams(predictor, tmp_path):
    files = _write_pngs(tmp_path / "pngs", n=4)
    (tmp_path / "pngs" / "sidecar.csv").write_text(
        "path,patient,study,laterality,view\n"
        "img0.png,P1,S1,L,CC\nimg1.png,P1,S1,R,CC\nimg2.png,P1,S1,left,mlo\n"
        f"{files[3]},P2,S1,R,MLO\n")  # absolute path; same study name, other patient: another exam
    res = predictor.predict(files, sidecar=tmp_path / "pngs" / "sidecar.csv")
    assert res.warnings == []
    assert list(res.images["laterality"]) == ["L", "R", "L", "R"]
    assert list(res.images["view"]) == ["CC", "CC", "MLO", "MLO"]
    assert len(res.exams) == 2 and sorted(res.exams["n_images"]) == [1, 3]
    assert len(res.breasts) == 3


@pytest.mark.parametrize("body, match", [
    ("path,patient,study,laterality,view\nimg0.png,P1,S1,X,CC\n", "row 1, column laterality: 'X'"),
    ("path,patient,study,laterality,view\nimg0.png,P1,S1,L,CC\nnope.png,P1,S1,L,CC\n",
     "row 2, column path: no such file"),
    ("path,patient,study,laterality,view\nimg0.png,P1,S1,L,TOP\n", "row 1, column view: 'TOP'"),
    ("file,patient\nimg0.png,P1\n", "columns must be path, patient, study, laterality, view"),
])
def test_predict_sidecar_errors_name_row_and_column(predictor, tmp_path, body, match):
    files = _write_pngs(tmp_path, n=1)
    (tmp_path / "sidecar.csv").write_text(body)
    with pytest.raises(ValueError, match=match):
        predictor.predict(files, sidecar=tmp_path / "sidecar.csv")


def test_predict_non_mammograms_get_no_density(predictor, app_env, tmp_path):  # noqa: F811
    from mammolens.data.synthetic import write_non_mammogram

    study = tmp_path / "study"
    shutil.copytree(app_env.study_dirs()[0], study)
    for kind in ("dx-abdomen", "cr-test-pattern", "mg-flatfield"):
        write_non_mammogram(study / f"{kind}.dcm", kind)
    res = predictor.predict(study)
    assert len(res.images) == 4 and not any(f.endswith(("abdomen.dcm", "pattern.dcm", "flatfield.dcm"))
                                            for f in res.images["file"])
    reasons = dict(zip(res.errors["file"], res.errors["reason"]))
    assert reasons == {
        "cr-test-pattern.dcm": "not a mammogram: quality-control image (SeriesDescription says TEST PATTERN)",
        "dx-abdomen.dcm": "not a mammogram: DX image of ABDOMEN",
        "mg-flatfield.dcm": "not a mammogram: quality-control image (ImageType says FLATFIELD)",
    }
    assert list(res.exams["n_images"]) == [4]


def test_predict_processing_copy_of_a_presented_view_counts_once(predictor, app_env, tmp_path):  # noqa: F811
    import pydicom
    from pydicom.uid import generate_uid

    study = tmp_path / "study"
    shutil.copytree(app_env.study_dirs()[0], study)
    src = sorted(study.iterdir())[0]
    ds = pydicom.dcmread(src)
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.save_as(src)
    ds.PresentationIntentType = "FOR PROCESSING"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(study / "zz_processing.dcm")
    res = predictor.predict(study)
    assert len(res.images) == 4 and "zz_processing.dcm" not in set(res.images["file"])
    assert list(res.errors["file"]) == ["zz_processing.dcm"]
    assert res.errors["reason"][0] == ("For Processing duplicate of a For Presentation image; not counted "
                                       f"({src.name})")
    assert list(res.exams["n_images"]) == [4]


def test_predict_array_any_size(predictor):
    rng = np.random.default_rng(0)
    probs = predictor.predict_array(rng.random((300, 200), dtype=np.float32))
    assert list(probs) == CLASSES
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(0 <= v <= 1 for v in probs.values())


def test_predict_array_matches_file_prediction(png_predictor, tmp_path):
    predictor = png_predictor
    # the same pixels through a PNG file and as an array give the same probabilities
    arr = _breast(seed=1)
    Image.fromarray(arr).save(tmp_path / "a.png")
    from_file = predictor.predict(tmp_path / "a.png").images.iloc[0]
    from_arr = predictor.predict_array(arr.astype(np.float32) / 255.0)
    np.testing.assert_allclose([from_file[f"prob_{c}"] for c in CLASSES], [from_arr[c] for c in CLASSES], atol=1e-4)


def test_precision_bf16_close_to_fp32_and_bad_values_rejected(app_env):  # noqa: F811
    import torch

    fp32 = Predictor.from_run(app_env.run, device="cpu", workers=0)
    bf16 = Predictor.from_run(app_env.run, device="cpu", workers=0, precision="bf16")
    x = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    a, b = fp32.predict_tensor(x), bf16.predict_tensor(x)
    assert bf16.precision == "bf16" and b.dtype == np.float32
    np.testing.assert_allclose(b.sum(1), 1.0, atol=1e-5)
    assert np.abs(a - b).max() < 0.05 and not np.array_equal(a, b)  # autocast really ran in bf16
    with pytest.raises(ValueError, match="precision must be one of"):
        Predictor.from_run(app_env.run, device="cpu", precision="int8")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Predictor.from_run(app_env.run, device="cpu", precision="fp16")


# -------------------------------------------------------------------------------------- streaming
def test_iter_batches_is_streaming(predictor, tmp_path, monkeypatch):
    import mammolens.inference as inf

    src = _write_pngs(tmp_path / "src", n=3, shape=(40, 30))
    paths = []
    for i in range(200):
        link = tmp_path / "many" / f"{i:03d}.png"
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(src[i % 3])
        paths.append(link)
    started = {"n": 0}
    real = inf._load_one

    def counting(path, cfg, *rest):
        started["n"] += 1
        return real(path, cfg, *rest)

    monkeypatch.setattr(inf, "_load_one", counting)
    p = Predictor(predictor.model, predictor.task, predictor.preprocess, device="cpu", batch_size=8, workers=0)
    window = max(2 * max(p.workers, 1), p.batch_size) + p.batch_size
    consumed, sizes, max_ahead = 0, [], 0
    for batch in p.iter_batches(paths):
        consumed += len(batch)
        sizes.append(len(batch))
        max_ahead = max(max_ahead, started["n"] - consumed)
        assert started["n"] <= consumed + window  # never more than the window loaded ahead
    assert consumed == 200 and started["n"] == 200
    assert max(sizes) <= 8 and sizes.count(8) == 25
    assert max_ahead <= window < 200
    # order is kept and nothing failed
    recs = [r for b in p.iter_batches(paths[:10]) for r in b]
    assert [r["path"] for r in recs] == [str(x) for x in paths[:10]] and all(r["error"] is None for r in recs)


def test_predict_process_pool_matches_in_process(predictor, app_env):  # noqa: F811
    files = app_env.study_files(0)
    a = predictor.predict(files).images
    pool = Predictor(predictor.model, predictor.task, predictor.preprocess, device="cpu", batch_size=3, workers=2)
    b = pool.predict(files).images
    assert list(a["file"]) == list(b["file"])
    np.testing.assert_allclose(a[PROBS].to_numpy(), b[PROBS].to_numpy(), atol=1e-5)


# ------------------------------------------------------------------------------------- quality gate
def _text_page_png(path, shape=(400, 320)):
    from PIL import ImageDraw

    img = Image.new("L", shape[::-1], 0)
    d = ImageDraw.Draw(img)
    for i in range(shape[0] // 20 - 1):
        d.text((10, 10 + 20 * i), f"TEST PAGE line {i}: lorem ipsum dolor sit amet", fill=255)
    img.save(path)
    return path


def test_predict_tiny_and_text_images_not_assessable(predictor, app_env, tmp_path):  # noqa: F811
    study = tmp_path / "study"
    shutil.copytree(app_env.study_dirs()[0], study)
    Image.fromarray(np.array([[40, 220]], np.uint8)).save(study / "tiny.png")  # the 1x2 image
    _text_page_png(study / "page.png")
    res = predictor.predict(study)
    img = res.images.set_index("file")
    assert len(res.images) == 6 and res.n_failed == 0
    for name, why in [("tiny.png", "image too small (1x2 px"), ("page.png", "")]:
        row = img.loc[name]
        assert not row["assessable"] and row["quality_reason"].startswith("not assessable: ")
        assert why in row["quality_reason"]
        assert row[PROBS].isna().all() and pd.isna(row["pred"]) and pd.isna(row["dense"])
    assert img["assessable"].sum() == 4 and (img.loc[img["assessable"].astype(bool), "quality_reason"] == "").all()
    # the bad images change nothing in the aggregation: same breasts and exam as the study alone
    alone = predictor.predict(app_env.study_dirs()[0])
    assert len(res.exams) == 1 and len(res.breasts) == len(alone.breasts)
    np.testing.assert_allclose(res.exams[PROBS].to_numpy(), alone.exams[PROBS].to_numpy(), atol=1e-6)


def test_predict_only_not_assessable_gives_empty_aggregates(predictor, tmp_path):
    Image.fromarray(np.array([[40, 220]], np.uint8)).save(tmp_path / "tiny.png")
    res = predictor.predict(tmp_path)
    assert list(res.images["assessable"]) == [False] and res.breasts.empty and res.exams.empty


def test_predict_files_reports_not_assessable_without_density(png_predictor, tmp_path):
    predictor = png_predictor
    import json

    Image.fromarray(np.array([[40, 220]], np.uint8)).save(tmp_path / "tiny.png")
    good = _write_pngs(tmp_path / "ok", n=1)[0]
    out = predictor.predict_files([tmp_path / "tiny.png", good])
    by = {i["file"]: i for i in out["images"]}
    assert by["tiny.png"]["assessable"] is False and by["tiny.png"]["probs"] is None
    assert by["tiny.png"]["pred"] is None and "too small" in by["tiny.png"]["quality_reason"]
    assert by["ok/img0.png"]["assessable"] is True and by["ok/img0.png"]["pred"] in CLASSES
    json.dumps({**out, "images": [{k: v for k, v in i.items() if k != "overlay_png"} for i in out["images"]]},
               allow_nan=False)  # valid JSON: no NaN anywhere


def test_run_has_ood_model_and_scores_images(predictor, app_env):  # noqa: F811
    import json

    summary = json.loads((app_env.run / "summary.json").read_text())
    assert (app_env.run / "ood.npz").is_file() and summary["ood"]["file"] == "ood.npz"
    assert predictor.ood is not None and predictor.ood.threshold == pytest.approx(summary["ood"]["threshold"])
    res = predictor.predict(app_env.study_dirs()[0])
    assert np.isfinite(res.images["ood_score"]).all() and (res.images["ood_score"] > 0).all()


def test_logits_and_embedding_match_forward(predictor):
    import torch

    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, emb = predictor.model.logits_and_embedding(x)
        torch.testing.assert_close(logits, predictor.model(x))
        torch.testing.assert_close(emb, predictor.model.encode_image(x))


def test_predict_out_of_distribution_not_assessable(app_env):  # noqa: F811
    from mammolens.models.ood import load_ood

    ood = load_ood(app_env.run)
    ood.threshold = 1e-6  # everything is far: every image must be reported, none predicted
    p = Predictor.from_run(app_env.run, device="cpu", workers=0)
    p.ood = ood
    res = p.predict(app_env.study_dirs()[0], explain=True)
    assert (~res.images["assessable"].astype(bool)).all() and res.exams.empty
    reason = r"outside the training distribution \(out-of-distribution score .* > threshold 1e-06\)"
    assert res.images["quality_reason"].str.contains(reason).all()
    assert res.images[PROBS].isna().all().all()


def test_run_without_ood_file_skips_the_check(app_env, tmp_path, caplog):  # noqa: F811
    old = tmp_path / "old_run"
    shutil.copytree(app_env.run, old)
    (old / "ood.npz").unlink()
    with caplog.at_level("INFO", logger="mammolens.inference"):
        p = Predictor.from_run(old, device="cpu", workers=0)
    assert p.ood is None and "has no ood.npz" in caplog.text
    res = p.predict(app_env.study_dirs()[0])
    assert res.images["assessable"].all() and res.images["ood_score"].isna().all()


def _faulty_load_one(path, cfg, *rest):  # module level: picklable for any process pool
    import mammolens.inference as inf
    from _faults import misbehave

    misbehave(path)
    return inf._REAL_LOAD_ONE(path, cfg, *rest)


@pytest.mark.timeout(120)
def test_predict_survives_hanging_crashing_and_panicking_files(png_predictor, tmp_path, monkeypatch):
    import mammolens.inference as inf
    from _faults import REASONS, copies

    predictor = png_predictor
    good = _write_pngs(tmp_path / "in", n=6)
    copies(good[0], tmp_path / "in", ".png")
    monkeypatch.setattr(inf, "_REAL_LOAD_ONE", inf._load_one, raising=False)
    monkeypatch.setattr(inf, "_load_one", _faulty_load_one)  # forked workers inherit the patch
    monkeypatch.setenv("MAMMOLENS_FILE_TIMEOUT", "3")
    p = Predictor(predictor.model, predictor.task, predictor.preprocess, device="cpu", batch_size=4, workers=2)
    res = p.predict(tmp_path / "in")
    assert sorted(res.images["file"]) == [f"img{i}.png" for i in range(6)]
    assert dict(zip(res.errors["file"], res.errors["reason"])) == {f"{k}.png": v for k, v in REASONS.items()}
    ref = predictor.predict(good)  # in-process, no faults
    np.testing.assert_allclose(res.images.sort_values("file")[PROBS].to_numpy(),
                               ref.images.sort_values("file")[PROBS].to_numpy(), atol=1e-5)


def test_predict_worker_parses_each_dicom_header_once(tmp_path, monkeypatch):
    """Issue 19: the source reference for the DICOM outputs comes with the read (io.dicom's meta), not from a
    second header parse of the same file in the worker."""
    import pydicom

    from mammolens import inference
    from mammolens.data.cache import PreprocessCfg
    from mammolens.data.synthetic import make_cohort
    from mammolens.transforms.quality import QualityCfg

    df = make_cohort(tmp_path, n_patients=1, seed=1, modalities=("DM",), image_size=(128, 104),
                     compress_fraction=0.0, processing_fraction=0.0)
    path = str(tmp_path / df["image_path"].iloc[0])
    calls = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    rec = inference._load_one(path, PreprocessCfg(size=32).to_dict(), QualityCfg(min_side=8).to_dict())
    assert rec["error"] is None and rec["pixels"] is not None
    assert len(calls) == 1, calls
    assert rec["dicom_ref"]["SOPInstanceUID"] == real(path, stop_before_pixels=True).SOPInstanceUID


def test_predict_reports_the_data_wait_fraction(predictor, app_env):  # noqa: F811
    predictor.predict(app_env.study_dirs()[0])
    t = predictor.last_timing
    assert t["total_s"] > 0 and 0.0 <= t["data_wait_s"] <= t["total_s"]
    assert t["data_wait_frac"] == pytest.approx(t["data_wait_s"] / t["total_s"])
