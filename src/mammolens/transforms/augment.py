"""Batch augmentation on the model's device (GPU-side): one module, torch ops on ``[B, 1, H, W]``.

No horizontal flip: the cache normalises orientation (chest wall left), so flipping would only teach the
model an orientation it never sees. Geometry: small random affine (rotation, scale, translation);
intensity: contrast, brightness and gamma jitter; optional random erasing. Identity in ``eval()``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AugmentCfg", "GpuAugment"]


@dataclass
class AugmentCfg:
    """Augmentation strengths (0 disables a component).

    Attributes:
        p: probability that a sample is augmented at all.
        rotate: maximum rotation in degrees (uniform in ``±rotate``).
        scale: ``(min, max)`` zoom factor.
        translate: maximum shift as a fraction of the side.
        brightness: additive shift, uniform in ``±brightness``.
        contrast: multiplicative factor about the image mean, uniform in ``1 ± contrast``.
        gamma: ``log(gamma)`` uniform in ``±log(1 + gamma)``.
        erase_p: probability of erasing one random rectangle (area 2–10 %) with 0.
    """

    p: float = 1.0
    rotate: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.1
    gamma: float = 0.2
    erase_p: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class GpuAugment(nn.Module):
    """Random augmentation of a batch ``[B, C, H, W]`` in [0, 1]; returns the same shape, still in [0, 1].

    Args:
        cfg: ``AugmentCfg`` (or keyword overrides of it).
        generator: optional ``torch.Generator`` on the batch's device, for reproducible draws.

    Example:
        >>> aug = GpuAugment(rotate=5).to(device)
        >>> x = aug(batch["image"].to(device))      # training: random; after aug.eval(): identity
    """

    def __init__(self, cfg: AugmentCfg | None = None, generator: torch.Generator | None = None, **overrides):
        super().__init__()
        cfg = cfg or AugmentCfg()
        if overrides:
            cfg = AugmentCfg(**{**asdict(cfg), **overrides})
        if not 0.0 <= cfg.p <= 1.0 or not 0.0 <= cfg.erase_p <= 1.0:
            raise ValueError(f"probabilities must be in [0, 1], got p={cfg.p}, erase_p={cfg.erase_p}")
        if cfg.scale[0] <= 0 or cfg.scale[0] > cfg.scale[1]:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {cfg.scale}")
        self.cfg = cfg
        self.generator = generator

    def _u(self, n: int, lo: float, hi: float, device) -> torch.Tensor:
        """``n`` uniform draws in [lo, hi)."""
        r = torch.rand(n, device=device, generator=self.generator)
        return lo + (hi - lo) * r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if x.ndim != 4:
            raise ValueError(f"GpuAugment expects [B, C, H, W], got shape {tuple(x.shape)}")
        c, b, dev = self.cfg, x.shape[0], x.device
        dtype = x.dtype
        x = x.float()
        apply = (self._u(b, 0, 1, dev) < c.p).float().view(b, 1, 1, 1)  # [B, 1, 1, 1]

        # geometry: one affine grid per sample, bilinear, zeros outside (the background is black)
        if c.rotate or c.scale != (1.0, 1.0) or c.translate:
            ang = self._u(b, -c.rotate, c.rotate, dev) * (math.pi / 180)
            s = self._u(b, c.scale[0], c.scale[1], dev)
            tx, ty = self._u(b, -c.translate, c.translate, dev) * 2, self._u(b, -c.translate, c.translate, dev) * 2
            cos, sin = torch.cos(ang) / s, torch.sin(ang) / s  # output->input mapping: zoom in for s > 1
            theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # [B, 2, 3]
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        else:
            warped = x

        # intensity: contrast about the per-image mean, brightness shift, gamma
        y = warped
        if c.contrast:
            mean = y.mean(dim=(1, 2, 3), keepdim=True)
            y = (y - mean) * self._u(b, 1 - c.contrast, 1 + c.contrast, dev).view(b, 1, 1, 1) + mean
        if c.brightness:
            y = y + self._u(b, -c.brightness, c.brightness, dev).view(b, 1, 1, 1)
        y = y.clamp(0.0, 1.0)
        if c.gamma:
            lg = math.log1p(c.gamma)
            g = torch.exp(self._u(b, -lg, lg, dev)).view(b, 1, 1, 1)
            y = y.clamp_min(1e-6).pow(g) * (y > 0)  # keep true zeros (background) at zero

        if c.erase_p > 0:
            h, w = x.shape[-2:]
            do = self._u(b, 0, 1, dev) < c.erase_p
            area = self._u(b, 0.02, 0.10, dev) * h * w
            aspect = torch.exp(self._u(b, math.log(0.5), math.log(2.0), dev))
            eh = (area * aspect).sqrt().clamp(1, h)
            ew = (area / aspect).sqrt().clamp(1, w)
            y0 = self._u(b, 0, 1, dev) * (h - eh)
            x0 = self._u(b, 0, 1, dev) * (w - ew)
            ys = torch.arange(h, device=dev).view(1, h, 1)
            xs = torch.arange(w, device=dev).view(1, 1, w)
            box = (
                (ys >= y0.view(b, 1, 1)) & (ys < (y0 + eh).view(b, 1, 1))
                & (xs >= x0.view(b, 1, 1)) & (xs < (x0 + ew).view(b, 1, 1))
                & do.view(b, 1, 1)
            )  # [B, H, W]
            y = y.masked_fill(box.unsqueeze(1), 0.0)

        out = apply * y + (1 - apply) * x
        return out.clamp(0.0, 1.0).to(dtype)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.cfg).items())
