"""Tests for mammolens.explain.gradcam / overlay (CPU, tiny random models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mammolens.explain import (
    ClassSimilarityTarget,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    OutputIndexTarget,
    TokenLayout,
    find_target_layer,
    overlay,
    save_overlay,
    token_layout,
    tokens_to_grid,
)

timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402


# --------------------------------------------------------------------------------------------------
# Tiny models with the MammoCLIP interface (encode_image / class_embeddings / .visual).
# --------------------------------------------------------------------------------------------------
class TinyCLIP(nn.Module):
    """Minimal stand-in for ``MammoCLIP``: grey -> 3 channels inside, L2-normalised embeddings."""

    def __init__(self, visual: nn.Module, feat_dim: int, embed_dim: int = 16, n_classes: int = 4,
                 image_size: int | tuple[int, int] | None = None):
        super().__init__()
        self.visual = visual
        self.proj = nn.Linear(feat_dim, embed_dim)
        self.image_size = image_size
        self.logit_scale = nn.Parameter(torch.tensor(np.log(100.0), dtype=torch.float32))
        g = torch.Generator().manual_seed(123)
        self.register_buffer("text", F.normalize(torch.randn(n_classes, embed_dim, generator=g), dim=-1))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return F.normalize(self.proj(self.visual((x - 0.5) / 0.25)), dim=-1)  # [B, D]

    def class_embeddings(self, task) -> torch.Tensor:
        return self.text  # [K, D]

    def forward(self, x, text_emb):
        return self.logit_scale.exp() * self.encode_image(x) @ text_emb.T


def timm_vit(**kw) -> nn.Module:
    cfg = dict(img_size=96, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=0,
               dynamic_img_size=True)
    cfg.update(kw)
    return TimmViT(**cfg)


def make_model(variant: str) -> TinyCLIP:
    torch.manual_seed(0)
    if variant == "timm_vit_cls":
        return TinyCLIP(timm_vit(), 32)
    if variant == "timm_vit_noclass_avg":
        return TinyCLIP(timm_vit(class_token=False, global_pool="avg"), 32)
    if variant == "timm_vit_reg4":
        return TinyCLIP(timm_vit(reg_tokens=4, no_embed_class=True), 32)
    if variant == "timm_vit_reg4_noclass":
        return TinyCLIP(timm_vit(reg_tokens=4, class_token=False, global_pool="avg"), 32)
    if variant == "timm_vit_reg4_pad":
        return TinyCLIP(timm_vit(reg_tokens=4, dynamic_img_pad=True), 32)
    if variant == "timm_resnet18":
        return TinyCLIP(timm.create_model("resnet18", pretrained=False, num_classes=0), 512)
    raise KeyError(variant)


def make_open_clip_vit(image_size) -> TinyCLIP:
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=image_size, patch_size=16, width=32, layers=2, heads=2,
                            mlp_ratio=2.0, output_dim=24)
    return TinyCLIP(vit, 24, image_size=image_size)


def make_open_clip_resnet() -> TinyCLIP:
    from open_clip.modified_resnet import ModifiedResNet

    torch.manual_seed(0)
    return TinyCLIP(ModifiedResNet(layers=[1, 1, 1, 1], output_dim=24, heads=2, image_size=64, width=16),
                    24, image_size=64)


def make_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 1, h, w, generator=g)  # [B=2, 1, H, W]


def assert_valid_maps(maps: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert tuple(maps.shape) == shape
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    # normalised per image: a map reaches exactly 1, or is 0 everywhere (no positive evidence)
    peaks = maps.flatten(1).amax(dim=1)
    assert all(float(p) in (0.0, 1.0) for p in peaks) and peaks.max() == 1.0


def no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               and not getattr(m, "_backward_pre_hooks", {}) for m in model.modules())


def registry_model(name: str, image_size):
    models = pytest.importorskip("mammolens.models")
    if not hasattr(models, "create_model"):
        pytest.skip("mammolens.models.create_model is not available")
    torch.manual_seed(0)
    return models.create_model(name, image_size=image_size)


# --------------------------------------------------------------------------------------------------
# Shapes, values, variants.
# --------------------------------------------------------------------------------------------------
VIT_VARIANTS = ["timm_vit_cls", "timm_vit_noclass_avg", "timm_vit_reg4", "timm_vit_reg4_noclass"]
SIZES = [(96, 96), (128, 160), (224, 224)]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("variant", VIT_VARIANTS + ["timm_resnet18"])
def test_gradcam_map_shape_matches_input(variant, size):
    model = make_model(variant)
    x = make_image(*size)
    target = ClassSimilarityTarget(model.class_embeddings(None), k=[1, 2])
    with GradCAM(model) as cam:
        maps = cam.compute(x, target)
    assert_valid_maps(maps, (2, *size))
    assert cam.scores.shape == (2,)


@pytest.mark.parametrize(("name", "size", "layout"), [
    ("tiny-clip", 96, TokenLayout(1, (16, 16))),
    ("tiny-clip", (96, 128), TokenLayout(1, (16, 16))),
    ("timm:vit_small_patch14_reg4_dinov2", 56, TokenLayout(5, (14, 14))),
    ("timm:resnet18", 64, None),
], ids=["tiny-clip-96", "tiny-clip-96x128", "dinov2-reg4-56", "resnet18-64"])
def test_gradcam_registry_models(name, size, layout):
    model = registry_model(name, size)
    hw = (size, size) if isinstance(size, int) else size
    assert token_layout(model.visual) == layout
    with GradCAM(model) as cam:
        maps = cam.compute(make_image(*hw), ClassSimilarityTarget(model.class_embeddings("density"), k=[0, 3]))
    assert_valid_maps(maps, (2, *hw))
    assert no_hooks_left(model)


@pytest.mark.parametrize("variant", ["timm_vit_reg4_pad", "timm_resnet18"])
def test_gradcam_size_not_divisible_by_patch(variant):
    model = make_model(variant)
    with GradCAM(model) as cam:
        maps = cam.compute(make_image(100, 70), ClassSimilarityTarget(model.class_embeddings(None), k=0))
    assert_valid_maps(maps, (2, 100, 70))


@pytest.mark.parametrize("image_size", [64, (64, 96)], ids=["64", "64x96"])
def test_gradcam_open_clip_vit_shape(image_size):
    model = make_open_clip_vit(image_size)
    hw = (image_size, image_size) if isinstance(image_size, int) else image_size
    x = make_image(*hw)
    with GradCAM(model) as cam:
        maps = cam.compute(x, ClassSimilarityTarget(model.class_embeddings(None), k=0))
    assert_valid_maps(maps, (2, *hw))


def test_gradcam_open_clip_modified_resnet_shape():
    model = make_open_clip_resnet()
    with GradCAM(model) as cam:
        maps = cam.compute(make_image(64, 64), ClassSimilarityTarget(model.class_embeddings(None), k=3))
    assert_valid_maps(maps, (2, 64, 64))


def test_gradcam_open_clip_timm_trunk_is_unwrapped():
    """BiomedCLIP's image tower is an open_clip TimmModel wrapping a timm ViT (``.visual.trunk``)."""
    from open_clip.timm_model import TimmModel

    torch.manual_seed(0)
    model = TinyCLIP(TimmModel("vit_tiny_patch16_224", embed_dim=16, image_size=224), 16)
    assert find_target_layer(model) is model.visual.trunk.blocks[-1].norm1
    assert token_layout(model.visual) == TokenLayout(1, (16, 16))
    with GradCAM(model) as cam:
        maps = cam.compute(make_image(224, 224), ClassSimilarityTarget(model.class_embeddings(None), k=1))
    assert_valid_maps(maps, (2, 224, 224))


