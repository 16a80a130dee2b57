"""CAM helpers for a run's classifier: GradCAM maps on the model's tile, and those maps drawn on the original.

``Predictor.predict(explain=True)``, the evaluation gallery and ``mammolens explain`` use these two.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["classifier_cams", "heatmap_on_original"]


def classifier_cams(model: torch.nn.Module, x: torch.Tensor, classes) -> np.ndarray:
    """GradCAM maps ``[B, H, W]`` of a run's classifier (``model(x) -> logits``) for one class per image."""
    from mammolens.explain.gradcam import GradCAM, OutputIndexTarget

    with torch.enable_grad(), GradCAM(model, forward_fn=model.forward) as cam:
        maps = cam.compute(x, OutputIndexTarget(torch.as_tensor(classes)))
    return maps.detach().cpu().numpy()


def heatmap_on_original(display: np.ndarray, cam: np.ndarray, geometry: dict, class_name: str,
                        prob: float | None = None) -> np.ndarray:
    """A model-grid map drawn on the original image: RGB ``[h, w + panel, 3]`` (``explain.overlay.render_heatmap``).

    Args:
        display: uint8 ``[h, w]`` copy of the original image (``transforms.breast.display_copy``,
            ``Prepared.display``).
        cam: ``[S, S]`` (or coarser) map on the model's tile.
        geometry: that image's ``Prepared.geometry`` (``pipeline.prepare``).
        class_name, prob: the class the map explains and its probability (the colour bar's title).
    """
    from mammolens.explain.overlay import render_heatmap
    from mammolens.transforms.breast import to_original

    return render_heatmap(display, to_original(cam, geometry, out_shape=display.shape), class_name, prob)
