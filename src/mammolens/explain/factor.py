"""Channel attribution for sentences, after the idea of Mammo-FActOR (Ghosh et al., Mammo-CLIP, 2024).

Idea (not the paper's code): a sentence or finding is carried by a few image feature channels. On the
*training* images only, fit a sparse linear map (Lasso) from the pooled image feature channels
(the image tower's normed patch tokens, averaged over the patch grid and standardised) to the cosine
similarity of the image with the sentence's text embedding. The non-zero coefficients name the channels
that predict the sentence; the sentence's map of a new image is the coefficient-weighted sum of those
channels' activations over the patch tokens (ReLU, min-max scaled), the same ``[B, H, W]`` type as
GradCAM and text-to-patch maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mammolens.explain.gradcam import normalise_maps
from mammolens.explain.textmap import PatchFeatures, text_embeddings

__all__ = ["FactorAttribution", "FactorCfg"]


@dataclass
class FactorCfg:
    """Lasso settings: ``alpha`` the L1 strength on standardised channels; ``max_iter`` the solver's limit."""

    alpha: float = 1e-3
    max_iter: int = 5000
    seed: int = 0


@dataclass
class FactorAttribution:
    """Sentences → sparse channel weights, fitted on training images; maps for new images.

    Attributes (after :meth:`fit`): ``sentences``, ``coef`` ``[T, C]`` (on standardised channels),
    ``mean``/``std`` ``[C]`` of the pooled training features, ``r2`` ``[T]`` in-sample fit.
    """

    model: nn.Module
    cfg: FactorCfg = field(default_factory=FactorCfg)
    sentences: list[str] = field(default_factory=list)
    coef: np.ndarray | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    r2: np.ndarray | None = None

    def __post_init__(self) -> None:
        self._features = PatchFeatures(self.model)

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                feats, _, pooled = self._features(x)  # [B, C, gh, gw], [B, D]
        finally:
            self.model.train(was_training)
        return feats.float(), pooled

    def fit(self, train_batches: Iterable[torch.Tensor], sentences: Sequence[str]) -> FactorAttribution:
        """Fits one Lasso per sentence on training images (batches ``[B, C, H, W]``)."""
        from sklearn.linear_model import Lasso

        text = text_embeddings(self.model, sentences)  # [T, D]
        xs, ys = [], []
        for x in train_batches:
            feats, pooled = self._run(x)
            xs.append(feats.mean(dim=(2, 3)).cpu().numpy())  # [B, C]
            ys.append((pooled @ text.to(pooled).T).cpu().numpy())  # [B, T]
        if not xs:
            raise ValueError("FActOR needs training images to fit on; got none.")
        X, Y = np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)
        if X.shape[0] < 3:
            raise ValueError(f"FActOR needs at least 3 training images, got {X.shape[0]}.")
        self.mean, self.std = X.mean(0), X.std(0) + 1e-8
        Z = (X - self.mean) / self.std
        coef, r2 = [], []
        for t in range(Y.shape[1]):
            reg = Lasso(alpha=self.cfg.alpha, max_iter=self.cfg.max_iter, random_state=self.cfg.seed).fit(Z, Y[:, t])
            coef.append(reg.coef_)
            r2.append(reg.score(Z, Y[:, t]) if Y[:, t].std() > 0 else float("nan"))
        self.coef, self.r2, self.sentences = np.asarray(coef), np.asarray(r2), [str(s) for s in sentences]
        return self

    def channels(self, sentence: int | str, top: int = 10) -> list[tuple[int, float]]:
        """The ``top`` channels with the largest absolute weight for a sentence: ``[(channel, weight)]``."""
        w = self.coef[self._index(sentence)]
        order = np.argsort(-np.abs(w))[:top]
        return [(int(c), float(w[c])) for c in order if w[c] != 0]

    def _index(self, sentence: int | str) -> int:
        if self.coef is None:
            raise ValueError("FactorAttribution is not fitted; call fit(train_batches, sentences) first.")
        if isinstance(sentence, str):
            if sentence not in self.sentences:
                raise ValueError(f"sentence {sentence!r} was not fitted; fitted: {self.sentences}.")
            return self.sentences.index(sentence)
        if not 0 <= int(sentence) < len(self.sentences):
            raise ValueError(f"sentence index {sentence} out of range for {len(self.sentences)} fitted sentences.")
        return int(sentence)

    def compute(self, x: torch.Tensor, sentence: int | str | Sequence[int]) -> torch.Tensor:
        """Channel-weighted activation maps ``[B, H, W]`` in [0, 1] (one sentence, or one per image)."""
        feats, _ = self._run(x)  # [B, C, gh, gw]
        idx = [self._index(sentence)] if isinstance(sentence, (int, str, np.integer)) else [self._index(s) for s in sentence]
        w = torch.as_tensor(self.coef[idx] / self.std, dtype=feats.dtype, device=feats.device)  # [T|B, C]
        mu = torch.as_tensor(self.mean, dtype=feats.dtype, device=feats.device)[None, :, None, None]
        w = w.expand(x.shape[0], -1) if w.shape[0] == 1 else w
        grid = torch.einsum("bchw,bc->bhw", feats - mu, w).relu()  # [B, gh, gw]
        up = F.interpolate(grid[:, None], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
        return normalise_maps(up[:, 0]).cpu()

    def explainer(self, sentence: int | str):
        """An ``explain.sanity`` explainer ``(model, x, target) -> [B, H, W]`` for one fitted sentence; the
        weights stay fixed while the model is randomised, so only the channels' activations change."""
        def run(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
            other = FactorAttribution(model, self.cfg, self.sentences, self.coef, self.mean, self.std, self.r2)
            return other.compute(x, sentence)
        return run
