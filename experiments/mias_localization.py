"""mini-MIAS zero-shot localization (issue 13): text-patch maps, FActOR maps and GradCAM vs lesion circles.

Imports mini-MIAS (lesion centre and radius from Info.txt, via the ``mias`` adapter), preprocesses it,
makes one patient-level train/val/test split (seed 0, stratified by the MIAS grade), trains ``tiny-clip``
(random init) contrastively on the F/G/D task (label-trained; ``--method report-contrastive`` trains on the
annotation reports instead, ``--run DIR`` scores an existing run on the same split), fits the FActOR channel map on
the *training* rows only, and scores the abnormal test images that
have a lesion circle: pointing game, Dice, IoU, hit (all inside the breast mask, Otsu threshold) with
patient-bootstrap 95% CIs, and paired t / Wilcoxon tests between map kinds.

Circles are coarse outlines and a random-init model trained on 322 films is weak: a pipeline check.

Example::

    PYTHONPATH=src python experiments/mias_localization.py --out /tmp/exp_mias_loc --epochs 15
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

MIAS_SRC = "/work/shared/data/mini-mias"
METRICS = ("pointing_game", "dice", "iou", "hit")


def prepare_cache(root: Path, src: str, size: int, workers: int) -> Path:
    """Import mini-MIAS into ``root/manifest`` and preprocess it into ``root/cache`` (once).

    ``study_id`` is set to the film id: an exam is one film with its own annotation report. (The adapter's
    exam is the film pair, and report training keeps one report per exam, so the second film's report
    would be lost.) The patient (``patient_id``, the pair) and hence the split are unchanged.
    """
    import pandas as pd

    from mammolens.data.adapters import import_dataset
    from mammolens.data.cache import PreprocessCfg, build_cache

    cache_dir = root / "cache"
    if not (cache_dir / "cache.json").is_file():
        import_dataset("mias", src, out=root / "manifest")
        path = root / "manifest" / "manifest.parquet"
        df = pd.read_parquet(path)
        df["study_id"] = df["image_id"].astype(str)
        df.to_parquet(path, index=False)
        build_cache(path, cache_dir, PreprocessCfg(size=size), workers=workers, progress=False)
    return cache_dir


def split_rows(cache_dir: Path):
    """The cache, its index and the patient-level split (seed 0, stratified by the MIAS grade):
    ``(cache, index, {"train"|"val"|"test": row indices})``."""
    from mammolens.data.cache import open_cache
    from mammolens.data.splits import train_val_test_split

    cache = open_cache(cache_dir)
    index = cache.index.reset_index(drop=True)
    labelled = index["mias_density"].astype(str).isin(["F", "G", "D"]).to_numpy().copy()
    if "status" in index.columns:
        labelled &= (index["status"].astype(str) == "done").to_numpy()
    split = train_val_test_split(index, val=0.15, test=0.25, label_col="mias_density", seed=0).to_numpy()
    return cache, index, {s: np.flatnonzero(labelled & (split == s)) for s in ("train", "val", "test")}


def score_run(run_dir, cache, index, rows: dict, threshold: str = "otsu", n_boot: int = 1000, gallery_dir=None):
    """Localization scores of one run on the abnormal test images with a lesion circle (FActOR fitted on
    the training rows only). Returns ``(localization_eval result, factor, test frame)``."""
    import torch

    from mammolens.explain import FactorAttribution
    from mammolens.models.run import load_run
    from mammolens.workflows import DEFAULT_FINDINGS, localization_eval

    texts = list(DEFAULT_FINDINGS)
    model = load_run(run_dir).model.eval()
    imgs = cache.images[rows["train"]].astype(np.float32) / 65535.0
    factor = FactorAttribution(model).fit(
        (torch.from_numpy(imgs[i:i + 32])[:, None] for i in range(0, len(imgs), 32)), texts)  # training rows only
    test = index.iloc[rows["test"]]
    test = test[test["lesion_r"].notna()]
    loc = localization_eval(run_dir, test, texts=texts, kinds=("text", "factor", "gradcam"), factor=factor,
                            threshold=threshold, n_boot=n_boot, gallery_dir=gallery_dir)
    return loc, factor, test


def format_table(locs: dict) -> str:
    """Markdown: per run and map kind the four metrics with CIs; paired tests between kinds within a run and,
    with two runs, between the runs for each kind (same images, joined on the manifest row)."""
    from mammolens.evaluation.localization import paired_tests

    lines = ["| run | map | n | pointing game | Dice | IoU | hit (5% side) |", "|" + "---|" * 7]
    for name, loc in locs.items():
        for kind, s in loc["summary"].items():
            cells = [f"{s[m]['estimate']:.3f} [{s[m]['lo']:.2f}, {s[m]['hi']:.2f}]" for m in METRICS]
            lines.append(f"| {name} | {kind} | {s['dice']['n']} | " + " | ".join(cells) + " |")
    lines += ["", "| paired comparison | metric | mean diff | paired t p | Wilcoxon p |", "|" + "---|" * 5]
    for name, loc in locs.items():
        for c, d in loc["paired"].items():
            for m in METRICS:
                t = d[m]
                lines.append(f"| {name}: {c} | {m} | {t['mean_diff']:+.3f} | {t['t_p']:.3g} | {t['wilcoxon_p']:.3g} |")
    names = list(locs)
    for a_i, a in enumerate(names):
        for b in names[a_i + 1:]:
            pa, pb = locs[a]["per_image"], locs[b]["per_image"]
            for kind in locs[a]["summary"]:
                xa = pa[pa.kind == kind].set_index("row")
                xb = pb[pb.kind == kind].set_index("row").reindex(xa.index)
                for m in METRICS:
                    t = paired_tests(xa[m].to_numpy(), xb[m].to_numpy())
                    lines.append(f"| {kind}: {a} vs {b} | {m} | {t['mean_diff']:+.3f} | {t['t_p']:.3g} | "
                                 f"{t['wilcoxon_p']:.3g} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="work folder (manifest, cache, run, results.json)")
    ap.add_argument("--src", default=MIAS_SRC)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threshold", default="otsu", choices=["otsu", "topk", "fixed"])
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--method", default="contrastive", choices=["contrastive", "report-contrastive"],
                    help="label-trained (class prompts) or report-trained (manifest `report`, prompt term 0)")
    ap.add_argument("--task", default="mias", help="task of the run (labels for contrastive, prompts for scoring)")
    ap.add_argument("--run", default=None, help="score this existing run folder (trained on the same split) instead")
    ap.add_argument("--name", default=None, help="run name in the table")
    args = ap.parse_args(argv)

    import torch

    from mammolens.train.config import TrainCfg
    from mammolens.train.loop import train

    torch.set_num_threads(2)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cache_dir = prepare_cache(root, args.src, args.size, args.workers)
    cache, index, rows = split_rows(cache_dir)

    t_train = 0.0
    if args.run:
        run_dir = Path(args.run)
    else:
        extra = ({"method": {"name": "report-contrastive", "terms": {"prompt": 0.0, "sentence_patch": 1.0},
                             "pooling": "mean"}} if args.method == "report-contrastive" else {"method": "contrastive"})
        cfg = TrainCfg(data={"cache": str(cache_dir)}, task=args.task, model="tiny-clip", image_size=args.size,
                       batch_size=16, lr=1e-3, precision="fp32", workers=0, device="cpu", overwrite=True,
                       epochs=args.epochs, seed=0, out_dir=str(root / f"run_{args.method}"), **extra)
        run_dir = train(cfg, rows=(rows["train"], rows["val"]))
        t_train = time.time() - t0
    name = args.name or ("report-trained" if args.method == "report-contrastive" else "label-trained") + f" {args.method}"
    loc, factor, test = score_run(run_dir, cache, index, rows, threshold=args.threshold, n_boot=args.n_boot,
                                  gallery_dir=root / "gallery")
    loc["per_image"].to_csv(root / "localization.csv", index=False)
    table = format_table({name: loc})
    print(table)
    info = {"run": str(run_dir), "test_patients": int(test["patient_id"].nunique()), "test_lesion_images": int(len(test)),
            "train_images": int(len(rows["train"])), "factor_r2": float(factor.r2[0]),
            "factor_channels": int((factor.coef[0] != 0).sum()), "train_s": round(t_train, 1),
            "total_s": round(time.time() - t0, 1)}
    print(json.dumps(info))
    (root / "results.json").write_text(json.dumps({"args": vars(args), "info": info, "table": table}, indent=2))
    return {"table": table, **info}


if __name__ == "__main__":
    main()
