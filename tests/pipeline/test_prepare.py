"""pipeline.prepare: one file / row / array → tile + geometry, and every surface goes through it."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from _app_fixtures import app_env  # noqa: F401 — session fixture
from mammolens.io import ImageReadError, MammoImage, read_image
from mammolens.pipeline.prepare import Prepared, parse_frame, prepare
from mammolens.transforms.breast import preprocess_image
from mammolens.transforms.config import PreprocessCfg
from mammolens.transforms.quality import QualityCfg

CFG = PreprocessCfg(size=32)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from mammolens.data.synthetic import make_cohort

    root = tmp_path_factory.mktemp("prep")
    df = make_cohort(root, n_patients=1, seed=3, modalities=("DM", "DBT"), studies_per_patient=2,
                     image_size=(128, 104), dbt_frames=4, compress_fraction=0.0,
                     processing_fraction=0.0)
    df["image_path"] = [str(root / p) for p in df["image_path"]]
    return df


def _breast_png(path, seed=0):
    from mammolens.data.synthetic import render_breast

    img = render_breast(np.random.default_rng(seed), (128, 104), "L", "CC", 0.4)[0]
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def test_prepare_synthetic_dicom_is_the_cache_recipe_with_geometry(cohort):
    path = cohort[cohort["modality"] == "DM"]["image_path"].iloc[0]
    p = prepare(path, CFG, QualityCfg(), display=40)
    img = read_image(path)
    tile, info = preprocess_image(img.pixels, CFG, laterality=img.meta["laterality"])
    assert p.ok and p.status == "ok" and p.reason == ""
    assert p.pixels.dtype == np.uint16 and p.pixels.shape == (32, 32)
    np.testing.assert_array_equal(p.pixels, tile)
    assert p.geometry == info and p.geometry["orig_shape"] == img.pixels.shape
    assert p.meta["laterality"] == img.meta["laterality"] and p.meta["modality"] == "DM"
    assert p.conversion == img.conversion and p.conversion  # what the reader recorded
    assert p.display.dtype == np.uint8 and max(p.display.shape) <= 40
    assert prepare(path, CFG).display is None  # no display copy unless asked


def test_prepare_raster_and_array_sources(tmp_path):
    png = _breast_png(tmp_path / "a.png")
    p = prepare(png, CFG, QualityCfg())
    assert p.ok and p.pixels.shape == (32, 32)
    assert set(p.meta) >= {"laterality", "view", "study_instance_uid"}
    arr = read_image(png).pixels
    q = prepare(arr, CFG, None, laterality="R")  # an array: no header, no gate
    np.testing.assert_array_equal(q.pixels, preprocess_image(arr, CFG, laterality="R")[0])
    assert q.conversion == {} and q.meta["laterality"] is None
    m = prepare(MammoImage(arr, {"laterality": "L"}), CFG)  # the header's laterality is used
    np.testing.assert_array_equal(m.pixels, preprocess_image(arr, CFG, laterality="L")[0])


def test_prepare_manifest_row_with_a_frame(cohort):
    dbt = cohort[cohort["modality"] == "DBT"].iloc[0]
    stack = read_image(dbt["image_path"], dbt="frames").pixels  # [F, H, W]
    want = preprocess_image(stack[2], CFG, laterality=dbt["laterality"])[0]
    series = dbt.copy()
    series["frame"] = 2  # a manifest row as a pd.Series
    for row in ({"image_path": dbt["image_path"], "frame": 2, "laterality": dbt["laterality"]}, series):
        p = prepare(row, CFG, QualityCfg())
        assert p.ok
        np.testing.assert_array_equal(p.pixels, want)
    rows = pd.DataFrame([{"image_path": dbt["image_path"], "frame": 2, "laterality": dbt["laterality"]}])
    np.testing.assert_array_equal(prepare(next(rows.itertuples()), CFG).pixels, want)  # an itertuples row
    with pytest.raises(ValueError, match="frame 9 out of range"):
        prepare(dbt["image_path"], CFG, frame=9, reader=lambda path, **kw: read_image(path, dbt="frames"))


def test_prepare_refused_and_not_assessable_are_records(tmp_path):
    from mammolens.data.synthetic import write_non_mammogram

    dx = write_non_mammogram(tmp_path / "dx.dcm", "dx-abdomen", size=(128, 104))
    p = prepare(dx, CFG, QualityCfg())
    assert p.status == "refused" and p.reason == "not a mammogram: DX image of ABDOMEN" and p.pixels is None
    assert not p.ok and p.geometry == {}
    flat = np.full((128, 104), 0.5, np.float32)
    q = prepare(flat, CFG, QualityCfg())
    assert q.status == "not_assessable" and q.reason.startswith("not assessable: constant image") and q.pixels is None
    assert prepare(flat, CFG, None).ok  # no quality gate asked for: preprocessed as before
    assert prepare(flat, CFG, QualityCfg(enabled=False)).ok


def test_prepare_unreadable_file_raises(tmp_path):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageReadError):
        prepare(bad, CFG, QualityCfg())
    with pytest.raises(FileNotFoundError):
        prepare(tmp_path / "missing.png", CFG)


def test_parse_frame_accepts_manifest_blanks():
    assert [parse_frame(v) for v in (None, float("nan"), pd.NA, "", " 3 ", 2.0, "1.0")] == [None] * 4 + [3, 2, 1]


def test_prepared_is_a_plain_record():
    p = Prepared("not_assessable", "not assessable: x")
    assert not p.ok and p.pixels is None and p.geometry == {} and p.conversion == {}


# --------------------------------------------------------------------------- every surface goes through it
def test_every_image_surface_goes_through_prepare(app_env, monkeypatch, tmp_path):  # noqa: F811
    """The cache builder, Predictor.predict / predict_array, the evaluate gallery, explain --text maps and the
    web page's predict route all call ``pipeline.prepare.prepare`` (workers=0: in this process)."""
    import mammolens.pipeline.prepare as prep_mod
    from mammolens import workflows
    from mammolens.data.cache import build_cache, open_cache
    from mammolens.inference import Predictor
    from mammolens.models.run import load_run

    calls: list[str] = []
    real = prep_mod.prepare

    def counting(source, *a, **kw):
        calls.append(type(source).__name__)
        return real(source, *a, **kw)

    monkeypatch.setattr(prep_mod, "prepare", counting)

    rows = app_env.df.iloc[:2].assign(image_path=[str(app_env.cohort / p) for p in app_env.df["image_path"][:2]])
    build_cache(rows, tmp_path / "c", PreprocessCfg(size=32), workers=0, progress=False)
    assert len(calls) == 2, "cache builder"

    pred = Predictor.from_run(app_env.run, device="cpu", workers=0)
    files = app_env.study_files(0)
    calls.clear()
    pred.predict(files)
    assert len(calls) == len(files), "Predictor.predict"

    calls.clear()
    pred.predict_array(read_image(files[0]).pixels)
    assert calls == ["ndarray"], "Predictor.predict_array"

    calls.clear()
    cache = open_cache(app_env.cache)
    row = next(cache.index.iloc[:1].itertuples())
    tile = cache.get(0)
    workflows._gallery_figure(row, tile, np.zeros_like(tile), cache.cfg, "A", 0.5)
    assert len(calls) == 1, "evaluate/explain gallery"

    calls.clear()
    run = load_run(app_env.run)
    display, maps, _ = workflows._image_maps(run.model.eval(), read_image(files[0]).pixels, pred.preprocess, "L",
                                             ["dense tissue"], "text", None, "cpu", 64)
    assert len(calls) == 1 and maps.shape[1:] == display.shape, "explain --text maps"

    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from mammolens.serve.app import create_app

    client = TestClient(create_app(pred), base_url="http://127.0.0.1:8000")
    calls.clear()
    r = client.post("/api/predict", files=[("files", (files[0].name, files[0].read_bytes(), "application/dicom"))])
    assert r.status_code == 200, r.text
    assert len(calls) == 1, "web page /api/predict"


