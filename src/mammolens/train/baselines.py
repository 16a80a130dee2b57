"""Non-contrastive baselines (linear probe, fine-tuning with weighted CE) on top of ``RunModel``.

``RunModel`` — one prediction interface for every method — lives in ``mammolens.models.run`` so that
the library (inference, explanations) can load a run without importing the trainer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mammolens.losses import weighted_cross_entropy
from mammolens.models.run import HEAD_METHODS, RunModel, zeroshot_head  # noqa: F401  (re-exported)


def fit_linear_probe(
    feats: torch.Tensor,
    labels: torch.Tensor,
    head: nn.Linear,
    class_weights: torch.Tensor | None = None,
    modality: torch.Tensor | None = None,
    modality_weights=None,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
) -> list[float]:
    """Fit ``head`` on frozen features by full-batch AdamW with weighted cross-entropy
    (``losses.weighted_cross_entropy``: class × modality weight per row).

    Args:
        feats: ``[N, D]`` image embeddings; labels ``[N]`` class indices.
        class_weights: ``[K]`` (mean 1).
        modality: ``[N]`` modality indices, with ``modality_weights`` (``{"DBT": 2.0}`` or ``[M]``).

    Returns:
        the loss after each step.
    """
    feats, labels = feats.float(), labels.long()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = weighted_cross_entropy(head(feats), labels, class_weights, modality, modality_weights)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError("linear probe diverged (non-finite loss); lower lr")
    return losses
