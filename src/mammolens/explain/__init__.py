"""Explanations: GradCAM-style maps for ViT and CNN image towers, overlays and sanity checks."""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
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
    "explain_images",
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

ImageLike = Union[np.ndarray, str, PathLike]
CAM_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM}


def _load_image(item: ImageLike) -> tuple[np.ndarray, str]:
    """Returns ``(pixels [H, W] float32 in [0, 1], name)`` for an array or an image file."""
    if isinstance(item, np.ndarray):
        return item, ""
    path = Path(item)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist; pass DICOM/PNG/TIFF/JPEG files "
                                "or [H, W] arrays in [0, 1].")
    from mammolens.io import read_image  # DICOM (by content) or raster

    return read_image(path).pixels, path.stem


def _as_grey(pixels: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(pixels, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"image {name or '<array>'} must be 2-D [H, W] grey-scale, got shape {a.shape}; "
                         "reduce DBT volumes to one frame first.")
    if a.size == 0 or not np.isfinite(a).all():
        raise ValueError(f"image {name or '<array>'} is empty or holds NaN/inf values.")
    if a.min() < 0.0 or a.max() > 1.0:
        raise ValueError(f"image {name or '<array>'} must be scaled to [0, 1], got range "
                         f"[{a.min():.3g}, {a.max():.3g}].")
    return a


def explain_images(model: nn.Module, task: Any, images: Sequence[ImageLike], out_dir: str | PathLike,
                   class_index: int | None = None, *, method: str = "gradcam",
                   image_size: int | tuple[int, int] | None = None,
                   preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
                   alpha: float = 0.4, cmap: str = "jet") -> list[dict]:
    """Writes a heat-map overlay PNG per image and returns one record per image.

    Each image is (optionally) preprocessed, resized to ``image_size`` (default
    ``model.image_size``, else kept), explained with respect to the cosine similarity between its
    embedding and the prompt embedding of the chosen class, and written as
    ``out_dir/<nnnn>_<name>_<class>.png``.

    Args:
        model: a ``MammoCLIP`` (``encode_image``, ``class_embeddings(task)``, ``.visual``).
        task: the task (or task name) whose class prompts are used.
        images: ``[H, W]`` arrays in [0, 1] or image file paths (DICOM/PNG/TIFF/JPEG).
        out_dir: folder for the PNGs (created).
        class_index: class to explain; None explains each image's predicted class.
        method: ``"gradcam"``, ``"gradcam++"`` or ``"hirescam"``.
        image_size: model input size; None uses ``model.image_size`` when present.
        preprocess: optional ``[H, W] -> [H', W']`` function applied first (e.g. the run's crop).
        alpha, cmap: overlay blending and colormap.

    Returns:
        Records ``{"image", "class", "class_index", "score", "probs", "png"}`` where ``score`` is the
        cosine similarity with the explained class and ``probs`` the softmax over classes.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(CAM_METHODS)}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = image_size if image_size is not None else getattr(model, "image_size", None)
    if isinstance(size, int):
        size = (size, size)
    if task is not None and not hasattr(task, "class_names"):
        from mammolens.tasks import get_task

        task = get_task(task)  # a task name or file -> Task (for its class names)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        text_emb = model.class_embeddings(task).float()  # [K, D]
    n_classes = text_emb.shape[0]
    class_names = list(getattr(task, "class_names", None) or [str(i) for i in range(n_classes)])
    if class_index is not None and not 0 <= class_index < n_classes:
        raise ValueError(f"class_index {class_index} out of range; the task has classes {class_names}.")
    # the model's own temperature, clamped like MammoCLIP.forward
    scale = min(float(model.logit_scale.detach().exp()), 100.0) if hasattr(model, "logit_scale") else 100.0

    records = []
    with CAM_METHODS[method](model) as cam:
        for i, item in enumerate(images):
            pixels, name = _load_image(item)
            if preprocess is not None:
                pixels = preprocess(pixels)
            pixels = _as_grey(pixels, name)
            x = torch.from_numpy(np.ascontiguousarray(pixels))[None, None].to(device)  # [1, 1, H, W]
            if size is not None and tuple(x.shape[-2:]) != tuple(size):
                x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False).clamp(0, 1)
            with torch.no_grad():
                emb = model.encode_image(x).float()  # [1, D]
                all_sims = F.normalize(emb, dim=-1) @ F.normalize(text_emb.to(emb), dim=-1).T  # [1, K]
            k = int(all_sims.argmax()) if class_index is None else int(class_index)
            maps = cam.compute(x, ClassSimilarityTarget(text_emb, k))  # [1, H', W']
            label = class_names[k]
            stem = name or "image"
            png = save_overlay(out_dir / f"{i:04d}_{stem}_{label}.png", x[0, 0].cpu().numpy(),
                               maps[0].numpy(), alpha=alpha, cmap=cmap)
            probs = torch.softmax(all_sims[0] * scale, dim=-1).cpu().tolist()
            records.append({"image": str(item) if not isinstance(item, np.ndarray) else f"array[{i}]",
                            "class": label, "class_index": k, "score": float(all_sims[0, k]),
                            "probs": dict(zip(class_names, probs)), "png": str(png)})
    return records


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
