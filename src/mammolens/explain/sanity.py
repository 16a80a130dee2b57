"""Model-randomisation sanity check for saliency maps (Adebayo et al., NeurIPS 2018).

An explanation that reflects what the model learned must change when the model's weights are
replaced by random ones. :func:`randomization_check` re-initialises the image tower of a deep copy,
projection head included (all at once, or cascading from the top layer down), recomputes the maps and compares them with the
original maps by Spearman rank correlation, Pearson correlation and SSIM. Explanations that survive
randomisation (e.g. an edge detector on the input) fail the check (``changed=False``).
"""

from __future__ import annotations

import copy
from typing import Literal
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mammolens.explain.gradcam import GradCAM, Target

__all__ = [
    "MAP_KINDS",
    "edge_explainer",
    "explainer_for",
    "gradcam_explainer",
    "map_similarity",
    "cascade_units",
    "randomization_check",
    "randomize_modules",
]

Explainer = Callable[[nn.Module, torch.Tensor, Target], torch.Tensor]  # -> maps [B, H, W]


def gradcam_explainer(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """GradCAM with the default target layer; ``[B, H, W]`` maps in [0, 1]."""
    with GradCAM(model) as cam:
        return cam.compute(x, target)


def edge_explainer(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """A degenerate baseline that ignores the model: Sobel gradient magnitude of the input.

    It fails the randomisation check by construction and serves as its negative control.
    """
    grey = x.detach().float().mean(dim=1, keepdim=True)  # [B, 1, H, W]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([kx, kx.T])[:, None]  # [2, 1, 3, 3]
    g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels.to(grey))  # [B, 2, H, W]
    mag = g.pow(2).sum(dim=1).sqrt()  # [B, H, W]
    return mag / mag.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]


MAP_KINDS = ("gradcam", "text", "factor")


