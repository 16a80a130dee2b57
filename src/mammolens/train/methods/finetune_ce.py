"""``finetune-ce``: the image tower and a linear head (warm-started from the zero-shot classifier)
trained with weighted cross-entropy (one term, ``cross_entropy``); the text tower stays frozen. Fixed modality
weights apply; ``method.modality_weighting: adaptive`` is refused by the config (only ``contrastive`` takes it)."""

from __future__ import annotations

from torch import Tensor, nn

from mammolens.losses import weighted_cross_entropy
from mammolens.train.methods import register_method
from mammolens.train.methods.base import TrainMethod, warm_start_head


class HeadStep(nn.Module):
    """Images → class logits ``[B, K]`` through the image tower and the head."""

    def __init__(self, clip: nn.Module, head: nn.Linear):
        super().__init__()
        self.clip, self.head = clip, head

    def forward(self, x):
        return self.head(self.clip.encode_image(x))  # [B, K]


@register_method("finetune-ce")
class FinetuneCEMethod(TrainMethod):
    terms = {"cross_entropy": 1.0}

    def __init__(self, ctx):
        super().__init__(ctx)
        self.head = warm_start_head(ctx)

    def build(self) -> nn.Module:
        self.ctx.clip.requires_grad_(False)
        self.ctx.clip.visual.requires_grad_(True)
        return HeadStep(self.ctx.clip, self.head)

    def training_forward(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = model(batch["image"]).float()  # [B, K]
        loss = weighted_cross_entropy(logits, batch["label"], class_weights=self.ctx.class_weights,
                                      modality=batch["modality"], modality_weights=self.ctx.modality_weights)
        return {"loss": self.ctx.cfg.method_cfg.terms["cross_entropy"] * loss}
