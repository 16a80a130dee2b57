"""Out-of-distribution score: how far an image embedding lies from the training run's embeddings.

Fitted at training time on the image embeddings of the training set (``fit_ood``) and saved in the run
folder as ``ood.npz`` (plain arrays, no pickle). The score is a Mahalanobis distance in the span of the
top principal components (eigenvalues shrunk towards their mean, so a few dozen training images give a
usable covariance) plus the distance outside that span, scaled by its training mean::

    score(x)^2 = sum_k z_k^2 / lambda_k + |r|^2 / mean_train(|r|^2),   z = V^T (x - mu),  r = x - mu - V z

Two rules use the score (docs/quality.md has the measurements behind them):

* **per image**: above ``threshold`` (the ``quantile`` 0.995 of the training scores times ``margin`` 1.25:
  training images score lower than new images of the same kind, the components were fitted on them) an
  image is "not assessable: outside the training distribution".
* **per set** (:meth:`OODModel.set_outside`): a set of at least ``SET_MIN`` images (one ``predict`` call, one
  web upload, one evaluation set) whose *median* score is above ``set_threshold`` (the 0.9 quantile of the
  training scores) is "outside the training distribution" as a whole. One image of another source often
  scores like a training image; a set of them rarely does. Measured (``experiments/ood_separation.py``,
  tiny-clip at 64 px): the simulated demo run vs mini-MIAS films, AUROC 0.88, per-image rule catches 2 %
  of the films, set rule 89 % of sets of 4 and 94 % of sets of 8 (in-distribution sets flagged: 3.7 %,
  0.9 %); a mini-MIAS run vs simulated images, AUROC 0.96, set rule 100 % (5 %, 1.5 %).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

OOD_FILE = "ood.npz"
SET_MIN = 4  # the per-set rule needs this many scored images
SET_QUANTILE = 0.9  # its threshold: this quantile of the training scores (stored in info["set_threshold"])


@dataclass
class OODModel:
    """A fitted training-embedding distribution.

    Attributes:
        mean: ``[D]`` mean embedding.
        components: ``[D, R]`` principal directions.
        eigvals: ``[R]`` shrunk variances along them.
        resid_scale: mean squared residual outside the components on the training set.
        threshold: scores above it are out of distribution.
        info: plain metadata (n, rank, quantile, margin, checkpoint, training score quantiles).
    """

    mean: np.ndarray
    components: np.ndarray
    eigvals: np.ndarray
    resid_scale: float
    threshold: float
    info: dict[str, Any]

    def score(self, emb: np.ndarray) -> np.ndarray:
        """Scores ``[N]`` of embeddings ``[N, D]`` (same model, same normalisation as at fit time)."""
        x = np.asarray(emb, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"embeddings must be [N, {self.mean.shape[0]}], got shape {x.shape}")
        c = x - self.mean  # [N, D]
        z = c @ self.components  # [N, R]
        resid = np.maximum((c * c).sum(1) - (z * z).sum(1), 0.0)  # [N]
        return np.sqrt((z * z / self.eigvals).sum(1) + resid / self.resid_scale)

    @property
    def set_threshold(self) -> float | None:
        """The per-set threshold (median score of a set), None for an ``ood.npz`` fitted before it existed."""
        v = self.info.get("set_threshold")
        return float(v) if v is not None else None

    def set_outside(self, scores: np.ndarray) -> bool:
        """True when a set of at least ``SET_MIN`` scored images lies outside the training distribution as a
        whole: its median score is above :attr:`set_threshold` (NaN scores, images not scored, are ignored)."""
        s = np.asarray(scores, dtype=np.float64)
        s = s[np.isfinite(s)]
        t = self.set_threshold
        return bool(t is not None and len(s) >= SET_MIN and float(np.median(s)) > t)

    def save(self, run_dir: str | PathLike) -> Path:
        path = Path(run_dir) / OOD_FILE
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, mean=self.mean, components=self.components, eigvals=self.eigvals,
                 resid_scale=np.float64(self.resid_scale), threshold=np.float64(self.threshold),
                 info=np.array(json.dumps(self.info)))
        tmp.replace(path)
        return path


def fit_ood(emb: np.ndarray, rank: int = 32, shrinkage: float = 0.1, quantile: float = 0.995,
            margin: float = 1.25, **info: Any) -> OODModel:
    """Fit the distribution of training embeddings ``[N, D]`` (N >= 2).

    Args:
        rank: most principal components kept (also at most ``N // 10`` and ``D``).
        shrinkage: weight of the mean eigenvalue mixed into each eigenvalue.
        quantile: training-score quantile the threshold starts from.
        margin: factor on that quantile.
        info: extra metadata stored with the model (e.g. ``checkpoint="best"``).
    """
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2 or not np.isfinite(x).all():
        raise ValueError(f"fit_ood needs >= 2 finite embeddings [N, D], got shape {x.shape}")
    mu = x.mean(0)
    c = x - mu
    _, s, vt = np.linalg.svd(c, full_matrices=False)
    r = max(1, min(rank, len(x) // 10, x.shape[1]))  # >= 10 samples per component: fewer overfit the span
    lam = s[:r] ** 2 / max(len(x) - 1, 1)  # [R] variances
    lam = (1 - shrinkage) * lam + shrinkage * lam.mean()
    lam = np.maximum(lam, 1e-12)
    comps = vt[:r].T  # [D, R]
    z = c @ comps
    resid = np.maximum((c * c).sum(1) - (z * z).sum(1), 0.0)
    model = OODModel(mu, comps, lam, max(float(resid.mean()), 1e-12), 0.0, {})
    scores = model.score(x)
    model.threshold = float(np.quantile(scores, quantile) * margin)
    model.info = {"n": int(len(x)), "dim": int(x.shape[1]), "rank": int(r), "shrinkage": shrinkage,
                  "quantile": quantile, "margin": margin, "threshold": model.threshold,
                  "set_quantile": SET_QUANTILE, "set_threshold": float(np.quantile(scores, SET_QUANTILE)),
                  "train_score_p50": float(np.median(scores)), "train_score_max": float(scores.max()), **info}
    return model


_OOD_KEYS = ("mean", "components", "eigvals", "resid_scale", "threshold", "info")


class OODFileError(ValueError):
    """A run's ``ood.npz`` that mammolens did not write (object arrays, missing or misshapen arrays)."""


def load_ood(run_dir: str | PathLike) -> OODModel | None:
    """The run's ``ood.npz``, or None when the run has none (runs trained before it existed).

    The one loader every command uses (``predict``, ``explain``, ``evaluate``, ``serve`` through
    ``Predictor.from_run`` or :func:`check_ood`): every array in the file is read as plain data
    (``allow_pickle=False``), so a file holding object arrays (pickled Python objects, which can run code)
    is refused whole, under any key, with the same message.

    Raises:
        OODFileError: object arrays, a missing array, or arrays whose shapes do not fit together.
    """
    path = Path(run_dir) / OOD_FILE
    if not path.is_file():
        return None
    fix = ("delete it to run without the out-of-distribution check (or retrain the run to fit a new one); "
           "mammolens never writes pickled data")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}  # every key: an unused object array is refused too
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise OODFileError(f"{path}: holds object arrays (pickled Python objects), which mammolens will not "
                               f"load; {fix}") from None
        raise OODFileError(f"{path}: not a readable .npz of arrays ({e}); {fix}") from None
    except (OSError, EOFError) as e:
        raise OODFileError(f"{path}: not a readable .npz of arrays ({e}); {fix}") from None
    missing = [k for k in _OOD_KEYS if k not in arrays]
    if missing:
        raise OODFileError(f"{path}: arrays {missing} are missing; {fix}")
    try:
        model = OODModel(np.asarray(arrays["mean"], dtype=np.float64), np.asarray(arrays["components"], dtype=np.float64),
                         np.asarray(arrays["eigvals"], dtype=np.float64), float(arrays["resid_scale"]),
                         float(arrays["threshold"]), json.loads(str(arrays["info"])))
    except (TypeError, ValueError) as e:
        raise OODFileError(f"{path}: arrays of the wrong kind ({e}); {fix}") from None
    d = model.mean.shape
    if (model.mean.ndim != 1 or model.components.ndim != 2 or model.components.shape[0] != d[0]
            or model.eigvals.shape != (model.components.shape[1],) or not isinstance(model.info, dict)):
        raise OODFileError(f"{path}: array shapes do not fit together (mean {model.mean.shape}, components "
                           f"{model.components.shape}, eigvals {model.eigvals.shape}); {fix}")
    return model


def check_ood(run_dir: str | PathLike) -> None:
    """Refuse a run whose ``ood.npz`` is not plain data (:func:`load_ood`'s errors), for commands that do not
    use the out-of-distribution model themselves (``evaluate``, ``explain --map``)."""
    load_ood(run_dir)