def explainer_for(kind: str, factor=None) -> Explainer:
    """The sanity-check explainer of a map kind: ``"gradcam"``, ``"text"`` (text-to-patch map of the
    target's sentence) or ``"factor"`` (``factor``: a fitted ``FactorAttribution``; the target's class
    index picks the fitted sentence)."""
    if kind == "gradcam":
        return gradcam_explainer
    if kind == "text":
        from mammolens.explain.textmap import text_explainer

        return text_explainer
    if kind == "factor":
        if factor is None:
            raise ValueError("the factor map kind needs a fitted FactorAttribution: explainer_for('factor', factor=fa).")

        def run(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
            k = int(torch.as_tensor(getattr(target, "k", 0)).reshape(-1)[0])
            return factor.explainer(k)(model, x, target)
        return run
    raise ValueError(f"unknown map kind {kind!r}; choose one of {list(MAP_KINDS)}.")


HEAD_PARAMS = ("proj",)  # open_clip ``VisionTransformer.proj``: the tower's output projection, a bare Parameter


def cascade_units(model: nn.Module) -> list[tuple[str, nn.Module, tuple[str, ...] | None]]:
    """The image tower's parameter owners in cascade order, from the output end to the input end.

    The whole tower is covered, projection head included: open_clip ``visual.proj`` (a bare parameter,
    first), ``visual.head`` of open_clip's timm wrapper (registered after ``visual.trunk``, so it comes
    before the trunk), a timm model's own ``head``/``fc``, then the blocks downwards.

    Returns:
        ``(name, module, params)`` per unit; ``params`` names the module's own parameters to redraw, or
        None for the whole module (its ``reset_parameters`` where it has one).
    """
    tower = getattr(model, "visual", model)
    units: list[tuple[str, nn.Module, tuple[str, ...] | None]] = []
    own_head = tuple(n for n in HEAD_PARAMS if tower._parameters.get(n) is not None)
    if own_head:
        units.append((own_head[0], tower, own_head))
    # registration order runs input -> output for timm/open_clip towers, so reversed runs from the top
    for name, m in reversed(list(tower.named_modules())):
        own = tuple(n for n, p in m._parameters.items() if p is not None and not (m is tower and n in own_head))
        if own:
            units.append((name or "(tower)", m, None if len(own) == len(m._parameters) else own))
    return units


@torch.no_grad()
def randomize_modules(modules: list[nn.Module]) -> None:
    """Re-initialises modules in place: their own ``reset_parameters`` where they have one, else every
    direct parameter (class/register tokens, position embeddings, projections, layer scales) is
    redrawn from ``N(0, std)`` with the parameter's current std, which keeps its scale; constant
    parameters (std 0) are left as they are."""
    for m in modules:
        _randomize_unit(m, None)


@torch.no_grad()
def _randomize_unit(m: nn.Module, names: tuple[str, ...] | None) -> None:
    reset = getattr(m, "reset_parameters", None) or getattr(m, "_reset_parameters", None)
    if names is None and callable(reset):
        reset()
        return
    for n, p in m._parameters.items():
        if p is not None and p.numel() > 1 and (names is None or n in names):
            std = float(p.float().std())
            if std > 0:
                p.normal_(0.0, std)


def _rank(a: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata  # scipy ships with scikit-learn

    return rankdata(a)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; for a constant map: 1 if both maps are equal, else 0."""
    if a.std() < 1e-12 or b.std() < 1e-12:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _ssim(a: np.ndarray, b: np.ndarray, win: int = 7) -> float:
    """Mean SSIM of two ``[H, W]`` maps in [0, 1] with a uniform ``win`` x ``win`` window."""
    ta = torch.as_tensor(a, dtype=torch.float64)[None, None]
    tb = torch.as_tensor(b, dtype=torch.float64)[None, None]
    win = max(1, min(win, a.shape[0], a.shape[1]))
    mean = lambda t: F.avg_pool2d(t, win, stride=1)  # noqa: E731
    mu_a, mu_b = mean(ta), mean(tb)
    var_a = mean(ta * ta) - mu_a**2
    var_b = mean(tb * tb) - mu_b**2
    cov = mean(ta * tb) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def map_similarity(maps_a, maps_b) -> dict:
    """Similarity of two batches of maps ``[B, H, W]``, averaged over images.

    Returns:
        ``{"spearman_rank_corr", "abs_spearman", "pearson", "ssim"}`` as floats.
    """
    a = np.asarray(maps_a.detach().cpu() if torch.is_tensor(maps_a) else maps_a, dtype=np.float64)
    b = np.asarray(maps_b.detach().cpu() if torch.is_tensor(maps_b) else maps_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"maps must both be [B, H, W] of the same shape, got {a.shape} and {b.shape}.")
    sp, pe, ss = [], [], []
    for ai, bi in zip(a, b):
        fa, fb = ai.ravel(), bi.ravel()
        const = fa.std() < 1e-12 or fb.std() < 1e-12
        sp.append(_corr(fa, fb) if const else _corr(_rank(fa), _rank(fb)))
        pe.append(_corr(fa, fb))
        ss.append(_ssim(ai, bi))
    return {"spearman_rank_corr": float(np.mean(sp)), "abs_spearman": float(np.mean(np.abs(sp))),
            "pearson": float(np.mean(pe)), "ssim": float(np.mean(ss))}


def randomization_check(model: nn.Module, x: torch.Tensor, target: Target,
                        layers: Literal["cascade", "all"] = "cascade",
                        explainer: Explainer | None = None, threshold: float = 0.5,
                        n_steps: int = 4, seed: int = 0) -> dict:
    """Checks that explanations depend on the image tower's learned weights.

    Meaningful for a trained model: when the original model is itself randomly initialised, both
    maps may mostly follow the input's structure and can stay correlated (e.g. ``tiny-clip`` with
    random weights gives a rank correlation of about 0.85 on blob images).

    Args:
        model: the model (left untouched; a deep copy is randomised).
        x: images ``[B, C, H, W]``.
        target: the explainer's target (e.g. ``ClassSimilarityTarget``).
        layers: ``"all"`` re-initialises the whole tower at once; ``"cascade"`` re-initialises it in
            ``n_steps`` cumulative chunks from the output end down (Adebayo et al.'s cascading
            randomisation) and reports every step.
        explainer: ``(model, x, target) -> [B, H, W]``; GradCAM by default.
        threshold: the maps count as changed when the mean absolute Spearman rank correlation of the
            fully randomised maps with the original ones is below this value (an inverted map is as
            dependent on the input as the original and counts as unchanged).
        n_steps: number of cascade steps.
        seed: seed of the re-initialisation.

    Returns:
        ``{"spearman_rank_corr", "abs_spearman", "pearson", "ssim"}`` of the fully randomised maps,
        ``"changed"`` (bool), ``"threshold"``, ``"layers"`` and ``"steps"`` (one similarity dict per
        step, with ``"n_modules"`` randomised so far and the names ``"randomized"`` in that step; see
        :func:`cascade_units` for the order).
    """
    if layers not in ("cascade", "all"):
        raise ValueError(f"layers must be 'cascade' or 'all', got {layers!r}.")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}.")
    explainer = explainer or gradcam_explainer
    original = explainer(model, x, target)  # [B, H, W]

    rand_model = copy.deepcopy(model)
    modules = cascade_units(rand_model)
    if not modules:
        raise ValueError(f"the image tower of {type(model).__name__} has no parameters to randomise.")
    n = 1 if layers == "all" else min(n_steps, len(modules))
    bounds = np.linspace(0, len(modules), n + 1).round().astype(int)
    steps = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            for _, m, names in modules[lo:hi]:
                _randomize_unit(m, names)
            sim = map_similarity(original, explainer(rand_model, x, target))
            steps.append({"n_modules": int(hi), "randomized": [name for name, _, _ in modules[lo:hi]], **sim})
    final = steps[-1]
    return {**{k: final[k] for k in ("spearman_rank_corr", "abs_spearman", "pearson", "ssim")},
            # |rho|: an inverted map (same regions, opposite sign) still follows the original one
            "changed": bool(final["abs_spearman"] < threshold), "threshold": threshold,
            "layers": layers, "steps": steps}
