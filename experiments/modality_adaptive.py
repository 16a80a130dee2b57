"""Fixed vs adaptive modality weighting (issue 14 §1) on a synthetic cohort where DBT is rare and harder.

Training cohort: synthetic DM/s2D/DBT, DBT cut to about 10 % of the images and made harder by Gaussian
noise (sd ``--dbt-noise`` of the full range) added to its cached pixels. Test cohort: a separate synthetic
cohort, every modality present, DBT noised the same way. ``tiny-clip`` (random init) at 64 px is
trained contrastively with ``modality_weighting: fixed`` (all 1) and ``adaptive`` (running-loss rule,
power 1), same seeds and config otherwise. Per test modality: accuracy and macro AUC with patient-
bootstrap 95 % CIs over the predictions of all seeds, and the paired difference adaptive − fixed (same
resampled patients). Writes ``OUT/results.json`` and prints a markdown table.

Example::

    PYTHONPATH=src python experiments/modality_adaptive.py --out /tmp/exp_ma --epochs 4 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _cohort_cache(root: Path, name: str, n_patients: int, seed: int, dbt_keep: float, noise: float,
                  size: int) -> Path:
    """A synthetic cohort (DBT subsampled to ``dbt_keep`` of its patients) cached, DBT pixels noised."""

    from mammolens.data.cache import IMAGES_FILE, PreprocessCfg, build_cache, open_cache
    from mammolens.data.synthetic import make_cohort

    cohort, cache = root / name, root / f"{name}_cache"
    if (cache / "cache.json").is_file():
        return cache
    df = make_cohort(cohort, n_patients=n_patients, seed=seed, image_size=(128, 104), dbt_frames=4,
                     density_probs=[0.25] * 4)
    rng = np.random.default_rng(seed)
    dbt = df["modality"] == "DBT"
    dbt_patients = df.loc[dbt, "patient_id"].unique()
    keep = set(rng.permutation(dbt_patients)[: max(1, int(round(dbt_keep * len(dbt_patients))))].tolist())
    df = df[~dbt | df["patient_id"].isin(keep)].reset_index(drop=True)
    df.to_parquet(cohort / "subset.parquet")
    build_cache(cohort / "subset.parquet", cache, PreprocessCfg(size=size), workers=1, progress=False)
    c = open_cache(cache)
    img = np.memmap(cache / IMAGES_FILE, dtype=np.uint16, mode="r+", shape=c.images.shape)
    rows = np.flatnonzero(c.index["modality"].astype(str).to_numpy() == "DBT")
    noisy = img[rows].astype(np.float32) + rng.normal(0, noise * 65535, size=(len(rows), *img.shape[1:]))
    img[rows] = np.clip(noisy, 0, 65535).astype(np.uint16)
    img.flush()
    return cache


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--n-train", type=int, default=60)
    ap.add_argument("--n-test", type=int, default=36)
    ap.add_argument("--dbt-keep", type=float, default=0.3,
                    help="fraction of DBT patients kept in training (about 10 %% of the images)")
    ap.add_argument("--dbt-noise", type=float, default=0.15)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--power", type=float, default=1.0)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)

    import torch

    from mammolens.data.cache import open_cache
    from mammolens.data.dataset import MammoDataset
    from mammolens.models.run import load_run
    from mammolens.study import comparison_table
    from mammolens.train.config import TrainCfg
    from mammolens.train.loop import predict_cache, train

    torch.set_num_threads(2)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_cache = _cohort_cache(root, "train", args.n_train, 0, args.dbt_keep, args.dbt_noise, args.size)
    test_cache = _cohort_cache(root, "test", args.n_test, 1000, 1.0, args.dbt_noise, args.size)
    mods = open_cache(train_cache).index["modality"].value_counts().to_dict()
    test = open_cache(test_cache)
    arms = ["fixed", "adaptive"]
    probs: dict[str, list[np.ndarray]] = {a: [] for a in arms}
    runs = []
    for seed in args.seeds:
        for arm in arms:
            t1 = time.time()
            cfg = TrainCfg(data={"cache": str(train_cache), "val_frac": 0.25}, model="tiny-clip", image_size=args.size,
                           epochs=args.epochs, batch_size=16, lr=1e-3, precision="fp32", workers=0, seed=seed,
                           method={"name": "contrastive", "modality_weighting": {"mode": arm, "power": args.power}},
                           device="cpu", ood=False,
                           out_dir=str(root / f"run_{arm}_s{seed}"), overwrite=True)
            run_dir = train(cfg, progress=False)
            model, task, _ = load_run(run_dir, which="best")
            y = np.asarray(task.encode(test.index[task.label_column]), dtype=np.int64)
            probs[arm].append(predict_cache(model, task, MammoDataset(test, task), batch_size=64))
            last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
            runs.append({"seed": seed, "arm": arm, "seconds": round(time.time() - t1, 1),
                         "modality_weights_last_epoch": last.get("modality_weights")})
            print(json.dumps(runs[-1]), flush=True)

    n = len(args.seeds)
    modality = np.tile(test.index["modality"].astype(str).to_numpy(), n)
    groups = np.tile(test.index["patient_id"].astype(str).to_numpy(), n)
    y_all = np.tile(y, n)
    stacked = {a: np.concatenate(probs[a]) for a in arms}
    sets = []
    for name in ("DM", "s2D", "DBT", "all"):
        sel = np.ones(len(y_all), bool) if name == "all" else modality == name
        sets.append((name, y_all[sel], groups[sel], {a: stacked[a][sel] for a in arms}))
    table = comparison_table(sets, arms, args.n_boot, reference="adaptive")
    lines = ["| test | weighting | accuracy [95% CI] | macro AUC [95% CI] | adaptive − fixed: acc (p) | AUC (p) |",
             "|---|---|---|---|---|---|"]
    for r in table:
        d = "| |" if r["train"] == "adaptive" else (f"| {r['accuracy_diff']:+.3f} [{r['accuracy_diff_lo']:+.3f}, "
                                                      f"{r['accuracy_diff_hi']:+.3f}] (p={r['accuracy_p']:.3f}) | "
                                                      f"{r['macro_auc_diff']:+.3f} [{r['macro_auc_diff_lo']:+.3f}, "
                                                      f"{r['macro_auc_diff_hi']:+.3f}] (p={r['macro_auc_p']:.3f}) |")
        lines.append(f"| {r['test']} | {r['train']} | {r['accuracy']:.3f} [{r['accuracy_lo']:.3f}, {r['accuracy_hi']:.3f}] "
                     f"| {r['macro_auc']:.3f} [{r['macro_auc_lo']:.3f}, {r['macro_auc_hi']:.3f}] {d}")
    md = "\n".join(lines)
    print(md)
    total = time.time() - t0
    print(f"training images per modality {mods}; test images {len(y)}; total {total:.0f}s")
    res = {"args": vars(args), "train_modalities": mods, "runs": runs, "table": table, "markdown": md,
           "seconds_total": total}
    (root / "results.json").write_text(json.dumps(res, indent=2, default=float))
    return res


if __name__ == "__main__":
    main()
