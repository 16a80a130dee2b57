"""``encode``: the one batched forward pass over image tiles (probabilities, logits, embeddings, patch tokens).

Every surface that runs a trained run's image tower over data goes through here: validation during
training (``train.loop.predict_cache``), the linear probe's and the OOD model's features
(``train.methods.base.extract_features``), ``evaluate`` (predictions and retrieval in one pass), the
``Predictor`` (batch by batch while its workers read the next files), ``study``, cross-validation, the
index builder and the feature cache (``pipeline.features``). GradCAM, text maps and FActOR get their
input through :func:`resize_to_model`, so a run whose input size differs from its cache's works everywhere.

What one call does to each batch:

1. tiles ``[B, 1|3, S, S]`` (or ``[B, S, S]``) floats in [0, 1], a tensor, an array or a dict with
   ``"image"`` (a ``DataLoader`` over ``MammoDataset``), go to the device (``non_blocking``);
2. are resized to the model's input size (``model.image_size``; the cache's ``S`` may differ) with the
   same antialiased bilinear resize training uses, and made ``channels_last`` on CUDA;
3. run under ``torch.inference_mode`` and the precision's autocast (``models.precision``);
4. give what ``want`` names: ``"probs"`` (softmax of the run's logits, float32), ``"logits"``,
   ``"embedding"`` (the L2-normalised image embedding, from the same tower pass as the logits:
   ``RunModel.logits_and_embedding``) and ``"tokens"`` (the L2-normalised patch tokens in the joint space,
   ``MammoCLIP.encode_image_tokens``; ViT towers only).

``model`` is a ``RunModel`` or a bare ``MammoCLIP`` (then ``task`` is needed for logits: its class prompts
make a prompt classifier, as in ``MammoCLIP.forward``). The model's train/eval mode is restored on return.

API:
    ``iter_encode(model, batches, want=("probs",), *, device=None, precision="fp32", size=None, task=None)``
        → one ``{name: np.ndarray}`` per batch, streaming (the Predictor's path);
    ``encode(model, batches, want=("probs", "embedding"), ...)`` → ``{name: np.ndarray}`` concatenated, in input order;
    ``to_input(x, size, device)`` → the device tensor one batch becomes (resize, ``channels_last``);
    ``resize_to_model(x, model)`` → ``x`` at the model's input size (explanations);
    ``model_input_size(model)`` → ``(h, w)`` or None; ``loader(dataset, batch_size, workers, device)``.

Callers look these names up through the module at call time (``from mammolens.pipeline import encode as
_enc; _enc.encode(...)``), so a test that patches ``mammolens.pipeline.encode.encode`` sees every surface.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammolens.models.precision import autocast, autocast_dtype

__all__ = ["OUTPUTS", "encode", "iter_encode", "loader", "model_input_size", "resize_to_model", "to_input"]

OUTPUTS = ("probs", "logits", "embedding", "tokens")


def model_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The image size a model's tower expects, ``(h, w)``, from ``model.image_size`` (None when it has none)."""
    size = getattr(model, "image_size", None)
    if size is None or size == 0:
        return None
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))


def resize(x: Tensor, size: int | Sequence[int]) -> Tensor:
    """``x [B, C, H, W]`` at ``size`` (antialiased bilinear, as training resizes); unchanged when it already is."""
    hw = _as_hw(size)
    if tuple(x.shape[-2:]) == hw:
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)


def to_input(x: Tensor, size: int | Sequence[int], device: torch.device | str) -> Tensor:
    """Batch ``[B, 1, S, S]`` → device, resized to the network's input size (``channels_last`` on CUDA)."""
    device = torch.device(device)
    x = resize(x.to(device, non_blocking=True), size)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def resize_to_model(x: Tensor, model: nn.Module) -> Tensor:
    """``x`` resized to ``model``'s input size (``model_input_size``), or unchanged for a model without one.

    GradCAM, text-to-patch maps and FActOR call this before their forward pass and upsample their maps back
    to ``x``'s size, so maps always come back at the tile size the caller drew on.
    """
    hw = model_input_size(model)
    return x if hw is None or x.ndim != 4 else resize(x, hw)


def loader(dataset, batch_size: int, workers: int = 0, device: torch.device | str = "cpu"):
    """A ``DataLoader`` over ``dataset`` in its order (pinned memory for a CUDA device)."""
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=torch.device(device).type == "cuda")


def _images(batch: Any) -> Tensor:
    """The image tensor ``[B, C, S, S]`` of one batch (tensor, array or dict with ``"image"``)."""
    if isinstance(batch, dict):
        if "image" not in batch:
            raise ValueError(f"encode: a dict batch needs an 'image' entry, got keys {sorted(batch)}")
        batch = batch["image"]
    x = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
    if not torch.is_tensor(x):
        raise ValueError(f"encode: batches must be tensors, arrays or dicts with 'image', got {type(batch).__name__}")
    if x.ndim == 3:
        x = x[:, None]  # [B, S, S] -> [B, 1, S, S]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"encode: expected images [B, 1|3, H, W] in [0, 1], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"encode: images must be floats in [0, 1], got {x.dtype} (divide uint16 tiles by 65535)")
    return x


