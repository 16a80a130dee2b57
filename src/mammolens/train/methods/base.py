"""The interface every training method implements, and what the loop hands it (open_clip's task classes
are the model: the loop stays one, methods plug in).

A method answers five questions for the loop (``train.loop``):

* ``train_dataset()``: what the training loader draws from (default ``ctx.train_ds``);
* ``build()``: which module to optimise and DDP-wrap (its trainable parameters are the optimizer's);
* ``training_forward(model, batch)``: the loss of one batch (``{"loss": scalar, other scalars...}``;
  the other entries are averaged over the epoch and logged as ``train_<name>``);
* ``after_step()``: called after every optimizer step (clamps the temperature; adaptive weights);
* ``run_model()``: the ``RunModel`` (logits ``[B, K]``) for validation and the checkpoint;
* ``log()``: extra scalars for the epoch's line in ``metrics.jsonl``;
* ``state_dict()`` / ``load_state_dict(state)``: what the method owns beyond ``ctx.clip`` and the
  optimizer (its head, adaptive modality weights, a pooling module...), saved as ``method_state`` in
  every checkpoint and restored on resume, so that a resumed run continues bit-identically.

A method with ``one_shot = True`` has no epoch loop: the loop calls ``fit()`` once instead (zero-shot,
linear probe). What a method predicts with must be expressible as a ``RunModel`` (a backbone plus named
heads of a registered kind, ``run.model``), because that is what ``run.load_run`` rebuilds from a
checkpoint: the loop saves ``ctx.clip``'s weights and ``run_model()``'s heads (``run.model.head_specs``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from mammolens.models.run import RunModel, build_run_model, zeroshot_head
from mammolens.pipeline import encode as _enc
from mammolens.pipeline.encode import to_input

# to_input is re-exported (the old import path; it lives in pipeline.encode)
__all__ = ["MethodContext", "TrainMethod", "clamp_logit_scale", "to_input", "extract_features", "warm_start_head"]

MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class MethodContext:
    """What the loop hands a method.

    Attributes:
        cfg: the run's ``TrainCfg``.
        task: the ``Task``.
        clip: the ``MammoCLIP`` on ``device`` (its weights are saved in every checkpoint).
        device: where training runs.
        class_weights: ``[K]`` on ``device`` (from the training labels, ``cfg.class_weighting``).
        modality_weights: ``[M]`` on ``device``, by index into ``constants.MODALITIES``.
        train_ds: the training ``MammoDataset`` (None where a method is only stepped, as in ``bench``).
        train_labels: ``[N]`` class indices of ``train_ds``.
        train_modality: ``[N]`` modality indices of ``train_ds``.
        dtype: the autocast dtype (None: fp32).
    """

    cfg: Any
    task: Any
    clip: nn.Module
    device: torch.device
    class_weights: Tensor
    modality_weights: Tensor
    train_ds: Any = None
    train_labels: np.ndarray | None = None
    train_modality: np.ndarray | None = None
    dtype: torch.dtype | None = None


class TrainMethod:
    """One training method (see the module docstring). Subclasses register with
    ``@mammolens.train.methods.register_method("name")``.

    Attributes:
        name: the registered name (``TrainCfg.method``), set by ``register_method``.
        terms: the method's named loss terms and their default weights (``{"contrastive": 1.0}``); the
            config's ``method.terms`` overrides them (``ctx.cfg.method_cfg.terms`` holds every one,
            resolved) and may name no other. Empty: no weighted terms.
        one_shot: no epoch loop; ``fit()`` is called once.
        needs_training_rows: the run refuses an empty training set.
        head: a linear head on the image embedding (saved in checkpoints), or None (prompt methods).
        module: what ``build()`` returned, set by the loop (None before, and for one-shot methods).
    """

    name: ClassVar[str] = ""
    terms: ClassVar[dict[str, float]] = {}
    one_shot: ClassVar[bool] = False
    needs_training_rows: ClassVar[bool] = True

    def __init__(self, ctx: MethodContext):
        self.ctx = ctx
        self.head: nn.Module | None = None
        self.module: nn.Module | None = None

    def train_dataset(self):
        """The dataset the training loader draws batches from: ``ctx.train_ds`` (images), or one built
        from it (exams, for report training). Its ``collate`` static method, when it has one, makes the
        batches; keys beyond ``image``/``label``/``modality`` reach ``training_forward`` on the device."""
        return self.ctx.train_ds

    def build(self) -> nn.Module:
        """The module to optimise (its parameters with ``requires_grad``) and to wrap in DDP / compile."""
        raise NotImplementedError(f"method {self.name!r} has no build(); a one_shot method implements fit()")

    def training_forward(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Losses of one batch.

        Args:
            model: what ``build()`` returned, possibly wrapped in DDP / ``torch.compile``.
            batch: ``image`` ``[B, 1, S, S]`` (on the device, resized, augmented), ``label`` ``[B]``
                (-1 unlabelled), ``modality`` ``[B]``.

        Returns:
            ``{"loss": scalar}`` plus any other scalars to log (kept on the device).
        """
        raise NotImplementedError(f"method {self.name!r} has no training_forward(); a one_shot method implements fit()")

    def after_step(self) -> None:
        """After each optimizer step: clamp the temperature parameter (see :func:`clamp_logit_scale`)."""
        clamp_logit_scale(self.ctx.clip)

    def fit(self) -> dict[str, float]:
        """One-shot methods: fit once; returns fields for the run's single ``metrics.jsonl`` line."""
        raise NotImplementedError(f"method {self.name!r} is not one_shot; the loop calls build() and training_forward()")

    def run_model(self) -> RunModel:
        """The classifier as trained so far (logits ``[B, K]``), for validation and checkpoints."""
        head_state = self.head.state_dict() if self.head is not None else None
        return build_run_model(self.ctx.clip, self.ctx.task, self.name, head_state)

    def log(self) -> dict[str, float]:
        """Extra scalars for the epoch's line (called once per epoch)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The method's own state for checkpoints (plain data and CPU tensors; ``weights_only`` loadable):
        by default the head's weights. Subclasses add what they own (``super().state_dict() | {...}``)."""
        return {} if self.head is None else {"head": _cpu(self.head.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (called by the loop on resume, after ``build()``)."""
        if self.head is not None and state.get("head") is not None:
            self.head.load_state_dict(state["head"])


def _cpu(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


@torch.no_grad()
def clamp_logit_scale(clip: nn.Module) -> None:
    """Clamp ``clip.logit_scale`` in place to ``[0, log 100]`` (open_clip's training loop does the same).

    Clamping the parameter after the step, not ``exp(scale)`` in the forward pass: a forward clamp has
    zero gradient above 100, so a temperature that once crossed it could never come back.
    """
    scale = getattr(clip, "logit_scale", None)
    if isinstance(scale, Tensor):
        scale.clamp_(0.0, MAX_LOGIT_SCALE)


def warm_start_head(ctx: MethodContext) -> nn.Linear:
    """A linear head initialised to the zero-shot classifier (class prompts × scale), on the device."""
    ctx.clip.eval()
    with torch.no_grad():
        return zeroshot_head(ctx.clip.class_embeddings(ctx.task).float(), ctx.clip.logit_scale).to(ctx.device)


@torch.no_grad()
def extract_features(model: RunModel, ds, batch_size: int, workers: int, device, dtype) -> Tensor:
    """Frozen image embeddings ``[N, D]`` (float32, CPU) of a dataset, in its order (``pipeline.encode``)."""
    model.eval()
    emb = _enc.encode(model, _enc.loader(ds, batch_size, workers, device), ("embedding",), device=device,
                      precision=dtype)["embedding"]  # [N, D]
    return torch.from_numpy(emb)
