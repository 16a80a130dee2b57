"""Non-contrastive baselines (linear probe, fine-tuning with weighted CE) on top of ``RunModel``.

``RunModel`` — one prediction interface for every method — lives in ``mammolens.models.run`` so that
the library (inference, explanations) can load a run without importing the trainer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mammolens.models.run import HEAD_METHODS, RunModel, zeroshot_head  # noqa: F401  (re-exported)


def fit_linear_probe(
    feats: torch.Tensor,
    labels: torch.Tensor,
    head: nn.Linear,
    class_weights: torch.Tensor | None = None,
    sample_weights: torch.Tensor | None = None,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
) -> list[float]:
    """Fit ``head`` on frozen features by full-batch AdamW with class-weighted cross-entropy.

    Args:
        feats: ``[N, D]`` image embeddings; labels ``[N]`` class indices.
        class_weights: ``[K]`` (mean 1); sample_weights ``[N]`` (e.g. modality weights).

    Returns:
        the loss after each step.
    """
    feats, labels = feats.float(), labels.long()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sw = torch.ones(len(labels)) if sample_weights is None else sample_weights.float()
    if class_weights is not None:
        sw = sw * class_weights.float()[labels]
    sw = sw / sw.sum().clamp_min(1e-12)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = (F.cross_entropy(head(feats), labels, reduction="none") * sw).sum()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError("linear probe diverged (non-finite loss); lower lr")
    return losses
