"""Positive and shuffled controls of the dense heads on the synthetic cohort (exact lesion masks).

Segmentation and centre-heat-map detection heads are fitted on frozen patch tokens of a backbone (default: a
random-init tiny-clip, i.e. what the tokens alone carry) on 3/4 of the patients and scored on the rest:

- positive control: Dice / FROC / AP@0.5 on held-out patients;
- shuffled control: the same heads fitted with the training masks permuted across images (must fail);
- chance: the training masks' mean as a fixed prediction (segmentation), and boxes at random breast cells
  with random scores (detection).

Usage: ``nice -n 10 python experiments/dense_controls.py [--patients 40] [--size 128] [--steps 150]
[--run RUN]``; writes ``experiments/results/dense_controls.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/tmp/mammolens-dense-controls")
    ap.add_argument("--patients", type=int, default=40)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--run", default=None, help="a run folder (default: a random-init tiny-clip zero-shot run)")
    ap.add_argument("--out", default="experiments/results/dense_controls.json")
    args = ap.parse_args()

    from mammolens.data.cache import PreprocessCfg, build_cache, open_cache
    from mammolens.data.synthetic import make_cohort
    from mammolens.evaluation import dense
    from mammolens.pipeline.features import cache_features
    from mammolens.suite import resolve_backbone
    from mammolens.train.methods.detect import detect, fit_centre_head
    from mammolens.train.methods.segment import fit_segmentation_head, predict_masks

    t0 = time.perf_counter()
    root = Path(args.root)
    if not (root / "cache" / "cache.json").is_file():
        make_cohort(root, n_patients=args.patients, seed=0, image_size=(256, 208), dbt_frames=2, lesion_prob=0.6,
                    modalities=("DM", "s2D"))
        build_cache(root / "manifest.parquet", root / "cache", PreprocessCfg(size=args.size), workers=0, progress=False)
    cache = open_cache(root / "cache")
    run = Path(args.run) if args.run else resolve_backbone("random:tiny-clip", root / "cache", root)
    f = cache_features(run, cache, tokens=True, root=root / "features")
    tok = np.asarray(f.tokens, np.float32)
    tm = dense.tile_masks(cache, f.rows)
    pid = cache.index["patient_id"].to_numpy()[f.rows]
    test = np.isin(pid, np.unique(pid)[::4])
    tr, te = ~test & tm.has_truth, test & tm.has_truth
    les = tm.masks.reshape(len(tok), -1).any(1)
    rng = np.random.default_rng(0)
    S = int(cache.cfg.size)
    res: dict = {"n_train": int(tr.sum()), "n_test": int(te.sum()), "n_test_lesions": int((te & les).sum()),
                 "mask_kinds": tm.mask_kinds, "size": S, "steps": args.steps, "backbone": run.name}

    def seg_dice(masks_train):
        head, _ = fit_segmentation_head(tok[tr], masks_train, steps=args.steps)
        prob = predict_masks(head, tok[te & les], S)
        return float(np.mean([dense.segmentation_scores(t, p >= head.threshold)["dice"]
                              for t, p in zip(tm.masks[te & les], prob)]))

    res["seg_dice"] = seg_dice(tm.masks[tr])
    res["seg_dice_shuffled"] = seg_dice(tm.masks[tr][rng.permutation(int(tr.sum()))])
    prior = tm.masks[tr].mean(0)
    res["seg_dice_prior"] = float(max(np.mean([dense.segmentation_scores(t, prior >= thr)["dice"]
                                               for t in tm.masks[te & les]]) for thr in (prior.max() / 4, prior.max() / 2)))
    boxes = [[dense.lesion_box(m)] if m.any() else [] for m in tm.masks]
    gt = [boxes[i] for i in np.flatnonzero(te)]

    def det(boxes_train):
        head, _ = fit_centre_head(tok[tr], boxes_train, S, steps=args.steps)
        d = detect(head, tok[te], S)
        fr = dense.froc(gt, d)
        return {"froc": fr["sensitivity"], "froc_mean": fr["mean_sensitivity"], "ap50": dense.average_precision(gt, d)}

    train_boxes = [boxes[i] for i in np.flatnonzero(tr)]
    res["det"] = det(train_boxes)
    res["det_shuffled"] = det([train_boxes[i] for i in rng.permutation(len(train_boxes))])
    rand = []
    for _ in range(int(te.sum())):  # chance: 10 boxes of the mean lesion size at random places, random scores
        w = np.mean([b[0][2] - b[0][0] for b in train_boxes if b])
        xy = rng.uniform(0, S - w, (10, 2))
        rand.append([(x, y, x + w, y + w, float(s)) for (x, y), s in zip(xy, rng.random(10))])
    fr = dense.froc(gt, rand)
    res["det_chance"] = {"froc": fr["sensitivity"], "froc_mean": fr["mean_sensitivity"],
                         "ap50": dense.average_precision(gt, rand)}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["load"] = open("/proc/loadavg").read().split()[:3]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
