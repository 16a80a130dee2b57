"""A run whose ``image_size`` (64 px) differs from its cache's (96 px) works on every surface (issue 18).

Before ``pipeline.encode`` resized every forward pass, predict, evaluate, explain and index crashed with
"The size of tensor a (37) must match the size of tensor b (17)" (a 96-px tile gives 6x6+1 ViT tokens, the
64-px tower has 4x4+1 position embeddings).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

CACHE_SIZE, MODEL_SIZE = 96, 64


@pytest.fixture(scope="module")
def mismatch_env(tmp_path_factory):
    from mammolens.data.cache import PreprocessCfg, build_cache
    from mammolens.data.synthetic import make_cohort
    from mammolens.train.config import TrainCfg
    from mammolens.train.loop import train

    root = tmp_path_factory.mktemp("mismatch")
    df = make_cohort(root / "cohort", n_patients=6, seed=3, image_size=(128, 104), density_probs=[0.25] * 4)
    build_cache(root / "cohort" / "manifest.parquet", root / "cache", PreprocessCfg(size=CACHE_SIZE), workers=0)
    cfg = TrainCfg(data={"cache": str(root / "cache"), "val_frac": 0.34}, model="tiny-clip", image_size=MODEL_SIZE,
                   epochs=1, batch_size=8, lr=1e-3, precision="fp32", augment=False, workers=0,
                   out_dir=str(root / "run"))
    run = Path(train(cfg, progress=False))
    files = sorted((root / "cohort" / p) for p in df["image_path"])
    return root, run, files


def _cli(*args: str):
    from mammolens.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"mammolens {' '.join(map(str, args))} failed:\n{res.output}\n{res.exception!r}"
    return res


def test_size_mismatch_run_sizes_differ(mismatch_env):
    from mammolens.data.cache import open_cache
    from mammolens.models.run import load_run

    root, run, _ = mismatch_env
    assert load_run(run).model.image_size == MODEL_SIZE
    assert open_cache(root / "cache").cfg.size == CACHE_SIZE


def test_size_mismatch_predict_api_and_cli(mismatch_env, tmp_path):
    from mammolens.inference import Predictor

    _, run, files = mismatch_env
    p = Predictor.from_run(run, device="cpu", workers=0, batch_size=4)
    res = p.predict(files[:4], explain=True, overlay_dir=tmp_path / "ov")
    assert len(res.images) == 4 and res.errors.empty
    probs = res.images[[f"prob_{c}" for c in p.class_names]].to_numpy(dtype=float)
    assert probs.shape == (4, 4) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert all(Path(o).is_file() for o in res.images["overlay"])
    # a tile at the cache's size, given directly
    assert p.predict_tensor(np.zeros((2, 1, CACHE_SIZE, CACHE_SIZE), np.float32) + 0.5).shape == (2, 4)
    _cli("predict", run, *files[:2], "--out", tmp_path / "cli", "--workers", "0", "--device", "cpu", "--no-dicom")
    assert len(pd.read_csv(tmp_path / "cli" / "images.csv")) == 2


def test_size_mismatch_evaluate_api_and_cli(mismatch_env, tmp_path):
    from mammolens.workflows import evaluate_run

    root, run, _ = mismatch_env
    res = evaluate_run(run, root / "cache", out=tmp_path / "ev", n_boot=10, device="cpu", workers=0,
                       progress=False, gallery_per_class=1)
    n = len(pd.read_parquet(tmp_path / "ev" / "predictions.parquet"))
    assert res["n_images"] == n > 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert "image_to_image" in metrics["retrieval"]
    assert list((tmp_path / "ev" / "gradcam").glob("*.png"))  # the GradCAM gallery ran on 96-px tiles
    _cli("evaluate", run, "--data", root / "cache", "--out", tmp_path / "cli", "--n-boot", "10", "--gallery", "1",
         "--workers", "0", "--device", "cpu")
    assert (tmp_path / "cli" / "metrics.json").is_file()


@pytest.mark.parametrize("kind", ["gradcam", "text"])
def test_size_mismatch_explain_api_and_cli(mismatch_env, tmp_path, kind):
    from PIL import Image

    from mammolens.workflows import explain_run, explain_sentences

    _, run, files = mismatch_env
    if kind == "gradcam":
        recs = explain_run(run, files[:2], tmp_path / "api", device="cpu")
        pngs = [r["overlay"] for r in recs]
        _cli("explain", run, files[0], "--out", tmp_path / "cli", "--device", "cpu")
    else:
        recs = explain_sentences(run, files[:2], tmp_path / "api", ["a mass"], kind="text", device="cpu")
        pngs = [r["overlay"] for r in recs]
        _cli("explain", run, files[0], "--out", tmp_path / "cli", "--map", "text", "--text", "a mass", "--device", "cpu")
    assert len(pngs) == 2 and all(Path(p).is_file() for p in pngs)
    with Image.open(pngs[0]) as im:  # drawn on the original image (128 x 104), plus the colour-bar panel
        assert im.size[1] == 128 and im.size[0] > 104
    assert list((tmp_path / "cli").glob("*.png"))


def test_size_mismatch_factor_and_maps_at_tile_size(mismatch_env):
    import torch

    from mammolens.data.cache import open_cache
    from mammolens.explain import GradCAM, TextPatchMap, text_embeddings
    from mammolens.models.run import load_run
    from mammolens.workflows import fit_factor

    root, run, _ = mismatch_env
    model = load_run(run).model
    x = torch.from_numpy(np.stack([open_cache(root / "cache").get(i) for i in range(2)]))[:, None]  # [2, 1, 96, 96]
    with GradCAM(model, forward_fn=model.forward) as cam:
        assert tuple(cam.compute(x, 0).shape) == (2, CACHE_SIZE, CACHE_SIZE)
    emb = text_embeddings(model, ["a mass"])
    assert tuple(TextPatchMap(model).compute(x, emb[0]).shape) == (2, CACHE_SIZE, CACHE_SIZE)
    factor = fit_factor(run, ["a mass"], max_images=8, device="cpu")
    assert tuple(factor.compute(x, 0).shape) == (2, CACHE_SIZE, CACHE_SIZE)


def test_size_mismatch_index_and_search_api_and_cli(mismatch_env, tmp_path):
    from mammolens.search import build_run_index, search_run

    root, run, files = mismatch_env
    res = build_run_index(run, root / "cache", out=tmp_path / "idx", device="cpu")
    assert res["n"] > 0 and res["dim"] > 0
    assert len(search_run(run, text="a mass", index_dir=tmp_path / "idx", k=2, device="cpu")) == 2
    hits = search_run(run, image=files[0], index_dir=tmp_path / "idx", k=1, device="cpu")
    assert len(hits) == 1 and hits["score"].iloc[0] > 0.99  # the image itself is in the index
    _cli("index", run, root / "cache", "--out", tmp_path / "cli", "--device", "cpu")
    out = _cli("search", run, "--image", files[0], "--index", tmp_path / "cli", "-k", "1", "--device", "cpu")
    assert out.output.strip()
