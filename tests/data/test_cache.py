import json
import pickle

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mammolens.data.cache import (
    CacheError,
    PreprocessCfg,
    build_cache,
    manifest_hash,
    merge_caches,
    open_cache,
)
from mammolens.transforms.quality import QualityCfg

SIZE = 32


def png_reader(path, **kw):
    """A picklable reader for tests: 8-bit PNG -> float32 [0, 1]; anything else raises."""
    return np.asarray(Image.open(path), dtype=np.float32) / 255.0


def _breast_png(path, side, seed):
    rng = np.random.default_rng(seed)
    h, w = 120, 90
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - h / 2) / (h * 0.4)) ** 2 + (xx / (w * 0.6)) ** 2 <= 1
    img = np.where(inside, 90 + rng.integers(0, 120, (h, w)), 0).astype(np.uint8)
    if side == "R":
        img = img[:, ::-1]
    Image.fromarray(np.ascontiguousarray(img)).save(path)


@pytest.fixture()
def png_manifest(tmp_path):
    rows = []
    for i in range(8):
        side = "LR"[i % 2]
        p = tmp_path / "imgs" / f"im{i}.png"
        p.parent.mkdir(exist_ok=True)
        _breast_png(p, side, i)
        rows.append(dict(image_path=str(p), patient_id=f"p{i // 2}", study_id=f"s{i // 2}", laterality=side,
                         view="CC", modality=["DM", "s2D"][i % 2], manufacturer="X", density="ABCD"[i % 4]))
    bad = tmp_path / "imgs" / "broken.png"
    bad.write_bytes(b"not a png at all")
    rows.append(dict(image_path=str(bad), patient_id="p9", study_id="s9", laterality="L", view="CC",
                     modality="DM", manufacturer="X", density="A"))
    return pd.DataFrame(rows)


def test_preprocess_cfg_round_trip_and_validation():
    cfg = PreprocessCfg(size=64, margin=0.02)
    assert PreprocessCfg.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown PreprocessCfg field"):
        PreprocessCfg.from_dict({"sise": 3})
    with pytest.raises(ValueError, match="flip"):
        PreprocessCfg(flip="right")
    with pytest.raises(ValueError, match="size"):
        PreprocessCfg(size=2)


def test_manifest_hash_changes_with_content(png_manifest):
    h = manifest_hash(png_manifest)
    assert h == manifest_hash(png_manifest.copy())
    other = png_manifest.copy()
    other.loc[0, "density"] = "D"
    assert manifest_hash(other) != h


def test_build_cache_writes_images_index_errors(png_manifest, tmp_path):
    out = build_cache(png_manifest, tmp_path / "c", PreprocessCfg(size=SIZE), workers=0, progress=False,
                      reader=png_reader)
    c = open_cache(out)
    assert len(c) == 9 and c.images.shape == (9, SIZE, SIZE) and c.images.dtype == np.uint16
    assert not c.images.flags.writeable
    assert list(c.index["cache_row"]) == list(range(9))
    assert list(c.index["status"]) == ["done"] * 8 + ["failed"]
    assert c.index["flipped"].tolist()[:8] == [False, True] * 4  # right breasts mirrored
    errors = pd.read_csv(out / "errors.csv")
    assert errors["row"].tolist() == [8] and "broken.png" in errors["image_path"][0]
    assert errors["reason"][0]  # a reason is recorded
    assert c.images[8].max() == 0 and c.images[0].max() > 0
    g = c.get(0)
    assert g.dtype == np.float32 and 0 <= g.min() and g.max() <= 1
    np.testing.assert_allclose(g, c.images[0] / 65535.0, rtol=1e-6)
    meta = json.loads((out / "cache.json").read_text())
    assert meta["cfg"]["size"] == SIZE and meta["counts"] == {"done": 8, "failed": 1, "pending": 0}
    assert meta["shape"] == [9, SIZE, SIZE] and meta["complete"] and meta["manifest_hash"]
    assert c.cfg == PreprocessCfg(size=SIZE)


