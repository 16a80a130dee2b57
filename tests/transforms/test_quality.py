"""Tests for mammolens.transforms.quality (the image quality gate)."""

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from mammolens.data.synthetic import render_breast
from mammolens.transforms.quality import QualityCfg, check_image


def text_page(dark: bool = False, font_size: int | None = None, shape=(1100, 850)) -> np.ndarray:
    """A rendered text page in [0, 1] (black on white, or white on black with ``dark``)."""
    img = Image.new("L", shape[::-1], 255)
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_size) if font_size else None
    step = (font_size or 15) + 10
    for i in range((shape[0] - 60) // step):
        d.text((40, 30 + i * step), f"Lorem ipsum dolor sit amet, TEST PAGE line {i}", fill=0, font=font)
    a = np.asarray(img, np.float32) / 255.0
    return 1.0 - a if dark else a


def breast(seed: int = 0, size=(256, 208), view="MLO") -> np.ndarray:
    return np.clip(render_breast(np.random.default_rng(seed), size, "L", view, 0.3)[0], 0, 1).astype(np.float32)


def test_check_image_passes_synthetic_mammograms():
    for seed, view in [(0, "CC"), (1, "MLO"), (2, "CC")]:
        q = check_image(breast(seed, view=view))
        assert q.ok and q.reason == "", q
        assert 0.2 < q.measures["breast_fraction"] < 0.9


def test_check_image_rejects_tiny_images():
    q = check_image(np.array([[0.2, 0.9]], np.float32))  # the 1x2-pixel image of the issue
    assert not q.ok and q.reason.startswith("not assessable: image too small (1x2 px")
    assert check_image(np.full((63, 500), 0.5, np.float32)).reason.startswith("not assessable: image too small")
    assert check_image(breast()[:40], QualityCfg(min_side=32)).ok is False  # a 40-px strip: other checks decide
    assert check_image(breast(), QualityCfg(min_side=300)).reason.startswith("not assessable: image too small")


def test_check_image_rejects_nan_and_constant():
    img = breast()
    img[10, 10] = np.nan
    assert "NaN" in check_image(img).reason
    img[10, 10] = np.inf
    assert "NaN or infinite" in check_image(img).reason
    q = check_image(np.full((200, 160), 0.4, np.float32))
    assert not q.ok and "constant image" in q.reason and q.measures["std"] < 1e-6


@pytest.mark.parametrize("dark", [False, True])
@pytest.mark.parametrize("font_size", [None, 40, 80])
def test_check_image_rejects_text_pages(dark, font_size):
    q = check_image(text_page(dark, font_size))
    assert not q.ok
    assert "breast area" in q.reason or "sharp edges" in q.reason or "foreground is flat" in q.reason


def test_check_image_rejects_noise_and_photo_like_fields():
    rng = np.random.default_rng(0)
    assert "breast area" in check_image(rng.random((400, 300), dtype=np.float32)).reason
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(rng.random((512, 512)), 8)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    assert not check_image(smooth.astype(np.float32)).ok


def test_check_image_dbt_stack_and_disabled():
    stack = np.stack([breast(0), breast(0) * 0.9])
    assert check_image(stack).ok
    assert check_image(np.zeros((1, 2)), QualityCfg(enabled=False)).ok
    assert "2-D" in check_image(np.zeros((2, 2, 2, 2))).reason


def test_quality_cfg_validates_and_roundtrips():
    with pytest.raises(ValueError, match="min_breast_fraction"):
        QualityCfg(min_breast_fraction=0.9, max_breast_fraction=0.5)
    with pytest.raises(ValueError, match="min_side"):
        QualityCfg(min_side=0)
    cfg = QualityCfg(min_side=32, ood=False)
    assert QualityCfg.from_dict(cfg.to_dict()) == cfg and QualityCfg.from_dict(None) == QualityCfg()


def test_check_image_passes_real_films(mini_mias):
    """mini-MIAS film mammograms (every 4th of 322) all pass; their breast fractions lie in the range."""
    from mammolens.io import read_image

    paths = sorted((mini_mias / "images").glob("mdb*.png"))[::4]
    results = [check_image(read_image(p).pixels) for p in paths]
    failed = [(p.name, q.reason) for p, q in zip(paths, results) if not q.ok]
    assert not failed
    fr = [q.measures["breast_fraction"] for q in results]
    assert 0.1 < min(fr) and max(fr) < 0.95
