"""How well does the out-of-distribution score (``models.ood``) separate a run's own kind of images from
images of another source? (issue 21: the gate let 7 of 8 real film mammograms through a simulated-data model.)

For each run: the OOD model is refitted on the run's training embeddings exactly as training does
(``train.loop._write_ood``: at most 2048 evenly spaced training rows, best checkpoint), then scored on

* **in**: held-out images of the run's own source (its validation rows, plus ``--in-extra`` caches such as the
  demo's external synthetic cohort), and
* **out**: every image of another source (``--out-cache``), preprocessed like the run (same cache settings).

It reports the AUROC of the score (out vs in: 1 = perfect separation), for each per-image threshold rule the
share of "out" images caught and of held-out "in" images wrongly flagged, and the same for the per-set rule
(median score of a set above the training scores' 0.9 quantile) on 4000 random sets of 1, 2, 4 and 8 images.

Example (the numbers in docs/quality.md)::

    PYTHONPATH=src python experiments/ood_separation.py --run demo/run --cache demo/cache \\
        --in-extra demo/external_cache --out-cache mias_cache --json demo_vs_mias.json
    PYTHONPATH=src python experiments/ood_separation.py --run mias_run --cache mias_cache \\
        --out-cache demo/cache --json mias_vs_demo.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def _embed(run, cache, rows: np.ndarray, batch: int = 64, own: bool = True) -> np.ndarray:
    from mammolens.data.dataset import MammoDataset
    from mammolens.pipeline import encode as _enc

    ds = MammoDataset(cache, run.task if own else None, rows=rows)  # another source lacks the task's column
    return _enc.encode(run.model, _enc.loader(ds, batch, 0), ("embedding",), device="cpu", task=run.task)["embedding"]


def _done_rows(cache) -> np.ndarray:
    idx = cache.index
    return np.flatnonzero((idx["status"] == "done").to_numpy()) if "status" in idx else np.arange(len(idx))


def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    from scipy.stats import rankdata

    r = rankdata(np.concatenate([neg, pos]))
    return float((r[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2) / (len(neg) * len(pos)))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a run folder (trained with the OOD fit)")
    ap.add_argument("--cache", required=True, help="the cache the run was trained on")
    ap.add_argument("--in-extra", nargs="*", default=[], help="more caches of the run's own source (held out)")
    ap.add_argument("--out-cache", required=True, help="a cache of another source, same preprocessing")
    ap.add_argument("--json", help="write the numbers here")
    ap.add_argument("--refit", action="store_true",
                    help="also save the refitted model as the run's ood.npz (a run trained before the set rule)")
    args = ap.parse_args(argv)

    from mammolens.data.cache import open_cache
    from mammolens.models.ood import fit_ood, load_ood
    from mammolens.run import load_run
    from mammolens.train.config import cfg_from_dict
    from mammolens.train.loop import split_rows

    t0 = time.perf_counter()
    run = load_run(args.run)
    cache = open_cache(args.cache)
    cfg = cfg_from_dict(run.cfg)
    labels = np.asarray(run.task.encode(cache.index[run.task.label_column]), dtype=np.int64)
    train_rows, val_rows = split_rows(cache.index, labels, cfg)
    sel = train_rows[np.unique(np.linspace(0, len(train_rows) - 1, min(len(train_rows), 2048)).round().astype(int))]
    emb_train = _embed(run, cache, sel)
    emb_in = [_embed(run, cache, val_rows)] if len(val_rows) else []
    for extra in args.in_extra:
        c = open_cache(extra)
        emb_in.append(_embed(run, c, _done_rows(c), own=False))
    other = open_cache(args.out_cache)
    emb_out = _embed(run, other, _done_rows(other), own=False)
    emb_in = np.concatenate(emb_in)

    stored = load_ood(args.run)
    ood = fit_ood(emb_train, checkpoint="best")  # the fit training does (same defaults)
    if args.refit:
        ood.save(args.run)
    s_train, s_in, s_out = ood.score(emb_train), ood.score(emb_in), ood.score(emb_out)
    q = {p: float(np.quantile(s_train, p)) for p in (0.5, 0.9, 0.95, 0.99, 0.995)}
    rules = {
        "q99.5 x 1.25 (before issue 21)": q[0.995] * 1.25,
        "q99.5 x 1.0": q[0.995],
        "q99 x 1.0": q[0.99],
        "max of training": float(s_train.max()),
        "median x 2": q[0.5] * 2,
        "median x 1.5": q[0.5] * 1.5,
    }
    if stored is not None:
        rules["stored ood.npz"] = float(stored.threshold)
    table = {name: {"threshold": t, "out_caught": float((s_out > t).mean()), "in_flagged": float((s_in > t).mean())}
             for name, t in rules.items()}
    rng = np.random.default_rng(0)
    sets = {}
    for n in (1, 2, 4, 8):  # the per-set rule on random sets of n images (models.ood.OODModel.set_outside)
        out_sets = rng.choice(s_out, (4000, n))
        in_sets = rng.choice(s_in, (4000, n))
        sets[f"n={n}"] = {"out_caught": float(np.mean(np.median(out_sets, 1) > ood.set_threshold)),
                          "in_flagged": float(np.mean(np.median(in_sets, 1) > ood.set_threshold))}
    res = {
        "run": Path(args.run).name, "task": run.task.name, "n_train_fit": int(len(sel)), "n_in": int(len(s_in)),
        "n_out": int(len(s_out)), "auroc_out_vs_in": auroc(s_in, s_out),
        "auroc_out_vs_train": auroc(s_train, s_out), "auroc_in_vs_train": auroc(s_train, s_in),
        "score_quantiles": {"train": q, "in_median": float(np.median(s_in)), "out_median": float(np.median(s_out)),
                            "out_p10": float(np.quantile(s_out, 0.1))},
        "rules": table, "set_threshold": ood.set_threshold, "set_rule_median_above_q90": sets,
        "seconds": round(time.perf_counter() - t0, 1), "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
