"""Tests for mammolens.inference (Predictor, find_images, PredictionResult) on a tiny trained run."""

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from _app_fixtures import app_env  # noqa: F401 — session fixture
from mammolens.inference import PredictionResult, Predictor, _mask_ids, find_images, study_key

CLASSES = ["A", "B", "C", "D"]
PROBS = [f"prob_{c}" for c in CLASSES]


@pytest.fixture(scope="module")
def predictor(app_env):  # noqa: F811
    return Predictor.from_run(app_env.run, device="cpu", workers=0, batch_size=8)


@pytest.fixture(scope="module")
def study_result(predictor, app_env):  # noqa: F811
    return predictor.predict(app_env.study_dirs()[0])


def _write_pngs(folder, n=3, shape=(80, 60), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(p)
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


def test_study_key_is_stable_pseudonym():
    k = study_key("1.2.3.4", "fallback")
    assert k == study_key("1.2.3.4", "other") and k.startswith("study-") and "1.2.3.4" not in k
    assert study_key("", "dirA") != study_key("", "dirB")


def test_mask_ids_pseudonymises_id_folders():
    meta = {"patient_id": "SYN0001", "study_instance_uid": "1.2.840.99"}
    out = _mask_ids("SYN0001/1.2.840.99/SYN0001_LCC.dcm", meta)
    assert "SYN0001" not in out and "1.2.840.99" not in out and out.endswith("_LCC.dcm")
    parts = out.split("/")
    assert parts[0].startswith("patient-") and parts[2] == parts[0] + "_LCC.dcm"
    assert parts[1] == study_key("1.2.840.99", "")
    # a short ID is only replaced as a whole folder name, never inside other names
    assert _mask_ids("7/study7/a.dcm", {"patient_id": "7"}).split("/")[1:] == ["study7", "a.dcm"]
    assert _mask_ids("x/a.dcm", {}) == "x/a.dcm"


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
        # dense = P(C) + P(D) >= 0.5
        assert (df["dense"] == (df["prob_C"] + df["prob_D"] >= 0.5)).all()
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
    for png in res.images["overlay_png"]:
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        im = Image.open(io.BytesIO(png))
        assert im.mode == "RGB" and im.size == (64, 64)


def test_predict_explain_to_dir_and_class(predictor, app_env, tmp_path):  # noqa: F811
    res = predictor.predict(app_env.study_files(0)[:2], explain=True, overlay_dir=tmp_path, class_name="A")
    assert "overlay_png" not in res.images
    paths = list(map(str, res.images["overlay"]))
    assert len(paths) == 2 and all(p.endswith("_gradcam.png") for p in paths)
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


def test_predict_png_without_metadata(predictor, tmp_path):
    files = _write_pngs(tmp_path / "pngs", n=2)
    res = predictor.predict(files)
    assert len(res.images) == 2 and res.n_failed == 0
    assert len(res.exams) == 1  # same folder → same fallback study key
    np.testing.assert_allclose(res.exams[PROBS].sum(axis=1), 1.0, atol=1e-5)


def test_predict_array_any_size(predictor):
    rng = np.random.default_rng(0)
    probs = predictor.predict_array(rng.random((300, 200), dtype=np.float32))
    assert list(probs) == CLASSES
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(0 <= v <= 1 for v in probs.values())


def test_predict_array_matches_file_prediction(predictor, tmp_path):
    # the same pixels through a PNG file and as an array give the same probabilities
    arr = (np.random.default_rng(1).random((90, 70)) * 255).astype(np.uint8)
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

    def counting(path, cfg):
        started["n"] += 1
        return real(path, cfg)

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


def _faulty_load_one(path, cfg):  # module level: picklable for any process pool
    import mammolens.inference as inf
    from _faults import misbehave

    misbehave(path)
    return inf._REAL_LOAD_ONE(path, cfg)


@pytest.mark.timeout(120)
def test_predict_survives_hanging_crashing_and_panicking_files(predictor, tmp_path, monkeypatch):
    import mammolens.inference as inf
    from _faults import REASONS, copies

    good = _write_pngs(tmp_path / "in", n=6, shape=(40, 30))
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
