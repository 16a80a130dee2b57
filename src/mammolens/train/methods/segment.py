"""Fit a lesion segmentation head (``models.dense.SegmentationHead``) on frozen patch tokens.

Loss: binary cross-entropy + soft Dice of the logits on the head's grid against the lesion fraction of each
cell (the tile mask area-pooled to the grid), mini-batch AdamW with a fixed seed; the mask threshold is then
the one of best mean Dice on the training rows (``head.threshold``, not a checkpointed tensor: saved with the
suite's results). The tokens come from the feature cache
(``pipeline.features.cache_features(..., tokens=True)``), the masks from ``evaluation.dense.tile_masks``;
rows without truth are left out by the caller. ``predict_masks`` gives lesion probabilities on the tile.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mammolens.models.dense import SEGMENT_TASK, SegmentationHead

__all__ = ["choose_threshold", "dice_bce_loss", "fit_segmentation_head", "predict_masks"]


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """BCE + ``dice_weight`` x (1 − soft Dice over the whole batch) of logits ``[B, h, w]`` vs targets in [0, 1].

    The Dice is the batch's (one sum over all images): a per-image Dice of a normal image (empty target) would
    only push every probability to 0, which drowns the few lesion cells."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    soft_dice = (2 * (p * target).sum() + 1.0) / (p.sum() + target.sum() + 1.0)
    return bce + dice_weight * (1.0 - soft_dice)


def _batches(n: int, batch_size: int, gen: torch.Generator):
    while True:
        perm = torch.randperm(n, generator=gen)
        for lo in range(0, n, batch_size):
            yield perm[lo:lo + batch_size]


def fit_segmentation_head(tokens, masks, *, task=SEGMENT_TASK, width: int = 64, stages: int = 2, steps: int = 300,
                          lr: float = 3e-3, weight_decay: float = 1e-4, batch_size: int = 32, dice_weight: float = 1.0,
                          seed: int = 0, device: str = "cpu") -> tuple[SegmentationHead, list[float]]:
    """A ``SegmentationHead`` fitted on tokens ``[N, P, D]`` to boolean tile masks ``[N, S, S]``.

    Returns:
        ``(head in eval mode on the CPU with ``threshold`` set, loss per step)``.

    Raises:
        ValueError: no rows, or tokens and masks of different lengths.
    """
    tok = torch.as_tensor(np.asarray(tokens, dtype=np.float32))
    tgt = torch.as_tensor(np.asarray(masks, dtype=np.float32))
    if len(tok) == 0 or len(tok) != len(tgt):
        raise ValueError(f"need one mask per token set and at least one row; got {len(tok)} and {len(tgt)}")
    size = int(tgt.shape[-1])
    torch.manual_seed(seed)
    head = SegmentationHead(task, int(tok.shape[-1]), width, stages).to(device).train()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _step, idx in zip(range(steps), _batches(len(tok), batch_size, gen)):
        logits = head(tok[idx].to(device))  # [B, 1, g, g]
        target = F.adaptive_avg_pool2d(tgt[idx, None].to(device), logits.shape[-2:])  # lesion fraction per cell
        loss = dice_bce_loss(logits[:, 0], target[:, 0], dice_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    head = head.cpu().eval()
    head.threshold = choose_threshold(predict_masks(head, tokens, size), np.asarray(masks, dtype=bool))
    return head, losses


def choose_threshold(probs: np.ndarray, masks: np.ndarray, grid=np.linspace(0.05, 0.95, 19)) -> float:
    """The probability threshold of best mean Dice over the images with a lesion (training rows only)."""
    les = masks.reshape(len(masks), -1).any(1)
    if not les.any():
        return 0.5
    p, t = probs[les], masks[les]
    best, best_thr = -1.0, 0.5
    for thr in grid:
        pred = p >= thr
        inter = (pred & t).reshape(len(t), -1).sum(1)
        d = (2 * inter / np.maximum(pred.reshape(len(t), -1).sum(1) + t.reshape(len(t), -1).sum(1), 1)).mean()
        if d > best:
            best, best_thr = float(d), float(thr)
    return best_thr


@torch.no_grad()
def predict_masks(head: SegmentationHead, tokens, size: int, batch_size: int = 64) -> np.ndarray:
    """Lesion probabilities ``[N, size, size]`` (float32) of token sets ``[N, P, D]``."""
    head.eval()
    out = []
    for lo in range(0, len(tokens), batch_size):
        tok = torch.as_tensor(np.asarray(tokens[lo:lo + batch_size], dtype=np.float32))
        out.append(head.probabilities(tok, size).numpy())
    return np.concatenate(out) if out else np.zeros((0, size, size), np.float32)
