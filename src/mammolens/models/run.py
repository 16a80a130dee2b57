"""A trained run as the library sees it: ``RunModel`` (one prediction interface for every training
method) and ``load_run`` (rebuild it from a run folder). Lives in the library so that inference and
explanations can load a run without importing the trainer.

``RunModel`` wraps a ``MammoCLIP`` and gives class logits for images whatever the method was:

- ``contrastive`` / ``zeroshot``: cosine similarity of the image embedding to the class-prompt
  embeddings (``text_emb``, computed once from the task's prompts) times ``exp(logit_scale)``;
- ``linear-probe`` / ``finetune-ce``: a linear head on the image embedding.

Predictor, GradCAM and evaluation only ever call ``RunModel.forward(x) -> logits [B, K]`` or
``RunModel.predict(x) -> probs [B, K]``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mammolens.tasks import resolve_task  # noqa: F401  (re-exported: the old import path)

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

    def logits_and_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``[B, K]`` and the normalised image embedding ``[B, D]`` from one image-tower pass
        (the embedding feeds the out-of-distribution score, ``models.ood``)."""
        emb = self.clip.encode_image(x)  # [B, D]
        if self.head is not None:
            return self.head(emb), emb
        return self.logit_scale.exp().clamp(max=100.0) * emb @ self.text_emb.to(emb.dtype).t(), emb

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


def load_checkpoint(run_dir: str | os.PathLike, which: str = "best", device: str = "cpu") -> dict[str, Any]:
    """The checkpoint dict of a run (``which``: best | last | a .pt path)."""
    run_dir = Path(run_dir)
    p = Path(which) if which.endswith(".pt") else run_dir / "checkpoints" / f"{which}.pt"
    if not p.is_file() and which == "best":
        p = run_dir / "checkpoints" / "last.pt"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: {run_dir} is not a finished mammolens run (train one first)")
    return read_checkpoint(p, map_location=device)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint file loaded as plain data only (``torch.load(weights_only=True)``): a run folder
    cannot run code.

    Checkpoints of earlier mammolens versions hold the NumPy RNG state as an array; NumPy's array
    reconstruction is allowed for them (it builds arrays and scalars, nothing callable).

    Raises:
        ValueError: the file holds other objects (a pickle that could run code is never executed).
    """
    import pickle

    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f" (found {found.group(1)})" if found else ""
        raise ValueError(f"checkpoint {path} holds objects other than tensors and plain data{what}; refusing to "
                         "load it (it could run code). Only load checkpoints written by mammolens from a source "
                         "you trust") from None


def _numpy_globals() -> list:
    import numpy as np

    try:
        from numpy._core import multiarray  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray
    return [np.ndarray, np.dtype, type(np.dtype(np.uint32)), type(np.dtype(np.float64)),
            multiarray._reconstruct, multiarray.scalar,
            # the names NumPy 1.x wrote into the pickles
            (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            (multiarray.scalar, "numpy.core.multiarray.scalar")]


def build_run_model(clip: nn.Module, task, method: str, head_state: dict | None = None) -> RunModel:
    clip.eval()
    with torch.no_grad():
        text = clip.class_embeddings(task).float()  # [K, D]
    head = None
    if method in HEAD_METHODS or head_state is not None:  # a registered method may train a head too
        head = zeroshot_head(text, clip.logit_scale)
        if head_state is not None:
            head.load_state_dict(head_state)
        head.to(text.device)
    return RunModel(clip, text, head, method)


@dataclass
class LoadedRun:
    """A run folder, loaded: ``model`` (``RunModel``, eval mode), ``task``, the resolved config as a
    dict, the cache's ``preprocess`` dict (what predictions must reproduce) and the checkpoint's
    ``method``. Unpacks as ``model, task, cfg = load_run(...)``."""

    model: RunModel
    task: Any
    cfg: dict = field(default_factory=dict)
    preprocess: dict = field(default_factory=dict)
    method: str = "contrastive"
    run_dir: Path = Path(".")

    def __iter__(self):
        return iter((self.model, self.task, self.cfg))


def load_run(run_dir: str | os.PathLike, device: str = "cpu", which: str = "best") -> LoadedRun:
    """Rebuild a run's model from its checkpoint (no download: the architecture comes from the
    registry, the weights from the checkpoint).

    Raises:
        FileNotFoundError: the folder holds no checkpoint.
    """
    from mammolens.models import create_model

    ckpt = load_checkpoint(run_dir, which, device="cpu")
    task = resolve_task(ckpt["task"])
    kwargs = dict(ckpt.get("model_kwargs") or {})
    kwargs.setdefault("pretrained", None)
    try:  # the architecture and tokenizer of the source, not its weights (the checkpoint has them)
        clip = create_model(ckpt["model_name"], load_weights=False, **kwargs)
    except TypeError:
        clip = create_model(ckpt["model_name"], **kwargs)
    clip.load_state_dict(ckpt["state_dict"])
    clip.to(device)
    method = ckpt.get("method", "contrastive")
    model = build_run_model(clip, task, method, ckpt.get("head_state_dict"))
    model.to(device).eval()
    return LoadedRun(model, task, dict(ckpt.get("cfg") or {}), dict(ckpt.get("preprocess") or {}), method,
                     Path(run_dir))