@pytest.mark.parametrize("cam_cls", [GradCAM, GradCAMPlusPlus, HiResCAM])
def test_cam_variants_valid_and_differ_from_each_other(cam_cls):
    model = make_model("timm_vit_reg4")
    x = make_image(96, 96)
    target = ClassSimilarityTarget(model.class_embeddings(None), k=0)
    with cam_cls(model) as cam:
        maps = cam.compute(x, target)
    assert_valid_maps(maps, (2, 96, 96))
    if cam_cls is not GradCAM:
        with GradCAM(model) as cam:
            ref = cam.compute(x, target)
        assert not torch.allclose(ref, maps)


def test_token_layout_prefix_counts():
    assert token_layout(timm_vit()).num_prefix_tokens == 1
    assert token_layout(timm_vit(class_token=False, global_pool="avg")).num_prefix_tokens == 0
    assert token_layout(timm_vit(reg_tokens=4)).num_prefix_tokens == 5
    assert token_layout(timm_vit(reg_tokens=4, class_token=False, global_pool="avg")).num_prefix_tokens == 4
    assert token_layout(timm_vit(patch_size=8)).patch_size == (8, 8)
    oc = make_open_clip_vit(64).visual
    assert token_layout(oc) == TokenLayout(1, (16, 16), batch_first=oc.transformer.batch_first)
    assert token_layout(timm.create_model("resnet18", pretrained=False)) is None


def test_token_layout_grid_from_input_size():
    layout = TokenLayout(5, (16, 8))
    assert layout.grid((128, 160)) == (8, 20)
    assert layout.grid((100, 70)) == (6, 8)  # floor, as a strided conv does
    assert TokenLayout(0, (16, 16), pad=True).grid((100, 70)) == (7, 5)


