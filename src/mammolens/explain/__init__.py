"""Explanations: GradCAM-style maps for ViT and CNN image towers, overlays and sanity checks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mammolens.explain.gradcam import (
    BaseCAM,
    ClassSimilarityTarget,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    OutputIndexTarget,
    TokenLayout,
    find_image_tower,
    find_target_layer,
    token_layout,
    tokens_to_grid,
)
from mammolens.explain.overlay import colorize, overlay, save_overlay
from mammolens.explain.factor import FactorAttribution
from mammolens.explain.sanity import (
    MAP_KINDS,
    edge_explainer,
    gradcam_explainer,
    map_similarity,
    randomization_check,
)
from mammolens.explain.textmap import TextPatchMap, text_embeddings

__all__ = [
    "FactorAttribution",
    "MAP_KINDS",
    "TextPatchMap",
    "BaseCAM",
    "ClassSimilarityTarget",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "OutputIndexTarget",
    "TokenLayout",
    "colorize",
    "edge_explainer",
    "find_image_tower",
    "find_target_layer",
    "gradcam_explainer",
    "map_similarity",
    "overlay",
    "randomization_check",
    "save_overlay",
    "sentence_maps",
    "token_layout",
    "tokens_to_grid",
]

def sentence_maps(model: nn.Module, x: torch.Tensor, texts: Sequence[str], kind: str = "text",
                  factor: FactorAttribution | None = None) -> torch.Tensor:
    """Maps ``[B, T, H, W]`` in [0, 1] of every sentence for a batch ``x [B, C, H, W]``, of one map kind.

    ``"text"``: text-to-patch similarity; ``"factor"``: FActOR channel attribution (``factor`` fitted on the
    same sentences, on training images); ``"gradcam"``: GradCAM of the image-sentence similarity (the
    baseline on the same images). ``transforms.breast.to_original`` maps each one back onto the image.
    """
    if kind not in MAP_KINDS:
        raise ValueError(f"unknown map kind {kind!r}; choose one of {list(MAP_KINDS)}.")
    texts = list(texts)
    if kind == "factor":
        if factor is None or factor.sentences != texts:
            raise ValueError("the factor map kind needs a FactorAttribution fitted on these sentences "
                             "(FactorAttribution(model).fit(train_batches, sentences)).")
        return torch.stack([factor.compute(x, t) for t in range(len(texts))], dim=1)
    emb = text_embeddings(model, texts)  # [T, D]
    if kind == "text":
        tm = TextPatchMap(model)
        return torch.stack([tm.compute(x, emb[t]) for t in range(len(texts))], dim=1)
    with GradCAM(model) as cam:
        return torch.stack([cam.compute(x, ClassSimilarityTarget(emb, t)) for t in range(len(texts))], dim=1)
