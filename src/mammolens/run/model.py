"""A trained run as the library sees it: ``RunModel`` = a backbone (the ``MammoCLIP``) plus named heads.

Every head has a ``task`` (a ``tasks.Task``) and a ``kind`` from the head-kind registry
(``HEAD_KINDS``, extended with :func:`register_head_kind`):

- ``prompt``: cosine similarity of the image embedding to the class-prompt embeddings (``text_emb``,
  computed once from the task's prompts by the text tower) times ``exp(logit_scale)`` (``contrastive``,
  ``zeroshot``, ``report-contrastive``);
- ``linear``: a linear layer on the image embedding (``linear-probe``, ``finetune-ce``).

A head kind declares the features it reads (``Head.inputs``): ``embedding`` (the normalised image
embedding ``[B, D]``) or ``tokens`` (the patch tokens ``[B, P, D]`` in the joint space, from
``MammoCLIP.encode_image_tokens``); ``RunModel`` computes each feature once per forward pass. A
segmentation or detection kind is a ``Head`` subclass reading ``tokens`` and returning its own output
(masks, boxes) from ``forward``, registered under its kind name; it must say how to rebuild itself
(``Head.build``) and may not be the primary head (the primary head gives class logits ``[B, K]``).

``RunModel.forward(x)`` / ``predict(x)`` / ``logits_and_embedding(x)`` answer with the *primary* head
(Predictor, GradCAM and evaluation call only these); ``forward_heads(x) -> {name: output}`` gives all.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HEAD_KINDS", "HEAD_METHODS", "Head", "LinearHead", "PromptHead", "RunModel", "build_heads",
           "build_run_model", "head_specs", "register_head_kind", "zeroshot_head"]

HEAD_METHODS = ("linear-probe", "finetune-ce")  # methods whose checkpoints of the old format hold a linear head
HEAD_KINDS: dict[str, type[Head]] = {}
LAZY_HEAD_KINDS = {"segment": "mammolens.models.dense", "detect": "mammolens.models.dense"}
"""Head kinds defined outside this module, imported when a checkpoint names them."""


def register_head_kind(kind: str):
    """Class decorator: make a ``Head`` subclass loadable from checkpoints as ``kind``."""

    def deco(cls):
        cls.kind = kind
        HEAD_KINDS[kind] = cls
        return cls

    return deco


class Head(nn.Module):
    """One output of a run: a task, a kind and the module that maps features to the task's output.

    Attributes:
        kind: the registered kind name (set by :func:`register_head_kind`).
        inputs: the features ``forward`` reads, keys of the dict ``RunModel`` passes: ``embedding``
            ``[B, D]`` (normalised), ``tokens`` ``[B, P, D]``, ``scale`` (the log-temperature).
        task: the ``Task`` (None for a head used only for its shape).
    """

    kind: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ("embedding",)

    def __init__(self, task=None):
        super().__init__()
        self.task = task

    @classmethod
    def build(cls, clip: nn.Module, task, state: Mapping[str, Tensor] | None) -> Head:
        """The head of ``task`` for ``clip``, with ``state`` (from a checkpoint) loaded when given."""
        raise NotImplementedError(f"head kind {cls.kind!r} has no build()")

    @property
    def num_classes(self) -> int:
        return len(self.task.class_names)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError


@register_head_kind("prompt")
class PromptHead(Head):
    """Class logits ``[B, K] = exp(scale).clamp(max=100) * emb @ text_emb.T`` (nothing trained in the head:
    the prompts are re-embedded from the text tower when the run is loaded, so its state is empty)."""

    def __init__(self, task, text_emb: Tensor):
        super().__init__(task)
        self.register_buffer("text_emb", text_emb.detach().clone(), persistent=False)  # [K, D]

    @classmethod
    def build(cls, clip, task, state=None) -> PromptHead:
        with torch.no_grad():
            return cls(task, clip.class_embeddings(task).float())

    @property
    def num_classes(self) -> int:
        return self.text_emb.shape[0]

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        emb = feats["embedding"]  # [B, D]
        return feats["scale"].exp().clamp(max=100.0) * emb @ self.text_emb.to(emb.dtype).t()


@register_head_kind("linear")
class LinearHead(Head):
    """A linear layer on the image embedding, ``[B, D] → [B, K]`` (state ``weight``, ``bias`` as ``nn.Linear``)."""

    def __init__(self, task, in_features: int, out_features: int):
        super().__init__(task)
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    @classmethod
    def from_linear(cls, task, linear: nn.Linear) -> LinearHead:
        head = cls(task, linear.in_features, linear.out_features).to(linear.weight.device)
        head.load_state_dict(linear.state_dict())
        return head

    @classmethod
    def build(cls, clip, task, state=None) -> LinearHead:
        """Initialised to the zero-shot classifier, then ``state`` loaded (the method's trained layer)."""
        clip.eval()
        with torch.no_grad():
            head = cls.from_linear(task, zeroshot_head(clip.class_embeddings(task).float(), clip.logit_scale))
        if state is not None:
            head.load_state_dict(state)
        return head

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def num_classes(self) -> int:
        return self.out_features

    def forward(self, feats: dict[str, Tensor] | Tensor) -> Tensor:
        emb = feats if isinstance(feats, Tensor) else feats["embedding"]
        return F.linear(emb, self.weight, self.bias)


def zeroshot_head(text_emb: Tensor, logit_scale: Tensor) -> nn.Linear:
    """A linear head equal to the zero-shot classifier (``scale * <img, text_k>``), a warm start."""
    k, d = text_emb.shape
    head = nn.Linear(d, k)
    with torch.no_grad():
        head.weight.copy_(text_emb.float() * logit_scale.detach().float().exp().clamp(max=100.0))
        head.bias.zero_()
    return head


class RunModel(nn.Module):
    """A trained run: images ``[B, 1|3, H, W]`` in [0, 1] → the primary head's class logits ``[B, K]``.

    Args:
        clip: the backbone (a ``MammoCLIP``; image tower in ``clip.visual``).
        heads: ``{name: Head}`` (the first is primary unless ``primary`` names another). The old form
            ``RunModel(clip, text_emb, head=None, method=...)`` (prompt embeddings ``[K, D]`` and/or an
            ``nn.Linear``) still works and builds one head named ``main``.
        primary: the name of the head ``forward``/``predict`` answer with.
        method: the training method that produced the weights.
    """

    def __init__(self, clip: nn.Module, heads: Mapping[str, Head] | Tensor | None = None,
                 head: nn.Linear | None = None, method: str = "contrastive", primary: str | None = None):
        super().__init__()
        if heads is None or isinstance(heads, Tensor):  # the old signature: (clip, text_emb, head, method)
            if head is None and heads is None:
                raise ValueError("RunModel needs at least one head: text embeddings (a prompt head) or a linear "
                                 "head")
            heads = {"main": LinearHead.from_linear(None, head) if head is not None else PromptHead(None, heads)}
        if not heads:
            raise ValueError("RunModel needs at least one head (prompt or linear)")
        self.clip = clip
        self.heads = nn.ModuleDict(dict(heads))
        self.primary = primary or next(iter(self.heads))
        if self.primary not in self.heads:
            raise ValueError(f"primary head {self.primary!r} is not one of the heads {list(self.heads)}")
        self.method = method

    # Delegates so that code written against MammoCLIP (GradCAM, Predictor) works on a RunModel.
    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def image_size(self) -> int:
        return self.clip.image_size

    @property
    def logit_scale(self) -> Tensor:
        return self.clip.logit_scale

    @property
    def primary_head(self) -> Head:
        return self.heads[self.primary]

    @property
    def head(self) -> LinearHead | None:
        """The primary head when it is linear, else None (the attribute of the one-head format)."""
        h = self.primary_head
        return h if isinstance(h, LinearHead) else None

    @property
    def text_emb(self) -> Tensor | None:
        """The primary head's class-prompt embeddings ``[K, D]`` (prompt heads), else None."""
        h = self.primary_head
        return h.text_emb if isinstance(h, PromptHead) else None

    @property
    def num_classes(self) -> int:
        return self.primary_head.num_classes

    @property
    def tasks(self) -> dict[str, Any]:
        """``{head name: Task}``."""
        return {name: h.task for name, h in self.heads.items()}

    def encode_image(self, x: Tensor) -> Tensor:
        return self.clip.encode_image(x)

    def encode_text(self, texts: list[str]) -> Tensor:
        return self.clip.encode_text(texts)

    def class_embeddings(self, task) -> Tensor:
        return self.clip.class_embeddings(task)

    def _features(self, x: Tensor, heads) -> dict[str, Tensor]:
        wanted = {k for h in heads for k in h.inputs}
        feats: dict[str, Tensor] = {"scale": self.clip.logit_scale}
        if "tokens" in wanted:
            feats["embedding"], feats["tokens"] = self.clip.encode_image_tokens(x)  # [B, D], [B, P, D]
        else:
            feats["embedding"] = self.clip.encode_image(x)  # [B, D]
        return feats

    def forward(self, x: Tensor, text_emb: Tensor | None = None) -> Tensor:
        """Primary head's class logits ``[B, K]``; ``text_emb`` ``[K, D]`` scores against other prompts."""
        if text_emb is not None:
            return self.clip(x, text_emb)  # [B, K]
        head = self.primary_head
        return head(self._features(x, [head]))  # [B, K]

    def forward_heads(self, x: Tensor) -> dict[str, Tensor]:
        """Every head's output from one backbone pass: ``{name: logits [B, K_name]}`` (or a dense kind's output)."""
        feats = self._features(x, list(self.heads.values()))
        return {name: h(feats) for name, h in self.heads.items()}

    def logits_and_embedding(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Primary class logits ``[B, K]`` and the normalised image embedding ``[B, D]`` from one image-tower
        pass (the embedding feeds the out-of-distribution score, ``models.ood``)."""
        head = self.primary_head
        feats = self._features(x, [head])
        return head(feats), feats["embedding"]

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Primary class probabilities ``[B, K]`` (rows sum to 1)."""
        return F.softmax(self.forward(x).float(), dim=-1)


def head_specs(heads: Mapping[str, Head]) -> dict[str, dict[str, Any]]:
    """``{name: {"task": task dict, "kind", "state"}}``: the heads as a checkpoint stores them (CPU tensors)."""
    from mammolens.tasks import task_dict

    return {name: {"task": task_dict(h.task), "kind": h.kind,
                   "state": {k: v.detach().cpu() for k, v in h.state_dict().items()}}
            for name, h in heads.items()}


def build_heads(clip: nn.Module, specs: Mapping[str, Mapping[str, Any]]) -> dict[str, Head]:
    """Heads from their checkpoint form (:func:`head_specs`), on ``clip``'s device.

    Raises:
        ValueError: a kind that no ``register_head_kind`` knows (the message lists the known ones).
    """
    from mammolens.tasks import resolve_task

    clip.eval()
    out: dict[str, Head] = {}
    for name, spec in specs.items():
        kind = spec.get("kind")
        if kind in LAZY_HEAD_KINDS and kind not in HEAD_KINDS:
            importlib.import_module(LAZY_HEAD_KINDS[kind])  # registers itself
        if kind not in HEAD_KINDS:
            raise ValueError(f"head {name!r} has kind {kind!r}, which this mammolens does not know (known: "
                             f"{', '.join(sorted(HEAD_KINDS))}); a newer mammolens wrote this run")
        task = resolve_task(spec["task"])
        state = spec.get("state") or None
        device = clip.logit_scale.device
        out[name] = HEAD_KINDS[kind].build(clip, task, state).to(device)
    return out


def build_run_model(clip: nn.Module, task, method: str, head_state: dict | None = None) -> RunModel:
    """The one-head ``RunModel`` of the old checkpoint format: a linear head (``head_state``, or any
    method in ``HEAD_METHODS``) or the task's prompts. The head is named after the task."""
    clip.eval()
    kind = "linear" if method in HEAD_METHODS or head_state is not None else "prompt"
    head = HEAD_KINDS[kind].build(clip, task, head_state).to(clip.logit_scale.device)
    return RunModel(clip, {task.name or "main": head}, method=method)