def test_build_cache_parallel_equals_serial(png_manifest, tmp_path):
    a = build_cache(png_manifest, tmp_path / "a", PreprocessCfg(size=SIZE), workers=0, progress=False, reader=png_reader)
    b = build_cache(png_manifest, tmp_path / "b", PreprocessCfg(size=SIZE), workers=2,
                    progress=False, reader=png_reader)
    assert (a / "images.u16").read_bytes() == (b / "images.u16").read_bytes()
    assert open_cache(b).index["status"].tolist() == open_cache(a).index["status"].tolist()


def test_build_cache_resumes_after_interruption(png_manifest, tmp_path):
    cfg = PreprocessCfg(size=SIZE)
    full = build_cache(png_manifest, tmp_path / "full", cfg, workers=0, progress=False, reader=png_reader)
    part = build_cache(png_manifest, tmp_path / "part", cfg, workers=0, progress=False, reader=png_reader, limit=4)
    with pytest.raises(CacheError, match="incomplete"):
        open_cache(part)
    assert open_cache(part, allow_incomplete=True).meta["counts"]["pending"] == 5
    # a torn last progress line (killed mid-write) is ignored and that row redone
    with open(part / "progress.jsonl", "a") as f:
        f.write('{"row": 5, "sta')
    build_cache(png_manifest, part, cfg, workers=2, progress=False, reader=png_reader)
    meta = json.loads((part / "cache.json").read_text())
    assert meta["last_run"]["processed"] == 5
    assert (part / "images.u16").read_bytes() == (full / "images.u16").read_bytes()
    assert open_cache(part).index["status"].tolist() == open_cache(full).index["status"].tolist()


def test_build_cache_rerun_is_noop(png_manifest, tmp_path):
    cfg = PreprocessCfg(size=SIZE)
    out = build_cache(png_manifest, tmp_path / "c", cfg, workers=0, progress=False, reader=png_reader)
    before = (out / "images.u16").read_bytes()
    build_cache(png_manifest, out, cfg, workers=0, progress=False, reader=png_reader)
    assert json.loads((out / "cache.json").read_text())["last_run"]["processed"] == 0
    assert (out / "images.u16").read_bytes() == before
    build_cache(png_manifest, out, cfg, workers=0, progress=False, reader=png_reader, retry_failed=True)
    assert json.loads((out / "cache.json").read_text())["last_run"]["processed"] == 1  # only the failed row


def test_build_cache_refuses_other_cfg_or_manifest_unless_overwrite(png_manifest, tmp_path):
    out = build_cache(png_manifest, tmp_path / "c", PreprocessCfg(size=SIZE), workers=0, progress=False,
                      reader=png_reader)
    with pytest.raises(CacheError, match="different PreprocessCfg"):
        build_cache(png_manifest, out, PreprocessCfg(size=16), workers=0, progress=False, reader=png_reader)
    with pytest.raises(CacheError, match="different manifest"):
        build_cache(png_manifest.iloc[:3], out, PreprocessCfg(size=SIZE), workers=0, progress=False,
                    reader=png_reader)
    build_cache(png_manifest, out, PreprocessCfg(size=16), workers=0, progress=False, reader=png_reader,
                overwrite=True)
    assert open_cache(out).images.shape == (9, 16, 16)


def test_build_cache_reads_manifest_file_with_relative_paths(png_manifest, tmp_path):
    from mammolens.data.manifest import write_manifest

    m = png_manifest.iloc[:2].copy()
    m["image_path"] = [str(p).replace(str(tmp_path) + "/", "") for p in m["image_path"]]
    write_manifest(m, tmp_path / "manifest.parquet")
    out = build_cache(tmp_path / "manifest.parquet", tmp_path / "c", PreprocessCfg(size=SIZE), workers=0,
                      progress=False, reader=png_reader)
    assert open_cache(out).index["status"].tolist() == ["done", "done"]


