import numpy as np
import pytest

from mammolens.data.cache import PreprocessCfg
from mammolens.transforms.breast import (
    breast_mask,
    breast_side,
    crop_to_mask,
    flip_to_left,
    mask_bbox,
    otsu_threshold,
    preprocess_image,
    resize_pad,
)


def synthetic_breast(h=400, w=300, side="L", label=True, seed=0):
    """Half-ellipse 'breast' against the left (or right) edge, plus a bright film label far from it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, ry, rx = h / 2, h * 0.4, w * 0.6
    inside = ((yy - cy) / ry) ** 2 + (xx / rx) ** 2 <= 1.0
    img = np.zeros((h, w), np.float32)
    img[inside] = 0.35 + 0.3 * rng.random(inside.sum()).astype(np.float32)  # fat + dense texture
    img += 0.01 * rng.random((h, w)).astype(np.float32)  # detector noise
    if label:
        img[10:40, w - 60 : w - 15] = 1.0  # a bright label, not touching the breast
    if side == "R":
        img, inside = img[:, ::-1].copy(), inside[:, ::-1].copy()
    return np.clip(img, 0, 1), inside


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_otsu_threshold_separates_two_modes():
    v = np.concatenate([np.full(100, 0.1), np.full(100, 0.8)])
    t = otsu_threshold(v)
    assert 0.1 < t <= 0.8


def test_breast_mask_matches_known_geometry_and_drops_label():
    img, truth = synthetic_breast()
    mask = breast_mask(img)
    assert mask.shape == img.shape and mask.dtype == bool
    assert iou(mask, truth) > 0.95
    assert not mask[10:40, 240:285].any()  # the label is not the largest component


def test_breast_mask_downsampled_path_keeps_shape_and_iou():
    img, truth = synthetic_breast(h=1203, w=901)  # not a multiple of the downsample factor
    mask = breast_mask(img, max_side=256)
    assert mask.shape == img.shape
    assert iou(mask, truth) > 0.95


def test_breast_mask_fills_holes():
    img, truth = synthetic_breast(label=False)
    img[190:210, 40:60] = 0.0  # a dark hole inside the breast
    mask = breast_mask(img)
    assert mask[195:205, 45:55].all()


def test_breast_mask_blank_image_is_empty():
    assert not breast_mask(np.zeros((50, 60), np.float32)).any()


def test_breast_mask_rejects_3d():
    with pytest.raises(ValueError, match="2-D"):
        breast_mask(np.zeros((2, 3, 4)))


def test_crop_to_mask_bbox_and_margin():
    img = np.arange(100, dtype=np.float32).reshape(10, 10)
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:7] = True
    crop, bbox = crop_to_mask(img, mask)
    assert bbox == (2, 5, 3, 7)
    np.testing.assert_array_equal(crop, img[2:5, 3:7])
    _, bbox = crop_to_mask(img, mask, margin=3)
    assert bbox == (0, 8, 0, 10)  # clipped at the borders
    assert mask_bbox(np.zeros((4, 5), bool)) == (0, 4, 0, 5)


def test_crop_to_mask_shape_mismatch_raises():
    with pytest.raises(ValueError, match="does not match"):
        crop_to_mask(np.zeros((4, 4)), np.zeros((4, 5), bool))


@pytest.mark.parametrize("side", ["L", "R"])
def test_breast_side_detects_chest_wall(side):
    img, truth = synthetic_breast(side=side)
    assert breast_side(img) == side
    assert breast_side(truth) == side


def test_flip_to_left_round_trip_and_laterality():
    img, _ = synthetic_breast(side="R")
    out, flipped = flip_to_left(img)
    assert flipped and breast_side(out) == "L"
    np.testing.assert_array_equal(out[:, ::-1], img)
    out2, flipped2 = flip_to_left(out)
    assert not flipped2 and out2 is out
    _, f = flip_to_left(out, laterality="R")  # header wins when given
    assert f
    with pytest.raises(ValueError, match="laterality"):
        flip_to_left(img, laterality="X")


def test_resize_pad_letterbox_geometry():
    img = np.ones((200, 100), np.float32)
    out = resize_pad(img, 64)
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert np.allclose(out[:, :32], 1.0) and np.allclose(out[:, 32:], 0.0)  # left-aligned, padded right
    wide = resize_pad(np.ones((50, 100), np.float32), 64)
    assert np.allclose(wide[16:48], 1.0) and np.allclose(wide[:16], 0) and np.allclose(wide[48:], 0)
    stretched = resize_pad(img, 64, keep_aspect=False)
    assert np.allclose(stretched, 1.0)


def test_resize_pad_antialiases():
    checker = (np.indices((256, 256)).sum(0) % 2).astype(np.float32)  # highest frequency
    out = resize_pad(checker, 32)
    assert abs(float(out.mean()) - 0.5) < 0.02 and float(out.std()) < 0.05  # averaged, not aliased


def test_preprocess_image_orients_crops_and_quantises():
    img, _ = synthetic_breast(side="R")
    out, info = preprocess_image(img, PreprocessCfg(size=64))
    assert out.shape == (64, 64) and out.dtype == np.uint16
    assert info["flipped"] and info["side"] == "R"
    assert breast_side(out.astype(np.float32) / 65535) == "L"
    assert info["bbox"][3] == img.shape[1]  # chest wall at the right edge before flipping
    assert out.max() > 30000 and out[:, :2].mean() > 10000  # breast flush with the left edge
    out_l, info_l = preprocess_image(img[:, ::-1].copy(), PreprocessCfg(size=64))
    assert not info_l["flipped"]
    np.testing.assert_array_equal(out, out_l)  # same picture whichever way it came in


def test_preprocess_image_no_crop_no_flip_is_plain_resize():
    img = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    cfg = PreprocessCfg(size=32, crop=False, mask_background=False, flip="none")
    out, info = preprocess_image(img, cfg)
    np.testing.assert_array_equal(out, np.rint(img * 65535).astype(np.uint16))
    assert not info["flipped"] and info["bbox"] == (0, 32, 0, 32)


def test_preprocess_image_stack_uses_max_projection():
    a, _ = synthetic_breast(label=False)
    stack = np.stack([a * 0.5, a, a * 0.2])
    out_stack, _ = preprocess_image(stack, PreprocessCfg(size=32))
    out_max, _ = preprocess_image(a, PreprocessCfg(size=32))
    np.testing.assert_array_equal(out_stack, out_max)


def _mias(mini_mias, n):
    from PIL import Image

    return np.asarray(Image.open(mini_mias / "images" / f"mdb{n:03d}.png"), dtype=np.float32) / 255.0


def test_breast_mask_mini_mias_plausible_and_removes_label(mini_mias):
    img = _mias(mini_mias, 2)  # left MLO with an 'R ML' film label at rows 90-240, cols 715-810
    mask = breast_mask(img)
    assert 0.2 < mask.mean() < 0.7
    assert not mask[100:230, 720:805].any()
    assert mask[600, 300]  # breast tissue


def test_breast_mask_mini_mias_removes_label_touching_the_breast(mini_mias):
    # mdb005: an 'L ML' label at rows 0-90, cols 226-344 whose right edge touches the faint skin line and
    # whose top is joined to the breast by a bright film edge: one component with the breast before
    img = _mias(mini_mias, 5)
    label = np.zeros(img.shape, bool)
    label[:90, 226:345] = img[:90, 226:345] > 0.85
    assert label.sum() > 4000
    mask = breast_mask(img)
    assert mask[label].mean() < 0.02
    assert 0.5 < mask.mean() < 0.6 and mask[600, 600] and mask[700, 240]  # the breast, to its left edge
    # the cached image carries no label: letterboxed crop (rows 0-1024, cols 220-844) at 1/4 scale
    out, info = preprocess_image(img, PreprocessCfg(size=256, flip="none"))
    assert info["bbox"] == (0, 1024, 220, 844)  # the breast's own extent (its lower bulge reaches col 220)
    f = out.astype(np.float32) / 65535
    assert f[1:20, 3:28].max() < 0.05  # where the label was (mean 0.9 before)


@pytest.mark.parametrize("n,side", [(1, "R"), (2, "L"), (3, "R"), (10, "L"), (25, "R"), (100, "L")])
def test_breast_side_mini_mias_matches_laterality(mini_mias, n, side):
    # mini-MIAS: odd numbers are right breasts, chest wall on the image right
    assert breast_side(_mias(mini_mias, n)) == side


def test_preprocess_image_mini_mias_chest_wall_left(mini_mias):
    out, info = preprocess_image(_mias(mini_mias, 1), PreprocessCfg(size=128))
    assert info["flipped"] and 0.1 < info["mask_fraction"] < 0.7
    f = out.astype(np.float32) / 65535
    assert f[:, :16].mean() > f[:, -16:].mean()  # dense chest-wall side now on the left


@pytest.mark.parametrize("shape", [(64, 48), (67, 50), (2048 // 8, 1664 // 8)])
@pytest.mark.parametrize("f", [1, 2, 3, 7])
def test_block_mean_equals_reshape_mean(shape, f):
    from mammolens.transforms.breast import block_mean

    x = np.random.default_rng(f).random(shape, dtype=np.float32)
    h, w = shape[0] // f * f, shape[1] // f * f
    expected = x[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3), dtype=np.float64)
    out = block_mean(x, f)
    assert out.dtype == np.float32 and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-6)
    with pytest.raises(ValueError, match="cannot reduce"):
        block_mean(x[:2, :2], 3)


def test_fill_holes_matches_scipy():
    from scipy import ndimage

    from mammolens.transforms.breast import _fill_holes

    rng = np.random.default_rng(0)
    for _ in range(200):
        fg = ndimage.binary_opening(rng.random((int(rng.integers(1, 50)), int(rng.integers(1, 50)))) < rng.random())
        np.testing.assert_array_equal(_fill_holes(fg), ndimage.binary_fill_holes(fg))


def test_preprocess_image_cleans_non_finite_and_out_of_range_input():
    img, _ = synthetic_breast()  # 400x300: no block reduction at size 160, so the results must be identical
    bad = img.copy()
    bad[5:9, 5:9] = np.nan
    bad[20, 20] = np.inf
    bad[30, 30] = -3.0
    out, _ = preprocess_image(bad, PreprocessCfg(size=160))
    ref, _ = preprocess_image(np.clip(np.nan_to_num(bad, nan=0.0), 0, 1), PreprocessCfg(size=160))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, ref)


# ------------------------------------------------------------------------ inverse geometry (heat maps)
def _rect_image(h, w, box, value=0.6):
    """Black image with a flat bright rectangle ``box = (y0, y1, x0, x1)``: its crop is exactly the box."""
    img = np.zeros((h, w), np.float32)
    img[box[0] : box[1], box[2] : box[3]] = value
    return img


@pytest.mark.parametrize("lat", ["L", "R"])
@pytest.mark.parametrize("box", [(40, 240, 0, 120), (60, 180, 0, 200)])  # tall crop (pad right) / wide (pad top+bottom)
def test_to_original_quadrant_lands_on_bbox_quadrant(lat, box):
    from mammolens.transforms.breast import to_original

    img = _rect_image(300, 240, box)
    cfg = PreprocessCfg(size=64, use_laterality=True)
    _, info = preprocess_image(img, cfg, laterality=lat)
    # the mask is found on a smoothed copy: its box is the rectangle grown by a few pixels
    assert np.abs(np.subtract(info["bbox"], box)).max() <= 6 and info["flipped"] == (lat == "R")
    box = info["bbox"]
    top, nh, nw = info["letterbox"]
    tile = np.zeros((64, 64), np.float32)
    tile[top : top + nh // 2, : nw // 2] = 1.0  # the top-left quadrant of the breast on the tile
    got = to_original(tile, info)
    assert got.shape == (300, 240)
    y0, y1, x0, x1 = box
    ym, xm = (y0 + y1) // 2, (x0 + x1) // 2
    want = np.zeros((300, 240), np.float32)
    if lat == "L":
        want[y0:ym, x0:xm] = 1.0
    else:  # the tile was mirrored: its left is the original's right
        want[y0:ym, xm:x1] = 1.0
    edge = 5  # bilinear resampling blurs a few original pixels at the quadrant's border
    far = np.ones_like(want, bool)
    far[max(y0, ym - edge) : ym + edge] = False
    far[:, xm - edge : xm + edge] = False
    np.testing.assert_allclose(got[far], want[far], atol=1e-3)
    outside = np.ones_like(want, bool)
    outside[y0:y1, x0:x1] = False
    assert np.all(got[outside] == 0.0)


@pytest.mark.parametrize("lat", ["L", "R"])
def test_to_original_round_trips_preprocess_on_checkerboard(lat):
    """Tile -> original reproduces the image inside the crop (block-mean working copy: scale 4)."""
    from mammolens.transforms.breast import to_original

    h, w, box = 1200, 960, (100, 1100, 0, 640)
    yy, xx = np.mgrid[0:h, 0:w]
    img = _rect_image(h, w, box) * (0.5 + 0.5 * (((yy // 100) + (xx // 80)) % 2))  # squares of 100x80 px
    cfg = PreprocessCfg(size=128, use_laterality=True)
    tile, info = preprocess_image(img, cfg, laterality=lat)
    assert min(h, w) // (2 * cfg.size) == 3  # the working copy is block-mean reduced
    back = to_original(tile.astype(np.float32) / 65535.0, info)
    y0, y1, x0, x1 = box
    diff = np.abs(back[y0:y1, x0:x1] - img[y0:y1, x0:x1])
    assert np.median(diff) < 0.01 and np.mean(diff > 0.1) < 0.15  # only the squares' edges blur
    # exact placement: moving the result by one tile pixel (~8 original pixels) either way is worse
    for dy, dx in ((8, 0), (-8, 0), (0, 8), (0, -8)):
        moved = np.roll(back, (dy, dx), axis=(0, 1))[y0:y1, x0:x1]
        assert np.abs(moved - img[y0:y1, x0:x1]).mean() > diff.mean() + 0.005
    b = info["bbox"]
    assert np.all(back[: b[0]] == 0) and np.all(back[:, b[3] :] == 0) and b[3] < w
    # the wrong flip would put dark squares on bright ones: the round trip must beat it by far
    wrong = np.abs(back[y0:y1, x0:x1][:, ::-1] - img[y0:y1, x0:x1])
    assert np.mean(wrong > 0.1) > 0.4


def test_to_original_out_shape_scales_the_geometry():
    from mammolens.transforms.breast import to_original

    img = _rect_image(400, 320, (40, 360, 0, 200))
    _, info = preprocess_image(img, PreprocessCfg(size=64))
    tile = np.random.default_rng(0).random((14, 14)).astype(np.float32)  # a coarse ViT-like grid
    full, half = to_original(tile, info), to_original(tile, info, out_shape=(200, 160))
    assert half.shape == (200, 160) and full.shape == (400, 320)
    np.testing.assert_allclose(half, full.reshape(200, 2, 160, 2).mean((1, 3)), atol=0.05)
    with pytest.raises(ValueError, match="letterbox"):
        to_original(tile, {k: v for k, v in info.items() if k != "letterbox"})


def test_display_copy_bounds_the_longest_side():
    from mammolens.transforms.breast import display_copy

    img = np.linspace(0, 1, 5000 * 30, dtype=np.float32).reshape(5000, 30).repeat(2, 1)  # [5000, 60]
    small, f = display_copy(img, 2048)
    assert f == 3 and small.shape == (1666, 20) and small.dtype == np.uint8 and max(small.shape) <= 2048
    assert small[0, 0] == 0 and small[-1, 0] >= 254
    same, f1 = display_copy(img[:100], 2048)
    assert f1 == 1 and same.shape == (100, 60)
