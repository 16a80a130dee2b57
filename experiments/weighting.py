"""Class weighting ablation (issue 3): does ``class_weighting`` help the rare density classes?

Trains ``tiny-clip`` (random init) contrastively on an imbalanced synthetic cohort (A and D rare) with
each weighting method, same seed and config otherwise, and scores every run on a separate held-out
synthetic cohort. Prints a markdown table (mean over seeds and per seed).

Example::

    /work/venv/bin/python experiments/weighting.py --out /tmp/exp_w --epochs 20 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _cohort_cache(root: Path, name: str, n_patients: int, seed: int, probs, size: int, workers: int) -> Path:
    """Write a synthetic cohort and its preprocessed cache (reused when already there)."""
    from mammolens.data.cache import PreprocessCfg, build_cache
    from mammolens.data.synthetic import make_cohort

    cohort, cache = root / name, root / f"{name}_cache"
    if not (cache / "cache.json").is_file():
        if not (cohort / "manifest.parquet").is_file():
            make_cohort(cohort, n_patients=n_patients, seed=seed, image_size=(128, 104), density_probs=list(probs))
        build_cache(cohort / "manifest.parquet", cache, PreprocessCfg(size=size), workers=workers, progress=False)
    return cache


def _evaluate(run_dir: Path, test_cache: Path) -> dict:
    from mammolens.data.cache import open_cache
    from mammolens.data.dataset import MammoDataset
    from mammolens.evaluation.metrics import compute_metrics
    from mammolens.models.run import load_run
    from mammolens.train.loop import predict_cache

    model, task, _ = load_run(run_dir, which="best")
    cache = open_cache(test_cache)
    labels = np.asarray(task.encode(cache.index[task.label_column]), dtype=np.int64)
    rows = np.flatnonzero(labels >= 0)
    probs = predict_cache(model, task, MammoDataset(cache, task, rows=rows), batch_size=64)
    return compute_metrics(labels[rows], probs, task.class_names)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="work folder (cohorts, caches, runs, results_<methods>_s<seeds>.json)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--methods", nargs="+", default=["none", "inverse", "effective"])
    ap.add_argument("--n-train", type=int, default=60, help="training cohort patients")
    ap.add_argument("--n-test", type=int, default=40, help="held-out cohort patients")
    ap.add_argument("--probs", type=float, nargs=4, default=[0.05, 0.45, 0.45, 0.05], help="A B C D training probs")
    ap.add_argument("--test-probs", type=float, nargs=4, default=[0.25, 0.25, 0.25, 0.25])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from mammolens.train.config import TrainCfg
    from mammolens.train.loop import train

    torch.set_num_threads(2)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_cache = _cohort_cache(root, "train_cohort", args.n_train, 0, args.probs, args.size, args.workers)
    test_cache = _cohort_cache(root, "test_cohort", args.n_test, 1000, args.test_probs, args.size, args.workers)
    t_data = time.time() - t0

    results = []
    for seed in args.seeds:
        for method in args.methods:
            t1 = time.time()
            cfg = TrainCfg(data={"cache": str(train_cache), "val_frac": 0.3}, model="tiny-clip", image_size=args.size,
                           epochs=args.epochs, batch_size=16, lr=1e-3, precision="fp32", workers=0, seed=seed,
                           class_weighting=method, device="cpu", out_dir=str(root / f"run_{method}_s{seed}"),
                           overwrite=True)
            run_dir = train(cfg)
            m = _evaluate(run_dir, test_cache)
            rec = {"seed": seed, "method": method, "seconds": round(time.time() - t1, 1),
                   "balanced_accuracy": m["balanced_accuracy"], "auc_macro": m["auc_macro"], "accuracy": m["accuracy"],
                   **{f"recall_{c}": m["per_class"][c]["recall"] for c in m["class_names"]},
                   "support": {c: m["per_class"][c]["support"] for c in m["class_names"]}}
            results.append(rec)
            print(json.dumps(rec), flush=True)

    cols = ["balanced_accuracy", "auc_macro", "accuracy", "recall_A", "recall_B", "recall_C", "recall_D"]
    head = "| weighting | seed | bal. acc | macro AUC | acc | recall A | recall B | recall C | recall D |"
    lines = [head, "|" + "---|" * 9]
    for method in args.methods:
        rs = [r for r in results if r["method"] == method]
        for r in rs:
            lines.append(f"| {method} | {r['seed']} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
        mean = {c: float(np.nanmean([r[c] for r in rs])) for c in cols}
        lines.append(f"| **{method}** | mean | " + " | ".join(f"**{mean[c]:.3f}**" for c in cols) + " |")
    table = "\n".join(lines)
    print(table)
    print(f"data prep {t_data:.0f}s, total {time.time() - t0:.0f}s; test support {results[0]['support'] if results else {}}")
    tag = "-".join(args.methods) + "_s" + "-".join(map(str, args.seeds))
    (root / f"results_{tag}.json").write_text(json.dumps({"args": vars(args), "runs": results, "table": table,
                                                   "seconds_data": t_data, "seconds_total": time.time() - t0}, indent=2))
    return {"runs": results, "table": table, "seconds_data": t_data}


if __name__ == "__main__":
    main()
