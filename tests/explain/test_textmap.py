"""Text-to-patch maps: the model's real patch grid, the tower's own projection, the sanity check."""

import pytest
import torch
import torch.nn.functional as F

from mammolens.explain.gradcam import ClassSimilarityTarget
from mammolens.explain.sanity import explainer_for, randomization_check
from mammolens.explain.textmap import TextPatchMap, patch_features, text_embeddings
from mammolens.models import create_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny-clip", image_size=64).eval()


def _manual_tokens(model, x):
    """Independent path: hook the transformer, apply ln_post and proj by hand."""
    out = {}
    h = model.visual.transformer.register_forward_hook(lambda m, a, o: out.setdefault("t", o))
    with torch.no_grad():
        pooled = model.encode_image(x)
    h.remove()
    t = model.visual.ln_post(out["t"]) @ model.visual.proj  # [B, 1 + 16, D]
    return t, pooled


def test_textmap_grid_drops_class_token_and_matches_projection(model):
    x = torch.rand(2, 1, 64, 64)
    feats, emb, pooled = patch_features(model, x)
    assert feats.shape == (2, 64, 4, 4) and emb.shape == (2, 64, 4, 4)  # 64 px / 16 px patches
    t, enc = _manual_tokens(model, x)
    # the class token through the same norm + projection is the model's own embedding
    assert torch.allclose(F.normalize(t[:, 0], dim=-1), F.normalize(enc, dim=-1), atol=1e-5)
    assert torch.allclose(emb, t[:, 1:].reshape(2, 4, 4, -1).permute(0, 3, 1, 2), atol=1e-5)


def test_textmap_peaks_where_the_patch_matches_the_text(model):
    x = torch.rand(1, 1, 64, 64)
    _, emb, _ = patch_features(model, x)
    target = emb[0, :, 1, 2]  # the embedding of patch row 1, column 2 as the "sentence"
    tm = TextPatchMap(model)
    sims = tm.similarity(x, target[None])
    assert sims.shape == (1, 1, 4, 4)
    assert sims[0, 0, 1, 2] == pytest.approx(1.0, abs=1e-5)
    assert divmod(int(sims[0, 0].flatten().argmax()), 4) == (1, 2)
    maps = tm.compute(x, target)
    assert maps.shape == (1, 64, 64) and float(maps.max()) == pytest.approx(1.0) and float(maps.min()) == 0.0
    r, c = divmod(int(maps[0].flatten().argmax()), 64)
    assert 16 <= r < 32 and 32 <= c < 48  # inside that patch


def test_textmap_sentences_and_errors(model):
    t = text_embeddings(model, ["spiculated mass", "round mass"])
    assert t.shape == (2, 64) and torch.allclose(t.norm(dim=-1), torch.ones(2))
    with pytest.raises(ValueError, match="non-empty sentence"):
        text_embeddings(model, [" "])
    with pytest.raises(ValueError, match="one per image"):
        TextPatchMap(model).compute(torch.rand(3, 1, 64, 64), t)


def test_randomization_check_runs_on_text_maps(model):
    x = torch.rand(2, 1, 64, 64)
    target = ClassSimilarityTarget(text_embeddings(model, ["mass", "calcification"]), 0)
    res = randomization_check(model, x, target, layers="all", explainer=explainer_for("text"))
    assert res["spearman_rank_corr"] < 0.99  # new weights, new map
    with pytest.raises(ValueError, match="unknown map kind"):
        explainer_for("saliency")
