"""Text-to-patch similarity maps ("abnormality-awareness maps") for any sentence or finding prompt.

Every patch token of the image tower is carried into the joint image-text space the way the pooled token
is: for open_clip ViT towers the final norm (``ln_post``) and the projection (``proj``); for open_clip
``TimmModel`` towers with a timm ViT trunk the trunk's final norm(s) and the adapter's ``head``. The map
is the cosine similarity of each patch embedding with the sentence's text embedding, on the model's real
patch grid (derived from the input size and the patch size; class/register tokens dropped, via
``explain.gradcam.token_layout``). Like GradCAM, :meth:`TextPatchMap.compute` returns ``[B, H, W]`` maps
in [0, 1] at the input resolution; ``transforms.breast.to_original`` maps them back onto the original image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mammolens.explain.gradcam import ClassSimilarityTarget, find_image_tower, normalise_maps, tokens_to_grid, token_layout
from mammolens.pipeline.encode import resize_to_model

__all__ = ["PatchFeatures", "TextPatchMap", "patch_features", "target_embedding", "text_embeddings", "text_explainer"]


class PatchFeatures(nn.Module):
    """Hooks an image tower and returns its patch tokens before and after the projection.

    ``forward(x)`` resizes ``x`` to the model's input size (``pipeline.encode.resize_to_model``) and runs
    ``model.encode_image`` (so grey → RGB and normalisation happen as in prediction); it returns
    ``(features [B, C, gh, gw], embeddings [B, D, gh, gw], pooled [B, D])``:
    features are the normed patch tokens (the "channels" FActOR attributes), embeddings their projection
    into the joint space, pooled the model's own image embedding.

    Raises:
        ValueError: for towers that are neither open_clip ViTs nor open_clip-wrapped timm ViTs.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        visual = getattr(model, "visual", model)
        self.visual = visual
        tower = find_image_tower(model)
        self.layout = token_layout(tower)
        if self.layout is None:
            raise ValueError(f"text-to-patch maps need a ViT image tower (open_clip or timm); "
                             f"{type(tower).__name__} has no patch tokens. Use --map gradcam for CNN towers.")
        if tower is visual:  # open_clip VisionTransformer
            self.hooked = visual.transformer
            norm = getattr(visual, "ln_post", nn.Identity())
            proj = getattr(visual, "proj", None)
            self._norm = norm
            self._project = (lambda t: t @ proj) if proj is not None else (lambda t: t)
        else:  # open_clip TimmModel: trunk (timm ViT) + head
            self.hooked = tower.norm if hasattr(tower, "norm") else tower.blocks[-1]
            self._norm = getattr(tower, "fc_norm", nn.Identity())
            head = getattr(visual, "head", nn.Identity())
            self._project = head
        self._tokens: torch.Tensor | None = None
        self._hw: tuple[int, int] | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        def save(module, args, output):
            self._tokens = output[0] if isinstance(output, (tuple, list)) else output

        def save_hw(module, args):
            if args and torch.is_tensor(args[0]) and args[0].ndim == 4:
                self._hw = tuple(args[0].shape[-2:])

        x = resize_to_model(x, self.model)  # the run's input size (a cache's tiles may be larger)
        handles = [self.hooked.register_forward_hook(save), self.visual.register_forward_pre_hook(save_hw)]
        try:
            pooled = self.model.encode_image(x)  # [B, D]
        finally:
            for h in handles:
                h.remove()
        tokens = self._tokens
        self._tokens = None
        if tokens is None:
            raise RuntimeError("the image tower did not run its transformer; cannot read patch tokens.")
        if not self.layout.batch_first and tokens.shape[0] != pooled.shape[0]:
            tokens = tokens.transpose(0, 1)  # [N, B, C] -> [B, N, C]
        feats = self._norm(tokens)  # [B, N, C]
        emb = self._project(feats)  # [B, N, D]
        hw = self._hw or tuple(x.shape[-2:])
        return (tokens_to_grid(feats, self.layout, hw), tokens_to_grid(emb, self.layout, hw),
                F.normalize(pooled.float(), dim=-1))


def patch_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features [B, C, gh, gw], embeddings [B, D, gh, gw], pooled [B, D])`` without gradients."""
    with torch.no_grad():
        return PatchFeatures(model)(x)


def text_embeddings(model: nn.Module, texts: Sequence[str]) -> torch.Tensor:
    """L2-normalised text embeddings ``[T, D]`` of sentences."""
    texts = [str(t).strip() for t in texts]
    if not texts or not all(texts):
        raise ValueError("give at least one non-empty sentence (--text \"spiculated mass\" or --report FILE).")
    with torch.no_grad():
        return F.normalize(model.encode_text(texts).float(), dim=-1)


class TextPatchMap:
    """Cosine similarity of every patch embedding with sentence embeddings.

    Args:
        model: a ``MammoCLIP`` or ``RunModel`` (``encode_image``, ``encode_text``, ``.visual``).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.features = PatchFeatures(model)

    def similarity(self, x: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Raw cosine similarities ``[B, T, gh, gw]`` of images ``x [B, C, H, W]`` with ``text_emb [T, D]``."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                _, emb, _ = self.features(x)  # [B, D, gh, gw]
        finally:
            self.model.train(was_training)
        emb = F.normalize(emb.float(), dim=1)
        text = F.normalize(text_emb.to(emb.device, emb.dtype).reshape(-1, emb.shape[1]), dim=-1)  # [T, D]
        return torch.einsum("bdhw,td->bthw", emb, text)

    def compute(self, x: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Maps ``[B, H, W]`` in [0, 1] at the input resolution, one per image.

        Args:
            x: images ``[B, C, H, W]``.
            text_emb: ``[D]`` (one sentence for all images) or ``[B, D]`` (one per image).
        """
        t = text_emb.reshape(-1, text_emb.shape[-1])
        sims = self.similarity(x, t)  # [B, T, gh, gw]
        if t.shape[0] == 1:
            grid = sims[:, 0]
        elif t.shape[0] == x.shape[0]:
            grid = sims[torch.arange(x.shape[0]), torch.arange(x.shape[0])]
        else:
            raise ValueError(f"text_emb has {t.shape[0]} rows for {x.shape[0]} images; give one or one per image.")
        up = F.interpolate(grid[:, None], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
        return normalise_maps(up[:, 0]).cpu()  # [B, H, W]


def text_explainer(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """``explain.sanity`` explainer: the text-to-patch map of ``target``'s sentence (a
    ``ClassSimilarityTarget`` or a text embedding ``[D]``/``[B, D]``)."""
    emb = target_embedding(target, x.shape[0])
    return TextPatchMap(model).compute(x, emb)


def target_embedding(target, batch: int) -> torch.Tensor:
    """The text embedding(s) a sanity-check target stands for: ``[D]`` or ``[B, D]``."""
    if isinstance(target, ClassSimilarityTarget):
        k = torch.as_tensor(target.k).reshape(-1)
        return target.text_emb[k.expand(batch) if k.numel() == 1 else k]
    if torch.is_tensor(target):
        return target
    raise ValueError("text maps need a ClassSimilarityTarget or a text embedding tensor as target, "
                     f"got {type(target).__name__}.")
