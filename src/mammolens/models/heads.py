"""Classification heads on image embeddings: linear probe, MLP, and image tower + head classifier."""

from __future__ import annotations


from torch import Tensor, nn


class LinearProbe(nn.Module):
    """A linear classifier ``[B, D] -> [B, K]`` (for frozen-tower linear probes)."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


class MLPHead(nn.Module):
    """``Linear -> GELU -> Dropout -> Linear``, ``[B, D] -> [B, K]``."""

    def __init__(self, in_dim: int, num_classes: int, hidden_dim: int | None = None, dropout: float = 0.1):
        super().__init__()
        hidden_dim = hidden_dim or in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ImageClassifier(nn.Module):
    """A MammoCLIP image tower with a classification head (the weighted-CE fine-tuning baseline).

    The text tower is kept (frozen, unused in ``forward``) so the checkpoint still rebuilds with
    ``create_model(model_name, **model_kwargs)``.

    Args:
        mammo_clip: A :class:`~mammolens.models.MammoCLIP`.
        num_classes: K.
        head: ``"linear"`` or ``"mlp"``.
        normalize: Feed L2-normalised embeddings to the head.
    """

    def __init__(self, mammo_clip: nn.Module, num_classes: int, head: str = "linear", normalize: bool = False):
        super().__init__()
        if head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
        self.backbone = mammo_clip
        mammo_clip.lock_text_tower()
        for p in (mammo_clip.logit_scale,):
            p.requires_grad = False
        dim = mammo_clip.embed_dim
        self.head = LinearProbe(dim, num_classes) if head == "linear" else MLPHead(dim, num_classes)
        self.normalize = normalize
        self.num_classes = num_classes

    @property
    def visual(self) -> nn.Module:
        return self.backbone.visual

    @property
    def image_size(self):
        return self.backbone.image_size

    def encode_image(self, x: Tensor) -> Tensor:
        return self.backbone.encode_image(x, normalize=self.normalize)  # [B, D]

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, K]`` for images ``[B, 1|3, H, W]`` in [0, 1]."""
        return self.head(self.encode_image(x))


__all__ = ["LinearProbe", "MLPHead", "ImageClassifier"]
