"""The suite's tasks: each a function ``(ctx) -> result dict`` on one backbone's frozen features.

A result is plain JSON: ``{"task", "entries": {entry: {"metrics": {name: {estimate, lo, hi, n}}, "primary":
name, "higher_is_better": True, "paired": {...}}}, "notes": [...]}``. An *entry* is one ranked line of the
table (``density/linear``, ``density/knn``, ``lesion-seg``...). ``paired`` holds what a paired test between
two backbones needs, per image (same cache rows for every backbone): ``keys`` (cache rows), ``groups``
(patient pseudonyms) and either ``values`` (a per-image score whose mean is the primary metric) or ``y`` /
``score`` (labels and out-of-fold probabilities, for AUC).

Every estimate is out-of-fold over patient-grouped folds (``data.splits.patient_kfold``), with a
patient-bootstrap CI (``evaluation.stats.bootstrap_indices``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mammolens.evaluation.localization import mean_with_ci
from mammolens.evaluation.stats import bootstrap_indices

__all__ = ["TASKS", "SuiteContext", "auc_score", "ci_of"]


@dataclass
class SuiteContext:
    """What a task function gets: the cache ``index`` rows of the features (``rows``), the features
    (``embeddings`` ``[N, D]``, ``tokens`` ``[N, P, D]`` or None), the patient ``groups`` ``[N]``, the
    ``folds`` ``[N]`` and settings; ``encode_text(list[str]) -> [T, D]`` (the backbone's text tower) for VQA."""

    index: pd.DataFrame
    rows: np.ndarray
    embeddings: np.ndarray
    groups: np.ndarray
    folds: np.ndarray
    tile: int
    tokens: np.ndarray | None = None
    encode_text: Any = None
    n_boot: int = 200
    seed: int = 0
    steps: int = 150
    notes: list = field(default_factory=list)


def ci_of(fn, n: int, groups, n_boot: int, seed: int) -> dict[str, float]:
    """``fn(indices) -> value`` on all rows and on patient-bootstrap replicates: estimate with a 95 % CI."""
    est = float(fn(np.arange(n)))
    reps = [fn(idx) for idx in bootstrap_indices(n, groups, n_boot, seed)]
    reps = np.asarray([r for r in reps if np.isfinite(r)], dtype=np.float64)
    lo, hi = (np.quantile(reps, [0.025, 0.975]) if reps.size else (np.nan, np.nan))
    return {"estimate": est, "lo": float(lo), "hi": float(hi), "n": int(n)}


def auc_score(y, p) -> float:
    """Macro one-vs-rest ROC AUC over the classes present (binary: of the positive class); NaN for one class."""
    from sklearn.metrics import roc_auc_score

    y, p = np.asarray(y), np.asarray(p)
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    if p.shape[1] == 2:
        return float(roc_auc_score(y, p[:, 1]))
    aucs = [roc_auc_score(y == k, p[:, k]) for k in present]
    return float(np.mean(aucs))


def _balanced_accuracy(y, pred) -> float:
    classes = np.unique(y)
    return float(np.mean([(pred[y == k] == k).mean() for k in classes])) if len(classes) else float("nan")


def _oof(ctx: SuiteContext, x: np.ndarray, y: np.ndarray, k: int, fit_predict) -> np.ndarray:
    """Out-of-fold class probabilities ``[N, K]`` (rows with y < 0 stay NaN)."""
    out = np.full((len(y), k), np.nan)
    lab = y >= 0
    for f in np.unique(ctx.folds):
        test, train = (ctx.folds == f) & lab, (ctx.folds != f) & lab
        if not test.any() or len(np.unique(y[train])) < 2:
            continue
        out[test] = fit_predict(x[train], y[train], x[test], k)
    return out


def _linear(xtr, ytr, xte, k):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit(xtr, ytr)
    p = np.zeros((len(xte), k))
    p[:, clf.classes_] = clf.predict_proba(xte)
    return p


def _knn(xtr, ytr, xte, k, n_neighbors: int = 10):
    """Cosine kNN (the embeddings are normalised): class shares among the nearest training images."""
    sim = xte @ xtr.T
    nn = np.argsort(-sim, axis=1, kind="stable")[:, :min(n_neighbors, len(xtr))]
    p = np.zeros((len(xte), k))
    for c in range(k):
        p[:, c] = (ytr[nn] == c).mean(1)
    return p


def _classification(ctx: SuiteContext, y: np.ndarray, k: int, name: str) -> dict:
    x = np.asarray(ctx.embeddings, dtype=np.float64)
    entries = {}
    for proto, fn in (("linear", _linear), ("knn", _knn)):
        p = _oof(ctx, x, y, k, fn)
        ok = np.isfinite(p).all(1)
        yy, pp, gg = y[ok], p[ok], ctx.groups[ok]
        entries[f"{name}/{proto}"] = {
            "primary": "auc", "higher_is_better": True,
            "metrics": {"auc": ci_of(lambda i, yy=yy, pp=pp: auc_score(yy[i], pp[i]), len(yy), gg, ctx.n_boot,
                                     ctx.seed),
                        "balanced_accuracy": ci_of(lambda i, yy=yy, pp=pp: _balanced_accuracy(yy[i], pp[i].argmax(1)),
                                                   len(yy), gg, ctx.n_boot, ctx.seed)},
            "paired": {"keys": ctx.rows[ok].tolist(), "groups": gg.tolist(), "y": yy.tolist(), "score": pp.tolist()}}
    return {"task": name, "entries": entries, "notes": []}


def task_density(ctx: SuiteContext) -> dict:
    """Density A–D from frozen embeddings (linear probe and kNN), macro AUC and balanced accuracy."""
    from mammolens.tasks import get_task

    if "density" not in ctx.index or not (ctx.index["density"].astype(str).isin(list("ABCD"))).any():
        return {"task": "density", "entries": {}, "notes": ["no density labels"]}
    y = get_task("density").encode(ctx.index["density"].astype(str)).astype(int)
    return _classification(ctx, y, 4, "density")


def abnormality_labels(index: pd.DataFrame) -> np.ndarray | None:
    """1 abnormal, 0 normal, -1 unknown, from ``pathology`` (else ``abnormality``); None without either."""
    col = "pathology" if "pathology" in index else ("abnormality" if "abnormality" in index else None)
    if col is None:
        return None
    v = index[col].astype(str).str.strip().str.lower()
    y = np.where(v.isin(["normal", "norm"]), 0, 1)
    return np.where(v.isin(["", "nan", "none"]), -1, y).astype(int)


def task_abnormality(ctx: SuiteContext) -> dict:
    """Abnormal vs normal image from frozen embeddings (linear probe and kNN)."""
    y = abnormality_labels(ctx.index)
    if y is None or len(np.unique(y[y >= 0])) < 2:
        return {"task": "abnormality", "entries": {}, "notes": ["no normal/abnormal labels"]}
    return _classification(ctx, y, 2, "abnormality")


def task_retrieval(ctx: SuiteContext, k: int = 10) -> dict:
    """Image→image retrieval: same density class (else abnormality) is relevant, the query's own patient is
    left out of the gallery; per-query average precision (mAP) and recall@k."""
    from mammolens.evaluation.retrieval import rank_statistics, same_label

    labels = None
    if "density" in ctx.index and ctx.index["density"].astype(str).isin(list("ABCD")).any():
        labels, what = ctx.index["density"].astype(str).where(lambda s: s.isin(list("ABCD")), "").to_numpy(), "density"
    else:
        y = abnormality_labels(ctx.index)
        if y is not None:
            labels, what = np.where(y >= 0, y.astype(str), ""), "abnormality"
    if labels is None:
        return {"task": "retrieval", "entries": {}, "notes": ["no labels to judge retrieval"]}
    emb = np.asarray(ctx.embeddings, dtype=np.float32)
    scores = emb @ emb.T
    ignore = ctx.groups[:, None] == ctx.groups[None, :]  # own patient (and the query itself)
    relevant = same_label(labels, labels) & ~ignore
    has = relevant.any(1)
    ranks, aps = rank_statistics(relevant[has], scores[has], ignore[has])
    g = ctx.groups[has]
    return {"task": "retrieval", "notes": [f"relevant = same {what} class, other patients"], "entries": {
        "retrieval": {"primary": "mAP", "higher_is_better": True,
                      "metrics": {"mAP": mean_with_ci(aps, g, ctx.n_boot, ctx.seed),
                                  f"recall@{k}": mean_with_ci((ranks <= k).astype(float), g, ctx.n_boot, ctx.seed)},
                      "paired": {"keys": ctx.rows[has].tolist(), "groups": g.tolist(), "values": aps.tolist()}}}}


def _truth(ctx: SuiteContext, cache):
    from mammolens.evaluation.dense import tile_masks

    return tile_masks(cache, ctx.rows)


def task_lesion_seg(ctx: SuiteContext, cache=None) -> dict:
    """A segmentation head fitted per fold on frozen tokens; Dice/IoU/sensitivity on lesion images,
    specificity on all images with truth (out of fold)."""
    from mammolens.evaluation.dense import segmentation_scores
    from mammolens.train.methods.segment import fit_segmentation_head, predict_masks

    if ctx.tokens is None:
        return {"task": "lesion-seg", "entries": {}, "notes": ["no patch tokens (not a ViT backbone)"]}
    tm = _truth(ctx, cache)
    les = tm.masks.reshape(len(tm.masks), -1).any(1)
    if les.sum() < 2:
        return {"task": "lesion-seg", "entries": {}, "notes": ["fewer than 2 lesion masks"]}
    scores: dict[int, dict] = {}
    for f in np.unique(ctx.folds):
        train, test = (ctx.folds != f) & tm.has_truth, (ctx.folds == f) & tm.has_truth
        if not test.any() or not (train & les).any():
            continue
        head, _ = fit_segmentation_head(ctx.tokens[train], tm.masks[train], steps=ctx.steps, seed=ctx.seed)
        prob = predict_masks(head, ctx.tokens[test], ctx.tile)
        for j, i in enumerate(np.flatnonzero(test)):
            scores[int(i)] = segmentation_scores(tm.masks[i], prob[j] >= head.threshold)
    idx = np.asarray(sorted(scores))
    per = pd.DataFrame([scores[i] for i in idx])
    lesion_idx = les[idx]
    metrics = {m: mean_with_ci(per.loc[lesion_idx, m].to_numpy(), ctx.groups[idx][lesion_idx], ctx.n_boot, ctx.seed)
               for m in ("dice", "iou", "sensitivity")}
    metrics["specificity"] = mean_with_ci(per["specificity"].to_numpy(), ctx.groups[idx], ctx.n_boot, ctx.seed)
    notes = [f"masks: {', '.join(tm.mask_kinds)}" + (" (weak masks: circles/boxes, not outlines)" if tm.weak else "")]
    return {"task": "lesion-seg", "notes": notes, "mask_kinds": tm.mask_kinds, "entries": {
        "lesion-seg": {"primary": "dice", "higher_is_better": True, "metrics": metrics,
                       "paired": {"keys": ctx.rows[idx][lesion_idx].tolist(), "groups": ctx.groups[idx][lesion_idx].tolist(),
                                  "values": per.loc[lesion_idx, "dice"].tolist()}}}}


def task_lesion_det(ctx: SuiteContext, cache=None) -> dict:
    """A centre-heat-map head fitted per fold on frozen tokens; FROC (mean sensitivity at 0.125–8 FP/image,
    sensitivity at 1 FP/image) and AP@0.5, out of fold, CIs by patient bootstrap of images."""
    from mammolens.evaluation.dense import average_precision, froc, lesion_box
    from mammolens.train.methods.detect import detect, fit_centre_head

    if ctx.tokens is None:
        return {"task": "lesion-det", "entries": {}, "notes": ["no patch tokens (not a ViT backbone)"]}
    tm = _truth(ctx, cache)
    boxes = [[lesion_box(m)] if m.any() else [] for m in tm.masks]
    if sum(map(len, boxes)) < 2:
        return {"task": "lesion-det", "entries": {}, "notes": ["fewer than 2 lesions"]}
    dets: dict[int, list] = {}
    for f in np.unique(ctx.folds):
        train, test = (ctx.folds != f) & tm.has_truth, (ctx.folds == f) & tm.has_truth
        if not test.any() or not any(boxes[i] for i in np.flatnonzero(train)):
            continue
        head, _ = fit_centre_head(ctx.tokens[train], [boxes[i] for i in np.flatnonzero(train)], ctx.tile,
                                  steps=ctx.steps, seed=ctx.seed)
        for i, d in zip(np.flatnonzero(test), detect(head, ctx.tokens[test], ctx.tile)):
            dets[int(i)] = [list(map(float, b)) for b in d]
    idx = np.asarray(sorted(dets))
    gt = [boxes[i] for i in idx]
    dd = [dets[i] for i in idx]
    g = ctx.groups[idx]

    def sub(fn):
        return lambda s: fn([gt[i] for i in s], [dd[i] for i in s])

    metrics = {"froc_mean_sensitivity": ci_of(sub(lambda a, b: froc(a, b)["mean_sensitivity"]), len(idx), g, ctx.n_boot,
                                              ctx.seed),
               "sensitivity@1fppi": ci_of(sub(lambda a, b: froc(a, b, (1.0,))["sensitivity"][0]), len(idx), g,
                                          ctx.n_boot, ctx.seed),
               "ap50": ci_of(sub(average_precision), len(idx), g, ctx.n_boot, ctx.seed)}
    notes = [f"boxes from masks: {', '.join(tm.mask_kinds)}" + (" (weak)" if tm.weak else "")]
    return {"task": "lesion-det", "notes": notes, "mask_kinds": tm.mask_kinds, "entries": {
        "lesion-det": {"primary": "froc_mean_sensitivity", "higher_is_better": True, "metrics": metrics,
                       "paired": {"keys": ctx.rows[idx].tolist(), "groups": g.tolist(), "gt": gt, "dets": dd}}}}


def task_vqa(ctx: SuiteContext) -> dict:
    """Closed-question VQA (``evaluation.vqa``): zero-shot (question+answer prompts scored by the text tower)
    and a trained answer head (logistic regression on image ⊙ prompt, image and prompt embeddings, per fold)."""
    from mammolens.evaluation.vqa import accuracy_by_type, make_questions, prompts

    qs = make_questions(ctx.index)
    if not len(qs) or ctx.encode_text is None:
        return {"task": "vqa", "entries": {}, "notes": ["no questions from this manifest" if not len(qs) else "no text tower"]}
    texts = prompts(qs)
    flat = sorted({t for ts in texts for t in ts})
    temb = np.asarray(ctx.encode_text(flat), dtype=np.float64)
    where = {t: i for i, t in enumerate(flat)}
    img = np.asarray(ctx.embeddings, dtype=np.float64)[qs["row"].to_numpy()]  # [Q, D]
    zs = np.array([int(np.argmax([img[q] @ temb[where[t]] for t in ts])) for q, ts in enumerate(texts)])

    def feats(q, t):
        a = temb[where[t]]
        return np.concatenate([img[q] * a, img[q], a])

    from sklearn.linear_model import LogisticRegression

    qfold = ctx.folds[qs["row"].to_numpy()]
    trained = np.full(len(qs), -1)
    for f in np.unique(qfold):
        tr, te = np.flatnonzero(qfold != f), np.flatnonzero(qfold == f)
        x = np.array([feats(q, t) for q in tr for t in texts[q]])
        y = np.array([int(c == qs["answer"].iat[q]) for q in tr for c in range(len(texts[q]))])
        if len(np.unique(y)) < 2:
            continue
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
        for q in te:
            trained[q] = int(np.argmax(clf.decision_function(np.array([feats(q, t) for t in texts[q]]))))
    g = ctx.groups[qs["row"].to_numpy()]
    entries = {}
    for name, pred in (("vqa/trained", trained), ("vqa/zero-shot", zs)):
        acc = accuracy_by_type(qs, pred, g, ctx.n_boot, ctx.seed)
        entries[name] = {"primary": "accuracy", "higher_is_better": True,
                         "metrics": {"accuracy": acc.pop("all"), **{f"accuracy[{k}]": v for k, v in acc.items()}},
                         "paired": {"keys": [f"{r}:{t}" for r, t in zip(ctx.rows[qs["row"]], qs["qtype"])],
                                    "groups": g.tolist(),
                                    "values": (pred == qs["answer"].to_numpy()).astype(float).tolist()}}
    return {"task": "vqa", "entries": entries, "notes": ["closed-question: fixed choices per question"]}


TASKS = {"density": task_density, "abnormality": task_abnormality, "retrieval": task_retrieval,
         "lesion-seg": task_lesion_seg, "lesion-det": task_lesion_det, "vqa": task_vqa}
TOKEN_TASKS = ("lesion-seg", "lesion-det")
CACHE_TASKS = ("lesion-seg", "lesion-det")
