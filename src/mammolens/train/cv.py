"""Patient-level k-fold cross-validation: one run per fold, pooled out-of-fold predictions."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammolens.data.manifest import REPORT_TEXT_COLUMNS
from mammolens.train.config import TrainCfg, cfg_from_dict, load_cfg

__all__ = ["cross_validate"]


def _mean_sd(values: list[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def cross_validate(cfg: TrainCfg | dict | str | os.PathLike, k: int = 5, *, n_boot: int = 1000,
                   progress: bool = True) -> dict[str, Any]:
    """Train one run per patient fold and score the pooled out-of-fold predictions (nested selection).

    Folds come from ``data.splits.patient_kfold`` (stratified by the task label, grouped by patient,
    seeded by ``cfg.seed``) over the usable rows (labelled, preprocessed, modality filter, not
    ``split == test``). Fold ``i`` is the test fold of ``OUT_DIR/fold_i``; the checkpoint choice and early
    stopping use an inner validation split of the *training* folds (``data.splits.train_val_test_split``,
    ``cfg.data.val_frac`` of their patients, seed ``cfg.seed + i``), so the test fold never selects its own
    model. ``val_frac=0`` trains on all training folds and keeps the last checkpoint.

    Writes ``OUT_DIR/cv_metrics.json`` (per fold, mean ± sd across folds, pooled),
    ``OUT_DIR/oof_predictions.parquet`` (index columns with identifiers pseudonymised + ``fold, label,
    prob_<class>, pred``) and ``OUT_DIR/cv_rows.parquet`` (``cache_row, patient, fold, role``: one row per
    image and fold, role ``train``/``val``/``test``; keyed pseudonyms only) and ``OUT_DIR/report.html``:
    the evaluation report of the pooled out-of-fold predictions (``evaluation.report``: per image and exam,
    ``n_boot`` patient-bootstrap 95% CIs, subgroups; every image is held out by construction). With
    ``progress``, a ``fold i/K`` line on stderr before each fold's epoch lines.

    Returns:
        the dict written to ``cv_metrics.json``.
    """
    from mammolens.data.dataset import MammoDataset
    from mammolens.data.splits import patient_kfold, train_val_test_split
    from mammolens.privacy import pseudonymise_frame
    from mammolens.evaluation.metrics import val_metrics
    from mammolens.train.config import load_run
    from mammolens.train.loop import open_run_cache, predict_cache, resolve_task, split_rows
    from mammolens.train.loop import train as train_run

    if isinstance(cfg, (str, os.PathLike)):
        cfg = load_cfg(cfg)
    elif isinstance(cfg, dict):
        cfg = cfg_from_dict(cfg)
    if k < 2:
        raise ValueError(f"cross-validation needs k >= 2 folds, got {k}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = resolve_task(cfg.task)
    cache = open_run_cache(cfg)
    index = cache.index
    labels = np.asarray(task.encode(index[task.label_column]), dtype=np.int64)
    # usable rows: everything split_rows would use for train or val (no fold/val split applied)
    no_val = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, fold=None, val_frac=0.0, split_column="split"))
    tr, va = split_rows(index, labels, no_val)
    usable = np.sort(np.concatenate([tr, va]))
    folds = patient_kfold(index.iloc[usable].reset_index(drop=True), k=k, label_col=task.label_column,
                          seed=cfg.seed).to_numpy()

    fold_ids = np.full(len(index), -1, dtype=np.int64)
    fold_ids[usable] = folds
    oof = np.full((len(index), len(task.class_names)), np.nan, dtype=np.float64)
    per_fold: list[dict[str, Any]] = []
    roles: list[pd.DataFrame] = []
    for i in range(k):
        test_rows = usable[folds == i]
        train_rows = usable[folds != i]
        val_rows = np.empty(0, dtype=np.int64)
        if cfg.data.val_frac > 0:  # inner patient-grouped split of the training folds only
            inner = train_val_test_split(index.iloc[train_rows].reset_index(drop=True), val=cfg.data.val_frac,
                                         test=0.0, label_col=task.label_column, seed=cfg.seed + i).to_numpy()
            train_rows, val_rows = train_rows[inner == "train"], train_rows[inner == "val"]
        for role, rows in (("train", train_rows), ("val", val_rows), ("test", test_rows)):
            roles.append(pd.DataFrame({"cache_row": rows, "fold": i, "role": role}))
        fcfg = dataclasses.replace(
            cfg, out_dir=str(out / f"fold_{i}"),
            data=dataclasses.replace(cfg.data, cache=str(cache.path), manifest=""),
        )
        if progress:
            print(f"fold {i + 1}/{k}: train {len(train_rows)}, validation {len(val_rows)}, test {len(test_rows)} "
                  f"images -> {out / f'fold_{i}'}", file=sys.stderr, flush=True)
        run_dir = train_run(fcfg, rows=(train_rows, val_rows), progress=progress)
        model, _, _ = load_run(run_dir, which="best")
        probs = predict_cache(model, task, MammoDataset(cache, task, rows=test_rows), batch_size=cfg.batch_size,
                              workers=0)
        oof[test_rows] = probs
        m = val_metrics(labels[test_rows], probs, task.class_names)
        per_fold.append({"fold": i, "run_dir": f"fold_{i}", "n_train": int(len(train_rows)),
                         "n_val": int(len(val_rows)), "n_test": int(len(test_rows)),
                         **{kk.removeprefix("val_"): v for kk, v in m.items()}})

    done = usable
    pooled = {kk.removeprefix("val_"): v for kk, v in val_metrics(labels[done], oof[done], task.class_names).items()}
    keys = [kk for kk in per_fold[0] if kk not in ("fold", "run_dir", "n_train", "n_val", "n_test")]
    result = {
        "k": k,
        "selection": (f"inner patient-grouped validation split of the training folds (val_frac={cfg.data.val_frac})"
                      if cfg.data.val_frac > 0 else "last checkpoint (val_frac=0)"),
        "task": task.name,
        "method": cfg.method,
        "n_images": int(len(done)),
        "n_patients": int(index.iloc[done]["patient_id"].nunique()),
        "folds": per_fold,
        "mean_sd": {kk: _mean_sd([f[kk] for f in per_fold]) for kk in keys},
        "pooled": pooled,
    }
    (out / "cv_metrics.json").write_text(json.dumps(_json_safe(result), indent=2))

    drop = ("conversion", "error", "status", *REPORT_TEXT_COLUMNS)  # report text stays out of research outputs
    frame = index.iloc[done].drop(columns=[c for c in drop if c in index.columns]).copy()
    frame["fold"] = fold_ids[done]
    frame["label"] = labels[done]
    for j, name in enumerate(task.class_names):
        frame[f"prob_{name}"] = oof[done, j]
    frame["pred"] = np.asarray(task.class_names, dtype=object)[oof[done].argmax(1)]
    oof_frame = pseudonymise_frame(pd.DataFrame(frame).reset_index(drop=True))
    oof_frame.to_parquet(out / "oof_predictions.parquet")
    _oof_report(out, oof_frame, task, cfg, k, n_boot)
    rows_df = pd.concat(roles, ignore_index=True)
    patient = index["patient_id"].astype(str).to_numpy()[rows_df["cache_row"].to_numpy()]
    rows_df.insert(1, "patient", pseudonymise_frame(pd.DataFrame({"patient_id": patient}))["patient_id"].to_numpy())
    rows_df.to_parquet(out / "cv_rows.parquet", index=False)
    return result


def _oof_report(out: Path, oof: pd.DataFrame, task, cfg: TrainCfg, k: int, n_boot: int) -> Path:
    """``OUT_DIR/report.html`` (and ``oof_metrics.json``) for the pooled out-of-fold predictions."""
    from mammolens.evaluation.report import evaluate_predictions, to_jsonable, write_report
    from mammolens.tasks import dense_classes_of

    names = list(task.class_names)
    result = evaluate_predictions(oof, names, n_boot=n_boot, seed=cfg.seed, dense_classes=dense_classes_of(task) or None)
    metrics = to_jsonable({kk: v for kk, v in result.items() if kk != "subgroups"})
    metrics["subgroups"] = to_jsonable(result["subgroups"].to_dict("records")) if result.get("subgroups") is not None else []
    provenance = {"cross-validation": f"{k} patient folds, pooled out-of-fold predictions (each image predicted by "
                                      "the one fold run that never saw its patient)",
                  "run": out.resolve().name, "model": cfg.model, "method": str(cfg.method), "task": task.name,
                  "n_boot": n_boot, "seed": cfg.seed}
    metrics["provenance"] = provenance
    (out / "oof_metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=True))
    return write_report(out, oof, names, result, title=f"mammolens {k}-fold cross-validation: {out.resolve().name}",
                        provenance=provenance)