def test_open_cache_errors(tmp_path, png_manifest):
    with pytest.raises(FileNotFoundError, match="not found"):
        open_cache(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="cache.json is missing"):
        open_cache(tmp_path / "empty")
    out = build_cache(png_manifest.iloc[:2], tmp_path / "c", PreprocessCfg(size=SIZE), workers=0, progress=False,
                      reader=png_reader)
    with open(out / "images.u16", "ab") as f:
        f.write(b"xx")
    with pytest.raises(CacheError, match="corrupt"):
        open_cache(out)
    (out / "cache.json").write_text("{oops")
    with pytest.raises(CacheError, match="not valid JSON"):
        open_cache(out)


def test_merge_caches_of_shards_equals_whole(png_manifest, tmp_path):
    cfg = PreprocessCfg(size=SIZE)
    whole = build_cache(png_manifest, tmp_path / "whole", cfg, workers=0, progress=False, reader=png_reader)
    shards = [build_cache(png_manifest, tmp_path / f"s{k}", cfg, workers=0, progress=False, reader=png_reader,
                          shard=(k, 3)) for k in range(3)]
    assert sum(len(open_cache(s)) for s in shards) == 9
    merged = merge_caches(shards, tmp_path / "merged")
    assert (merged / "images.u16").read_bytes() == (whole / "images.u16").read_bytes()
    m, w = open_cache(merged), open_cache(whole)
    pd.testing.assert_frame_equal(m.index, w.index)
    assert m.meta["manifest_hash"] == w.meta["manifest_hash"]
    other = build_cache(png_manifest.iloc[:2], tmp_path / "o", PreprocessCfg(size=16), workers=0, progress=False,
                        reader=png_reader)
    with pytest.raises(CacheError, match="cannot merge"):
        merge_caches([whole, other], tmp_path / "bad")


def test_cache_pickles_without_memmap(png_manifest, tmp_path):
    out = build_cache(png_manifest.iloc[:2], tmp_path / "c", PreprocessCfg(size=SIZE), workers=0, progress=False,
                      reader=png_reader)
    c = open_cache(out)
    _ = c.images
    c2 = pickle.loads(pickle.dumps(c))
    assert c2._images is None
    np.testing.assert_array_equal(c2.images[1], c.images[1])


def test_build_cache_default_reader_on_png_files(png_manifest, tmp_path):
    pytest.importorskip("mammolens.io.images")
    ours = build_cache(png_manifest, tmp_path / "a", PreprocessCfg(size=SIZE), workers=0, progress=False,
                       reader=png_reader)
    default = build_cache(png_manifest, tmp_path / "b", PreprocessCfg(size=SIZE), workers=0, progress=False)
    c = open_cache(default)
    assert c.index["status"].tolist() == ["done"] * 8 + ["failed"]
    np.testing.assert_allclose(c.images[:8].astype(float), open_cache(ours).images[:8].astype(float), atol=300)
    assert "ImageReadError" in c.index["error"].iat[8] or "Error" in c.index["error"].iat[8]


def test_build_cache_dbt_frame_rows_and_mip(tmp_path):
    synthetic = pytest.importorskip("mammolens.data.synthetic")
    from mammolens.io import read_image

    m = synthetic.make_cohort(tmp_path / "coh", n_patients=3, seed=2, image_size=(64, 48), dbt_frames=4,
                              compress_fraction=0.0)
    dbt = m[m["modality"] == "DBT"].iloc[:1]
    rows = pd.concat([dbt.assign(frame=None), dbt.assign(frame=1), dbt.assign(frame=3)], ignore_index=True)
    rows["frame"] = rows["frame"].astype("Int64")
    rows["image_path"] = [str(tmp_path / "coh" / p) for p in rows["image_path"]]
    cfg = PreprocessCfg(size=SIZE, crop=False, mask_background=False, flip="none")
    # 48-px frames: below the quality gate's min_side, which is not what this test is about
    c = open_cache(build_cache(rows, tmp_path / "c", cfg, workers=0, progress=False,
                               quality=QualityCfg(enabled=False)))
    assert (c.index["status"] == "done").all()
    stack = read_image(rows["image_path"][0], dbt="frames").pixels  # [F, H, W]
    from mammolens.transforms.breast import resize_pad

    for r, ref in ((0, stack.max(0)), (1, stack[1]), (2, stack[3])):
        expect = np.rint(np.clip(resize_pad(ref, SIZE), 0, 1) * 65535)
        np.testing.assert_allclose(c.images[r].astype(float), expect, atol=2)
    assert not np.array_equal(c.images[1], c.images[2])


