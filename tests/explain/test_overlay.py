"""Tests for mammolens.explain.overlay.render_heatmap: the heat map a person reads."""

import numpy as np
import pytest

from mammolens.explain.overlay import colorize, heatmap_panel_width, render_heatmap


def _scene(h=300, w=200):
    img = np.tile(np.linspace(0.2, 0.8, w, dtype=np.float32), (h, 1))  # [H, W] grey ramp
    cam = np.zeros((h, w), np.float32)
    cam[50:150, 40:120] = 0.9  # one hot block
    cam[200:260, 40:120] = 0.05  # faint: below the threshold
    return img, cam


def test_render_heatmap_keeps_image_size_and_adds_a_panel():
    img, cam = _scene()
    fig = render_heatmap(img, cam, "D", 0.83)
    pw = heatmap_panel_width(300, "D", 0.83)
    assert fig.dtype == np.uint8 and fig.shape == (300, 200 + pw, 3) and pw > 40
    assert heatmap_panel_width(300, "heterogeneously-dense", 0.83) > pw  # the title fits the class name


def test_render_heatmap_colours_only_above_threshold():
    img, cam = _scene()
    fig = render_heatmap(img, cam, "D", 0.83, alpha=0.5, threshold=0.15, cmap="jet")
    grey = np.rint(img * 255).astype(np.uint8)
    quiet = cam < 0.15
    for c in range(3):  # the faint area and the background stay exactly grey
        assert np.array_equal(fig[:, :200, c][quiet], grey[quiet])
    want = 0.5 * img[100, 80] * 255 + 0.5 * colorize(np.array([[0.9]]), "jet")[0, 0] * 255
    np.testing.assert_allclose(fig[100, 80].astype(float), want, atol=1.5)
    assert fig[100, 80, 0] > fig[100, 80, 2] + 40  # jet at 0.9 is red, not the grey underneath


def test_render_heatmap_colour_bar_runs_from_threshold_grey_to_top_colour():
    img, cam = _scene(h=400)
    fig = render_heatmap(img, np.zeros_like(img), "C", None, cmap="jet", threshold=0.15)
    panel = fig[:, 200:].astype(int)
    bg = np.array([13, 19, 26])
    in_bar = (np.abs(panel[:, 8:14] - bg).sum(-1) > 30).all(1)  # columns inside the bar (half a font in)
    assert in_bar[250]
    top = bottom = 250  # the bar is the contiguous run of coloured rows around the middle
    while in_bar[top - 1]:
        top -= 1
    while in_bar[bottom + 1]:
        bottom += 1
    jet1 = np.rint(colorize(np.array([[1.0]]), "jet")[0, 0] * 255)
    np.testing.assert_allclose(panel[top, 10], jet1, atol=6)  # the top of the bar is 1
    np.testing.assert_array_equal(panel[bottom - 1, 10], [96, 96, 96])  # below the threshold: no colour
    assert (bottom - top) > 0.6 * 400
    title = panel[: top - 4]
    assert (title.max(-1) > 200).sum() > 50  # white title text above the bar


def test_render_heatmap_accepts_uint8_and_checks_shapes():
    img, cam = _scene()
    a = render_heatmap(np.rint(img * 255).astype(np.uint8), cam, "B")
    b = render_heatmap(img, cam, "B")
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="to_original"):
        render_heatmap(img, cam[:10], "B")
    with pytest.raises(ValueError, match="threshold"):
        render_heatmap(img, cam, "B", threshold=2.0)