def test_tokens_to_grid_row_major_after_prefix():
    b, prefix, gh, gw = 2, 5, 3, 4
    values = torch.arange(prefix + gh * gw, dtype=torch.float32)  # token index as its value
    tokens = values[None, :, None].expand(b, -1, 2).clone()  # [B, N, C=2]
    grid = tokens_to_grid(tokens, TokenLayout(prefix, (16, 16)), (gh * 16, gw * 16))
    assert grid.shape == (b, 2, gh, gw)
    expected = torch.arange(gh * gw, dtype=torch.float32).reshape(gh, gw) + prefix
    assert torch.equal(grid[0, 0], expected)
    assert torch.equal(grid[1, 1], expected)


def test_tokens_to_grid_mismatch_is_a_clear_error():
    tokens = torch.zeros(1, 1 + 36, 8)
    with pytest.raises(ValueError, match=r"37 tokens - 1 prefix tokens = 36.*7x7 = 49"):
        tokens_to_grid(tokens, TokenLayout(1, (16, 16)), (112, 112))


def test_find_target_layer_defaults():
    vit = make_model("timm_vit_reg4")
    assert find_target_layer(vit) is vit.visual.blocks[-1].norm1
    oc = make_open_clip_vit(64)
    assert find_target_layer(oc) is oc.visual.transformer.resblocks[-1].ln_1
    rn = make_model("timm_resnet18")
    assert find_target_layer(rn) is rn.visual.layer4[-1]
    ocr = make_open_clip_resnet()
    assert find_target_layer(ocr) is ocr.visual.layer4[-1]
    with pytest.raises(ValueError, match="target_layer"):
        find_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


# --------------------------------------------------------------------------------------------------
# Hooks, modes, gradients.
# --------------------------------------------------------------------------------------------------
def test_gradcam_hooks_released_on_exit_and_on_exception():
    model = make_model("timm_vit_cls")
    target = ClassSimilarityTarget(model.class_embeddings(None), k=0)
    with GradCAM(model) as cam:
        assert not no_hooks_left(model)
        cam.compute(make_image(96, 96), target)
    assert no_hooks_left(model)

    with pytest.raises(RuntimeError, match="boom"):
        with GradCAM(model) as cam:
            def bad_target(out):
                raise RuntimeError("boom")
            cam.compute(make_image(96, 96), bad_target)
    assert no_hooks_left(model)

    # outside a with-block compute registers and releases its own hooks, also on error
    cam = GradCAM(model)
    cam.compute(make_image(96, 96), target)
    assert no_hooks_left(model)
    with pytest.raises(ValueError, match="class index"):
        cam.compute(make_image(96, 96), ClassSimilarityTarget(model.class_embeddings(None), k=9))
    assert no_hooks_left(model)


def test_gradcam_restores_training_mode_and_leaves_param_grads():
    model = make_model("timm_vit_cls").train()
    with GradCAM(model) as cam:
        cam.compute(make_image(96, 96), ClassSimilarityTarget(model.class_embeddings(None), k=0))
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_gradcam_works_under_no_grad_and_frozen_weights():
    model = make_model("timm_vit_reg4")
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad(), GradCAM(model) as cam:
        maps = cam.compute(make_image(96, 96), ClassSimilarityTarget(model.class_embeddings(None), k=2))
    assert_valid_maps(maps, (2, 96, 96))


