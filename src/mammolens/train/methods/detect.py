"""Fit a centre-heat-map detection head (``models.dense.CentreHead``) on frozen patch tokens.

Targets (CenterNet, Zhou et al. 2019): per lesion box a Gaussian bump on the head's grid at the box
centre (sigma = a quarter of the box's larger side in cells, at least 0.5; the centre cell exactly 1; the
maximum where bumps overlap), and the box's ``log`` width/height in cells at the centre cell. Loss:
CenterNet's penalty-reduced focal loss on the centre logits (alpha 2, beta 4, normalised by the number of
lesions) + L1 on the log size at centre cells. ``detect`` decodes boxes with ``models.dense.decode_centres``.
"""

from __future__ import annotations

import numpy as np
import torch

from mammolens.models.dense import DETECT_TASK, CentreHead, decode_centres

__all__ = ["centre_targets", "detect", "fit_centre_head", "focal_loss"]


def centre_targets(boxes: list, grid: int, tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(heat [N, g, g], log size [N, 2, g, g], centre cells [N, g, g] bool)`` from per-image boxes
    ``(x0, y0, x1, y1)`` in tile pixels."""
    n = len(boxes)
    heat = np.zeros((n, grid, grid), np.float32)
    size = np.zeros((n, 2, grid, grid), np.float32)
    centre = np.zeros((n, grid, grid), bool)
    stride = tile / grid
    yy, xx = np.mgrid[0:grid, 0:grid].astype(np.float32)
    for i, bs in enumerate(boxes):
        for x0, y0, x1, y1 in bs:
            cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
            c, r = min(grid - 1, int(cx)), min(grid - 1, int(cy))
            w, h = max((x1 - x0) / stride, 1e-3), max((y1 - y0) / stride, 1e-3)
            sigma = max(0.5, max(w, h) / 4)
            heat[i] = np.maximum(heat[i], np.exp(-((xx - c) ** 2 + (yy - r) ** 2) / (2 * sigma**2)))
            heat[i, r, c] = 1.0
            size[i, :, r, c] = np.log(w), np.log(h)
            centre[i, r, c] = True
    return heat, size, centre


def focal_loss(logits: torch.Tensor, heat: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss (sum over cells / number of centres, at least 1)."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = heat >= 1.0
    pos_loss = -(((1 - p) ** alpha) * torch.log(p))[pos].sum()
    neg_loss = -(((1 - heat) ** beta) * (p**alpha) * torch.log(1 - p))[~pos].sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1)


def fit_centre_head(tokens, boxes: list, tile: int, *, task=DETECT_TASK, width: int = 64, stages: int = 2,
                    steps: int = 300, lr: float = 3e-3, weight_decay: float = 1e-4, batch_size: int = 32,
                    size_weight: float = 0.1, seed: int = 0, device: str = "cpu") -> tuple[CentreHead, list[float]]:
    """A ``CentreHead`` fitted on tokens ``[N, P, D]`` to per-image boxes (tile pixels; ``[]`` for normal).

    Returns:
        ``(head in eval mode on the CPU, loss per step)``.
    """
    tok = torch.as_tensor(np.asarray(tokens, dtype=np.float32))
    if len(tok) == 0 or len(tok) != len(boxes):
        raise ValueError(f"need one box list per token set and at least one row; got {len(tok)} and {len(boxes)}")
    torch.manual_seed(seed)
    head = CentreHead(task, int(tok.shape[-1]), width, stages).to(device).train()
    grid = int(head(tok[:1].to(device)).shape[-1])
    heat, size, centre = (torch.as_tensor(a) for a in centre_targets(boxes, grid, tile))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    while len(losses) < steps:
        for idx in torch.randperm(len(tok), generator=gen).split(batch_size):
            if len(losses) >= steps:
                break
            out = head(tok[idx].to(device))  # [B, 3, g, g]
            loss = focal_loss(out[:, 0], heat[idx].to(device))
            c = centre[idx].to(device)
            if c.any():
                pred = out[:, 1:].permute(0, 2, 3, 1)[c]  # [M, 2]
                loss = loss + size_weight * (pred - size[idx].to(device).permute(0, 2, 3, 1)[c]).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return head.cpu().eval(), losses


@torch.no_grad()
def detect(head: CentreHead, tokens, tile: int, k: int = 10, batch_size: int = 64) -> list[list[tuple]]:
    """Per image, boxes ``(x0, y0, x1, y1, score)`` in tile pixels."""
    head.eval()
    out: list[list[tuple]] = []
    for lo in range(0, len(tokens), batch_size):
        tok = torch.as_tensor(np.asarray(tokens[lo:lo + batch_size], dtype=np.float32))
        out.extend(decode_centres(head(tok), tile, k=k))
    return out
