"""Mammography-aware views for self-supervised pretraining: crops inside the breast, intensity jitter in [0, 1].

A mammogram is mostly background; a random crop of it is often air. The views here are drawn from the
breast mask (``transforms.breast.breast_mask``, the cache's own mask rule):

* global crops cover (almost) the whole breast: ``global_scale`` is the fraction of the breast's bounding
  box area, VersaMammo's 0.95-1.0 by default;
* local crops are smaller (``local_scale`` of that area) and are accepted only when at least
  ``min_tissue`` of their pixels are breast (30 %, as the mammography OOD benchmark samples them); out of
  ``tries`` candidate boxes the first that qualifies is kept, else the one with the most tissue;
* crops are cut from the cache's tile at its own resolution (a 512 px cache gives sharp local crops for
  a 224 px model) and resized on the device in one ``grid_sample``;
* intensity augmentation only: contrast about the crop mean, brightness, gamma (zeros stay zero),
  Gaussian blur, Gaussian noise; every view stays in the reader's [0, 1] convention. No colour jitter and no
  horizontal flip (the cache puts the chest wall on the left).

Randomness comes from torch's global generator (or the ``generator`` given) on the batch's device: the
training loop seeds it per epoch, so a resumed run draws the same views.

API: ``ViewCfg``; ``sample_boxes(masks, n, scale, ...) -> [B, n, 4]``; ``crop_resize(images, boxes, size)
-> [B, n, C, size, size]``; ``tissue_fraction(masks, boxes) -> [B, n]``; ``jitter_intensity(x, cfg)``;
``MultiCropViews(cfg)(images, masks) -> {"global": [G] x [B, C, S, S], "local": [L] x [B, C, s, s], ...}``;
``ViewSource(dataset)``: adds the breast mask (``mask``, uint8 ``[1, S, S]``) and ``tile`` to every sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ViewCfg", "MultiCropViews", "ViewSource", "sample_boxes", "crop_resize", "tissue_fraction",
           "jitter_intensity", "breast_masks"]


@dataclass
class ViewCfg:
    """How views are drawn (the ``method.pretrain`` settings of the same names).

    Attributes:
        global_crops, global_scale, global_size: number, area fraction of the breast box, output size.
        local_crops, local_scale, local_size: the same for local crops.
        min_tissue: minimum breast fraction of a crop.
        ratio: aspect ratio range (height / width), drawn log-uniformly.
        tries: candidate boxes per crop.
        brightness, contrast, gamma, blur_p, noise: intensity jitter strengths (0 disables one).
    """

    global_crops: int = 2
    global_scale: list[float] = field(default_factory=lambda: [0.95, 1.0])
    global_size: int = 224
    local_crops: int = 4
    local_scale: list[float] = field(default_factory=lambda: [0.2, 0.6])
    local_size: int = 96
    min_tissue: float = 0.3
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    tries: int = 16
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.2
    blur_p: float = 0.3
    noise: float = 0.0


def breast_masks(images: np.ndarray) -> np.ndarray:
    """Breast masks ``[B, H, W]`` bool of tiles ``[B, H, W]`` in [0, 1] (``transforms.breast.breast_mask``)."""
    from mammolens.transforms.breast import breast_mask

    return np.stack([breast_mask(np.asarray(im, dtype=np.float32)) for im in images])


class ViewSource(torch.utils.data.Dataset):
    """A dataset whose samples also carry their breast mask (``mask``: uint8 ``[1, S, S]``, 1 = breast,
    computed in the loader's workers) and the tile at the cache's resolution (``tile``, the ``image`` before
    the training loop resizes it to the model's input). Everything else is the wrapped dataset's sample."""

    def __init__(self, base):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        s = dict(self.base[i])
        mask = breast_masks(s["image"][:1].numpy())  # [1, S, S]
        s["mask"] = torch.from_numpy(mask.astype(np.uint8))
        s["tile"] = s["image"]
        return s


def _bbox(masks: Tensor) -> Tensor:
    """Bounding boxes ``[B, 4]`` (y0, x0, y1, x1; exclusive ends) of ``[B, H, W]`` masks; an empty mask: the image."""
    b, h, w = masks.shape
    rows, cols = masks.any(2), masks.any(1)  # [B, H], [B, W]
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    big = torch.iinfo(torch.int64).max
    y0 = torch.where(rows, ar_h, big).amin(1)
    y1 = torch.where(rows, ar_h, -1).amax(1) + 1
    x0 = torch.where(cols, ar_w, big).amin(1)
    x1 = torch.where(cols, ar_w, -1).amax(1) + 1
    empty = ~rows.any(1)
    out = torch.stack([y0, x0, y1, x1], 1)
    full = torch.tensor([0, 0, h, w], device=masks.device)
    return torch.where(empty[:, None], full, out)


def tissue_fraction(masks: Tensor, boxes: Tensor) -> Tensor:
    """Fraction of breast pixels in integer boxes.

    Args:
        masks: ``[B, H, W]`` (bool or 0/1).
        boxes: ``[B, n, 4]`` (y0, x0, h, w) in pixels, inside the image.

    Returns:
        ``[B, n]`` in [0, 1].
    """
    b, h, w = masks.shape
    ii = F.pad(masks.float().cumsum(1).cumsum(2), (1, 0, 1, 0))  # [B, H+1, W+1] integral image
    y0, x0, bh, bw = boxes.long().unbind(-1)  # [B, n] each
    y1, x1 = y0 + bh, x0 + bw
    flat = ii.view(b, -1)
    stride = w + 1

    def at(y, x):
        return flat.gather(1, y * stride + x)

    total = at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)
    return total / (bh * bw).clamp_min(1).float()


def sample_boxes(masks: Tensor, n: int, scale, ratio=(3 / 4, 4 / 3), min_tissue: float = 0.0, tries: int = 16,
                 generator: torch.Generator | None = None) -> Tensor:
    """``n`` crop boxes per image inside the breast's bounding box, each with at least ``min_tissue`` breast.

    A box's area is ``U(scale) x`` the bounding box's area, its aspect ratio log-uniform in ``ratio``, its
    position uniform in the bounding box (boxes larger than the bounding box are centred on it and kept
    inside the image). Of ``tries`` candidates the first with enough tissue is kept, else the one with most.

    Args:
        masks: ``[B, H, W]`` breast masks.
        n: boxes per image.
        scale: ``(lo, hi)`` area fraction of the breast's bounding box.

    Returns:
        ``[B, n, 4]`` int64 (y0, x0, h, w), every box inside the image and at least 1 pixel.
    """
    b, h, w = masks.shape
    dev = masks.device
    bb = _bbox(masks.bool()).float()  # [B, 4]
    by0, bx0, by1, bx1 = (bb[:, i, None, None] for i in range(4))  # [B, 1, 1]
    bh, bw = by1 - by0, bx1 - bx0
    shape = (b, n, tries)

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(shape, device=dev, generator=generator)

    area = u(float(scale[0]), float(scale[1])) * bh * bw
    r = torch.exp(u(math.log(ratio[0]), math.log(ratio[1])))
    ch = torch.sqrt(area * r).round().clamp(1, h)
    cw = torch.sqrt(area / r).round().clamp(1, w)
    # position: uniform over the bounding box where the box fits in it, else centred on it
    y = torch.where(ch <= bh, by0 + u(0, 1) * (bh - ch), by0 + (bh - ch) / 2).round().clamp(min=0)
    x = torch.where(cw <= bw, bx0 + u(0, 1) * (bw - cw), bx0 + (bw - cw) / 2).round().clamp(min=0)
    y = torch.minimum(y, h - ch)
    x = torch.minimum(x, w - cw)
    cand = torch.stack([y, x, ch, cw], -1).long()  # [B, n, T, 4]
    frac = tissue_fraction(masks, cand.view(b, n * tries, 4)).view(b, n, tries)
    ok = frac >= min_tissue
    first_ok = torch.where(ok, torch.arange(tries, device=dev).expand_as(ok), tries).amin(-1)  # [B, n]
    pick = torch.where(first_ok < tries, first_ok, frac.argmax(-1))
    return cand.gather(2, pick[..., None, None].expand(b, n, 1, 4)).squeeze(2)


def crop_resize(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crops of ``images`` ``[B, C, H, W]`` at ``boxes`` ``[B, n, 4]`` (y0, x0, h, w), resized (bilinear) to
    ``size`` x ``size``: ``[B, n, C, size, size]``."""
    b, c, h, w = images.shape
    n = boxes.shape[1]
    y0, x0, bh, bw = boxes.float().unbind(-1)  # [B, n]
    # normalised coordinates (align_corners=False): pixel edges at -1 and 1
    cy, cx = (2 * y0 + bh) / h - 1, (2 * x0 + bw) / w - 1
    sy, sx = bh / h, bw / w
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, cx], -1), torch.stack([zero, sy, cy], -1)], -2)  # [B, n, 2, 3]
    grid = F.affine_grid(theta.view(b * n, 2, 3), [b * n, c, size, size], align_corners=False)
    src = images.float().repeat_interleave(n, 0)  # [B*n, C, H, W]
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(b, n, c, size, size)


