"""``linear-probe``: a linear head (warm-started from the zero-shot classifier) fitted on frozen image
embeddings by full-batch AdamW with weighted cross-entropy (``train.baselines.fit_linear_probe``)."""

from __future__ import annotations

import torch
from torch import nn

from mammolens.models.run import RunModel
from mammolens.train.baselines import fit_linear_probe
from mammolens.train.methods import register_method
from mammolens.train.methods.base import TrainMethod, extract_features, warm_start_head


@register_method("linear-probe")
class LinearProbeMethod(TrainMethod):
    one_shot = True

    def __init__(self, ctx):
        super().__init__(ctx)
        self.head = warm_start_head(ctx)

    def fit(self) -> dict[str, float]:
        ctx, cfg = self.ctx, self.ctx.cfg
        ctx.clip.requires_grad_(False)
        feat_model = RunModel(ctx.clip, None, nn.Linear(1, 1), self.name)  # only encode_image is used
        feats = extract_features(feat_model, ctx.train_ds, cfg.batch_size, cfg.workers, ctx.device, ctx.dtype)  # [N, D]
        losses = fit_linear_probe(
            feats, torch.as_tensor(ctx.train_labels), self.head.cpu(), class_weights=ctx.class_weights.cpu(),
            modality=torch.as_tensor(ctx.train_modality), modality_weights=ctx.modality_weights.cpu(),
            steps=cfg.probe_steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
        )
        self.head.to(ctx.device)
        return {"train_loss": losses[-1], "train_loss_first": losses[0], "step": cfg.probe_steps, "lr": cfg.lr}
