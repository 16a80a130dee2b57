"""Class-activation maps (GradCAM and friends) for ViT and CNN image towers.

Template-method design after pytorch-grad-cam: :class:`BaseCAM` runs the forward/backward pass,
reshapes the target layer's activations to a spatial map and normalises the result; subclasses
override only :meth:`BaseCAM.weights`. Unlike most CAM code, the ViT token grid is derived from the
tower (patch size, number of class/register/distillation tokens) and the actual input size, so any
resolution, non-square inputs and register tokens work.

Example:
    >>> with GradCAM(model) as cam:                           # doctest: +SKIP
    ...     maps = cam.compute(x, ClassSimilarityTarget(model.class_embeddings(task), k=2))
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mammolens.pipeline.encode import resize_to_model

__all__ = [
    "BaseCAM",
    "ClassSimilarityTarget",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "OutputIndexTarget",
    "TokenLayout",
    "find_image_tower",
    "find_target_layer",
    "normalise_maps",
    "tokens_to_grid",
    "token_layout",
]

Target = Callable[[torch.Tensor], torch.Tensor] | int | Sequence[int]


# --------------------------------------------------------------------------------------------------
# Targets: callables mapping the model output to one score per image.
# --------------------------------------------------------------------------------------------------
@dataclass
class ClassSimilarityTarget:
    """Cosine similarity between the image embedding and class ``k``'s prompt embedding.

    This is the zero-shot/contrastive logit up to the constant ``logit_scale``, which does not change
    a normalised CAM.

    Args:
        text_emb: class prompt embeddings ``[K, D]`` (e.g. ``model.class_embeddings(task)``).
        k: class index, or one index per image (sequence or tensor ``[B]``).
    """

    text_emb: torch.Tensor
    k: int | Sequence[int] | torch.Tensor

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if output.ndim != 2 or output.shape[1] != self.text_emb.shape[-1]:
            raise ValueError(
                f"ClassSimilarityTarget expects image embeddings [B, {self.text_emb.shape[-1]}], got "
                f"{tuple(output.shape)}; pass a model whose encode_image returns embeddings of the "
                "same width as the text embeddings.")
        text = F.normalize(self.text_emb.to(output.device, output.dtype), dim=-1)  # [K, D]
        sims = F.normalize(output, dim=-1) @ text.T  # [B, K]
        return _select(sims, self.k)


@dataclass
class OutputIndexTarget:
    """Selects column ``k`` of a ``[B, K]`` output (logits of a plain classifier)."""

    k: int | Sequence[int] | torch.Tensor

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if output.ndim != 2:
            raise ValueError(f"OutputIndexTarget expects a [B, K] output, got {tuple(output.shape)}.")
        return _select(output, self.k)


def _select(scores: torch.Tensor, k) -> torch.Tensor:
    """Picks one column per row of ``scores [B, K]``; ``k`` is an int or ``[B]`` indices."""
    n_classes = scores.shape[1]
    idx = torch.as_tensor(k, device=scores.device, dtype=torch.long).reshape(-1)
    if idx.numel() == 1:
        idx = idx.expand(scores.shape[0])
    if idx.numel() != scores.shape[0]:
        raise ValueError(f"got {idx.numel()} class indices for a batch of {scores.shape[0]} images.")
    if bool((idx < 0).any()) or bool((idx >= n_classes).any()):
        raise ValueError(f"class index {idx.tolist()} out of range for {n_classes} classes.")
    return scores.gather(1, idx[:, None])[:, 0]  # [B]


def _as_target(target: Target) -> Callable[[torch.Tensor], torch.Tensor]:
    if callable(target):
        return target
    return OutputIndexTarget(target)


# --------------------------------------------------------------------------------------------------
# Model introspection: image tower, target layer, ViT token layout.
# --------------------------------------------------------------------------------------------------
def find_image_tower(model: nn.Module) -> nn.Module:
    """Returns the module that holds the image backbone (``.visual``, unwrapped ``.trunk``)."""
    tower = getattr(model, "visual", model)
    return getattr(tower, "trunk", tower)  # open_clip TimmModel wraps a timm trunk


def _is_timm_vit(m: nn.Module) -> bool:
    return hasattr(m, "patch_embed") and hasattr(m, "blocks") and hasattr(m, "num_prefix_tokens")


def _is_open_clip_vit(m: nn.Module) -> bool:
    return hasattr(m, "conv1") and hasattr(m, "class_embedding") and hasattr(m, "transformer")


def find_target_layer(model: nn.Module) -> nn.Module:
    """Picks a default CAM layer in the image tower.

    ViTs: the last block's first norm (timm ``blocks[-1].norm1``, open_clip ``resblocks[-1].ln_1``):
    with class-token pooling the patch tokens at the *output* of the last block receive no
    gradient, whereas the input of its attention still does. CNNs: the last stage (``layer4``,
    ``stages[-1]``, ``features[-1]``), else the last ``Conv2d``.

    Raises:
        ValueError: when no layer can be found; pass ``target_layer=`` explicitly then.
    """
    tower = find_image_tower(model)
    if _is_timm_vit(tower):
        block = tower.blocks[-1]
        return getattr(block, "norm1", block)
    if _is_open_clip_vit(tower):
        block = tower.transformer.resblocks[-1]
        return getattr(block, "ln_1", block)
    for name in ("layer4", "stages", "features"):
        stage = getattr(tower, name, None)
        if isinstance(stage, nn.Module):
            return stage[-1] if isinstance(stage, (nn.Sequential, nn.ModuleList)) and len(stage) else stage
    convs = [m for m in tower.modules() if isinstance(m, nn.Conv2d)]
    if convs:
        return convs[-1]
    raise ValueError(
        f"cannot find a CAM target layer in {type(tower).__name__}: no ViT blocks, CNN stage or Conv2d; "
        "pass target_layer=<module> explicitly.")


@dataclass(frozen=True)
class TokenLayout:
    """How a ViT lays out its tokens: ``num_prefix_tokens`` (class + register/distillation tokens)
    followed by a row-major grid of patches of ``patch_size = (ph, pw)`` pixels."""

    num_prefix_tokens: int
    patch_size: tuple[int, int]
    pad: bool = False  # timm ``dynamic_img_pad``: partial patches at the border count (ceil)
    batch_first: bool = True

    def grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Token grid ``(gh, gw)`` for an input of ``image_hw`` pixels."""
        (h, w), (ph, pw) = image_hw, self.patch_size
        if self.pad:
            return -(-h // ph), -(-w // pw)
        return h // ph, w // pw


def token_layout(tower: nn.Module) -> TokenLayout | None:
    """The :class:`TokenLayout` of a timm / open_clip ViT tower, or ``None`` for other models."""
    tower = find_image_tower(tower)
    if _is_timm_vit(tower):
        pe = tower.patch_embed
        ps = tuple(pe.patch_size) if isinstance(pe.patch_size, (tuple, list)) else (pe.patch_size,) * 2
        return TokenLayout(int(tower.num_prefix_tokens), (int(ps[0]), int(ps[1])),
                           pad=bool(getattr(pe, "dynamic_img_pad", False)))
    if _is_open_clip_vit(tower):
        ps = tower.patch_size if hasattr(tower, "patch_size") else tower.conv1.kernel_size
        ps = tuple(ps) if isinstance(ps, (tuple, list)) else (ps, ps)
        return TokenLayout(1, (int(ps[0]), int(ps[1])),
                           batch_first=bool(getattr(tower.transformer, "batch_first", True)))
    return None


def tokens_to_grid(tokens: torch.Tensor, layout: TokenLayout, image_hw: tuple[int, int]) -> torch.Tensor:
    """Drops prefix tokens and reshapes ``[B, N, C]`` ViT tokens to a ``[B, C, gh, gw]`` map.

    Raises:
        ValueError: when the number of tokens does not match the grid implied by the layout.
    """
    b, n, c = tokens.shape
    gh, gw = layout.grid(image_hw)
    if n - layout.num_prefix_tokens != gh * gw:
        raise ValueError(
            f"ViT token count mismatch: {n} tokens - {layout.num_prefix_tokens} prefix tokens = "
            f"{n - layout.num_prefix_tokens}, but an input of {image_hw[0]}x{image_hw[1]} px with "
            f"{layout.patch_size[0]}x{layout.patch_size[1]} px patches gives a {gh}x{gw} = {gh * gw} grid. "
            "Choose another target_layer (one that outputs all patch tokens) or check the tower's "
            "patch size and prefix/register tokens.")
    patches = tokens[:, layout.num_prefix_tokens:, :]  # [B, gh*gw, C]
    return patches.reshape(b, gh, gw, c).permute(0, 3, 1, 2)  # [B, C, gh, gw]


# --------------------------------------------------------------------------------------------------
# CAMs
# --------------------------------------------------------------------------------------------------
class BaseCAM:
    """Template for gradient-based class-activation maps.

    Args:
        model: a ``MammoCLIP``-like module (``encode_image`` is used as the forward function and
            ``.visual`` as the image tower) or any image model (``model(x)`` is the output).
        target_layer: module whose output is explained; found by :func:`find_target_layer` if None.
        forward_fn: overrides the forward function ``x -> output``.

    Use as a context manager so that hooks are released on exit, also after an exception; calling
    :meth:`compute` outside ``with`` registers and releases the hooks around that call.
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module | None = None,
                 forward_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.model = model
        self.tower = find_image_tower(model)
        self.target_layer = target_layer if target_layer is not None else find_target_layer(model)
        self.layout = token_layout(self.tower)
        if forward_fn is None:
            forward_fn = model.encode_image if hasattr(model, "encode_image") else model
        self.forward_fn = forward_fn
        self.scores: torch.Tensor | None = None  # [B] target scores of the last compute()
        self._handles: list = []
        self._acts: torch.Tensor | None = None
        self._tower_hw: tuple[int, int] | None = None

    # -- hooks -------------------------------------------------------------------------------------
    def _save_tower_input(self, module, args) -> None:
        if args and torch.is_tensor(args[0]) and args[0].ndim == 4:
            self._tower_hw = tuple(args[0].shape[-2:])  # size after any resizing inside the model

    def _save_activation(self, module, args, output) -> None:
        self._acts = output[0] if isinstance(output, (tuple, list)) else output

    def __enter__(self) -> BaseCAM:
        if not self._handles:
            self._handles = [
                self.tower.register_forward_pre_hook(self._save_tower_input),
                self.target_layer.register_forward_hook(self._save_activation),
            ]
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Removes all hooks this object registered."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._acts = None

    # -- template ----------------------------------------------------------------------------------
    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Per-channel or per-location weights multiplied with ``acts [B, C, h, w]``."""
        raise NotImplementedError

    def _spatial(self, t: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """Target-layer tensor as ``[B, C, h, w]``."""
        if t.ndim == 4:
            return t
        if t.ndim == 3:
            if self.layout is None:
                raise ValueError(
                    f"target layer output has shape {tuple(t.shape)} (tokens) but the tower "
                    f"{type(self.tower).__name__} is not a recognised ViT; pass a layer with a "
                    "[B, C, H, W] output.")
            if not self.layout.batch_first:
                t = t.transpose(0, 1)  # [N, B, C] -> [B, N, C]
            return tokens_to_grid(t, self.layout, image_hw)
        raise ValueError(f"cannot make a spatial map from a target-layer output of shape {tuple(t.shape)}.")

    def compute(self, x: torch.Tensor, target: Target) -> torch.Tensor:
        """Class-activation maps for a batch.

        Args:
            x: images ``[B, C, H, W]``; resized to ``model.image_size`` first when the model has one
                (``pipeline.encode.resize_to_model``), the maps coming back at ``x``'s size.
            target: callable ``output -> [B]`` scores (e.g. :class:`ClassSimilarityTarget`), or class
                index/indices into a ``[B, K]`` output.

        Returns:
            Maps ``[B, H, W]`` (float32, CPU) in [0, 1] at the input resolution; an image whose map
            is zero everywhere stays zero. Target scores are kept in ``self.scores``.
        """
        if x.ndim != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}.")
        entered = bool(self._handles)
        if not entered:
            self.__enter__()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                # At the model's input size (a run trained at 64 px explains 96-px tiles); a leaf that
                # requires grad makes the graph exist even for frozen weights.
                x_in = resize_to_model(x.detach(), self.model).clone().requires_grad_(True)
                self._acts, self._tower_hw = None, None
                output = self.forward_fn(x_in)
                if self._acts is None:
                    raise RuntimeError("the target layer was not run in the forward pass; "
                                       "pass a target_layer that belongs to the image tower.")
                scores = _as_target(target)(output)  # [B]
                if scores.ndim != 1 or scores.shape[0] != x.shape[0]:
                    raise ValueError(f"target must return one score per image [B={x.shape[0]}], "
                                     f"got shape {tuple(scores.shape)}.")
                acts_raw = self._acts
                (grads_raw,) = torch.autograd.grad(scores.sum(), acts_raw, allow_unused=True)
                if grads_raw is None:
                    grads_raw = torch.zeros_like(acts_raw)
            tower_hw = self._tower_hw or tuple(x_in.shape[-2:])
            acts = self._spatial(acts_raw.detach().float(), tower_hw)  # [B, C, h, w]
            grads = self._spatial(grads_raw.detach().float(), tower_hw)  # [B, C, h, w]
            cam = (self.weights(acts, grads) * acts).sum(dim=1, keepdim=True).relu()  # [B, 1, h, w]
            cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
            self.scores = scores.detach().float().cpu()
            return normalise_maps(cam[:, 0]).cpu()  # [B, H, W]
        finally:
            self._acts = None
            self.model.train(was_training)
            if not entered:
                self.release()

    __call__ = compute


def normalise_maps(cam: torch.Tensor) -> torch.Tensor:
    """Min-max scales each ``[H, W]`` map of ``cam [B, H, W]`` to [0, 1]; flat maps become 0."""
    cam = torch.nan_to_num(cam.clamp_min(0), nan=0.0)
    flat = cam.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    span = (flat.max(dim=1).values[:, None, None] - lo)
    return torch.where(span > 1e-12, (cam - lo) / span.clamp_min(1e-12), torch.zeros_like(cam))


class GradCAM(BaseCAM):
    """GradCAM (Selvaraju et al. 2017): channels weighted by their spatially averaged gradient."""

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]


class HiResCAM(BaseCAM):
    """HiResCAM (Draelos & Carin 2020): element-wise gradient × activation, faithful to the model."""

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads  # [B, C, h, w]


class GradCAMPlusPlus(BaseCAM):
    """GradCAM++ (Chattopadhay et al. 2018): higher-order weighting of positive gradients."""

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        g2, g3 = grads.pow(2), grads.pow(3)
        denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))  # [B, C, h, w]
        return (alpha * grads.relu()).sum(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
