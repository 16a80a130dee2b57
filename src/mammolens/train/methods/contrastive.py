"""``contrastive``: weighted image-text contrastive fine-tuning of both towers against the task's class
prompts (``losses.WeightedContrastiveLoss``, embeddings gathered over DDP ranks; one term,
``contrastive``). With ``method.modality_weighting: adaptive`` the modality weights follow each modality's
running loss (``losses.AdaptiveModalityWeights``, updated after every optimizer step, logged per epoch, saved in
the method state of every checkpoint so that a resumed run continues with them)."""

from __future__ import annotations

import logging

from torch import Tensor, nn

from mammolens.constants import MODALITIES
from mammolens.losses import AdaptiveModalityWeights, WeightedContrastiveLoss
from mammolens.train.methods import register_method
from mammolens.train.methods.base import TrainMethod

log = logging.getLogger(__name__)


class ContrastiveStep(nn.Module):
    """What DDP wraps for the contrastive method: images → (image emb [B, D], class emb [K, D], scale)."""

    def __init__(self, clip: nn.Module, task):
        super().__init__()
        self.clip, self.task = clip, task
        # prompts tokenised once; a buffer so that .to(device) moves them (not saved in checkpoints)
        self.register_buffer("tokens", clip.class_tokens(task), persistent=False)  # [K, T, L]

    def forward(self, x):
        # the text tower is trained too, so the class embeddings are recomputed every step
        return self.clip.encode_image(x), self.clip.class_embeddings(tokens=self.tokens), self.clip.logit_scale


@register_method("contrastive")
class ContrastiveMethod(TrainMethod):
    """Both towers and the temperature trained by the weighted contrastive loss."""

    terms = {"contrastive": 1.0}
    adaptive_modality_weighting = True  # method.modality_weighting: adaptive (config refuses it elsewhere)

    def build(self) -> nn.Module:
        ctx = self.ctx
        self.weight = ctx.cfg.method_cfg.terms["contrastive"]
        self.loss_fn = WeightedContrastiveLoss(class_weights=ctx.class_weights, modality_weights=ctx.modality_weights,
                                               gather_pad_to=ctx.cfg.batch_size)
        self.adaptive = None
        mw = ctx.cfg.method_cfg.modality_weighting
        if mw.mode == "adaptive":
            self.adaptive = AdaptiveModalityWeights(
                ctx.modality_weights, ctx.train_modality, momentum=mw.momentum, power=mw.power,
                min_weight=mw.min_weight, max_weight=mw.max_weight)
            self.loss_fn.modality_weights = self.adaptive.weights  # the loss reads the tensor updated in place
        return ContrastiveStep(ctx.clip, ctx.task)

    def training_forward(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        img, txt, scale = model(batch["image"])  # [B, D], [K, D], log-space scalar
        loss = self.loss_fn(img.float(), txt.float(), batch["label"], scale, modality=batch["modality"])
        return {"loss": self.weight * loss}

    def after_step(self) -> None:
        super().after_step()
        if self.adaptive is not None:  # the losses of the batch(es) just stepped on, gathered over ranks
            self.adaptive.update(*self.loss_fn.last_rows)

    def log(self) -> dict[str, float]:
        weights = self.loss_fn.modality_weights
        out = {"logit_scale": float(self.ctx.clip.logit_scale.detach().exp())}
        if weights is not None:
            out["modality_weights"] = dict(zip(MODALITIES, (round(float(w), 6) for w in weights)))
        return out

    def state_dict(self) -> dict:
        state = super().state_dict()
        if getattr(self, "adaptive", None) is not None:
            state["adaptive_modality_weights"] = self.adaptive.state_dict()  # running losses and weights
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if getattr(self, "adaptive", None) is not None:
            if "adaptive_modality_weights" not in state:  # a checkpoint of an earlier mammolens
                log.warning("the checkpoint has no adaptive modality weights (written before they were saved): "
                            "they restart from the fixed weights")
                return
            self.adaptive.load_state_dict(state["adaptive_modality_weights"])
