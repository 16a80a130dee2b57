"""FActOR-style channel attribution: sparse fit on training images, channel-weighted maps."""

import numpy as np
import pytest
import torch

from mammolens.explain.factor import FactorAttribution, FactorCfg
from mammolens.explain.gradcam import ClassSimilarityTarget
from mammolens.explain.sanity import explainer_for, randomization_check
from mammolens.explain.textmap import patch_features, text_embeddings
from mammolens.models import create_model

SENTENCES = ["spiculated mass", "benign calcification"]


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    model = create_model("tiny-clip", image_size=64).eval()
    g = torch.Generator().manual_seed(1)
    train = [torch.rand(8, 1, 64, 64, generator=g) for _ in range(4)]
    return model, train, FactorAttribution(model, FactorCfg(alpha=1e-3)).fit(train, SENTENCES)


def test_factor_fit_is_sparse_and_predicts_similarity(fitted):
    model, train, fa = fitted
    assert fa.coef.shape == (2, 64)
    assert 0 < int((fa.coef[0] != 0).sum()) < 64  # a few channels, not all
    feats, _, pooled = patch_features(model, train[0])
    z = (feats.mean(dim=(2, 3)).numpy() - fa.mean) / fa.std
    sims = (pooled @ text_embeddings(model, SENTENCES).T).numpy()
    pred = z @ fa.coef.T
    # centred predictions follow the centred similarities on training images
    assert np.corrcoef(pred[:, 0], sims[:, 0])[0, 1] > 0.8
    assert fa.channels(0, top=3)[0][0] == int(np.argmax(np.abs(fa.coef[0])))


def test_factor_map_is_channel_weighted_activation(fitted):
    model, _, fa = fitted
    x = torch.rand(2, 1, 64, 64)
    feats, _, _ = patch_features(model, x)
    w = torch.as_tensor(fa.coef[1] / fa.std, dtype=torch.float32)
    grid = torch.einsum("bchw,c->bhw", feats - torch.as_tensor(fa.mean, dtype=torch.float32)[None, :, None, None], w).relu()
    maps = fa.compute(x, "benign calcification")
    assert maps.shape == (2, 64, 64)
    for b in range(2):
        r, c = divmod(int(grid[b].flatten().argmax()), 4)
        rr, cc = divmod(int(maps[b].flatten().argmax()), 64)
        assert (rr // 16, cc // 16) == (r, c)  # the peak patch is the heaviest weighted one


def test_factor_errors_and_sanity(fitted):
    model, train, fa = fitted
    with pytest.raises(ValueError, match="was not fitted"):
        fa.compute(train[0], "mass")
    with pytest.raises(ValueError, match="at least 3"):
        FactorAttribution(model).fit([train[0][:2]], SENTENCES)
    target = ClassSimilarityTarget(text_embeddings(model, SENTENCES), 0)
    res = randomization_check(model, train[0][:2], target, layers="all", explainer=explainer_for("factor", fa))
    assert res["spearman_rank_corr"] < 0.99
