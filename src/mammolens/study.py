"""The reference study as one call: single-modality runs (DM, s2D, DBT) against the multi-modality run.

``run_study(StudyCfg)`` (CLI ``mammolens study``), for every seed and every outer fold of a stratified,
patient-grouped k-fold (``data.splits.patient_kfold``) over the usable rows of the manifest:

1. an inner validation split of the training folds' patients (``inner_val_frac``; early stopping and
   the best checkpoint use it);
2. one run per *arm*: each single modality (training and inner validation rows of that modality only)
   and ``multi`` (all modalities), the same ``TrainCfg`` otherwise;
3. every run predicts the whole outer test fold (every modality) and every ``external`` manifest
   (averaged over the folds of a seed).

The table has one row per arm × test set (each modality's test rows, all test rows, each external set):
accuracy and macro AUC with 95 % CIs from a patient bootstrap over the predictions of all seeds stacked
(a patient's rows, in every seed, are resampled together), and for each single-modality arm the paired
difference ``multi − single`` (columns ``<metric>_diff``) on the same rows with its paired patient-bootstrap CI and two-sided p.
Written to ``OUT/study.{csv,json,html}``; no identifiers or absolute paths go into them. ``study.html`` has
``report.html``'s style, the simulated-data banner when the cohort or an external set is simulated, the
external sets by their ``folder/file`` names and the paired test by name. A design the data cannot fill (a
single-modality cohort, an arm without images) is refused before any training.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammolens.constants import MODALITIES
from mammolens.evaluation.stats import paired_bootstrap  # lives there; importable from here as before

log = logging.getLogger(__name__)

__all__ = ["StudyCfg", "run_study", "paired_bootstrap", "comparison_table"]

MULTI = "multi"


@dataclass
class StudyCfg:
    """One study.

    Attributes:
        manifest: the cohort's manifest (or ``cache``: a preprocessed cache folder).
        cache: a cache folder made by ``mammolens preprocess`` (used instead of ``manifest`` when set).
        out_dir: the study folder (``runs/``, caches of the external sets, ``study.*``).
        train: ``TrainCfg`` fields shared by every run (model, method, epochs, lr, ...).
        modalities: the single-modality arms; ``multi`` trains on all of them together.
        folds: outer patient folds.
        seeds: one repetition of the whole design per seed (fold assignment, inner split, training).
        inner_val_frac: fraction of the training folds' patients held out for validation.
        external: further manifests every run is evaluated on.
        n_boot: bootstrap replicates (patients resampled) for CIs and paired tests.
        keep_checkpoints: keep every run's checkpoints (large for real models); metrics are always kept.
    """

    manifest: str = ""
    cache: str = ""
    out_dir: str = "study"
    train: dict[str, Any] = field(default_factory=dict)
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    folds: int = 5
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    inner_val_frac: float = 0.2
    external: list[str] = field(default_factory=list)
    n_boot: int = 1000
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        bad = sorted(set(self.modalities) - set(MODALITIES))
        if bad or not self.modalities:
            raise ValueError(f"study modalities {bad or '[]'} are not valid; use a non-empty subset of {MODALITIES}")
        if self.folds < 2:
            raise ValueError(f"study folds must be >= 2, got {self.folds}")
        if not self.seeds:
            raise ValueError("study seeds is empty; give at least one seed (the reference design uses 5)")
        if not 0.0 < self.inner_val_frac < 1.0:
            raise ValueError(f"inner_val_frac must be in (0, 1), got {self.inner_val_frac}")
        if not (self.manifest or self.cache):
            raise ValueError("a study needs data: set manifest (a manifest file) or cache (a preprocessed folder)")


def _accuracy(y, p) -> float:
    return float(np.mean(p.argmax(1) == y)) if len(y) else math.nan


def _macro_auc(y, p) -> float:
    from mammolens.evaluation.metrics import macro_auc

    return macro_auc(y, p, warn=False) if len(y) else math.nan


METRICS = {"accuracy": _accuracy, "macro_auc": _macro_auc}


def _inner_split(index: pd.DataFrame, pool: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and inner-validation rows of ``pool`` (positional), disjoint by patient."""
    patients = index["patient_id"].astype(str).to_numpy()[pool]
    uniq = np.unique(patients)
    n_val = min(max(int(round(frac * len(uniq))), 1), len(uniq) - 1) if len(uniq) > 1 else 0
    val = set(np.random.default_rng(seed).permutation(uniq)[:n_val].tolist())
    is_val = np.array([p in val for p in patients], dtype=bool)
    return pool[~is_val], pool[is_val]


