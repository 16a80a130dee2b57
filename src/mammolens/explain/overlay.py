"""Heat-map overlays of class-activation maps on grey-scale mammograms."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["colorize", "overlay", "save_overlay"]


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
