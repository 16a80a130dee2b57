"""Heat-map overlays of class-activation maps on grey-scale mammograms.

``render_heatmap`` is what a person reads (predict, explain, the report, the web page): the image at its
own geometry, the map coloured only where it is above a small threshold, and a colour bar titled with
the class the map explains. ``overlay`` is the bare blend of two same-sized arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["colorize", "overlay", "save_overlay", "render_heatmap", "heatmap_panel_width", "draw_outlines"]


def _as_2d(name: str, a) -> np.ndarray:
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [H, W] array, got shape {a.shape}.")
    return np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0)


def colorize(cam: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """Maps ``cam [H, W]`` in [0, 1] through a matplotlib colormap to float RGB ``[H, W, 3]``."""
    from matplotlib import colormaps  # lazy: only needed to draw

    try:
        cm = colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colormap {cmap!r}; use a matplotlib name such as 'jet', "
                         "'inferno' or 'viridis'.") from None
    return cm(np.clip(cam, 0.0, 1.0))[..., :3].astype(np.float32)


def overlay(image, cam, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """Blends a heat map over a grey-scale image.

    Args:
        image: ``[H, W]`` float in [0, 1] (MONOCHROME2: bright = dense).
        cam: ``[H, W]`` map in [0, 1] of the same size.
        alpha: weight of the heat map (0 shows only the image, 1 only the map).
        cmap: matplotlib colormap name.

    Returns:
        ``uint8`` RGB array ``[H, W, 3]``.
    """
    img, cam = _as_2d("image", image), _as_2d("cam", cam)
    if img.shape != cam.shape:
        raise ValueError(f"image {img.shape} and cam {cam.shape} must have the same [H, W]; "
                         "compute the CAM at the image's resolution.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    grey = np.repeat(np.clip(img, 0.0, 1.0)[..., None], 3, axis=-1)  # [H, W, 3]
    rgb = (1.0 - alpha) * grey + alpha * colorize(cam, cmap)
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_overlay(path, image, cam, alpha: float = 0.4, cmap: str = "jet") -> Path:
    """Writes :func:`overlay` as a PNG (parent folders are created) and returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, cam, alpha=alpha, cmap=cmap)).save(path, format="PNG")
    return path


_PANEL_BG = (13, 19, 26)  # the page's image background: the panel reads as part of the picture
_BELOW = np.array([96, 96, 96], np.float32)  # colour-bar rows below the threshold: no colour on the image


def _font_size(h: int) -> int:
    return max(12, int(round(h / 40)))  # ~2.5 % of the height: readable when the figure is shown scaled to fit


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _title_lines(class_name: str, prob: float | None, method: str) -> list[str]:
    # a GradCAM map explains a class; a text map explains the sentence it was given
    what = f"class {class_name}" if method == "GradCAM" else f'"{class_name}"'
    return [method, what, *([f"p={prob:.2f}"] if prob is not None else [])]


def heatmap_panel_width(height: int, class_name: str, prob: float | None = None, method: str = "GradCAM") -> int:
    """Width in pixels of the colour-bar panel ``render_heatmap`` adds right of an image ``height`` tall."""
    from PIL import Image, ImageDraw

    fs = _font_size(height)
    font, draw = _font(fs), ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text = max(draw.textlength(t, font=font) for t in _title_lines(class_name, prob, method))
    bar = fs + fs // 3 + draw.textlength("0.5", font=font)
    return int(np.ceil(max(text, bar))) + fs  # half a font of margin each side


