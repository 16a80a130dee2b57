"""Losses: weighted image-text contrastive loss over class prompts, weighted cross-entropy and focal loss,
and the report losses (multi-positive exam ↔ report, sentence ↔ patch).

Weighted contrastive loss (DESIGN.md). With ``s = exp(logit_scale)``, image embeddings
``x_i`` (``[B, D]``, L2-normalised), class text embeddings ``t_k`` (``[K, D]``, template-averaged and
normalised) and logits ``l_ik = s * <x_i, t_k>``; only labelled images (``y_i >= 0``) take part:

* image→text, cross-entropy over the K classes, weighted per image by ``w_i = c[y_i] * m[mod_i]``::

      L_i2t = sum_i c[y_i] * m[mod_i] * (logsumexp_k l_ik - l_{i,y_i}) / sum_i c[y_i]

* text→image, for each class k present in the batch, a softmax over the images in which *every* image
  of class k is a positive (same-class images are never negatives)::

      L_k   = -log( sum_{i: y_i = k} exp(l_ik) / sum_i exp(l_ik) )
      L_t2i = sum_{k present} c[k] * L_k / sum_{k present} c[k]

* ``loss = (L_i2t + L_t2i) / 2``.

``c`` are class weights (``class_weights``: inverse frequency or effective number, mean 1) and ``m``
modality weights (by index into ``constants.MODALITIES``). The denominator holds the class weights only:
dividing by ``sum_i c m`` as well would cancel the modality weights in a batch of one modality (DM weight 5
or 1 gave the same loss). Modality weights are instead normalised once, to expectation 1 over the training
rows (:func:`normalise_modality_weights`), so a weight of 2 means "twice the average row" in every batch
and uniform weights leave the loss unchanged. ``AdaptiveModalityWeights`` updates ``m`` during training
(docs/modality_weighting.md).

The temperature is not clamped here: a clamp in the forward pass zeroes the gradient of ``logit_scale``
for good once ``exp(logit_scale) > 100``; the training loop clamps the parameter after each optimizer step
instead (open_clip's rule, ``train.methods.base.clamp_logit_scale``). Under ``torch.distributed`` the image
embeddings, labels and modalities of all ranks are gathered with gradient (open_clip's
``gather_features`` pattern), so the text→image softmax runs over the global batch; every rank
computes the same global loss and DDP's gradient averaging then yields the full-batch gradient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammolens.constants import MODALITIES

__all__ = [
    "class_weights",
    "modality_weight_tensor",
    "sample_weights",
    "weighted_mean",
    "normalise_modality_weights",
    "AdaptiveModalityWeights",
    "weighted_contrastive_loss",
    "WeightedContrastiveLoss",
    "weighted_cross_entropy",
    "WeightedCrossEntropyLoss",
    "focal_loss",
    "FocalLoss",
    "gather_batch",
    "multi_positive_nce",
    "side_positives",
    "exam_report_loss",
    "multiview_loss",
    "sentence_patch_attention",
    "sentence_patch_loss",
]


def class_weights(labels, num_classes: int, method: str = "inverse", beta: float = 0.999) -> Tensor:
    """Per-class weights from label counts, normalised to mean 1 over the classes present.

    Args:
        labels: Class indices (array, list or tensor); negative values (unlabelled) are ignored.
        num_classes: K.
        method: ``"inverse"`` (``1 / n_k``), ``"effective"`` (Cui et al. 2019, ``(1 - beta) / (1 - beta**n_k)``)
            or ``"none"`` (all ones).
        beta: Effective-number hyper-parameter in [0, 1).

    Returns:
        float32 tensor ``[K]``; classes absent from ``labels`` get weight 0.
    """
    if method not in ("inverse", "effective", "none"):
        raise ValueError(f"class weight method {method!r} is not one of 'inverse', 'effective', 'none'")
    if method == "none":
        return torch.ones(num_classes, dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels), dtype=torch.long)
    y = y.reshape(-1)
    y = y[y >= 0]
    if y.numel() and int(y.max()) >= num_classes:
        raise ValueError(f"label {int(y.max())} is out of range for num_classes={num_classes}")
    counts = torch.bincount(y, minlength=num_classes).to(torch.float64)  # [K]
    present = counts > 0
    if not present.any():
        raise ValueError("class_weights: no labelled samples (all labels are negative / missing)")
    w = torch.zeros(num_classes, dtype=torch.float64)
    if method == "inverse":
        w[present] = 1.0 / counts[present]
    else:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        w[present] = (1.0 - beta) / (1.0 - beta ** counts[present])
    w = w / w[present].mean()
    return w.to(torch.float32)


def modality_weight_tensor(modality_weights, device=None) -> Tensor | None:
    """Modality weights as a float tensor indexed like ``constants.MODALITIES`` (missing entries are 1).

    Args:
        modality_weights: None, a mapping ``{"DBT": 2.0}`` (names or indices) or a sequence/tensor by index.
    """
    if modality_weights is None:
        return None
    if isinstance(modality_weights, Mapping):
        w = torch.ones(len(MODALITIES), dtype=torch.float32)
        for key, value in modality_weights.items():
            if isinstance(key, str):
                if key not in MODALITIES:
                    raise ValueError(f"modality_weights: unknown modality {key!r}; expected one of {MODALITIES}")
                idx = MODALITIES.index(key)
            else:
                idx = int(key)
                if not 0 <= idx < len(MODALITIES):
                    raise ValueError(f"modality_weights: index {idx} outside 0..{len(MODALITIES) - 1}")
            w[idx] = float(value)
    else:
        w = torch.as_tensor(modality_weights, dtype=torch.float32).reshape(-1).clone()
    if (w < 0).any():
        raise ValueError(f"modality_weights must be non-negative, got {w.tolist()}")
    return w.to(device) if device is not None else w


def _class_weight_vector(class_weights, num_classes: int, device) -> Tensor:
    """Class weights as a float tensor ``[K]`` on ``device`` (all 1 when None)."""
    if class_weights is None:
        return torch.ones(num_classes, device=device)
    cw = torch.as_tensor(class_weights, dtype=torch.float32, device=device)
    if cw.shape != (num_classes,):
        raise ValueError(f"class_weights has shape {tuple(cw.shape)}, expected [{num_classes}] (one per class)")
    return cw


def sample_weights(labels: Tensor, num_classes: int, class_weights=None, modality: Tensor | None = None,
                   modality_weights=None) -> Tensor:
    """Per-row loss weights ``[B]``: class weight × modality weight, 0 for unlabelled rows (label -1).

    The one weighting path of every loss in this module (contrastive, cross-entropy, focal).

    Args:
        labels: ``[B]`` class indices, -1 for unlabelled.
        num_classes: K.
        class_weights: ``[K]`` (tensor, list) or None (all 1).
        modality: ``[B]`` indices into ``constants.MODALITIES``; needed only with modality weights.
        modality_weights: ``{"DBT": 2.0}`` (names or indices; missing ones weigh 1), ``[M]`` by index, or
            None (all 1). A tensor is used as given (no value check: that would make the host wait).

    Returns:
        float32 ``[B]`` on the labels' device.
    """
    labels = labels.long().reshape(-1)
    device = labels.device
    # a mask, not indexing: no host-device synchronisation
    w = _class_weight_vector(class_weights, num_classes, device)[labels.clamp_min(0)] * (labels >= 0)  # [B]
    if modality_weights is None:
        return w
    if modality is None:
        raise ValueError("modality_weights given but no modality indices passed to the loss; pass modality=[B] "
                         "(indices into constants.MODALITIES) or drop the modality weights")
    mw = (modality_weights.to(device=device, dtype=torch.float32) if isinstance(modality_weights, Tensor)
          else modality_weight_tensor(modality_weights, device=device))  # [M]
    return w * mw[modality.to(device).long().reshape(-1)]


def weighted_mean(values: Tensor, labels: Tensor, num_classes: int, class_weights=None, modality: Tensor | None = None,
                  modality_weights=None) -> Tensor:
    """``sum_i c[y_i] m[mod_i] v_i / sum_i c[y_i]`` over the labelled rows: the reduction of every loss here.

    Only the class weights are in the denominator, so modality weights keep their meaning in a batch of
    one modality (normalise them over the training rows with :func:`normalise_modality_weights`). No
    labelled row: 0, still attached to the graph.

    Args:
        values: ``[B]`` per-row losses.
        labels, num_classes, class_weights, modality, modality_weights: as in :func:`sample_weights`.
    """
    w = sample_weights(labels, num_classes, class_weights, modality, modality_weights)  # [B]
    labels = labels.long().reshape(-1)
    c = _class_weight_vector(class_weights, num_classes, labels.device)[labels.clamp_min(0)] * (labels >= 0)  # [B]
    return (w * values).sum() / c.sum().clamp_min(1e-12)


def normalise_modality_weights(modality_weights, modality) -> Tensor:
    """Scale modality weights to expectation 1 over rows with the given modalities (the training rows).

    With uniform weights nothing changes; ``{"DBT": 5}`` on 90 % DM / 10 % DBT becomes DM 0.71, DBT 3.57,
    so an average training batch keeps the loss scale of an unweighted one while a DM-only batch weighs
    less than a DBT-only batch.

    Args:
        modality_weights: ``[M]`` by index into ``constants.MODALITIES`` (or a mapping, see
            :func:`modality_weight_tensor`).
        modality: ``[N]`` modality indices of the training rows.

    Returns:
        float32 ``[M]`` on the weights' device.
    """
    mw = (modality_weights.float() if isinstance(modality_weights, Tensor)
          else modality_weight_tensor(modality_weights))  # [M]
    counts = torch.bincount(torch.as_tensor(np.asarray(modality), dtype=torch.long).reshape(-1),
                            minlength=mw.numel()).to(mw)  # [M]
    expected = (counts * mw).sum() / counts.sum().clamp_min(1)
    if float(expected) <= 0:
        raise ValueError(f"modality weights {mw.tolist()} are 0 for every training row (modality counts "
                         f"{counts.tolist()}); give the modalities you train on a positive weight")
    return mw / expected


class AdaptiveModalityWeights:
    """Modality weights that follow each modality's running loss during training.

    Rule (docs/modality_weighting.md): an exponential moving average ``L_m`` of the mean image→text loss
    of modality ``m`` over the batches that hold it; the weights are ``base_m * (L_m / Lbar) ** power``,
    clipped to ``[min_weight, max_weight]`` and renormalised to expectation 1 over the training rows
    (``Lbar`` the same expectation of ``L``). ``power > 0`` gives the modality the model currently finds
    hardest more weight (the rare, harder DBT of the study); ``power < 0`` is inverse-loss weighting
    (a modality with a large loss scale is damped, as in uncertainty weighting). Everything stays on the
    device (no host wait per step); under DDP every rank sees the gathered batch, so all agree.

    Args:
        base: ``[M]`` fixed weights (``data.modality_weights``) the adaptive factor multiplies.
        train_modality: ``[N]`` modality indices of the training rows (the expectation's distribution).
        momentum: EMA momentum per update (0.9: about the last 10 batches holding the modality).
        power: exponent of the loss ratio.
        min_weight, max_weight: bounds before renormalisation, so a modality never drops out or dominates.
    """

    def __init__(self, base: Tensor, train_modality, momentum: float = 0.9, power: float = 1.0,
                 min_weight: float = 0.2, max_weight: float = 5.0):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"adaptive momentum must be in [0, 1), got {momentum}")
        if not 0.0 < min_weight <= max_weight:
            raise ValueError(f"adaptive weight bounds need 0 < min_weight <= max_weight, got {min_weight}, {max_weight}")
        self.base = base.float()
        counts = torch.bincount(torch.as_tensor(np.asarray(train_modality), dtype=torch.long).reshape(-1),
                                minlength=self.base.numel())
        self.freq = (counts.float() / counts.sum().clamp_min(1)).to(self.base.device)  # [M]
        self.momentum, self.power = momentum, power
        self.min_weight, self.max_weight = min_weight, max_weight
        self.running = torch.full_like(self.base, float("nan"))  # [M]; NaN until a modality is seen
        self.weights = normalise_modality_weights(self.base, train_modality).to(self.base.device)  # [M]

    @torch.no_grad()
    def update(self, row_loss: Tensor, labels: Tensor, modality: Tensor) -> Tensor:
        """Fold one batch's per-row losses into the running losses; update ``weights`` in place.

        Args:
            row_loss: ``[B]`` per-row image→text losses (detached); rows with label -1 are ignored.
            labels: ``[B]``.
            modality: ``[B]``.

        Returns:
            the new weights ``[M]`` (the same tensor object, so a loss holding it sees the update).
        """
        m = self.base.numel()
        keep = (labels.reshape(-1) >= 0).float()  # [B]
        idx = modality.reshape(-1).long().to(self.base.device)
        sums = torch.zeros(m, device=self.base.device).index_add_(0, idx, row_loss.reshape(-1).float() * keep)
        counts = torch.zeros(m, device=self.base.device).index_add_(0, idx, keep)
        mean = sums / counts.clamp_min(1)  # [M]
        seen = counts > 0
        first = seen & torch.isnan(self.running)
        ema = self.momentum * self.running + (1 - self.momentum) * mean
        self.running.copy_(torch.where(first, mean, torch.where(seen, ema, self.running)))
        known = ~torch.isnan(self.running) & (self.freq > 0)
        run = torch.where(known, self.running, torch.zeros_like(self.running))
        lbar = (self.freq * run).sum() / (self.freq * known).sum().clamp_min(1e-12)
        ratio = torch.where(known, run / lbar.clamp_min(1e-12), torch.ones_like(run)).clamp_min(1e-6)
        w = (self.base * ratio ** self.power).clamp(self.min_weight, self.max_weight) * (self.base > 0)
        self.weights.copy_(w / (self.freq * w).sum().clamp_min(1e-12))
        return self.weights

    def state_dict(self) -> dict[str, list[float]]:
        return {"running": self.running.tolist(), "weights": self.weights.tolist()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.running.copy_(torch.tensor(state["running"]))
        self.weights.copy_(torch.tensor(state["weights"]))


def _dist_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and (
        torch.distributed.get_world_size() > 1
    )


def gather_batch(image_emb: Tensor, labels: Tensor, modality: Tensor,
                 pad_to: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """All-gather image embeddings (with gradient), labels and modalities across ranks.

    Ranks may hold different batch sizes. With ``pad_to`` (at least every rank's batch size, e.g. the
    loader's batch size) each rank pads to it and the padding stays in the result as unlabelled rows
    (label -1, which the losses mask out): fixed shapes, no exchange of sizes, no host-device wait.
    Without it the sizes are exchanged first (one synchronisation) and the padding is removed.

    Returns:
        ``(image_emb [N, D], labels [N], modality [N])`` in rank order; ``N = world * pad_to`` or ``sum B_r``.
    """
    import torch.distributed as dist
    import torch.distributed._functional_collectives as fc

    # differentiable all-gather (its backward sums each rank's gradient for the local rows); the name
    # changed across torch releases and the older ones warn as deprecated
    gather = getattr(fc, "all_gather_single_autograd", None) or fc.all_gather_tensor_autograd
    world = dist.get_world_size()
    if pad_to is not None:
        if image_emb.shape[0] > pad_to:
            raise ValueError(f"gather_batch: local batch {image_emb.shape[0]} is larger than pad_to={pad_to}")
        sizes = None
        target = pad_to
    else:
        n = torch.tensor([image_emb.shape[0]], device=image_emb.device, dtype=torch.long)
        all_n = [torch.zeros_like(n) for _ in range(world)]
        dist.all_gather(all_n, n)
        sizes = [int(s.item()) for s in all_n]
        target = max(sizes)
    pad = target - image_emb.shape[0]
    if pad:
        image_emb = F.pad(image_emb, (0, 0, 0, pad))
        labels = F.pad(labels, (0, pad), value=-1)
        modality = F.pad(modality, (0, pad), value=0)
    all_emb = gather(image_emb.contiguous(), gather_dim=0, group=dist.group.WORLD)  # [world * target, D]
    all_lab = [torch.empty_like(labels) for _ in range(world)]
    all_mod = [torch.empty_like(modality) for _ in range(world)]
    dist.all_gather(all_lab, labels.contiguous())
    dist.all_gather(all_mod, modality.contiguous())
    if sizes is None:
        return all_emb, torch.cat(all_lab, 0), torch.cat(all_mod, 0)
    keep = lambda ts: torch.cat([t[:s] for t, s in zip(ts, sizes)], 0)  # noqa: E731
    return keep(all_emb.split(target, 0)), keep(all_lab), keep(all_mod)


def _check_labels(labels: Tensor, num_classes: int) -> None:
    """Labels must be < K. On the CPU this raises now; on an accelerator the check is queued with the step
    (``torch._assert_async``) so that it does not make the host wait for the device."""
    if labels.device.type == "cpu":
        if labels.numel() and int(labels.max()) >= num_classes:
            raise ValueError(f"label {int(labels.max())} is out of range for K={num_classes} class embeddings")
    else:
        torch._assert_async((labels < num_classes).all(), f"a label is out of range for K={num_classes} classes")


def _scale(logit_scale) -> Tensor | float:
    # no clamp here (its gradient would be 0 above 100): the parameter is clamped after each optimizer step
    if isinstance(logit_scale, Tensor):
        return logit_scale.exp()
    return math.exp(float(logit_scale))


def weighted_contrastive_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    labels: Tensor,
    logit_scale,
    modality: Tensor | None = None,
    class_weights: Tensor | None = None,
    modality_weights: Tensor | None = None,
    return_terms: bool = False,
    return_rows: bool = False,
):
    """Weighted image-text contrastive loss on one (already gathered) batch; see the module docstring.

    Args:
        image_emb: ``[B, D]`` L2-normalised image embeddings.
        text_emb: ``[K, D]`` L2-normalised class text embeddings.
        labels: ``[B]`` class indices, -1 for unlabelled (ignored).
        logit_scale: Log-space temperature (``MammoCLIP.logit_scale``), exponentiated (the loop clamps it).
        modality: ``[B]`` indices into ``constants.MODALITIES`` (needed only with modality weights).
        class_weights: ``[K]`` or None (all 1).
        modality_weights: ``{"DBT": 2.0}``, ``[M]`` by index, or None (all 1); see :func:`sample_weights`.
        return_terms: Also return ``(loss_i2t, loss_t2i)``.
        return_rows: Also return the per-row image→text losses ``[B]`` (detached; for adaptive weights).
    """
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"expected image_emb [B, D] and text_emb [K, D], got {tuple(image_emb.shape)}, "
                         f"{tuple(text_emb.shape)}")
    labels = labels.to(image_emb.device).long().reshape(-1)
    if labels.shape[0] != image_emb.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries for {image_emb.shape[0]} images")
    num_classes = text_emb.shape[0]
    _check_labels(labels, num_classes)
    # Unlabelled rows (-1) are masked, not indexed out: boolean indexing and `if tensor.any()` would make
    # the host wait for the GPU every step. Every step below is a fixed-shape tensor op.
    keep = labels >= 0  # [B]
    y = labels.clamp_min(0)  # [B]
    logits = _scale(logit_scale) * image_emb.float() @ text_emb.float().t()  # [B, K]

    cw = _class_weight_vector(class_weights, num_classes, logits.device)  # [K]

    # image -> text: weighted CE over the K classes
    ce = torch.logsumexp(logits, dim=1) - logits.gather(1, y[:, None]).squeeze(1)  # [B]
    loss_i2t = weighted_mean(ce, labels, num_classes, cw, modality, modality_weights)

    # text -> image: every image of class k is a positive for prompt k; unlabelled rows take no part.
    # A finite fill (not -inf) keeps the gradient of an all-masked column finite (it is then multiplied by 0);
    # |logits| <= exp(logit_scale) << 1e9, so exp(fill - logsumexp) is exactly 0 wherever a column has a real entry.
    fill = -1e9
    pos = F.one_hot(y, num_classes).bool() & keep[:, None]  # [B, K]
    present = pos.any(0)  # [K]
    log_all = torch.logsumexp(logits.masked_fill(~keep[:, None], fill), dim=0)  # [K]
    log_pos = torch.logsumexp(logits.masked_fill(~pos, fill), dim=0)  # [K]
    cwp = cw * present  # [K], 0 for classes absent from the batch
    loss_t2i = (cwp * (log_all - log_pos)).sum() / cwp.sum().clamp_min(1e-12)

    loss = 0.5 * (loss_i2t + loss_t2i)
    out = (loss,) + (((loss_i2t, loss_t2i),) if return_terms else ()) + ((ce.detach(),) if return_rows else ())
    return out if len(out) > 1 else loss


class WeightedContrastiveLoss(nn.Module):
    """Module form of :func:`weighted_contrastive_loss` with fixed class and modality weights.

    Args:
        class_weights: ``[K]`` weights (e.g. from :func:`class_weights`) or None.
        modality_weights: Mapping ``{"DBT": 2.0}`` or ``[M]`` by index into ``constants.MODALITIES``, or None.
        gather_distributed: Gather image embeddings over ranks when torch.distributed is initialised.
        gather_pad_to: every rank's batch is at most this (the loader's batch size): gather fixed-size,
            padded batches without first exchanging sizes (see :func:`gather_batch`).
    """

    def __init__(self, class_weights=None, modality_weights=None, gather_distributed: bool = True,
                 gather_pad_to: int | None = None):
        super().__init__()
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        mw = modality_weight_tensor(modality_weights)
        self.register_buffer("class_weights", cw, persistent=False)
        self.register_buffer("modality_weights", mw, persistent=False)
        self.gather_distributed = gather_distributed
        self.gather_pad_to = gather_pad_to

    def forward(self, image_emb: Tensor, text_emb: Tensor, labels: Tensor, logit_scale,
                modality: Tensor | None = None) -> Tensor:
        labels = labels.to(image_emb.device).long().reshape(-1)
        if modality is None:
            modality = torch.zeros_like(labels)
        modality = modality.to(image_emb.device).long().reshape(-1)
        if self.gather_distributed and _dist_active():
            image_emb, labels, modality = gather_batch(image_emb, labels, modality, pad_to=self.gather_pad_to)
        loss, rows = weighted_contrastive_loss(
            image_emb, text_emb, labels, logit_scale, modality=modality,
            class_weights=self.class_weights, modality_weights=self.modality_weights, return_rows=True,
        )
        self.last_rows = (rows, labels, modality)  # [B] each (global batch): for adaptive modality weights
        return loss


def _labelled(logits: Tensor, labels: Tensor) -> Tensor:
    """Labels ``[B]`` on the logits' device, checked against K (-1 = unlabelled stays)."""
    labels = labels.to(logits.device).long().reshape(-1)
    _check_labels(labels, logits.shape[1])
    return labels


def weighted_cross_entropy(logits: Tensor, labels: Tensor, class_weights=None, modality: Tensor | None = None,
                           modality_weights=None, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy weighted by class × modality weight, normalised by the sum of class weights.

    With no weights this equals ``F.cross_entropy(logits, labels, ignore_index=-1)``; with class weights
    only it equals ``F.cross_entropy(..., weight=class_weights)``. Labels of -1 are ignored (no labelled
    row: 0, still attached to the graph).

    Args:
        logits: ``[B, K]``.
        labels: ``[B]``.
    """
    y = _labelled(logits, labels)
    ce = F.cross_entropy(logits.float(), y.clamp_min(0), reduction="none", label_smoothing=label_smoothing)  # [B]
    return weighted_mean(ce, y, logits.shape[1], class_weights, modality, modality_weights)


def focal_loss(logits: Tensor, labels: Tensor, gamma: float = 2.0, class_weights=None,
               modality: Tensor | None = None, modality_weights=None) -> Tensor:
    """Multi-class focal loss (Lin et al. 2017): ``-(1 - p_y)^gamma log p_y``, weighted like
    :func:`weighted_cross_entropy` (class weights play the role of alpha); ``gamma=0`` gives weighted CE."""
    y = _labelled(logits, labels)
    logp = F.log_softmax(logits.float(), dim=1).gather(1, y.clamp_min(0)[:, None]).squeeze(1)  # [B]
    loss = -((1.0 - logp.exp()).clamp_min(0.0) ** gamma) * logp
    return weighted_mean(loss, y, logits.shape[1], class_weights, modality, modality_weights)


class WeightedCrossEntropyLoss(nn.Module):
    """Module form of :func:`weighted_cross_entropy`."""

    def __init__(self, class_weights=None, modality_weights=None, label_smoothing: float = 0.0):
        super().__init__()
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", cw, persistent=False)
        self.register_buffer("modality_weights", modality_weight_tensor(modality_weights), persistent=False)
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, labels: Tensor, modality: Tensor | None = None) -> Tensor:
        return weighted_cross_entropy(logits, labels, self.class_weights, modality, self.modality_weights,
                                      self.label_smoothing)


class FocalLoss(nn.Module):
    """Module form of :func:`focal_loss`."""

    def __init__(self, gamma: float = 2.0, class_weights=None, modality_weights=None):
        super().__init__()
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", cw, persistent=False)
        self.register_buffer("modality_weights", modality_weight_tensor(modality_weights), persistent=False)
        self.gamma = gamma

    def forward(self, logits: Tensor, labels: Tensor, modality: Tensor | None = None) -> Tensor:
        return focal_loss(logits, labels, self.gamma, self.class_weights, modality, self.modality_weights)


# ------------------------------------------------------------------------------- report (exam ↔ text)
def multi_positive_nce(logits: Tensor, positives: Tensor, ignore: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE in which every marked pair is a positive (none of them is ever a negative).

    With ``P(i)`` the positives of row i: ``L_i = -log(sum_{j in P(i)} exp(l_ij) / sum_j exp(l_ij))``, the
    same form as the text→image term of the class-prompt loss; columns likewise. Rows / columns without
    a positive take no part. ``loss = (mean_rows L + mean_cols L) / 2``.

    Args:
        logits: ``[N, M]`` (scaled similarities).
        positives: ``[N, M]`` bool.
        ignore: ``[N, M]`` bool or None: pairs that are neither positive nor negative (left out of both
            sums, e.g. an image and itself, or a side-named sentence and a view of unknown side).

    Returns:
        A scalar (0 when no pair is positive).
    """
    if logits.shape != positives.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and positives {tuple(positives.shape)} must have one shape")
    if ignore is not None and ignore.shape != logits.shape:
        raise ValueError(f"ignore {tuple(ignore.shape)} must have the shape of logits {tuple(logits.shape)}")
    logits = logits.float()
    neg_inf = torch.finfo(logits.dtype).min
    if ignore is not None:
        positives = positives & ~ignore
        logits = logits.masked_fill(ignore, neg_inf)

    def side(lg: Tensor, pos: Tensor) -> Tensor:
        has = pos.any(1)
        if not bool(has.any()):
            return lg.sum() * 0.0  # keeps the graph: a batch without pairs is a zero, not an error
        lg, pos = lg[has], pos[has]
        return (torch.logsumexp(lg, 1) - torch.logsumexp(lg.masked_fill(~pos, neg_inf), 1)).mean()

    return 0.5 * (side(logits, positives) + side(logits.t(), positives.t()))


# sides of text items (data.dataset.SENTENCE_SIDES) and image items: 0 left, 1 right, 2 both / whole exam,
# 3 (text only) no side named, -1 (image only) a breast of unknown side
SIDE_LEFT, SIDE_RIGHT, SIDE_BOTH, SIDE_NONE, SIDE_UNKNOWN = 0, 1, 2, 3, -1


def side_positives(text_exam: Tensor, text_side: Tensor, image_exam: Tensor,
                   image_side: Tensor) -> tuple[Tensor, Tensor]:
    """Which (image, text) pairs are positives, and which are ignored, when the text names a breast.

    Pairs of different exams are negatives. Within an exam: a text about both breasts or about no breast
    (side 2 or 3) is a positive of every image item; an image item of the whole exam (side 2) is a positive
    of every text; a left (right) text is a positive of the left (right) breast's items and a *negative* of
    the other breast's; against a breast of unknown side (-1) it is ignored.

    Args:
        text_exam, text_side: ``[M]`` exam id and side of each text item.
        image_exam, image_side: ``[N]`` exam id and side of each image item.

    Returns:
        ``(positives [N, M], ignore [N, M])`` bool.
    """
    same = image_exam[:, None] == text_exam[None, :]  # [N, M]
    t, i = text_side[None, :], image_side[:, None]
    general = (t >= SIDE_BOTH) | (i == SIDE_BOTH)
    pos = same & (general | (t == i))
    ignore = same & ~general & (i == SIDE_UNKNOWN)
    return pos, ignore


def exam_report_loss(image_emb: Tensor, text_emb: Tensor, image_exam: Tensor, text_exam: Tensor,
                     logit_scale, image_side: Tensor | None = None, text_side: Tensor | None = None) -> Tensor:
    """Coarse exam ↔ report loss: images (views, breasts, exams) against texts (sentences, breast texts,
    reports). Without sides every image–text pair of the same exam is a positive; with sides the positives
    follow the report (:func:`side_positives`: a left-breast text is a negative of the right breast).

    Args:
        image_emb: ``[N, D]`` L2-normalised.
        text_emb: ``[M, D]`` L2-normalised.
        image_exam: ``[N]`` exam id of each image item.
        text_exam: ``[M]`` exam id of each text item.
        logit_scale: temperature in log space (exponentiated; the training loop clamps the parameter at
            ``log(100)`` after each optimizer step).
        image_side: ``[N]`` 0 L, 1 R, 2 whole exam, -1 unknown; text_side: ``[M]`` 0 L, 1 R, 2 both,
            3 none named. Both or neither.
    """
    logits = _scale(logit_scale) * image_emb.float() @ text_emb.float().t()  # [N, M]
    if (image_side is None) != (text_side is None):
        raise ValueError("exam_report_loss: pass both image_side and text_side, or neither")
    if image_side is None:
        return multi_positive_nce(logits, image_exam[:, None] == text_exam[None, :])
    pos, ignore = side_positives(text_exam, text_side, image_exam, image_side)
    return multi_positive_nce(logits, pos, ignore)


def multiview_loss(view_emb: Tensor, view_exam: Tensor, view_side: Tensor, logit_scale) -> Tensor:
    """Image ↔ image loss between the views of one breast (CC ↔ MLO, as in MaMA and multiview
    coarse-to-fine pretraining): every other view of the same exam and breast is a positive, the views of
    other breasts and exams are negatives, a view and itself are left out. Views of unknown side (-1) have
    no positive (they are still negatives of the others).

    Args:
        view_emb: ``[N, D]`` L2-normalised view embeddings.
        view_exam: ``[N]`` exam ids; view_side: ``[N]`` 0 L, 1 R, -1 unknown.
        logit_scale: temperature in log space.
    """
    n = view_emb.shape[0]
    logits = _scale(logit_scale) * view_emb.float() @ view_emb.float().t()  # [N, N]
    eye = torch.eye(n, dtype=torch.bool, device=view_emb.device)
    pos = (view_exam[:, None] == view_exam[None, :]) & (view_side[:, None] == view_side[None, :])
    pos &= (view_side[:, None] >= 0) & ~eye
    return multi_positive_nce(logits, pos, eye)


def sentence_patch_attention(sentences: Tensor, tokens: Tensor, temperature: float = 4.0) -> tuple[Tensor, Tensor]:
    """Each sentence's attention over each image's patch tokens (GLoRIA's local attention).

    Args:
        sentences: ``[S, D]`` L2-normalised sentence embeddings.
        tokens: ``[V, P, D]`` L2-normalised patch tokens of V images (P patches on the model's grid).
        temperature: sharpness of the attention over patches (GLoRIA's gamma1).

    Returns:
        ``(attention [S, V, P]`` (sums to 1 over P: the sentence's map over the image),
        ``similarity [S, V]`` = cosine of the sentence and its attention-weighted image context).
    """
    att = torch.softmax(temperature * torch.einsum("sd,vpd->svp", sentences.float(), tokens.float()), dim=-1)
    context = torch.einsum("svp,vpd->svd", att, tokens.float())  # [S, V, D]
    sim = F.cosine_similarity(context, sentences.float()[:, None, :].expand_as(context), dim=-1)  # [S, V]
    return att, sim


def sentence_patch_loss(sentences: Tensor, tokens: Tensor, sentence_exam: Tensor, image_exam: Tensor,
                        logit_scale, temperature: float = 4.0, sentence_side: Tensor | None = None,
                        image_side: Tensor | None = None) -> Tensor:
    """Fine sentence ↔ patch loss: contrastive over the batch's (sentence, image) pairs, scored by
    :func:`sentence_patch_attention`. Without sides the images of a sentence's own exam are its positives;
    with sides (:func:`side_positives`) a left-breast sentence's positives are its exam's left views, its
    exam's right views are negatives, and bilateral or side-less sentences have every view of the exam.

    Args:
        sentences: ``[S, D]``; tokens: ``[V, P, D]`` (both L2-normalised).
        sentence_exam: ``[S]``; image_exam: ``[V]`` exam ids.
        logit_scale: temperature in log space.
        temperature: attention sharpness over patches.
        sentence_side: ``[S]`` 0 L, 1 R, 2 both, 3 none named; image_side: ``[V]`` 0 L, 1 R, -1 unknown.
            Both or neither.
    """
    _, sim = sentence_patch_attention(sentences, tokens, temperature)  # [S, V]
    if (sentence_side is None) != (image_side is None):
        raise ValueError("sentence_patch_loss: pass both sentence_side and image_side, or neither")
    logits = _scale(logit_scale) * sim
    if sentence_side is None:
        return multi_positive_nce(logits, sentence_exam[:, None] == image_exam[None, :])
    pos, ignore = side_positives(sentence_exam, sentence_side, image_exam, image_side)  # [V, S]
    return multi_positive_nce(logits, pos.t(), ignore.t())
