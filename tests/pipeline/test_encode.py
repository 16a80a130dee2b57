"""Tests for mammolens.pipeline.encode: numbers equal the hand-computed forward, and every surface that runs a
run's image tower over data goes through it."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _encode_fixtures import _train_cfg, encode_env  # noqa: F401 — session fixture

from mammolens.pipeline import encode as enc


@pytest.fixture(scope="module")
def models():
    from mammolens.models import create_model
    from mammolens.models.run import build_run_model
    from mammolens.tasks import get_task

    torch.manual_seed(0)
    clip = create_model("tiny-clip", image_size=64).eval()
    task = get_task("density")
    return clip, task, build_run_model(clip, task, "contrastive"), build_run_model(clip, task, "linear-probe")


def _tiles(n=5, s=96, seed=0):
    return torch.rand(n, 1, s, s, generator=torch.Generator().manual_seed(seed))


def _by_hand(x):
    return F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)


@pytest.mark.parametrize("which", ["prompt", "head"])
def test_encode_probs_equal_softmax_of_the_resized_forward(models, which):
    _, _, prompt, head = models
    model = prompt if which == "prompt" else head
    x = _tiles()
    with torch.no_grad():
        want_probs = F.softmax(model(_by_hand(x)).float(), dim=-1).numpy()
        want_emb = model.encode_image(_by_hand(x)).float().numpy()
    out = enc.encode(model, [x[:2], x[2:]], ("probs", "logits", "embedding"), device="cpu")
    np.testing.assert_allclose(out["probs"], want_probs, atol=1e-6)
    np.testing.assert_allclose(out["embedding"], want_emb, atol=1e-6)
    np.testing.assert_allclose(out["probs"], F.softmax(torch.from_numpy(out["logits"]), -1).numpy(), atol=1e-6)
    assert out["probs"].dtype == np.float32 and out["probs"].shape == (5, 4)
    np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=1), 1.0, atol=1e-5)


def test_encode_tokens_and_their_logits_match_the_one_pass(models):
    clip, _, prompt, _ = models
    x = _tiles(3)
    out = enc.encode(prompt, [x], ("probs", "embedding", "tokens"))
    with torch.no_grad():
        pooled, tokens = clip.encode_image_tokens(_by_hand(x))
    assert out["tokens"].shape == (3, 16, pooled.shape[1])  # 64 px / 16 px patches = 4 x 4
    np.testing.assert_allclose(out["tokens"], tokens.numpy(), atol=1e-6)
    np.testing.assert_allclose(out["probs"], enc.encode(prompt, [x], ("probs",))["probs"], atol=1e-6)


def test_encode_accepts_dicts_arrays_and_grey_without_channel(models):
    _, _, prompt, _ = models
    x = _tiles(4)
    ref = enc.encode(prompt, [x], ("probs",))["probs"]
    for batches in ([{"image": x, "label": torch.zeros(4)}], [x.numpy()], [x[:, 0]]):
        np.testing.assert_allclose(enc.encode(prompt, batches, ("probs",))["probs"], ref, atol=1e-6)


def test_encode_bare_clip_uses_the_task_prompts(models):
    clip, task, prompt, _ = models
    x = _tiles(2)
    np.testing.assert_allclose(enc.encode(clip, [x], ("probs",), task=task)["probs"],
                               enc.encode(prompt, [x], ("probs",))["probs"], atol=1e-6)
    with pytest.raises(ValueError, match="task"):
        enc.encode(clip, [x], ("probs",))


def test_encode_errors_name_the_problem(models):
    _, _, prompt, _ = models
    with pytest.raises(ValueError, match="want"):
        enc.encode(prompt, [_tiles(1)], ("nope",))
    with pytest.raises(ValueError, match="uint16"):
        enc.encode(prompt, [torch.zeros(1, 1, 64, 64, dtype=torch.int32)], ("probs",))
    with pytest.raises(ValueError, match=r"\[B, 1\|3, H, W\]"):
        enc.encode(prompt, [torch.zeros(1, 2, 64, 64)], ("probs",))


def test_iter_encode_streams_restores_mode_and_leaves_grad_on_between_batches(models):
    _, _, prompt, _ = models
    prompt.train()
    seen = []
    for res in enc.iter_encode(prompt, (_tiles(2, seed=i) for i in range(3)), ("probs",)):
        seen.append(res["probs"].shape)
        assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()  # the caller's code is free
    assert seen == [(2, 4)] * 3
    assert prompt.training  # restored
    prompt.eval()


def test_encode_precision_bf16_is_close(models):
    _, _, prompt, _ = models
    x = _tiles(2)
    a = enc.encode(prompt, [x], ("probs",), precision="fp32")["probs"]
    b = enc.encode(prompt, [x], ("probs",), precision="bf16")["probs"]
    np.testing.assert_allclose(a, b, atol=5e-2)


def test_to_input_resizes_and_keeps_the_old_import_path():
    from mammolens.train.methods.base import to_input

    assert to_input is enc.to_input
    x = _tiles(1, 96)
    assert tuple(to_input(x, 64, torch.device("cpu")).shape) == (1, 1, 64, 64)
    assert enc.to_input(x, 96, "cpu").data_ptr() == x.data_ptr()  # no copy when the size already fits


# ------------------------------------------------------------------------- every surface goes through encode
@pytest.fixture
def calls(monkeypatch):
    """Each call of encode / iter_encode: (name, want, the functions on the stack above it)."""
    seen: list[tuple[str, tuple, list[str]]] = []
    for name in ("encode", "iter_encode"):
        real = getattr(enc, name)

        def wrapper(model, batches, want=("probs",), *a, _real=real, _name=name, **kw):
            seen.append((_name, tuple(want), [f.function for f in inspect.stack()[1:12]]))
            return _real(model, batches, want, *a, **kw)

        monkeypatch.setattr(enc, name, wrapper)
    return seen


def _through(calls, caller: str, want: str) -> bool:
    return any(caller in stack and want in w for _, w, stack in calls)


def test_encode_every_surface_goes_through_it(encode_env, calls, tmp_path):  # noqa: F811
    from mammolens.data.cache import open_cache
    from mammolens.inference import Predictor
    from mammolens.search import build_run_index
    from mammolens.study import _predict
    from mammolens.train.cv import cross_validate
    from mammolens.train.loop import train
    from mammolens.workflows import evaluate_run

    env = encode_env
    evaluate_run(env.run, env.cache, out=tmp_path / "ev", n_boot=5, device="cpu", workers=0, progress=False,
                 gallery_per_class=0)
    # predictions and retrieval embeddings from one pass
    assert any("evaluate_run" in s and set(w) == {"probs", "embedding"} for _, w, s in calls)
    Predictor.from_run(env.run, device="cpu", workers=0).predict(env.files[:2])
    assert _through(calls, "predict", "probs")
    _predict(env.run, open_cache(env.cache), np.arange(4), 4)
    assert _through(calls, "_predict", "probs")
    build_run_index(env.run, env.cache, out=tmp_path / "idx", device="cpu")
    assert _through(calls, "build_run_index", "embedding")
    train(_train_cfg(env.cache, tmp_path / "lp", method="linear-probe"), progress=False)
    assert _through(calls, "fit", "embedding") and _through(calls, "extract_features", "embedding")
    calls.clear()
    cross_validate(_train_cfg(env.cache, tmp_path / "cv"), k=2)
    assert any(s[:2] == ["predict_cache", "cross_validate"] for _, _, s in calls)  # the test folds' predictions
