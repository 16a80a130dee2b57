"""mini-MIAS pipeline check (issue 3): tiny-clip on the real F/G/D background-tissue task ``mias``.

Imports mini-MIAS with the ``mias`` adapter, preprocesses it, makes one patient-level
train/val/test split (``data.splits.train_val_test_split``, stratified by the MIAS grade) and trains
``tiny-clip`` (random init) contrastively, plus the ``zeroshot`` and ``linear-probe`` baselines on the
same split. Scores the held-out test patients (accuracy, balanced accuracy, macro AUC with
patient-level bootstrap 95% CIs). ``--cv K`` also runs patient-level K-fold cross-validation of the
contrastive method (``train.cv.cross_validate``, nested: the checkpoint is chosen on an inner validation
split of the training folds) and reports its pooled out-of-fold numbers; ``--cv-last`` adds the same CV
keeping each fold's last checkpoint.

Random-init tiny-clip on 322 scanned films is a pipeline check, not a clinical result.

Example::

    /work/venv/bin/python experiments/mias.py --out /tmp/exp_mias --epochs 20
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

MIAS_SRC = "/work/shared/data/mini-mias"


def _score(run_dir: Path, cache, rows: np.ndarray, n_boot: int) -> dict:
    from mammolens.data.dataset import MammoDataset
    from mammolens.evaluation.stats import metrics_with_ci
    from mammolens.models.run import load_run
    from mammolens.train.loop import predict_cache

    model, task, _ = load_run(run_dir, which="best")
    labels = np.asarray(task.encode(cache.index[task.label_column]), dtype=np.int64)[rows]
    probs = predict_cache(model, task, MammoDataset(cache, task, rows=rows), batch_size=64)
    groups = cache.index["patient_id"].astype(str).to_numpy()[rows]
    ci = metrics_with_ci(labels, probs, task.class_names, groups=groups, n_boot=n_boot, dense_classes=None)
    return {k: ci[k] for k in ("accuracy", "balanced_accuracy", "auc_macro",
                               *(f"recall/{c}" for c in task.class_names))}, probs


def _fmt(m: dict) -> str:
    return f"{m['estimate']:.3f} [{m['lo']:.2f}, {m['hi']:.2f}]"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="work folder (manifest, cache, runs, results.json)")
    ap.add_argument("--src", default=MIAS_SRC, help="mini-MIAS release folder")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (the split uses seed 0)")
    ap.add_argument("--size", type=int, default=96, help="cache and network input size")
    ap.add_argument("--methods", nargs="+", default=["zeroshot", "linear-probe", "contrastive"])
    ap.add_argument("--cv", type=int, default=0, help="also run K-fold CV of the contrastive method (0 = off)")
    ap.add_argument("--cv-last", action="store_true",
                    help="also run the CV keeping each fold's last checkpoint (no inner validation split)")
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from mammolens.data.adapters import import_dataset
    from mammolens.data.cache import PreprocessCfg, build_cache, open_cache
    from mammolens.data.splits import train_val_test_split
    from mammolens.train.config import TrainCfg
    from mammolens.train.cv import cross_validate
    from mammolens.train.loop import train

    torch.set_num_threads(2)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = time.time()
    cache_dir = root / "cache"
    if not (cache_dir / "cache.json").is_file():
        import_dataset("mias", args.src, out=root / "manifest")
        build_cache(root / "manifest" / "manifest.parquet", cache_dir, PreprocessCfg(size=args.size),
                    workers=args.workers, progress=False)
    cache = open_cache(cache_dir)
    times["import+preprocess_s"] = round(time.time() - t0, 1)

    index = cache.index
    labelled = index["mias_density"].astype(str).isin(["F", "G", "D"]).to_numpy().copy()
    if "status" in index.columns:
        labelled &= (index["status"].astype(str) == "done").to_numpy()
    split = train_val_test_split(index.reset_index(drop=True), val=0.15, test=0.25, label_col="mias_density",
                                 seed=0).to_numpy()
    rows = {s: np.flatnonzero(labelled & (split == s)) for s in ("train", "val", "test")}
    counts = {s: {c: int((index["mias_density"].to_numpy()[r] == c).sum()) for c in "FGD"} for s, r in rows.items()}
    print("split (images per class):", counts, flush=True)

    base = dict(data={"cache": str(cache_dir)}, task="mias", model="tiny-clip", image_size=args.size,
                batch_size=16, lr=1e-3, precision="fp32", workers=0, device="cpu", overwrite=True,
                probe_steps=300)
    results = []
    test_probs: dict[str, np.ndarray] = {}  # in memory only (the caller's paired tests); not written
    for seed in args.seeds:
        for method in args.methods:
            if method == "zeroshot" and seed != args.seeds[0]:
                continue
            t1 = time.time()
            cfg = TrainCfg(**base, method=method, epochs=args.epochs, seed=seed,
                           out_dir=str(root / f"run_{method}_s{seed}"))
            run_dir = train(cfg, rows=(rows["train"], rows["val"]))
            m, test_probs[f"{method}_s{seed}"] = _score(run_dir, cache, rows["test"], args.n_boot)
            rec = {"method": method, "seed": seed, "seconds": round(time.time() - t1, 1), **m}
            results.append(rec)
            print(json.dumps({k: (v["estimate"] if isinstance(v, dict) else v) for k, v in rec.items()}), flush=True)

    cv_res = None
    if args.cv:
        t1 = time.time()
        # independent of the split above: folds over all labelled patients
        cfg = TrainCfg(**base, method="contrastive",
                       epochs=args.epochs, seed=args.seeds[0], out_dir=str(root / "cv_contrastive"))
        cv_res = cross_validate(cfg, k=args.cv)
        cv_res["seconds"] = round(time.time() - t1, 1)
        print("cv pooled:", json.dumps(cv_res["pooled"]), flush=True)
    cv_last = None
    if args.cv and args.cv_last:
        t1 = time.time()
        cfg = TrainCfg(**{**base, "data": {**base["data"], "val_frac": 0.0}}, method="contrastive",
                       epochs=args.epochs, seed=args.seeds[0], out_dir=str(root / "cv_contrastive_last"))
        cv_last = cross_validate(cfg, k=args.cv)
        cv_last["seconds"] = round(time.time() - t1, 1)

    lines = ["| method | seed | accuracy | balanced acc. | macro AUC | recall F | recall G | recall D | train+eval s |",
             "|" + "---|" * 9]
    for r in results:
        lines.append(f"| {r['method']} | {r['seed']} | {_fmt(r['accuracy'])} | {_fmt(r['balanced_accuracy'])} | "
                     f"{_fmt(r['auc_macro'])} | " + " | ".join(f"{r[f'recall/{c}']['estimate']:.2f}" for c in "FGD")
                     + f" | {r['seconds']:.0f} |")
    table = "\n".join(lines)
    if cv_res is not None:
        p = cv_res["pooled"]
        table += (f"\n\n{args.cv}-fold patient-level CV (contrastive, all {cv_res['n_images']} images, pooled "
                  f"out-of-fold): accuracy {p['accuracy']:.3f}, balanced acc. {p['balanced_accuracy']:.3f}, "
                  f"macro AUC {p['macro_auc']:.3f}; per-fold macro AUC "
                  f"{cv_res['mean_sd']['macro_auc']['mean']:.3f} ± {cv_res['mean_sd']['macro_auc']['sd']:.3f}; "
                  f"{cv_res['seconds']:.0f}s")
    times["total_s"] = round(time.time() - t0, 1)
    print(table)
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}; "
          f"times {times}; test images {len(rows['test'])} from "
          f"{index.iloc[rows['test']]['patient_id'].nunique()} patients")
    (root / "results.json").write_text(json.dumps({"args": vars(args), "split_counts": counts, "runs": results,
                                                   "cv": cv_res, "cv_last": cv_last, "table": table,
                                                   "times": times}, indent=2,
                                                  default=float))
    return {"runs": results, "table": table, "cv": cv_res, "cv_last": cv_last, "split_counts": counts, "times": times,
            "test_probs": test_probs, "test_labels": np.asarray(task_labels(cache))[rows["test"]],
            "test_groups": index["patient_id"].astype(str).to_numpy()[rows["test"]]}


def task_labels(cache) -> np.ndarray:
    """Encoded ``mias`` labels of every cache row (-1 unlabelled)."""
    from mammolens.tasks import get_task

    task = get_task("mias")
    return np.asarray(task.encode(cache.index[task.label_column]), dtype=np.int64)


if __name__ == "__main__":
    main()