def test_build_cache_mini_mias_real_images(mini_mias, tmp_path):
    pytest.importorskip("mammolens.io.images")
    files = [mini_mias / "images" / f"mdb{i:03d}.png" for i in (1, 2, 3, 4)]
    df = pd.DataFrame({"image_path": [str(f) for f in files], "patient_id": ["1", "1", "2", "2"],
                       "study_id": ["1", "1", "2", "2"], "laterality": ["R", "L", "R", "L"], "view": ["MLO"] * 4,
                       "modality": ["DM"] * 4, "manufacturer": ["film"] * 4, "density": [""] * 4})
    c = open_cache(build_cache(df, tmp_path / "c", PreprocessCfg(size=64), workers=2, progress=False))
    assert (c.index["status"] == "done").all()
    assert c.index["flipped"].tolist() == [True, False, True, False]
    for i in range(4):
        img = c.get(i)
        assert img[:, :8].mean() > img[:, -8:].mean()  # chest wall on the left after orientation


def test_build_cache_refuses_rows_whose_header_is_not_a_mammogram(png_manifest, tmp_path):
    from mammolens.data.synthetic import write_non_mammogram

    df = png_manifest.iloc[:2].copy()
    df.loc[1, "image_path"] = str(write_non_mammogram(tmp_path / "dx.dcm", "dx-abdomen"))
    out = build_cache(df, tmp_path / "c", PreprocessCfg(size=SIZE), workers=0, progress=False)  # the real reader
    index = open_cache(out, allow_incomplete=True).index
    assert list(index["status"]) == ["done", "failed"]
    assert index["error"][1] == "ValueError: not a mammogram: DX image of ABDOMEN"


def faulty_png_reader(path, **kw):
    from _faults import misbehave

    misbehave(path)
    return png_reader(path, **kw)


@pytest.mark.timeout(120)
def test_build_cache_survives_hanging_crashing_and_panicking_rows(png_manifest, tmp_path, monkeypatch):
    from _faults import REASONS, copies

    bad = copies(png_manifest["image_path"].iat[0], tmp_path / "bad", ".png")
    rows = [png_manifest.iloc[0].to_dict() | {"image_path": str(p)} for p in bad]
    df = pd.concat([png_manifest, pd.DataFrame(rows)], ignore_index=True)
    monkeypatch.setenv("MAMMOLENS_FILE_TIMEOUT", "3")
    out = build_cache(df, tmp_path / "c", PreprocessCfg(size=SIZE), workers=2, progress=False, reader=faulty_png_reader)
    c = open_cache(out)
    assert c.index["status"].tolist() == ["done"] * 8 + ["failed"] * 5
    assert c.index["error"].iloc[9:].tolist() == list(REASONS.values())
    ref = build_cache(png_manifest, tmp_path / "ref", PreprocessCfg(size=SIZE), workers=0, progress=False,
                      reader=png_reader)
    assert np.array_equal(c.images[:8], open_cache(ref).images[:8])  # every good row written
    # resumable: a rerun with retry_failed redoes only the failed rows (here with a well-behaved reader)
    build_cache(df, out, PreprocessCfg(size=SIZE), workers=2, progress=False, reader=png_reader, retry_failed=True)
    c = open_cache(out)
    assert c.meta["last_run"]["processed"] == 5 and c.index["status"].tolist() == ["done"] * 8 + ["failed"] + ["done"] * 4


