"""Tests for mammolens.explain.sanity (model-randomisation check, Adebayo et al. 2018)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mammolens.explain import ClassSimilarityTarget, edge_explainer, map_similarity, randomization_check
from mammolens.explain.sanity import randomize_modules

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402


class TinyCLIP(nn.Module):
    """Minimal ``MammoCLIP`` stand-in: ``.visual`` tower, normalised ``encode_image``."""

    def __init__(self, visual: nn.Module, feat_dim: int, embed_dim: int = 16):
        super().__init__()
        self.visual = visual
        self.proj = nn.Linear(feat_dim, embed_dim)

    def encode_image(self, x):
        return F.normalize(self.proj(self.visual(x.expand(-1, 3, -1, -1))), dim=-1)  # [B, D]


def make_vit() -> TinyCLIP:
    torch.manual_seed(0)
    return TinyCLIP(TimmViT(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0,
                            reg_tokens=4), 32)


def make_cnn() -> TinyCLIP:
    torch.manual_seed(0)
    return TinyCLIP(timm.create_model("resnet18", pretrained=False, num_classes=0), 512)


def make_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 64, 64, generator=g) * 0.3
    x[0, :, 10:30, 30:55] += 0.6  # some structure for the edge baseline
    x[1, :, 35:60, 5:25] += 0.6
    text = F.normalize(torch.randn(3, 16, generator=g), dim=-1)
    return x, ClassSimilarityTarget(text, k=[0, 2])


@pytest.mark.parametrize("make", [make_vit, make_cnn], ids=["vit_reg4", "resnet18"])
@pytest.mark.parametrize("layers", ["all", "cascade"])
def test_randomization_check_gradcam_changes(make, layers):
    model = make()
    x, target = make_inputs()
    res = randomization_check(model, x, target, layers=layers, n_steps=3)
    assert res["changed"] is True
    assert res["spearman_rank_corr"] < 0.3 and res["ssim"] < 0.5
    assert len(res["steps"]) == (1 if layers == "all" else 3)
    assert res["steps"][-1]["spearman_rank_corr"] == res["spearman_rank_corr"]


def test_randomization_check_edge_baseline_does_not_change():
    model = make_vit()
    x, target = make_inputs()
    res = randomization_check(model, x, target, layers="cascade", explainer=edge_explainer)
    assert res["changed"] is False
    assert res["spearman_rank_corr"] == pytest.approx(1.0)
    assert res["pearson"] == pytest.approx(1.0) and res["ssim"] == pytest.approx(1.0)
    assert all(step["abs_spearman"] == pytest.approx(1.0) for step in res["steps"])


def test_randomization_check_leaves_the_model_untouched():
    model = make_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, target = make_inputs()
    randomization_check(model, x, target, layers="all")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_randomization_check_rejects_bad_arguments():
    x, target = make_inputs()
    with pytest.raises(ValueError, match="cascade"):
        randomization_check(make_vit(), x, target, layers="top")
    with pytest.raises(ValueError, match="n_steps"):
        randomization_check(make_vit(), x, target, n_steps=0)


def test_randomize_modules_changes_all_tower_parameters():
    model = make_vit()
    before = {k: v.clone() for k, v in model.visual.named_parameters()}
    torch.manual_seed(1)
    randomize_modules([m for m in model.visual.modules() if m._parameters])
    changed = {k for k, v in model.visual.named_parameters() if not torch.equal(before[k], v)}
    # norms reset to their (already initial) ones/zeros; every other parameter is redrawn
    expected = {k for k in before if "norm" not in k}
    assert expected <= changed
    assert {"cls_token", "reg_token", "pos_embed"} <= changed


def test_map_similarity_values():
    g = np.random.default_rng(0)
    a = g.random((2, 16, 16))
    same = map_similarity(a, a)
    assert same == pytest.approx({"spearman_rank_corr": 1.0, "abs_spearman": 1.0, "pearson": 1.0, "ssim": 1.0})
    inverted = map_similarity(a, 1.0 - a)
    assert inverted["spearman_rank_corr"] == pytest.approx(-1.0) and inverted["abs_spearman"] == pytest.approx(1.0)
    # monotone transform keeps ranks but not linearity
    mono = map_similarity(a, a**4)
    assert mono["spearman_rank_corr"] == pytest.approx(1.0) and mono["pearson"] < 0.95
    indep = map_similarity(a, g.random((2, 16, 16)))
    assert abs(indep["spearman_rank_corr"]) < 0.2
    flat = map_similarity(np.zeros((1, 8, 8)), g.random((1, 8, 8)))
    assert flat["spearman_rank_corr"] == 0.0 and flat["pearson"] == 0.0
    with pytest.raises(ValueError, match="same shape"):
        map_similarity(a, a[:, :8])



class TimmTowerCLIP(nn.Module):
    """open_clip's timm wrapper layout: ``visual.trunk`` (timm ViT) + ``visual.head.proj`` (as BiomedCLIP)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.visual = nn.Module()
        self.visual.trunk = TimmViT(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
        self.visual.head = nn.Sequential()
        self.visual.head.add_module("proj", nn.Linear(32, 16, bias=False))

    def encode_image(self, x):
        return F.normalize(self.visual.head(self.visual.trunk(x.expand(-1, 3, -1, -1))), dim=-1)


def _head_weight_map(model, x, target):
    """A 'map' that depends only on the projection head's weights: tells whether the head was randomised."""
    w = model.visual.head.proj.weight if hasattr(model.visual, "head") else model.visual.proj
    return w.detach().flatten()[:256].reshape(1, 16, 16).expand(x.shape[0], -1, -1).clone()


def test_randomization_check_randomises_the_timm_projection_head_first():
    model = TimmTowerCLIP()
    x, target = make_inputs()
    res = randomization_check(model, x, target, layers="all", explainer=_head_weight_map)
    assert res["changed"] is True and res["abs_spearman"] < 0.3  # head.proj was redrawn
    res = randomization_check(model, x, target, layers="cascade", n_steps=100, explainer=_head_weight_map)
    assert res["steps"][0]["randomized"] == ["head.proj"]
    assert res["steps"][0]["abs_spearman"] < 0.3
    names = [n for s in res["steps"] for n in s["randomized"]]
    assert names.index("head.proj") < names.index("trunk.blocks.1.mlp.fc2") < names.index("trunk.patch_embed.proj")


def test_randomization_check_open_clip_proj_first():
    from mammolens.models import create_model

    model = create_model("tiny-clip")
    x = torch.rand(1, 1, 224, 224)
    res = randomization_check(model, x, None, layers="cascade", n_steps=100, explainer=_head_weight_map)
    assert res["steps"][0]["randomized"] == ["proj"] and res["steps"][0]["abs_spearman"] < 0.3
    assert res["steps"][-1]["randomized"] == ["(tower)"]  # class and position embeddings: the input end


def test_randomization_check_inverted_map_is_not_a_change():
    model = make_vit()
    x, target = make_inputs()

    def inverting(m, xx, tt):  # the randomised copy gives the inverted map of the trained model
        cam = edge_explainer(m, xx, tt)
        return cam if m is model else 1.0 - cam

    res = randomization_check(model, x, target, layers="all", explainer=inverting)
    assert res["spearman_rank_corr"] == pytest.approx(-1.0) and res["abs_spearman"] == pytest.approx(1.0)
    assert res["changed"] is False