def test_prepare_computes_one_breast_mask_for_the_gate_and_preprocessing(monkeypatch):
    """The quality gate measures preprocessing's working copy and mask (QUALITY_VERSION 2): one mask per image,
    and the tile is exactly what ``preprocess_image`` makes without the gate."""
    import numpy as np

    from mammolens.pipeline.prepare import prepare
    from mammolens.transforms import breast
    from mammolens.transforms.config import PreprocessCfg
    from mammolens.transforms.quality import QualityCfg

    rng = np.random.default_rng(0)
    img = np.zeros((1024, 832), np.float32)
    img[100:900, :500] = rng.random((800, 500), dtype=np.float32) * 0.5 + 0.3
    calls = []
    real = breast.breast_mask
    monkeypatch.setattr(breast, "breast_mask", lambda *a, **k: calls.append(1) or real(*a, **k))
    p = prepare(img, PreprocessCfg(size=128), QualityCfg())
    assert p.ok and len(calls) == 1
    monkeypatch.setattr(breast, "breast_mask", real)
    tile, _ = breast.preprocess_image(img, PreprocessCfg(size=128))
    assert np.array_equal(p.pixels, tile)


def test_prepare_reads_dicom_lazily_and_carries_the_source_reference(cohort, monkeypatch):
    """Issue 19: the default reader gives the stored values + value table; no full-resolution float32 image is
    made unless a display copy is asked for; the header's source reference comes back with the tile."""
    from mammolens.io import dicom as D
    from mammolens.io.dicom_out import read_source_reference

    path = cohort[cohort["modality"] == "DM"]["image_path"].iloc[0]
    made = []
    real = D.StoredImage.pixels.fget
    monkeypatch.setattr(D.StoredImage, "pixels", property(lambda self: made.append(1) or real(self),
                                                          D.StoredImage.pixels.fset))
    p = prepare(path, PreprocessCfg(size=16), QualityCfg(min_side=8))  # 128x104 -> a factor-3 working copy
    assert p.ok and made == []
    assert p.reference == read_source_reference(path) and p.reference.get("SOPInstanceUID")
    shown = prepare(path, PreprocessCfg(size=16), QualityCfg(min_side=8), display=40)
    assert made and shown.display is not None and np.array_equal(shown.pixels, p.pixels)
    assert prepare(np.zeros((64, 64), np.float32), CFG).reference == {}  # no header: no reference
