"""``report-contrastive``: exams ↔ their reports, coarse to fine (Mammo-CLIP / GLoRIA / FILIP style).

A training batch is ``TrainCfg.batch_size`` *exams* (``data.dataset.ExamDataset``): all views of each
exam (1..8, missing views allowed) and its report split into sentences (``reports.split_sentences``).

* Text: every sentence is encoded on its own (truncated to the tokenizer's context length per
  sentence, so a report longer than the context keeps its later sentences) and the report embedding
  is the mean of its sentences; a breast's text is the mean of its side's, the bilateral and the
  exam-level sentences.
* Coarse (term ``exam_report``, default weight 1): exam and breast embeddings pooled from their views
  (``models.pooling``, ``method.pooling: mean | attention``) against report and breast texts. The
  positives follow the report (``losses.side_positives``): the report is a positive of its exam and of
  both breasts; a breast's text (its side's sentences with the bilateral and exam-level ones) is a
  positive of its exam and its breast and a *negative* of the other breast, unless it names no side of
  its own (then it is exam-level text, a positive of both). Other exams are negatives.
* Fine (term ``sentence_patch``, default 1): each sentence attends over each view's patch tokens; the
  attention-weighted image context is contrasted over the batch of (sentence, view) pairs
  (``losses.sentence_patch_loss``): a left-breast sentence's positives are its exam's left views, the
  right views are negatives; bilateral and side-less sentences have every view of their exam.
* Multiview (term ``multiview``, default 0.5): image ↔ image between the views of one breast (CC ↔ MLO;
  ``losses.multiview_loss``), as in MaMA.
* Labels (term ``prompt``, default 0): the class-weighted prompt loss on the views (label text as extra pairs).

The loss is the weighted sum of the terms (``method.terms``); a term of weight 0 is not computed.

The run is a prompt run: validation, ``evaluate`` and ``Predictor`` score images against the class
prompts, as for ``contrastive``; they score single images, so the pool is not used for prediction. The
pool's weights (attention pooling) are a training aid saved in the method state of every checkpoint
(``pool``), so that a resumed run continues with them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammolens.losses import (SIDE_BOTH, SIDE_NONE, WeightedContrastiveLoss, exam_report_loss, multiview_loss,
                              sentence_patch_loss)
from mammolens.models.pooling import make_pool, pool_groups, pool_members
from mammolens.train.methods import register_method
from mammolens.train.methods.base import TrainMethod

__all__ = ["ReportContrastiveMethod", "ReportStep", "encode_report"]

_BILATERAL = 2  # data.dataset.SENTENCE_SIDES: "B" is 2 and exam-level "" is 3, both about every breast
MAX_VIEWS = 8  # views per exam in a batch (more are dropped)


def encode_report(clip: nn.Module, sentences: list[str]) -> Tensor:
    """A report's embedding ``[D]``: the mean of its sentences' embeddings, each encoded on its own.

    Args:
        clip: a ``MammoCLIP``.
        sentences: the report's sentences (``reports.split_sentences``).
    """
    if not sentences:
        raise ValueError("encode_report needs at least one sentence; an empty report has no embedding")
    return F.normalize(clip.encode_text(sentences).float().mean(0), dim=-1)


class ReportStep(nn.Module):
    """What DDP wraps for report training: a flat exam batch → every embedding the losses need."""

    def __init__(self, clip: nn.Module, task, pooling: str, tokens: bool, prompts: bool):
        super().__init__()
        self.clip, self.pool, self.tokens, self.prompts = clip, make_pool(pooling, clip.embed_dim), tokens, prompts
        if prompts:
            self.register_buffer("class_tokens", clip.class_tokens(task), persistent=False)  # [K, T, L]

    def forward(self, x: Tensor, view_exam: Tensor, laterality: Tensor, exam_views: Tensor, sentence_tokens: Tensor,
                sentence_exam: Tensor, sentence_side: Tensor) -> dict[str, Tensor]:
        """Embeddings of a flat exam batch (``data.dataset.ExamDataset.collate``): ``view [N, D]``,
        ``patches [N, P, D]``, ``exam [E, D]``, ``breast [2E, D]`` (slot ``2e + laterality``),
        ``sentence [M, D]``, ``report [E, D]``, ``breast_text [2E, D]``, the ``*_has`` masks, ``classes
        [K, D]`` and ``scale``."""
        out: dict[str, Tensor] = {}
        if self.tokens:
            view, patches = self.clip.encode_image_tokens(x)  # [N, D], [N, P, D]
            out["patches"] = patches
        else:
            view = self.clip.encode_image(x)  # [N, D]
        n_exams = exam_views.shape[0]
        out["view"] = view
        out["exam"] = F.normalize(pool_groups(self.pool, view, view_exam, n_exams), dim=-1)  # [E, D]
        breast = torch.where(laterality >= 0, 2 * view_exam + laterality, torch.full_like(view_exam, -1))  # [N]
        out["breast"] = F.normalize(pool_groups(self.pool, view, breast, 2 * n_exams), dim=-1)  # [2E, D]
        out["breast_has"] = torch.bincount(breast[breast >= 0], minlength=2 * n_exams) > 0  # [2E]
        if sentence_tokens.shape[0]:
            sent = self.clip.encode_tokens(sentence_tokens)  # [M, D], one sentence per row: no report truncated
        else:
            sent = view.new_zeros(0, view.shape[-1])
        out["sentence"] = sent
        ids = torch.arange(n_exams, device=sent.device)
        report, out["report_has"] = pool_members(sent, sentence_exam[None, :] == ids[:, None])  # [E, D]
        out["report"] = F.normalize(report, dim=-1)
        slots = torch.arange(2 * n_exams, device=sent.device)  # breast 2e + laterality (0 L, 1 R)
        b_exam, b_side = slots.div(2, rounding_mode="floor"), slots % 2
        about = (sentence_side[None, :] == b_side[:, None]) | (sentence_side[None, :] >= _BILATERAL)  # [2E, M]
        mine = sentence_exam[None, :] == b_exam[:, None]  # [2E, M]
        breast_text, out["breast_text_has"] = pool_members(sent, about & mine)
        out["breast_text"] = F.normalize(breast_text, dim=-1)
        # a breast text that names its side is about that breast; one without (only bilateral and exam-level
        # sentences) is exam-level text
        named = (mine & (sentence_side[None, :] == b_side[:, None])).any(1)  # [2E]
        out["breast_text_side"] = torch.where(named, b_side, torch.full_like(b_side, SIDE_NONE))
        if self.prompts:
            out["classes"] = self.clip.class_embeddings(tokens=self.class_tokens)  # [K, D]
        out["scale"] = self.clip.logit_scale
        return out


@register_method("report-contrastive")
class ReportContrastiveMethod(TrainMethod):
    """Both towers and the temperature trained on exam ↔ report pairs (see the module docstring)."""

    terms = {"exam_report": 1.0, "sentence_patch": 1.0, "multiview": 0.5, "prompt": 0.0}

    def train_dataset(self):
        from mammolens.data.dataset import ExamDataset

        cfg = self.ctx.cfg
        return ExamDataset(self.ctx.train_ds, report_column=cfg.data.report_column, max_views=MAX_VIEWS,
                           max_sentences=cfg.method_cfg.max_sentences, tokenize=self.ctx.clip.tokenizer)

    def build(self) -> nn.Module:
        ctx, cfg = self.ctx, self.ctx.cfg
        # the prompt term gathers views over DDP ranks (padded to the most a batch can hold); the report
        # terms use the rank's own exams
        self.loss_fn = WeightedContrastiveLoss(class_weights=ctx.class_weights, modality_weights=ctx.modality_weights,
                                               gather_pad_to=cfg.batch_size * MAX_VIEWS)
        w = cfg.method_cfg.terms
        return ReportStep(ctx.clip, ctx.task, cfg.method_cfg.pooling, tokens=w["sentence_patch"] > 0,
                          prompts=w["prompt"] > 0).to(ctx.device)

    def training_forward(self, model: nn.Module, batch: dict) -> dict[str, Tensor]:
        w = self.ctx.cfg.method_cfg.terms
        o = model(batch["image"], batch["view_exam"], batch["laterality"], batch["exam_views"],
                  batch["sentence_tokens"], batch["sentence_exam"], batch["sentence_side"])
        out: dict[str, Tensor] = {}  # term name -> its loss (logged as train_<name>)
        if w["exam_report"] > 0:
            n_exams = o["exam"].shape[0]
            exams = torch.arange(n_exams, device=o["exam"].device)
            breast_exam = torch.arange(2 * n_exams, device=exams.device).div(2, rounding_mode="floor")
            breast_side = torch.arange(2 * n_exams, device=exams.device) % 2
            images = torch.cat([o["exam"], o["breast"][o["breast_has"]]])
            image_exam = torch.cat([exams, breast_exam[o["breast_has"]]])
            image_side = torch.cat([torch.full_like(exams, SIDE_BOTH), breast_side[o["breast_has"]]])
            texts = torch.cat([o["report"][o["report_has"]], o["breast_text"][o["breast_text_has"]]])
            text_exam = torch.cat([exams[o["report_has"]], breast_exam[o["breast_text_has"]]])
            text_side = torch.cat([torch.full_like(exams[o["report_has"]], SIDE_NONE),
                                   o["breast_text_side"][o["breast_text_has"]]])
            out["exam_report"] = exam_report_loss(images, texts, image_exam, text_exam, o["scale"],
                                                  image_side=image_side, text_side=text_side)
        if w["sentence_patch"] > 0:
            out["sentence_patch"] = sentence_patch_loss(o["sentence"], o["patches"], batch["sentence_exam"],
                                                        batch["view_exam"], o["scale"],
                                                        sentence_side=batch["sentence_side"],
                                                        image_side=batch["laterality"])
        if w["multiview"] > 0:
            out["multiview"] = multiview_loss(o["view"], batch["view_exam"], batch["laterality"], o["scale"])
        if w["prompt"] > 0:
            out["prompt"] = self.loss_fn(o["view"].float(), o["classes"].float(), batch["label"], o["scale"],
                                         modality=batch["modality"])
        loss = None
        for name, value in out.items():  # the weighted sum, in the terms' order
            loss = w[name] * value if loss is None else loss + w[name] * value
        return {"loss": loss, **out}

    def log(self) -> dict[str, float]:
        return {"logit_scale": float(self.ctx.clip.logit_scale.detach().exp().clamp(max=100.0))}

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.module is not None:  # the pool's weights (none for mean pooling)
            state["pool"] = {k: v.detach().cpu().clone() for k, v in self.module.pool.state_dict().items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.module is not None and state.get("pool") is not None:
            self.module.pool.load_state_dict(state["pool"])
