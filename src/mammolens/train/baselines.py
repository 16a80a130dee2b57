"""One prediction interface for every training method, and the non-contrastive baselines.

``RunModel`` wraps a ``MammoCLIP`` and gives class logits for images whatever the method was:

- ``contrastive`` / ``zeroshot``: cosine similarity of the image embedding to the class-prompt
  embeddings (``text_emb``, computed once from the task's prompts) times ``exp(logit_scale)``;
- ``linear-probe`` / ``finetune-ce``: a linear head on the image embedding.

Predictor, GradCAM and evaluation only ever call ``RunModel.forward(x) -> logits [B, K]`` or
``RunModel.predict(x) -> probs [B, K]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

HEAD_METHODS = ("linear-probe", "finetune-ce")


class RunModel(nn.Module):
    """A trained run's classifier: images ``[B, 1|3, H, W]`` in [0, 1] → class logits ``[B, K]``.

    Args:
        clip: the ``MammoCLIP`` (image tower in ``clip.visual``).
        text_emb: ``[K, D]`` class-prompt embeddings (prompt methods; also the head's initialisation).
        head: ``nn.Linear(D, K)`` for the head methods, else None.
        method: the training method that produced the weights.
    """

    def __init__(self, clip: nn.Module, text_emb: torch.Tensor | None, head: nn.Linear | None = None,
                 method: str = "contrastive"):
        super().__init__()
        if head is None and text_emb is None:
            raise ValueError("RunModel needs text embeddings (prompt methods) or a linear head")
        self.clip = clip
        self.head = head
        self.method = method
        self.register_buffer("text_emb", None if text_emb is None else text_emb.detach().clone())

    # Delegates so that code written against MammoCLIP (GradCAM, Predictor) works on a RunModel.
    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def image_size(self) -> int:
        return self.clip.image_size

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    @property
    def num_classes(self) -> int:
        return self.head.out_features if self.head is not None else self.text_emb.shape[0]

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(x)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.clip.encode_text(texts)

    def class_embeddings(self, task) -> torch.Tensor:
        return self.clip.class_embeddings(task)

    def forward(self, x: torch.Tensor, text_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``[B, K]``; ``text_emb`` overrides the stored prompts (prompt methods only)."""
        if self.head is not None:
            return self.head(self.clip.encode_image(x))  # [B, K]
        return self.clip(x, self.text_emb if text_emb is None else text_emb)  # [B, K]

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[B, K]`` (rows sum to 1)."""
        return F.softmax(self.forward(x).float(), dim=-1)


def zeroshot_head(text_emb: torch.Tensor, logit_scale: torch.Tensor) -> nn.Linear:
    """A linear head equal to the zero-shot classifier (``scale * <img, text_k>``), a warm start."""
    k, d = text_emb.shape
    head = nn.Linear(d, k)
    with torch.no_grad():
        head.weight.copy_(text_emb.float() * logit_scale.detach().float().exp().clamp(max=100.0))
        head.bias.zero_()
    return head


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