def _classifier(model: nn.Module, task) -> nn.Module:
    """A ``RunModel`` for ``model``: itself (a run model, or a plain classifier ``model(x) -> logits``), or a
    prompt classifier over a bare ``MammoCLIP`` (``class_embeddings``, no ``logits_and_embedding``) and ``task``."""
    if hasattr(model, "logits_and_embedding") or not hasattr(model, "class_embeddings"):
        return model
    from mammolens.models.run import RunModel

    if task is None:
        raise ValueError("encode: logits of a bare image-text model need the task (its class prompts); "
                         "pass task= or a RunModel")
    return RunModel(model, model.class_embeddings(task).float())


def _head_logits(model: nn.Module, emb: Tensor) -> Tensor:
    """Class logits ``[B, K]`` of a run model from image embeddings ``[B, D]`` (the tokens path)."""
    fn = getattr(model, "logits_from_embedding", None)
    if fn is not None:
        return fn(emb)
    if getattr(model, "head", None) is not None:
        return model.head(emb)
    return model.logit_scale.exp().clamp(max=100.0) * emb @ model.text_emb.to(emb.dtype).t()


def _forward(model: nn.Module, x: Tensor, want: frozenset[str]) -> dict[str, Tensor]:
    """The requested outputs of one batch from one image-tower pass (on the device)."""
    out: dict[str, Tensor] = {}
    needs_logits = bool(want & {"probs", "logits"})
    if "tokens" in want:
        tokens_fn = getattr(model, "encode_image_tokens", None) or model.clip.encode_image_tokens
        emb, out["tokens"] = tokens_fn(x)  # [B, D], [B, N, D]
        if needs_logits:
            out["logits"] = _head_logits(model, emb)
    elif needs_logits and "embedding" in want and hasattr(model, "logits_and_embedding"):
        out["logits"], emb = model.logits_and_embedding(x)  # [B, K], [B, D]
    elif needs_logits and "embedding" in want:  # a plain classifier with an image tower: two passes
        out["logits"], emb = model(x), model.encode_image(x)
    elif needs_logits:
        out["logits"], emb = model(x), None  # [B, K]
    else:
        emb = model.encode_image(x)  # [B, D]
    if "embedding" in want:
        out["embedding"] = emb
    return out


def _check_want(want: Iterable[str]) -> tuple[str, ...]:
    want = (want,) if isinstance(want, str) else tuple(want)
    bad = [w for w in want if w not in OUTPUTS]
    if bad or not want:
        raise ValueError(f"encode: want must name some of {OUTPUTS}, got {list(want)}")
    return want


def iter_encode(model: nn.Module, batches: Iterable[Any], want: Iterable[str] = ("probs",), *,
                device: torch.device | str | None = None, precision: str | torch.dtype | None = "fp32",
                size: int | Sequence[int] | None = None, task=None) -> Iterator[dict[str, np.ndarray]]:
    """One ``{name: float32 array}`` per batch of ``batches`` (see the module docstring), streaming.

    Args:
        model: a ``RunModel`` (or a bare ``MammoCLIP`` with ``task``); moved nowhere: it stays on its device.
        batches: tensors/arrays ``[B, 1|3, S, S]`` (or ``[B, S, S]``) in [0, 1], or dicts with ``"image"``.
        want: names from ``OUTPUTS``.
        device: where the forward runs (default: the model's parameters' device).
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"``, ``"auto"`` or an autocast dtype (None: fp32).
        size: input size override (default ``model.image_size``; a model without one gets tiles as they are).
        task: the task, for a bare ``MammoCLIP``'s logits.

    Yields:
        ``probs``/``logits`` ``[B, K]``, ``embedding`` ``[B, D]``, ``tokens`` ``[B, N, D]``, NumPy float32.
    """
    want = _check_want(want)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    dtype = autocast_dtype(precision, device) if isinstance(precision, str) else precision
    hw = _as_hw(size) if size is not None else model_input_size(model)
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with torch.inference_mode():
            net = _classifier(model, task) if {"probs", "logits"} & set(want) else model
        for batch in batches:
            x = _images(batch)
            # inference mode per batch, never around the yield: the caller's code between batches (GradCAM
            # in the Predictor) must not run in it
            with torch.inference_mode():
                x = to_input(x, hw if hw is not None else x.shape[-2:], device)
                with autocast(device, dtype):
                    out = _forward(net, x, frozenset(want))
                res = {}
                for name in want:
                    t = out["logits"] if name == "probs" else out[name]
                    t = F.softmax(t.float(), dim=-1) if name == "probs" else t.float()
                    res[name] = t.cpu().numpy()
            yield res
    finally:
        if was_training:
            model.train(True)


def encode(model: nn.Module, batches: Iterable[Any], want: Iterable[str] = ("probs", "embedding"), *,
           device: torch.device | str | None = None, precision: str | torch.dtype | None = "fp32",
           size: int | Sequence[int] | None = None, task=None) -> dict[str, np.ndarray]:
    """:func:`iter_encode` over all batches, concatenated in input order: ``{name: float32 array}``.

    With no batch at all, every entry is an empty array of shape ``(0,)``: the caller knows its widths.
    """
    want = _check_want(want)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in want}
    for res in iter_encode(model, batches, want, device=device, precision=precision, size=size, task=task):
        for name in want:
            parts[name].append(res[name])
    return {name: (p[0] if len(p) == 1 else np.concatenate(p)) if p else np.zeros((0,), dtype=np.float32)
            for name, p in parts.items()}