def _external_cache(path: str, j: int, out: Path, preprocess) -> Path:
    from mammolens.data.cache import build_cache

    target = out / "external" / f"external_{j + 1}"
    if not (target / "cache.json").is_file():
        if not Path(path).exists():
            raise FileNotFoundError(f"external manifest {path} does not exist")
        build_cache(path, target, preprocess, progress=False)
    return target


def _predict(run_dir: Path, cache, rows: np.ndarray, batch_size: int) -> np.ndarray:
    from mammolens.data.dataset import MammoDataset
    from mammolens.train.loop import load_run, predict_cache

    model, task, _ = load_run(run_dir, which="best")
    return predict_cache(model, task, MammoDataset(cache, task, rows=rows), batch_size=batch_size, workers=0)


def run_study(cfg: StudyCfg | dict) -> dict[str, Any]:
    """Run the single- vs multi-modality design (module docstring) and write ``study.{csv,json,html}``.

    Returns:
        ``{"table": [row dicts], "n_runs", "arms", "test_sets", "seeds", "folds", "files"}``.
    """
    from mammolens.data.cache import open_cache
    from mammolens.data.splits import patient_kfold
    from mammolens.train.config import cfg_from_dict
    from mammolens.train.loop import open_run_cache, resolve_task, split_rows
    from mammolens.train.loop import train as train_run

    if isinstance(cfg, dict):
        cfg = StudyCfg(**cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = cfg_from_dict({**cfg.train, "out_dir": str(out / "runs"), "ood": False,
                          "data": {**cfg.train.get("data", {}), "cache": cfg.cache or str(out / "cache"),
                                   "manifest": cfg.manifest, "modalities": [], "fold": None}})
    task = resolve_task(base.task)
    cache = open_run_cache(base)
    index = cache.index
    labels = np.asarray(task.encode(index[task.label_column]), dtype=np.int64)
    no_val = dataclasses.replace(base, data=dataclasses.replace(base.data, val_frac=0.0))
    usable = np.sort(np.concatenate(split_rows(index, labels, no_val)))
    modality = index["modality"].astype(str).to_numpy()
    usable = usable[np.isin(modality[usable], cfg.modalities)]
    _check_modalities(modality[usable], cfg.modalities)  # before anything is trained
    arms = [*cfg.modalities, MULTI]
    arm_mods = {a: [a] for a in cfg.modalities} | {MULTI: list(cfg.modalities)}
    ext = [open_cache(_external_cache(p, j, out, cache.cfg)) for j, p in enumerate(cfg.external)]
    ext_names = external_names(cfg.external)
    ext_rows = [np.flatnonzero(np.asarray(task.encode(c.index[task.label_column])) >= 0) for c in ext]

    k = len(task.class_names)
    # probs[arm][seed]: [N, K] out-of-fold on the cohort; ext_probs[arm][seed][j]: fold-averaged on external j
    probs = {a: {s: np.full((len(index), k), np.nan) for s in cfg.seeds} for a in arms}
    ext_probs = {a: {s: [np.zeros((len(r), k)) for r in ext_rows] for s in cfg.seeds} for a in arms}
    n_runs = 0
    for seed in cfg.seeds:
        folds = patient_kfold(index.iloc[usable].reset_index(drop=True), k=cfg.folds, label_col=task.label_column,
                              seed=seed).to_numpy()
        for f in range(cfg.folds):
            test = usable[folds == f]
            tr_all, va_all = _inner_split(index, usable[folds != f], cfg.inner_val_frac, seed * 1000 + f)
            for arm in arms:
                tr = tr_all[np.isin(modality[tr_all], arm_mods[arm])]
                va = va_all[np.isin(modality[va_all], arm_mods[arm])]
                if not len(tr):
                    raise ValueError(f"seed {seed}, fold {f}: no training rows of {arm}; lower folds or add "
                                     f"{arm} images (each arm needs training rows in every fold)")
                run_dir = out / "runs" / f"seed{seed}" / f"fold{f}" / arm
                rcfg = dataclasses.replace(base, out_dir=str(run_dir), seed=seed, overwrite=True, resume=False,
                                           data=dataclasses.replace(base.data, cache=str(cache.path), manifest=""))
                train_run(rcfg, rows=(tr, va), progress=False)
                probs[arm][seed][test] = _predict(run_dir, cache, test, base.batch_size)
                for j, c in enumerate(ext):
                    ext_probs[arm][seed][j] += _predict(run_dir, c, ext_rows[j], base.batch_size) / cfg.folds
                if not cfg.keep_checkpoints:
                    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
                n_runs += 1
                log.info("study: seed %s fold %d arm %s done", seed, f, arm)

    # test sets: (name, y [n], groups [n], {arm: probs [n_seeds * n, K]} stacked over seeds)
    test_sets = []
    patients = index["patient_id"].astype(str).to_numpy()
    for name, sel in [*((m, usable[modality[usable] == m]) for m in cfg.modalities), ("all", usable)]:
        test_sets.append((name, np.tile(labels[sel], len(cfg.seeds)), np.tile(patients[sel], len(cfg.seeds)),
                          {a: np.concatenate([probs[a][s][sel] for s in cfg.seeds]) for a in arms}))
    for j, c in enumerate(ext):
        y = np.asarray(task.encode(c.index[task.label_column]), dtype=np.int64)[ext_rows[j]]
        g = c.index["patient_id"].astype(str).to_numpy()[ext_rows[j]]
        test_sets.append((ext_names[j], np.tile(y, len(cfg.seeds)), np.tile(g, len(cfg.seeds)),
                          {a: np.concatenate([ext_probs[a][s][j] for s in cfg.seeds]) for a in arms}))

    table = comparison_table(test_sets, arms, cfg.n_boot, reference=MULTI)
    from mammolens.evaluation.report import is_simulated

    simulated = is_simulated(index) or any(is_simulated(c.index) for c in ext)
    files = _write(out, table, cfg, task.name, simulated=simulated, external=ext_names)
    return {"table": table, "n_runs": n_runs, "arms": arms, "test_sets": [t[0] for t in test_sets],
            "seeds": list(cfg.seeds), "folds": cfg.folds, "files": files}


def _check_modalities(present: np.ndarray, wanted: list[str]) -> None:
    """Refuse, before any training, a design the data cannot fill: a single-modality arm without images of
    its modality, or a multi-modality arm on data of one modality (it would be that arm again)."""
    counts = {m: int(np.sum(present == m)) for m in wanted}
    have = [m for m, n in counts.items() if n]
    shown = ", ".join(f"{m}: {n}" for m, n in counts.items())
    if len(have) < 2:
        raise ValueError(f"the study compares single- with multi-modality training, but the usable labelled images "
                         f"are of {len(have)} modality ({shown}); the multi-modality arm would train on the same "
                         "images as the single one. Use data with at least two of DM, s2D, DBT, or train one run "
                         "(mammolens train / mammolens cv).")
    missing = [m for m, n in counts.items() if not n]
    if missing:
        raise ValueError(f"no usable labelled {', '.join(missing)} images ({shown}); drop those arms with "
                         f"--modality {' --modality '.join(have)}")


def external_names(paths: list[str]) -> list[str]:
    """Names of the external sets as the table shows them: ``folder/file`` of each manifest (never an
    absolute path), numbered when two would read the same."""
    names = [f"{Path(p).resolve().parent.name}/{Path(p).name}" if Path(p).suffix else Path(p).resolve().name
             for p in paths]
    return [f"{n} ({j + 1})" if names.count(n) > 1 else n for j, n in enumerate(names)]


def comparison_table(test_sets, arms: list[str], n_boot: int, reference: str) -> list[dict[str, Any]]:
    """One row per arm × test set: accuracy and macro AUC with patient-bootstrap CIs, and for every arm
    but ``reference`` the paired difference ``reference − arm`` (``<metric>_diff``, ``_diff_lo``,
    ``_diff_hi``, ``_p``; :func:`paired_bootstrap`).

    Args:
        test_sets: ``(name, y [n], groups [n], {arm: probs [n, K]})`` per test set (rows of several seeds
            may be stacked; groups then repeat, so a patient's rows of every seed are resampled together).
        arms: the arms, in table order.
        n_boot: bootstrap replicates.
        reference: the arm every other is compared with.
    """
    from mammolens.evaluation.stats import bootstrap_ci

    rows = []
    for name, y, groups, by_arm in test_sets:
        for arm in arms:
            p = by_arm[arm]
            row: dict[str, Any] = {"train": arm, "test": name, "n_predictions": int(len(y)),  # images × seeds
                                   "n_patients": int(len(np.unique(groups)))}
            for key, fn in METRICS.items():
                ci = bootstrap_ci(fn, y, p, groups=groups, n_boot=n_boot, seed=0)
                row.update({key: ci["estimate"], f"{key}_lo": ci["lo"], f"{key}_hi": ci["hi"]})
                if arm != reference:
                    d = paired_bootstrap(fn, y, by_arm[reference], p, groups, n_boot=n_boot, seed=0)
                    row.update({f"{key}_diff": d["diff"], f"{key}_diff_lo": d["lo"],
                                f"{key}_diff_hi": d["hi"], f"{key}_p": d["p"]})
            rows.append(row)
    return rows


def _fmt(v, digits: int = 3, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


PAIRED_TEST = ("paired patient bootstrap: multi − single on the same rows, both arms scored on the same "
               "resampled patients in each replicate; two-sided bootstrap p = 2·min(#diff ≤ 0 + 1, #diff ≥ 0 + 1) / "
               "(replicates + 1)")


def _write(out: Path, table: list[dict[str, Any]], cfg: StudyCfg, task: str, simulated: bool = False,
           external: list[str] = ()) -> list[str]:
    df = pd.DataFrame(table)
    from mammolens.csvsafe import write_csv

    write_csv(df, out / "study.csv")
    safe = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
    meta = {"task": task, "simulated": bool(simulated), "external": list(external), "paired_test": PAIRED_TEST,
            "seeds": list(cfg.seeds), "folds": cfg.folds, "inner_val_frac": cfg.inner_val_frac,
            "modalities": list(cfg.modalities), "n_external": len(cfg.external), "n_boot": cfg.n_boot,
            "train": {k: v for k, v in cfg.train.items() if k not in ("data", "out_dir")}}
    (out / "study.json").write_text(json.dumps({"design": meta, "table": [{k: safe(v) for k, v in r.items()}
                                                                          for r in table]}, indent=2, default=str))
    from mammolens.evaluation.report import REPORT_CSS, SIMULATED_BANNER

    cells = []
    for r in table:
        tds = [html.escape(str(r["train"])), html.escape(str(r["test"])), str(r["n_predictions"]),
               str(r["n_patients"])]
        for key in METRICS:
            tds.append(f"{_fmt(r[key])} [{_fmt(r[key + '_lo'])}, {_fmt(r[key + '_hi'])}]")
            tds.append("" if r["train"] == MULTI else
                       f"{_fmt(r[key + '_diff'], signed=True)} [{_fmt(r[key + '_diff_lo'])}, {_fmt(r[key + '_diff_hi'])}]"
                       f" p={_fmt(r[key + '_p'])}")
        cells.append("<tr>" + "".join(f"<td>{t}</td>" for t in tds) + "</tr>")
    head = ("<tr><th>trained on</th><th>tested on</th><th>predictions (images × seeds)</th><th>patients</th>"
            "<th>accuracy [95% CI]</th><th>multi − this [95% CI], p</th><th>macro AUC [95% CI]</th>"
            "<th>multi − this [95% CI], p</th></tr>")
    banner = (f"<div class='banner' id='simulated' role='alert'>{html.escape(SIMULATED_BANNER)}</div>"
              if simulated else "")
    ext = ("<p>External sets (every run tested on each, predictions averaged over the folds of a seed): "
           + ", ".join(f"<b>{html.escape(n)}</b>" for n in external) + ".</p>") if external else ""
    title = f"mammolens study: single- vs multi-modality training ({task})"
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{REPORT_CSS}</style></head><body><h1>{html.escape(title)}</h1>{banner}"
            f"<p>Design: {len(cfg.seeds)} seed(s) × {cfg.folds} patient-grouped outer folds; arms "
            f"{html.escape(', '.join([*cfg.modalities, MULTI]))} (multi = all modalities together); early stopping "
            f"on an inner split of {cfg.inner_val_frac:.0%} of the training folds' patients. Each test modality is "
            f"the outer test fold's images of that modality; \"all\" is every test image.</p>{ext}"
            f"<h2>Results</h2><table>{head}{''.join(cells)}</table>"
            f"<p class='note'>95% CIs: patient bootstrap ({cfg.n_boot} replicates; a patient's rows of every seed "
            f"are resampled together). Paired test: <b>{PAIRED_TEST}</b>.</p></body></html>")
    (out / "study.html").write_text(page)
    return ["study.csv", "study.json", "study.html"]