def _blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Gaussian blur of ``[N, C, H, W]`` with a per-image ``sigma`` ``[N]`` (5 x 5 kernel, reflect padding)."""
    n, c = x.shape[:2]
    t = torch.arange(5, device=x.device, dtype=x.dtype) - 2
    k1 = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None] ** 2))  # [N, 5]
    k1 = k1 / k1.sum(1, keepdim=True)
    k2 = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(c, 0)[:, None]  # [N*C, 1, 5, 5]
    y = F.conv2d(F.pad(x.reshape(1, n * c, *x.shape[2:]), (2, 2, 2, 2), mode="reflect"), k2, groups=n * c)
    return y.view_as(x)


def jitter_intensity(x: Tensor, cfg: ViewCfg, generator: torch.Generator | None = None) -> Tensor:
    """Random contrast, brightness, gamma, blur and noise per image of ``[N, C, H, W]`` in [0, 1]; returns
    the same shape in [0, 1]. Pixels that are exactly 0 (background, padding) stay 0."""
    n, dev = x.shape[0], x.device

    def u(lo, hi):
        return (lo + (hi - lo) * torch.rand(n, device=dev, generator=generator)).view(n, 1, 1, 1)

    zero = x <= 0
    y = x.float()
    if cfg.contrast:
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        y = (y - mean) * u(1 - cfg.contrast, 1 + cfg.contrast) + mean
    if cfg.brightness:
        y = y + u(-cfg.brightness, cfg.brightness)
    y = y.clamp(0.0, 1.0)
    if cfg.gamma:
        lg = math.log1p(cfg.gamma)
        y = y.clamp_min(1e-6).pow(torch.exp(u(-lg, lg)))
    if cfg.blur_p > 0 and min(x.shape[-2:]) >= 3:
        do = u(0, 1) < cfg.blur_p
        y = torch.where(do, _blur(y, u(0.1, 1.5).view(n)), y)
    if cfg.noise:
        y = y + cfg.noise * torch.randn(y.shape, device=dev, generator=generator)
    return y.clamp(0.0, 1.0).masked_fill(zero, 0.0)


class MultiCropViews:
    """Global and local crops of a batch, inside the breast, with intensity jitter (see the module docstring).

    Example:
        >>> views = MultiCropViews(ViewCfg(global_size=224, local_size=96))
        >>> v = views(batch["image"], batch["mask"])   # tiles [B, 1, S, S] in [0, 1], masks [B, 1, S, S]
        >>> v["global"][0].shape, v["local"][0].shape   # [B, 1, 224, 224], [B, 1, 96, 96]
    """

    def __init__(self, cfg: ViewCfg):
        self.cfg = cfg

    def __call__(self, images: Tensor, masks: Tensor, generator: torch.Generator | None = None) -> dict[str, list]:
        c = self.cfg
        m = masks.reshape(masks.shape[0], *masks.shape[-2:]) > 0  # [B, H, W]
        out: dict[str, list] = {}
        for kind, k, scale, size in (("global", c.global_crops, c.global_scale, c.global_size),
                                     ("local", c.local_crops, c.local_scale, c.local_size)):
            if k == 0:
                out[kind], out[f"{kind}_boxes"] = [], []
                continue
            boxes = sample_boxes(m, k, scale, c.ratio, c.min_tissue, c.tries, generator)  # [B, k, 4]
            crops = crop_resize(images, boxes, size)  # [B, k, C, s, s]
            b = crops.shape[0]
            flat = jitter_intensity(crops.transpose(0, 1).reshape(k * b, *crops.shape[2:]), c, generator)
            out[kind] = list(flat.view(k, b, *crops.shape[2:]).unbind(0))
            out[f"{kind}_boxes"] = list(boxes.unbind(1))
        return out