@pytest.mark.parametrize("variant", ["timm_vit_reg4", "timm_resnet18"])
def test_target_input_gradient_has_no_nan(variant):
    model = make_model(variant).eval()
    target = ClassSimilarityTarget(model.class_embeddings(None), k=1)
    x = torch.cat([torch.zeros(1, 1, 96, 96), torch.ones(1, 1, 96, 96)]).requires_grad_(True)
    target(model.encode_image(x)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    maps = GradCAM(model).compute(x.detach(), target)
    assert torch.isfinite(maps).all()


def test_gradcam_flat_target_gives_zero_map_not_nan():
    model = make_model("timm_vit_cls")
    maps = GradCAM(model).compute(make_image(96, 96), lambda out: out.sum(dim=1) * 0.0)
    assert torch.equal(maps, torch.zeros(2, 96, 96))


def test_class_similarity_target_is_cosine():
    g = torch.Generator().manual_seed(0)
    out, text = torch.randn(3, 8, generator=g), torch.randn(4, 8, generator=g)
    got = ClassSimilarityTarget(text, k=[0, 3, 2])(out)
    want = torch.stack([F.cosine_similarity(out[i], text[k], dim=0) for i, k in enumerate([0, 3, 2])])
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(ClassSimilarityTarget(text, k=1)(out), F.cosine_similarity(out, text[1:2]))
    with pytest.raises(ValueError, match="embeddings"):
        ClassSimilarityTarget(text, k=0)(torch.randn(3, 5))
    assert torch.equal(OutputIndexTarget(2)(out), out[:, 2])


# --------------------------------------------------------------------------------------------------
# Known target regions.
# --------------------------------------------------------------------------------------------------
class BrightSpotCNN(nn.Module):
    """Channel 0 detects brightness, channel 1 is a constant: the embedding turns towards class 0's
    direction [1, 0] as the bright area grows, so the evidence for class 0 is the bright region."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0] = 1.0 / 9.0
            self.conv.bias.copy_(torch.tensor([0.0, 0.3]))

    def encode_image(self, x):
        return F.normalize(self.conv(x).relu().mean(dim=(2, 3)), dim=-1)  # [B, 2]


def quadrant_mass(cam: torch.Tensor) -> torch.Tensor:
    """Share of CAM mass per quadrant [TL, TR, BL, BR] of ``cam [H, W]``."""
    h, w = cam.shape
    q = torch.stack([cam[: h // 2, : w // 2].sum(), cam[: h // 2, w // 2:].sum(),
                     cam[h // 2:, : w // 2].sum(), cam[h // 2:, w // 2:].sum()])
    return q / q.sum()


def test_gradcam_cnn_mass_on_the_evidence_quadrant():
    x = torch.zeros(1, 1, 64, 80)
    x[:, :, 8:24, 50:70] = 1.0  # bright spot in the top-right quadrant
    cam = GradCAM(BrightSpotCNN()).compute(x, ClassSimilarityTarget(torch.eye(2), k=0))[0]
    mass = quadrant_mass(cam)
    assert mass.argmax() == 1 and mass[1] > 0.95
    assert cam[10:22, 52:68].min() > 0.9 and cam[40:, :30].max() == 0.0


class QuadrantViT(nn.Module):
    """A timm ViT with register tokens whose embedding reads only the top-right quadrant's patch
    tokens after the last block; the ground truth uses timm's row-major token layout."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.visual = timm_vit(reg_tokens=4, embed_dim=32)
        self.proj = nn.Linear(32, 8)

    def encode_image(self, x):
        x = x.expand(-1, 3, -1, -1)
        b, _, h, w = x.shape
        gh, gw = h // 16, w // 16
        tokens = self.visual.forward_features(x)[:, self.visual.num_prefix_tokens:]  # [B, gh*gw, C]
        grid = tokens.reshape(b, gh, gw, -1)
        return F.normalize(self.proj(grid[:, : gh // 2, gw // 2:].mean(dim=(1, 2))), dim=-1)


@pytest.mark.parametrize("size", [(64, 96), (96, 64)], ids=["64x96", "96x64"])
def test_hirescam_vit_mass_in_the_only_quadrant_the_model_reads(size):
    model = QuadrantViT()
    x = make_image(*size, seed=3)
    text = F.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    with HiResCAM(model, target_layer=model.visual.blocks[-1]) as cam:
        maps = cam.compute(x, ClassSimilarityTarget(text, k=[0, 1]))
    assert_valid_maps(maps, (2, *size))
    h, w = size
    for m in maps:
        mass = quadrant_mass(m)
        assert mass.argmax() == 1 and mass[1] > 0.75
        # beyond half a patch from the quadrant, bilinear upsampling cannot leak any mass
        assert m[h // 2 + 8:, :].max() == 0.0 and m[:, : w // 2 - 8].max() == 0.0


# --------------------------------------------------------------------------------------------------
# Overlays.
# --------------------------------------------------------------------------------------------------
def test_overlay_blends_image_and_colormap():
    img = np.zeros((8, 10), np.float32)
    cam = np.zeros((8, 10), np.float32)
    cam[0, 0] = 1.0
    rgb = overlay(img, cam, alpha=1.0, cmap="gray")
    assert rgb.shape == (8, 10, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[5, 5].tolist() == [0, 0, 0]
    only_image = overlay(np.full((8, 10), 0.5, np.float32), cam, alpha=0.0)
    assert np.all(only_image == 128)
    jet = overlay(img, cam, alpha=0.5, cmap="jet")
    assert jet[0, 0, 0] > jet[0, 0, 2]  # hot = red end of jet
    with pytest.raises(ValueError, match="same"):
        overlay(img, cam[:4])
    with pytest.raises(ValueError, match="colormap"):
        overlay(img, cam, cmap="no-such-map")


def test_save_overlay_writes_png(tmp_path):
    from PIL import Image

    cam = np.linspace(0, 1, 60, dtype=np.float32).reshape(6, 10)
    path = save_overlay(tmp_path / "sub" / "a.png", np.full((6, 10), 0.2, np.float32), cam)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (10, 6) and im.mode == "RGB"
        assert np.array_equal(np.asarray(im), overlay(np.full((6, 10), 0.2, np.float32), cam))


