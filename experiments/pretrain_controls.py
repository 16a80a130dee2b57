"""Positive controls of issue 23: does self-supervised pretraining (``method: pretrain``) beat random init on
frozen features, and does a distilled student (``method: distill``) keep the teacher's features when labels are few?

On the synthetic cohort (or, with ``--mias``, on mini-MIAS: all 322 films pretrained on without labels), for each
seed:

1. ``random``: tiny-clip's image tower at the seed's initialisation (the starting point of the pretrain run);
2. ``pretrained``: the same tower after ``method: pretrain`` (DINO + iBOT + KoLeo, Sinkhorn-Knopp), last checkpoint;
3. ``shuffled``: the pretrained features probed with labels permuted across patients (must be at chance);
4. ``distilled``: a fresh tiny-clip student trained with ``method: distill`` from the pretrained teacher
   (cosine + similarity KL) plus cross-entropy on ``--label-fraction`` of the training patients;
5. ``labels-only``: the same student without the distillation terms.

Every tower's frozen embeddings of every image are probed with a patient-grouped 5-fold logistic regression
(``linear``) and a leave-patient-out weighted kNN (``knn``): density macro AUC and lesion-presence AUC (synthetic)
or MIAS background-tissue macro AUC (mini-MIAS). Differences against ``random`` (and distilled vs labels-only) get
a paired patient bootstrap (``evaluation.stats.paired_bootstrap``) per seed.

Example (minutes on 2 shared cores)::

    nice -n 10 python experiments/pretrain_controls.py --out /tmp/exp_pretrain --seeds 0 1 2 --epochs 15
    nice -n 10 python experiments/pretrain_controls.py --out /tmp/exp_pretrain_mias --mias --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

MIAS_SRC = "/work/shared/data/mini-mias"


def _cohort(out: Path, n_patients: int, size: int, mias: bool):
    from mammolens.data.cache import PreprocessCfg, build_cache, open_cache

    cache = out / "cache"
    if not (cache / "cache.json").is_file():
        if mias:
            from mammolens.data.adapters import import_dataset

            manifest = import_dataset("mias", MIAS_SRC, out / "data")
        else:
            from mammolens.data.synthetic import make_cohort

            make_cohort(out / "cohort", n_patients=n_patients, seed=0, image_size=(192, 160), dbt_frames=4)
            manifest = out / "cohort" / "manifest.parquet"
        build_cache(manifest, cache, PreprocessCfg(size=size), workers=0, progress=False)
    return open_cache(cache)


def _targets(cache, mias: bool) -> dict[str, np.ndarray]:
    from mammolens.tasks import get_task

    index = cache.index
    if mias:
        mias = get_task("mias")
        return {"mias": np.asarray(mias.encode(index[mias.label_column]))}
    density = np.asarray(get_task("density").encode(index["density"]))
    lesion = (index["pathology"].astype(str).str.lower() != "normal").astype(int).to_numpy()
    return {"density": density, "lesion": lesion}


def _embed(clip, cache, rows: np.ndarray) -> np.ndarray:
    from mammolens.pipeline import encode as _enc

    clip.eval()
    batches = (np.stack([cache.get(int(r)) for r in rows[i:i + 64]]) for i in range(0, len(rows), 64))
    return _enc.encode(clip, batches, ("embedding",), device="cpu")["embedding"]


def _probe_linear(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    k = int(y.max()) + 1
    probs = np.full((len(y), k), 1.0 / k)
    for tr, te in GroupKFold(n_splits=5).split(x, y, groups):
        if len(np.unique(y[tr])) < 2:
            continue
        sc = StandardScaler().fit(x[tr])
        clf = LogisticRegression(max_iter=2000, C=0.5, random_state=seed).fit(sc.transform(x[tr]), y[tr])
        p = clf.predict_proba(sc.transform(x[te]))
        probs[np.ix_(te, clf.classes_)] = p
        probs[te] /= probs[te].sum(1, keepdims=True)
    return probs


def _probe_knn(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    import torch

    from mammolens.train.methods.pretrain import knn_probe

    return knn_probe(torch.from_numpy(x), y, groups, int(y.max()) + 1, k=10)


def _auc(y, p) -> float:
    from mammolens.evaluation.metrics import macro_auc

    return float(macro_auc(y, p, warn=False))


def _train(cfg: dict):
    from mammolens.train import train
    from mammolens.train.config import cfg_from_dict

    return train(cfg_from_dict(cfg), progress=False)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--mias", action="store_true", help="mini-MIAS instead of the synthetic cohort")
    ap.add_argument("--patients", type=int, default=32, help="synthetic patients (4 images each)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=15, help="pretraining epochs")
    ap.add_argument("--distill-epochs", type=int, default=15)
    ap.add_argument("--label-fraction", type=float, default=0.1)
    ap.add_argument("--size", type=int, default=96, help="cache size (crops are cut at this resolution)")
    ap.add_argument("--model-size", type=int, default=64)
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--local-crops", type=int, default=2)
    ap.add_argument("--merge", nargs="+", default=None, help="only merge the results.json of these --out folders "
                    "(seeds run as separate processes) into --out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        parts = [json.loads((Path(m) / "results.json").read_text()) for m in args.merge]
        merged = dict(parts[0], seeds={k: v for p in parts for k, v in p["seeds"].items()},
                      load_before=parts[0]["load_before"], load_after=parts[-1]["load_after"],
                      seconds=sum(p["seconds"] for p in parts))
        (out / "results.json").write_text(json.dumps(merged, indent=2, default=float))
        print(_table(merged))
        return merged
    import torch

    from mammolens.evaluation.stats import paired_bootstrap
    from mammolens.models import create_model
    from mammolens.models.run import load_run

    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    cache = _cohort(out, args.patients, args.size, args.mias)
    task = "mias" if args.mias else "density"
    rows = np.flatnonzero((cache.index["status"] == "done").to_numpy())
    targets = {k: v[rows] for k, v in _targets(cache, args.mias).items()}
    groups = cache.index["patient_id"].astype(str).to_numpy()[rows]
    base = dict(data=dict(cache=str(cache.path), val_frac=0.2), task=task, model="tiny-clip",
                image_size=args.model_size, batch_size=16, weight_decay=0.04, warmup_steps=5, precision="fp32",
                augment=False, workers=0, device="cpu", ood=False, overwrite=True, probe_steps=100)
    pre = dict(out_dim=1024, patch_out_dim=1024, hidden_dim=256, bottleneck_dim=64, momentum=0.99, local_crops=args.local_crops,
               probe_max_images=256)
    results: dict = {"args": vars(args), "load_before": os.getloadavg(), "seeds": {}}
    t_all = time.perf_counter()
    for seed in args.seeds:
        towers: dict = {}
        torch.manual_seed(seed)  # the loop's _seed_everything(seed) before create_model: the same initialisation
        import random

        random.seed(seed)
        np.random.seed(seed)
        towers["random"] = create_model("tiny-clip", image_size=args.model_size)
        t0 = time.perf_counter()
        run = _train(dict(base, seed=seed, epochs=args.epochs, lr=5e-4, out_dir=str(out / f"pretrain_s{seed}"),
                          method=dict(name="pretrain", pretrain=pre)))
        pre_s = time.perf_counter() - t0
        lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        towers["pretrained"] = load_run(run, which="last").model.clip
        student = dict(base, seed=seed + 100, epochs=args.distill_epochs, lr=1e-3)
        dist = dict(teacher=f"run:{run}", teacher_which="last", label_fraction=args.label_fraction,
                    tasks=[] if args.mias else ["dense"])
        d_run = _train(dict(student, out_dir=str(out / f"distill_s{seed}"),
                            method=dict(name="distill", terms=dict(supervised=1.0, cosine=1.0, similarity=1.0), distill=dist)))
        towers["distilled"] = load_run(d_run, which="last").model.clip
        l_run = _train(dict(student, out_dir=str(out / f"labels_s{seed}"),
                            method=dict(name="distill", terms=dict(supervised=1.0, cosine=0.0, similarity=0.0), distill=dist)))
        towers["labels-only"] = load_run(l_run, which="last").model.clip
        feats = {name: _embed(clip, cache, rows) for name, clip in towers.items()}
        rng = np.random.default_rng(seed)
        seed_res: dict = {"pretrain_seconds": round(pre_s, 1),
                          "pretrain_images_per_s": float(np.mean([ln["images_per_s"] for ln in lines])),
                          "pretrain_last": {k: lines[-1].get(k) for k in ("train_loss", "effective_rank", "knn_macro_auc",
                                                                           "train_agreement", "collapse")},
                          "probes": {}, "paired": {}}
        for tname, y in targets.items():
            y_shuf = rng.permutation(y)  # the image-label link broken; the probes' patient grouping kept
            probs = {}
            for probe in ("linear", "knn"):
                for name, x in feats.items():
                    p = _probe_linear(x, y, groups, seed) if probe == "linear" else _probe_knn(x, y, groups)
                    probs[(name, probe)] = p
                    seed_res["probes"][f"{tname}/{probe}/{name}"] = _auc(y, p)
                ps = (_probe_linear(feats["pretrained"], y_shuf, groups, seed) if probe == "linear"
                      else _probe_knn(feats["pretrained"], y_shuf, groups))
                seed_res["probes"][f"{tname}/{probe}/shuffled"] = _auc(y_shuf, ps)
                for a, b in (("pretrained", "random"), ("distilled", "labels-only"), ("distilled", "pretrained")):
                    seed_res["paired"][f"{tname}/{probe}/{a}-{b}"] = paired_bootstrap(
                        _auc, y, probs[(a, probe)], probs[(b, probe)], groups, n_boot=args.n_boot, seed=seed)
        results["seeds"][seed] = seed_res
        print(json.dumps({"seed": seed, **seed_res["probes"]}, indent=1), flush=True)
    results["seconds"] = round(time.perf_counter() - t_all, 1)
    results["load_after"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print(_table(results))
    return results


def _table(results: dict) -> str:
    seeds = list(results["seeds"].values())
    keys = sorted({k.rsplit("/", 1)[0] for s in seeds for k in s["probes"]})
    names = ["random", "pretrained", "shuffled", "distilled", "labels-only"]
    lines = ["| target / probe | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for k in keys:
        cells = []
        for n in names:
            v = np.array([s["probes"][f"{k}/{n}"] for s in seeds])
            cells.append(f"{v.mean():.3f} ± {v.std():.3f}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| paired difference (per seed: diff [95% CI], p) | " + " | ".join(
        f"seed {s}" for s in results["seeds"]) + " |")
    lines.append("|---" * (len(seeds) + 1) + "|")
    for k in sorted(seeds[0]["paired"]):
        cells = [f"{s['paired'][k]['diff']:+.3f} [{s['paired'][k]['lo']:+.2f}, {s['paired'][k]['hi']:+.2f}], "
                 f"p={s['paired'][k]['p']:.3f}" for s in seeds]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    thr = [s["pretrain_images_per_s"] for s in seeds]
    lines.append("")
    crops = results["args"]["local_crops"]
    lines.append(f"pretraining throughput: {np.mean(thr):.1f} images/s (each 2 global + {crops} local crops), load "
                 f"{results['load_before']} -> {results['load_after']}, total {results['seconds']} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