def test_build_cache_keeps_pydicom_warnings_off_the_terminal(tmp_path):
    import subprocess
    import sys
    import warnings

    import pydicom

    from test_ingest import write_mg_dicom

    p = write_mg_dicom(tmp_path / "a.dcm")
    ds = pydicom.dcmread(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.SeriesInstanceUID = "1.2.abc_not_a_uid"  # pydicom warns (and logs) when it reads this value
        ds.save_as(p)
    pd.DataFrame([dict(image_path=str(p), patient_id="P", study_id="S", laterality="L", view="CC", modality="DM",
                       manufacturer="X", density="A")]).to_parquet(tmp_path / "m.parquet")
    # a fresh interpreter: pytest's own warning capture would hide what a user's terminal shows
    code = ("import logging, sys; logging.basicConfig(); from mammolens.data.cache import build_cache, PreprocessCfg; "
            "from mammolens.transforms.quality import QualityCfg; "  # a tiny test image: the gate is not tested here
            "build_cache(sys.argv[1], sys.argv[2], PreprocessCfg(size=16), workers=0, progress=False, "
            "quality=QualityCfg(enabled=False))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.parquet"), str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Invalid value" not in proc.stderr + proc.stdout
    assert open_cache(tmp_path / "c").index["status"].tolist() == ["done"]


# ------------------------------------------------------------------------------------ the quality gate
def test_build_cache_lists_quality_refused_images_in_errors_and_never_trains_on_them(png_manifest, tmp_path):
    from mammolens.data.dataset import MammoDataset
    from mammolens.tasks import get_task

    df = png_manifest.iloc[:3].copy()
    flat = tmp_path / "imgs" / "flat.png"
    Image.fromarray(np.full((120, 90), 128, np.uint8)).save(flat)  # what Predictor calls not assessable
    df.loc[1, "image_path"] = str(flat)
    out = build_cache(df, tmp_path / "c", PreprocessCfg(size=SIZE), workers=0, progress=False, reader=png_reader)
    c = open_cache(out)
    assert list(c.index["status"]) == ["done", "failed", "done"]
    errors = pd.read_csv(out / "errors.csv")
    assert errors["row"].tolist() == [1] and errors["image_path"].tolist() == ["flat.png"]  # relative: no absolute path
    assert errors["reason"][0].startswith("ValueError: not assessable: constant image")
    assert len(MammoDataset(c, get_task("density"))) == 2  # the refused row is not trainable
    # the gate turned off: the same image is cached (today's images, if a user asks for it)
    off = open_cache(build_cache(df, tmp_path / "c_off", PreprocessCfg(size=SIZE), workers=0, progress=False,
                                 reader=png_reader, quality=QualityCfg(enabled=False)))
    assert (off.index["status"] == "done").all()


def test_cache_json_records_the_quality_gate_and_a_cache_without_it_is_stale(png_manifest, tmp_path):
    from mammolens.transforms.quality import QUALITY_VERSION

    df = png_manifest.iloc[:2]
    cfg = PreprocessCfg(size=SIZE)
    out = build_cache(df, tmp_path / "c", cfg, workers=0, progress=False, reader=png_reader)
    meta = json.loads((out / "cache.json").read_text())
    assert meta["quality"] == {"version": QUALITY_VERSION, "cfg": QualityCfg().to_dict()}
    build_cache(df, out, cfg, workers=0, progress=False, reader=png_reader)  # same gate: resumed, nothing to do
    with pytest.raises(CacheError, match="different image quality gate"):
        build_cache(df, out, cfg, workers=0, progress=False, reader=png_reader, quality=QualityCfg(min_side=100))
    del meta["quality"]  # a cache written before the gate was recorded
    (out / "cache.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="without the image quality gate"):
        build_cache(df, out, cfg, workers=0, progress=False, reader=png_reader)
    build_cache(df, out, cfg, workers=0, progress=False, reader=png_reader, overwrite=True)
    assert json.loads((out / "cache.json").read_text())["quality"]["version"] == QUALITY_VERSION
