"""mini-MIAS report pretraining (issue 12) and report- vs label-trained localization (issue 13).

Same import, cache and patient-level split as ``experiments/mias_localization.py`` (seed 0, film pairs are
patients; test patients are never seen). Arms, all ``tiny-clip`` random init on CPU:

* ``zeroshot``: random init, no training (method ``zeroshot``);
* ``label``: method ``contrastive`` on task ``abnormality`` (class prompts, normal vs benign/malignant);
* ``report``: method ``report-contrastive`` on the same training films with their annotation reports,
  ``method.terms.prompt: 0`` (labels reach it only through the report text), ``sentence_patch: 1``, mean pooling.

Checkpoints: ``best`` by validation abnormality AUC for every arm (so the report arm's checkpoint choice did
see the 48 validation labels); the ``last`` checkpoints of the label and report arms are scored too.

Part 1 (issue 12), on the test films: abnormality AUC (all test films) and malignancy AUC (benign vs
malignant test films) from the class prompts through each run's text tower (the label arm was trained on
abnormality only: malignancy is zero-shot for it), with patient-bootstrap 95% CIs, patient-clustered DeLong
between arms, zero-shot accuracy (argmax over the prompts), and image→report retrieval Recall@1/5/10 against
the test films' reports (gallery: the distinct report texts; relevant: the film's own report text).
Part 2 (issue 13): ``mias_localization.score_run`` for the label and report runs, paired tests.

Example::

    PYTHONPATH=src python experiments/mias_reports.py --out /tmp/exp_mias_rep --epochs 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mias_localization import MIAS_SRC, format_table, prepare_cache, score_run, split_rows  # noqa: E402

ARMS = ("zeroshot", "label", "report")


def _embed(run_dir, cache, rows, which):
    import torch

    from mammolens.tasks import get_task as resolve_task
    from mammolens.models.run import load_run
    from mammolens.search import embed_cache

    run = load_run(run_dir, which=which)
    img = embed_cache(run.model, cache, rows, 64, "cpu")
    out = {"img": img}
    with torch.no_grad():
        for t in ("abnormality", "malignancy"):
            out[t] = run.model.class_embeddings(resolve_task(t)).float().cpu().numpy()
        texts = cache.index["report"].astype(str).to_numpy()[rows]
        uniq = sorted(set(texts))
        out["reports"] = (np.asarray(uniq), np.concatenate(
            [run.model.encode_text(uniq[i:i + 32]).float().cpu().numpy() for i in range(0, len(uniq), 32)]))
    out["texts"] = texts
    return out


def _last_as_best(run_dir: Path) -> Path:
    """A copy of a run folder whose ``best`` checkpoint is the run's ``last`` one (``localization_eval`` loads
    ``best``)."""
    import shutil

    run_dir = Path(run_dir)
    out = run_dir.parent / f"{run_dir.name}_last"
    if not (out / "checkpoints" / "best.pt").is_file():
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        for f in run_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, out / f.name)
        shutil.copy2(run_dir / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt")
    return out


def part1(runs: dict, cache, index, rows, n_boot: int) -> tuple[str, dict]:
    from mammolens.tasks import get_task as resolve_task
    from mammolens.evaluation.retrieval import retrieval_metrics
    from mammolens.evaluation.stats import bootstrap_ci, delong_test
    from sklearn.metrics import roc_auc_score

    test = rows["test"]
    groups = index["patient_id"].astype(str).to_numpy()[test]
    scores, res = {}, {}
    for name, (run_dir, which) in runs.items():
        e = _embed(run_dir, cache, test, which)
        r = {}
        for t in ("abnormality", "malignancy"):
            task = resolve_task(t)
            y = np.asarray(task.encode(index[task.label_column]), dtype=np.int64)[test]
            keep = y >= 0
            sim = e["img"] @ e[t].T  # [N, K]
            s = sim[:, 1] - sim[:, 0]
            scores[(name, t)] = (y[keep], s[keep], groups[keep])
            auc = bootstrap_ci(lambda yy, ss: roc_auc_score(yy, ss) if len(set(yy)) == 2 else np.nan,
                               y[keep], s[keep], groups=groups[keep], n_boot=n_boot)
            acc = bootstrap_ci(lambda yy, ss: float(np.mean((ss > 0) == yy)), y[keep], s[keep],
                               groups=groups[keep], n_boot=n_boot)
            r[t] = {"auc": auc, "acc": acc, "n": int(keep.sum()), "n_pos": int(y[keep].sum())}
        uniq, txt = e["reports"]
        rel = e["texts"][:, None] == uniq[None, :]
        r["retrieval"] = retrieval_metrics(rel, e["img"] @ txt.T, ks=(1, 5, 10))
        r["gallery"] = int(len(uniq))
        res[name] = r
    lines = ["| arm | abnormality AUC | abn. accuracy | malignancy AUC | mal. accuracy | R@1 | R@5 | R@10 | "
             "median rank |", "|" + "---|" * 9]
    f = lambda m: f"{m['estimate']:.3f} [{m['lo']:.2f}, {m['hi']:.2f}]"  # noqa: E731
    for name, r in res.items():
        rt = r["retrieval"]
        lines.append(f"| {name} | {f(r['abnormality']['auc'])} | {f(r['abnormality']['acc'])} | "
                     f"{f(r['malignancy']['auc'])} | {f(r['malignancy']['acc'])} | {rt['recall@1']:.3f} | "
                     f"{rt['recall@5']:.3f} | {rt['recall@10']:.3f} | {rt.get('median_rank', float('nan')):.0f} |")
    lines += ["", "| DeLong (patient-clustered) | task | AUC a | AUC b | diff | p |", "|" + "---|" * 6]
    names = [n for n in res if "last ckpt" not in n]  # the main arms (best checkpoints)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for t in ("abnormality", "malignancy"):
                y, sa, g = scores[(a, t)]
                _, sb, _ = scores[(b, t)]
                d = delong_test(y, sa, sb, groups=g)
                lines.append(f"| {a} vs {b} | {t} | {d['auc_a']:.3f} | {d['auc_b']:.3f} | {d['auc_a'] - d['auc_b']:+.3f} "
                             f"| {d['p']:.3g} |")
    lines.append("")
    lines.append(f"Retrieval gallery: {res[names[0]]['gallery']} distinct report texts of the {len(test)} test films "
                 f"(chance Recall@1 about {1 / res[names[0]]['gallery']:.3f}).")
    return "\n".join(lines), res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--src", default=MIAS_SRC)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="training seed (the split is always seed 0)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-localization", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from mammolens.train.config import TrainCfg
    from mammolens.train.loop import train

    torch.set_num_threads(2)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cache, index, rows = split_rows(prepare_cache(root, args.src, args.size, args.workers))
    base = dict(data={"cache": str(root / "cache")}, task="abnormality", model="tiny-clip", image_size=args.size,
                batch_size=16, lr=1e-3, precision="fp32", workers=0, device="cpu", overwrite=True,
                epochs=args.epochs, seed=args.seed)
    extra = {"zeroshot": {"method": "zeroshot"}, "label": {"method": "contrastive"},
             "report": {"method": {"name": "report-contrastive", "terms": {"prompt": 0.0, "sentence_patch": 1.0},
                                   "pooling": "mean"}}}
    dirs, times = {}, {}
    for arm in ARMS:
        out_dir = root / f"run_{arm}_s{args.seed}"
        t = time.time()
        if (out_dir / "checkpoints" / "best.pt").is_file():
            dirs[arm] = out_dir
        else:
            dirs[arm] = train(TrainCfg(**base, **extra[arm], out_dir=str(out_dir)), rows=(rows["train"], rows["val"]))
        times[arm] = round(time.time() - t, 1)
        print(f"{arm}: {times[arm]} s", flush=True)
    runs = {"random init (zeroshot)": (dirs["zeroshot"], "best"), "label-prompt (contrastive)": (dirs["label"], "best"),
            "report (report-contrastive)": (dirs["report"], "best"),
            "label-prompt (contrastive), last ckpt": (dirs["label"], "last"),
            "report (report-contrastive), last ckpt": (dirs["report"], "last")}
    t1 = time.time()
    table1, res = part1(runs, cache, index, rows, args.n_boot)
    print(table1, flush=True)
    times["part1_eval"] = round(time.time() - t1, 1)
    table2 = ""
    if not args.no_localization:
        t2 = time.time()
        parts = []
        for which in ("best", "last"):
            locs = {}
            for name, arm in (("label-trained (abnormality prompts)", "label"), ("report-trained", "report")):
                run_dir = dirs[arm] if which == "best" else _last_as_best(dirs[arm])
                locs[f"{name}, {which}"], _, _ = score_run(run_dir, cache, index, rows, n_boot=args.n_boot)
            parts.append(f"Checkpoint: {which}\n\n" + format_table(locs))
        table2 = "\n\n".join(parts)
        print(table2)
        times["part2_eval"] = round(time.time() - t2, 1)
    sizes = {s: int(len(r)) for s, r in rows.items()}
    test = index.iloc[rows["test"]]
    info = {"split": sizes, "test_patients": int(test["patient_id"].nunique()),
            "test_pathology": test["pathology"].value_counts().to_dict(), "times_s": times,
            "total_s": round(time.time() - t0, 1), "load": os.getloadavg()}
    print(json.dumps(info))
    (root / f"results_s{args.seed}.json").write_text(json.dumps(
        {"args": vars(args), "info": info, "table1": table1, "table2": table2,
         "part1": json.loads(json.dumps(res, default=float))}, indent=2))
    return info


if __name__ == "__main__":
    main()
