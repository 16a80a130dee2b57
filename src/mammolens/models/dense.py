"""Dense heads on a backbone's patch tokens: lesion segmentation and centre-heat-map detection.

Both are ``run.model.Head`` kinds reading ``("tokens",)`` (``MammoCLIP.encode_image_tokens``: the ViT's last
patch tokens ``[B, P, D]`` in the joint space, ``P = g * g``), registered with ``register_head_kind`` so a
checkpoint holding them loads through ``run.load_run`` like any other head; neither may be the primary head.

- :class:`TokenDecoder`: LayerNorm per token, the token grid ``[B, D, g, g]`` → 1x1 projection → ``stages`` x (2x bilinear
  upsampling, 3x3 conv, GroupNorm, GELU, channels halved) → 1x1 to the output channels: ``[B, C, g·2^s,
  g·2^s]``. A progressive upsampling of the token grid in the UNETR manner, without UNETR's skip
  connections from intermediate blocks (the run contract exposes the last tokens only).
- ``segment`` (:class:`SegmentationHead`): one lesion logit per output cell; :meth:`SegmentationHead.mask`
  upsamples it to the tile and thresholds the probability.
- ``detect`` (:class:`CentreHead`, CenterNet-style, see docs/dense_heads.md for why this head): per cell a
  centre logit and ``log`` width/height in cells; :func:`decode_centres` keeps local maxima (3x3 max-pool) as
  boxes ``(x0, y0, x1, y1, score)`` in tile pixels.

The geometry: a head's output covers the whole tile (the model's input, ``image_size``); maps go back to
the original image with ``transforms.breast.to_original`` like any heat map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammolens.run.model import Head, register_head_kind

__all__ = ["DETECT_TASK", "SEGMENT_TASK", "CentreHead", "SegmentationHead", "TokenDecoder", "decode_centres",
           "token_grid"]


def _lesion_task(name: str, description: str):
    from mammolens.tasks import Task

    return Task(name=name, label_column="lesion_mask", class_names=("background", "lesion"),
                templates=("a mammogram showing {}",), descriptions=("normal breast tissue", "a breast lesion"),
                description=description, dense_classes=())


SEGMENT_TASK = _lesion_task("lesion-seg", "lesion segmentation (a mask per image)")
DETECT_TASK = _lesion_task("lesion-det", "lesion detection (boxes per image)")


def token_grid(tokens: Tensor) -> Tensor:
    """``[B, P, D]`` patch tokens → ``[B, D, g, g]`` (the ViT's square grid, row-major)."""
    b, p, d = tokens.shape
    g = math.isqrt(p)
    if g * g != p:
        raise ValueError(f"dense heads need a square token grid; got {p} tokens (use a square input size)")
    return tokens.transpose(1, 2).reshape(b, d, g, g)


class TokenDecoder(nn.Module):
    """Progressive upsampling of the token grid (module docstring): ``[B, P, D]`` → ``[B, C, g·2^s, g·2^s]``."""

    def __init__(self, in_dim: int, out_channels: int, width: int = 64, stages: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)  # unit scale per token: L2-normalised tokens are ~1/sqrt(D) per dim
        self.proj = nn.Conv2d(in_dim, width, 1)
        ups, ch = [], width
        for _ in range(stages):
            nxt = max(8, ch // 2)
            ups.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                     nn.Conv2d(ch, nxt, 3, padding=1), nn.GroupNorm(min(8, nxt), nxt), nn.GELU()))
            ch = nxt
        self.ups = nn.Sequential(*ups)
        self.out = nn.Conv2d(ch, out_channels, 1)

    def forward(self, tokens: Tensor) -> Tensor:
        x = token_grid(self.norm(tokens.float()))  # [B, D, g, g]
        return self.out(self.ups(self.proj(x)))  # [B, C, g * 2^s, g * 2^s]


def _shape_from_state(state) -> tuple[int, int, int]:
    """``(in_dim, width, stages)`` of a decoder from its state dict (how a checkpoint rebuilds it)."""
    w = state["decoder.proj.weight"]  # [width, in_dim, 1, 1]
    stages = len({k.split(".")[2] for k in state if k.startswith("decoder.ups.")})
    return int(w.shape[1]), int(w.shape[0]), stages


def _in_dim(clip) -> int:
    return int(clip.embed_dim)  # the joint space: what encode_image_tokens returns


class _DenseHead(Head):
    inputs = ("tokens",)
    out_channels = 1

    def __init__(self, task, in_dim: int, width: int = 64, stages: int = 2):
        super().__init__(task)
        self.decoder = TokenDecoder(in_dim, self.out_channels, width, stages)

    @classmethod
    def build(cls, clip, task, state=None):
        if state is not None:
            head = cls(task, *_shape_from_state(state))
            head.load_state_dict(state)
            return head
        return cls(task, _in_dim(clip))

    def forward(self, feats: dict[str, Tensor] | Tensor) -> Tensor:
        tokens = feats if isinstance(feats, Tensor) else feats["tokens"]  # [B, P, D]
        return self.decoder(tokens)


@register_head_kind("segment")
class SegmentationHead(_DenseHead):
    """Lesion segmentation: logits ``[B, 1, h, w]`` on the decoder grid."""

    @torch.no_grad()
    def probabilities(self, tokens: Tensor, size: int) -> Tensor:
        """Lesion probability ``[B, size, size]`` on the tile (bilinear upsampling of the logits)."""
        logits = self.forward(tokens)
        return torch.sigmoid(F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False))[:, 0]


@register_head_kind("detect")
class CentreHead(_DenseHead):
    """Centre-heat-map detection: ``[B, 3, h, w]`` = centre logit, log width, log height (in cells)."""

    out_channels = 3

    def __init__(self, task, in_dim: int, width: int = 64, stages: int = 2):
        super().__init__(task, in_dim, width, stages)
        with torch.no_grad():  # CenterNet's prior: few centres at the start (focal loss stays stable)
            self.decoder.out.bias[0].fill_(-2.19)


@torch.no_grad()
def decode_centres(out: Tensor, tile: int, k: int = 10, min_score: float = 0.01) -> list[list[tuple]]:
    """Boxes ``(x0, y0, x1, y1, score)`` in tile pixels from a ``CentreHead`` output ``[B, 3, h, w]``.

    A detection is a local maximum of the centre probability (3x3 max-pool), at most ``k`` per image and at
    least ``min_score``; its box is centred on the cell's centre with the predicted size.
    """
    heat = torch.sigmoid(out[:, 0].float())  # [B, h, w]
    peaks = heat == F.max_pool2d(heat[:, None], 3, 1, 1)[:, 0]
    b, h, w = heat.shape
    stride_y, stride_x = tile / h, tile / w
    res = []
    for i in range(b):
        s = torch.where(peaks[i], heat[i], torch.zeros_like(heat[i])).flatten()
        top = torch.topk(s, min(k, s.numel()))
        dets = []
        for score, idx in zip(top.values.tolist(), top.indices.tolist()):
            if score < min_score:
                continue
            r, c = divmod(idx, w)
            cx, cy = (c + 0.5) * stride_x, (r + 0.5) * stride_y
            bw = float(out[i, 1, r, c].float().clamp(-6, 6).exp()) * stride_x
            bh = float(out[i, 2, r, c].float().clamp(-6, 6).exp()) * stride_y
            dets.append((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, float(score)))
        res.append(dets)
    return res