def render_heatmap(image, cam, class_name: str, prob: float | None = None, *, method: str = "GradCAM",
                   alpha: float = 0.45, threshold: float = 0.15, cmap: str = "turbo") -> np.ndarray:
    """The image in grey with the heat map blended where it is ``>= threshold``, and a titled colour bar.

    Args:
        image: ``[H, W]`` grey image in [0, 1] (float) or uint8, at the geometry to show (the original
            image or its display copy; ``transforms.breast.to_original`` maps a model-grid map there).
        cam: ``[H, W]`` map in [0, 1] on the same grid.
        class_name: the class the map explains (in the colour bar's title).
        prob: that class's probability, shown under the class when given.
        method: the map's name in the title.
        alpha: weight of the colour where the map is shown.
        threshold: below it the image stays grey (low values would tint the whole breast); the colour
            bar is grey there too.
        cmap: matplotlib colormap name.

    Returns:
        uint8 RGB ``[H, W + P, 3]``: the image at its own size (rows and columns unchanged) and a panel
        ``P = heatmap_panel_width(H, ...)`` wide with the colour bar from 0 (bottom) to 1 (top).
    """
    from PIL import Image, ImageDraw

    img = np.asarray(image)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img
    img, cam = _as_2d("image", img), _as_2d("cam", cam)
    if img.shape != cam.shape:
        raise ValueError(f"image {img.shape} and cam {cam.shape} must have the same [H, W]; map the CAM "
                         "onto the image first (transforms.breast.to_original).")
    if not 0.0 <= alpha <= 1.0 or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"alpha and threshold must be in [0, 1], got {alpha} and {threshold}.")
    lut = colorize(np.linspace(0.0, 1.0, 256, dtype=np.float32), cmap)[..., :3] * 255.0  # [256, 3]
    h, w = img.shape
    grey = np.clip(img, 0.0, 1.0) * 255.0
    cam = np.clip(cam, 0.0, 1.0)
    shown = cam >= threshold  # [H, W]
    rgb = np.repeat(grey[..., None], 3, axis=-1)  # [H, W, 3]
    idx = np.rint(cam[shown] * 255.0).astype(np.intp)
    rgb[shown] = (1.0 - alpha) * rgb[shown] + alpha * lut[idx]
    fs = _font_size(h)
    pw = heatmap_panel_width(h, class_name, prob, method)
    fig = np.empty((h, w + pw, 3), np.uint8)
    fig[:, :w] = np.rint(rgb).astype(np.uint8)
    fig[:, w:] = _PANEL_BG
    pil = Image.fromarray(fig)
    draw, font = ImageDraw.Draw(pil), _font(fs)
    m = fs // 2
    y = m
    for line in _title_lines(class_name, prob, method):
        draw.text((w + m, y), line, fill=(255, 255, 255), font=font)
        y += int(fs * 1.25)
    top, bottom = y + m, h - m - fs // 2  # room for the "0" label centred on the bar's foot
    if bottom - top >= 2:
        v = np.linspace(1.0, 0.0, bottom - top, dtype=np.float32)  # top of the bar is 1
        colours = np.where((v >= threshold)[:, None], lut[np.rint(v * 255).astype(np.intp)], _BELOW)
        bar = np.repeat(np.rint(colours).astype(np.uint8)[:, None], fs, axis=1)  # [bar_h, fs, 3]
        pil.paste(Image.fromarray(bar), (w + m, top))
        for val, label in ((1.0, "1"), (0.5, "0.5"), (0.0, "0")):
            ty = top + (1.0 - val) * (bottom - top - 1)
            draw.text((w + m + fs + fs // 3, ty), label, fill=(255, 255, 255), font=font, anchor="lm")
    return np.asarray(pil)


OUTLINE_COLOUR = (0, 255, 0)  # ground truth: green, never in the heat map's colour bar ("turbo" has no pure green)


def draw_outlines(figure, circles, scale: float, width: int | None = None) -> np.ndarray:
    """The ground-truth lesion outlines drawn on a rendered figure: a green circle per ``(x, y, r)``.

    Args:
        figure: uint8 RGB ``[H, W(+P), 3]`` from :func:`render_heatmap` (the image in columns ``[0, width)``).
        circles: ``(x, y, r)`` in pixels of the image as stored (manifest ``lesion_x, lesion_y, lesion_r``);
            rows with a NaN are skipped.
        scale: figure pixels per stored-image pixel (the display copy's height / the stored height).
        width: the image part's width; the circle is clipped there (not drawn over the colour bar).

    Returns:
        a new uint8 RGB array of the same shape.
    """
    from PIL import Image, ImageDraw

    fig = np.ascontiguousarray(np.asarray(figure, dtype=np.uint8))
    h = fig.shape[0]
    w = fig.shape[1] if width is None else int(width)
    part = Image.fromarray(fig[:, :w])
    draw = ImageDraw.Draw(part)
    line = max(1, int(round(h / 300)))
    for x, y, r in circles:
        if not all(np.isfinite([x, y, r])) or r <= 0:
            continue
        cx, cy, rr = float(x) * scale, float(y) * scale, max(float(r) * scale, 2.0)
        draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), outline=OUTLINE_COLOUR, width=line)
    out = fig.copy()
    out[:, :w] = np.asarray(part)
    return out
