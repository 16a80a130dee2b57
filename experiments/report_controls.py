"""Positive and shuffled controls of report learning (issue 22), on the synthetic cohort.

The cohort's lesions have a known side, place and size and its reports are written from them, so the
answers are known. Arms (all ``report-contrastive`` unless said, same split, same seed):

* ``report``: the true reports;
* ``shuffled``: every exam gets another exam's report (retrieval must fall to chance);
* ``sides``: in a random half of the exams "left" and "right" are swapped in the report (side alignment
  must fall to 0.5);
* ``label``: ``contrastive`` on the task ``abnormality`` (class prompts; its GradCAM is the localization
  baseline).

Scores on the test patients (never trained on), always against the *true* reports:

* side alignment: exams with one lesion; the lesion sentence ("... mass in the left breast") scores
  higher (cosine with the breast's mean view embedding) on the lesion breast than on the other breast,
  by more than the other breast's normal sentence does (so that an image-only bias, a bright lesion that
  raises every text's score, cancels; ``side_alignment_raw`` is the plain comparison). The cache flips
  every image to one orientation, so the side can only be read through the lesion the sentence describes;
* retrieval: exam (mean of its views) → report (mean of its sentences, as in training), Recall@5 and
  median rank, relevant = the exam's own report text (tie-aware, ``evaluation.retrieval``); chance is the
  expected Recall@5 of a random order;
* localization: ``workflows.localization_eval`` of the lesion views with the sentence "a mass in the
  <side> breast": text-to-patch map (report arms) and GradCAM (label arm), pointing game and Dice; chance
  = lesion area / breast area; paired test report-text vs label-GradCAM clustered by patient;
* zero-shot findings: abnormality AUC (``abnormality`` prompts) and lesion type AUC (spiculated with
  calcifications vs circumscribed; benign vs malignant lesions) from prompts alone.

CIs: patient bootstrap (one exam per patient). Example (what RESULTS.md reports)::

    nice -n 10 env PYTHONPATH=src python experiments/report_controls.py --out /tmp/rc --seeds 0 1 2

``experiments/make_results.py`` writes ``experiments/data/report_controls/results.json`` into RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT_JSON = HERE / "data" / "report_controls" / "results.json"
ARMS = ("report", "shuffled", "sides", "label")
COLUMN = {"report": "report", "shuffled": "report_shuffled", "sides": "report_sides", "label": "report"}


def swap_sides(text: str) -> str:
    """"left" <-> "right" (any case) in a report."""
    table = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}
    return re.sub(r"\b(left|right|Left|Right|LEFT|RIGHT)\b", lambda m: table[m.group(1)], text)


def make_data(root: Path, n_patients: int, image_size: int, cache_size: int, seed: int = 0,
              lesion_radius=(0.08, 0.12), lesion_prob: float = 0.5) -> Path:
    """The cohort (DM only, no report noise), the control report columns, and its cache (once)."""
    from mammolens.data.cache import PreprocessCfg, build_cache
    from mammolens.data.manifest import write_manifest
    from mammolens.data.synthetic import make_cohort

    cache = root / "cache"
    if (cache / "cache.json").is_file():
        return cache
    df = make_cohort(root, n_patients=n_patients, seed=seed, modalities=("DM",),
                     image_size=(image_size, int(image_size * 0.8)), compress_fraction=0.0, processing_fraction=0.0,
                     lesion_prob=lesion_prob, report_noise=0.0, lesion_radius=tuple(lesion_radius))
    rng = np.random.default_rng(1000 + seed)
    studies = df["study_id"].drop_duplicates().to_numpy()
    report = df.groupby("study_id")["report"].first()
    perm = dict(zip(studies, rng.permutation(studies)))
    df["report_shuffled"] = df["study_id"].map(lambda s: report[perm[s]])
    swap = dict(zip(studies, rng.random(len(studies)) < 0.5))
    df["report_sides"] = [swap_sides(t) if swap[s] else t for t, s in zip(df["report"], df["study_id"])]
    df["image_path"] = [str((root / p).resolve()) for p in df["image_path"]]
    write_manifest(df, root / "manifest.parquet")
    build_cache(root / "manifest.parquet", cache, PreprocessCfg(size=cache_size), workers=0, progress=False)
    return cache


def split(cache_dir: Path, test_frac: float = 0.3, seed: int = 0):
    """Patient-level split: ``(index, train rows, test rows)``."""
    from mammolens.data.cache import open_cache

    index = open_cache(cache_dir).index
    patients = np.array(sorted(index["patient_id"].unique()))
    rng = np.random.default_rng(seed)
    test_p = set(rng.choice(patients, int(round(test_frac * len(patients))), replace=False))
    is_test = index["patient_id"].isin(test_p).to_numpy()
    return index, np.flatnonzero(~is_test), np.flatnonzero(is_test)


def train_arm(arm: str, cache_dir: Path, out: Path, train_rows, seed: int, epochs: int, model: str, size: int,
              batch_size: int = 4, lr: float = 2e-3) -> Path:
    from mammolens.train import train
    from mammolens.train.config import cfg_from_dict

    run = out / f"{arm}_s{seed}"
    if (run / "checkpoints" / "last.pt").is_file():
        return run
    method = ({"name": "contrastive"} if arm == "label" else {"name": "report-contrastive"})
    cfg = cfg_from_dict(dict(
        data=dict(cache=str(cache_dir), val_frac=0.0, report_column=COLUMN[arm]), task="abnormality", model=model,
        image_size=size, method=method, epochs=epochs, batch_size=batch_size if arm != "label" else 4 * batch_size,
        lr=lr, weight_decay=0.0, warmup_steps=2, precision="fp32", augment=False, workers=0, seed=seed,
        out_dir=str(run), device="cpu", ood=False))
    return train(cfg, rows=(np.asarray(train_rows), np.zeros(0, dtype=np.int64)), progress=False)


def _chance_recall(relevant: np.ndarray, k: int) -> float:
    """Expected Recall@k of a uniformly random order: 1 - C(N - r, k) / C(N, k), averaged over queries."""
    from math import comb

    n = relevant.shape[1]
    return float(np.mean([1 - comb(n - int(r), k) / comb(n, k) for r in relevant.sum(1) if r > 0]))


def score(run: Path, index, test_rows, n_boot: int = 500, localize: bool = True) -> dict:
    """Every control metric of one run on the test rows (see the module docstring)."""
    import torch
    from sklearn.metrics import roc_auc_score

    from mammolens.data.cache import open_cache
    from mammolens.data.dataset import exam_sentences
    from mammolens.evaluation.localization import mean_with_ci
    from mammolens.evaluation.retrieval import rank_statistics
    from mammolens.models.run import load_run
    from mammolens.tasks import get_task
    from mammolens.train.methods.report_contrastive import encode_report

    cache = open_cache(run_cfg_cache(run))
    model = load_run(run, which="last").model.eval()
    clip = model.clip
    test = index.iloc[test_rows]
    with torch.no_grad():
        x = torch.from_numpy(cache.images[test_rows].astype(np.float32) / 65535.0)[:, None]
        views = torch.cat([clip.encode_image(x[i:i + 32]) for i in range(0, len(x), 32)]).numpy()  # [N, D]
    out: dict = {}
    # side alignment and retrieval, per exam
    lat = test["laterality"].astype(str).to_numpy()
    align, exam_img, exam_txt, texts, groups = [], [], [], [], []
    for _study, g in test.assign(_i=np.arange(len(test))).groupby("study_id", sort=True):
        pos = g["_i"].to_numpy()
        sents = exam_sentences(g["report"].tolist(), np.where(lat[pos] == "L", 0, 1))
        with torch.no_grad():
            exam_txt.append(encode_report(clip, [t for t, _ in sents]).numpy())
        e = views[pos].mean(0)
        exam_img.append(e / np.linalg.norm(e))
        texts.append(g["report"].iloc[0])
        groups.append(str(g["patient_id"].iloc[0]))
        sick = sorted(set(g.loc[g["pathology"] != "normal", "laterality"]))
        if len(sick) == 1:
            side = sick[0]
            lesion = [t for t, s in sents if s == side and _is_lesion(t)]
            normal = [t for t, s in sents if s in "LR" and s != side and not _is_lesion(t)]
            if lesion and normal:
                with torch.no_grad():
                    s_les, s_nor = clip.encode_text([lesion[0], normal[0]]).numpy()
                mine, other = views[pos[lat[pos] == side]].mean(0), views[pos[lat[pos] != side]].mean(0)
                # the lesion sentence prefers the lesion breast more than the other breast's normal sentence
                # does: an image-only bias (a bright lesion raising every text's score) cancels
                gap = (mine - other) @ s_les - (mine - other) @ s_nor
                align.append((float(gap > 0), float((mine - other) @ s_les > 0), str(g["patient_id"].iloc[0])))
    if align:
        pat = np.array([p for _, _, p in align])
        out["side_alignment"] = mean_with_ci(np.array([v for v, _, _ in align]), groups=pat, n_boot=n_boot)
        out["side_alignment_raw"] = mean_with_ci(np.array([v for _, v, _ in align]), groups=pat, n_boot=n_boot)
    img, txt = np.stack(exam_img), np.stack(exam_txt)
    texts = np.array(texts)
    relevant = texts[:, None] == texts[None, :]
    ranks, _ = rank_statistics(relevant, img @ txt.T)
    out["recall@5"] = mean_with_ci((ranks <= 5).astype(float), groups=np.array(groups), n_boot=n_boot)
    out["median_rank"] = float(np.median(ranks))
    out["chance_recall@5"] = _chance_recall(relevant, 5)
    out["chance_median_rank"] = float((len(texts) + 1) / 2)
    out["n_exams"] = int(len(texts))
    # zero-shot findings from prompts
    with torch.no_grad():
        cls = model.class_embeddings(get_task("abnormality")).float().numpy()  # [2, D]
        kinds = clip.encode_text(["an irregular spiculated mass with fine pleomorphic calcifications",
                                  "an oval circumscribed mass"]).numpy()
    y = (test["pathology"] != "normal").to_numpy().astype(int)
    s = views @ cls[1] - views @ cls[0]
    out["abnormality_auc"] = float(roc_auc_score(y, s)) if len(set(y)) == 2 else float("nan")
    sick = test["pathology"].isin(["benign", "malignant"]).to_numpy()
    ym = (test["pathology"][sick] == "malignant").to_numpy().astype(int)
    sm = views[sick] @ kinds[0] - views[sick] @ kinds[1]
    out["lesion_type_auc"] = float(roc_auc_score(ym, sm)) if len(set(ym)) == 2 else float("nan")
    if localize:
        out["localization"] = localize_run(run, test)
    return out


def _is_lesion(sentence: str) -> bool:
    t = sentence.lower()
    return "mass" in t and not re.search(r"\bno\b|without|negative|normal", t)


def run_cfg_cache(run: Path) -> str:
    import yaml

    return yaml.safe_load((Path(run) / "config.yaml").read_text())["data"]["cache"]


def localize_run(run: Path, test) -> dict:
    """Per-image pointing game / Dice of the run's map (text for report runs, GradCAM for label runs) and the
    chance level, with patient ids for the paired, clustered comparison."""
    from mammolens.evaluation.localization import lesion_mask_from_row
    from mammolens.io import read_image
    from mammolens.transforms.breast import breast_mask
    from mammolens.workflows import localization_eval

    kind = "gradcam" if Path(run).name.startswith("label") else "text"
    rows = []
    for side, word in (("L", "left"), ("R", "right")):
        frame = test[(test["laterality"] == side) & test["lesion_r"].notna()]
        if not len(frame):
            continue
        loc = localization_eval(run, frame, texts=(f"a mass in the {word} breast",), kinds=(kind,), n_boot=10)
        per = loc["per_image"]
        for r, rec in zip(per.itertuples(), frame.to_dict("records")):
            pix = read_image(rec["image_path"]).pixels
            pix = pix.max(axis=0) if pix.ndim == 3 else pix
            lesion = lesion_mask_from_row(rec, pix.shape)
            breast = breast_mask(pix)
            rows.append({"patient": str(rec["patient_id"]), "row": rec["study_id"] + side + str(rec["view"]),
                         "pointing": float(r.pointing_game), "dice": float(r.dice),
                         "chance": float((lesion & breast).sum() / max(1, breast.sum()))})
    return {"kind": kind, "per_image": rows}


def summarise(results: dict, n_boot: int = 1000) -> dict:
    """Mean over seeds and pooled patient-bootstrap CIs; the paired report-text vs label-GradCAM test."""
    from mammolens.evaluation.localization import mean_with_ci
    from mammolens.evaluation.stats import bootstrap_ci  # noqa: F401  (documented alternative)

    table: dict = {}
    for arm in ARMS:
        seeds = [r for r in results.get(arm, {}).values()]
        if not seeds:
            continue
        t: dict = {"seeds": len(seeds)}
        for key in ("side_alignment", "side_alignment_raw", "recall@5"):
            vals = [s[key] for s in seeds if key in s]
            t[key] = {"mean": float(np.mean([v["estimate"] for v in vals])),
                      "lo": float(np.mean([v["lo"] for v in vals])), "hi": float(np.mean([v["hi"] for v in vals])),
                      "per_seed": [round(v["estimate"], 3) for v in vals]}
        for key in ("median_rank", "chance_recall@5", "chance_median_rank", "abnormality_auc", "lesion_type_auc",
                    "n_exams"):
            t[key] = {"mean": float(np.nanmean([s[key] for s in seeds])),
                      "per_seed": [round(float(s[key]), 3) for s in seeds]}
        locs = [p for s in seeds if "localization" in s for p in s["localization"]["per_image"]]
        if locs:
            pat = np.array([p["patient"] for p in locs])
            for m in ("pointing", "dice", "chance"):
                t[m] = mean_with_ci(np.array([p[m] for p in locs]), groups=pat, n_boot=n_boot)
        table[arm] = t
    table["paired"] = paired_report_vs_label(results)
    return table


def paired_report_vs_label(results: dict) -> dict:
    """Report text map vs label GradCAM on the same images: mean difference, patient-clustered bootstrap CI
    (images of one patient resampled together) and a sign-flip permutation test over patients."""
    out = {}
    rep, lab = results.get("report", {}), results.get("label", {})
    for metric in ("pointing", "dice"):
        diffs: dict[str, list[float]] = {}
        for seed in rep:
            if seed not in lab or "localization" not in rep[seed] or "localization" not in lab[seed]:
                continue
            b = {p["row"]: p for p in lab[seed]["localization"]["per_image"]}
            for p in rep[seed]["localization"]["per_image"]:
                if p["row"] in b:
                    diffs.setdefault(p["patient"], []).append(p[metric] - b[p["row"]][metric])
        if not diffs:
            continue
        per_patient = np.array([np.mean(v) for v in diffs.values()])  # the cluster means
        rng = np.random.default_rng(0)
        boot = [per_patient[rng.integers(0, len(per_patient), len(per_patient))].mean() for _ in range(2000)]
        flips = rng.choice([-1.0, 1.0], size=(5000, len(per_patient)))
        null = np.abs((flips * per_patient).mean(1))
        out[metric] = {"mean_diff": float(per_patient.mean()), "lo": float(np.quantile(boot, 0.025)),
                       "hi": float(np.quantile(boot, 0.975)), "n_patients": int(len(per_patient)),
                       "p_signflip": float((null >= abs(per_patient.mean()) - 1e-12).mean())}
    return out


def _ci(m: dict) -> str:
    if not isinstance(m, dict) or "estimate" not in m and "mean" not in m:
        return "–"
    est = m.get("estimate", m.get("mean"))
    return f"{est:.3f} [{m['lo']:.2f}, {m['hi']:.2f}]" if np.isfinite(est) else "–"


def markdown(res: dict) -> str:
    """The RESULTS.md tables of one ``results.json`` (test patients, then the training exams)."""
    a = res["args"]
    lines = [f"Command: `nice -n 10 env PYTHONPATH=src python experiments/report_controls.py --out OUT --patients "
             f"{a['patients']} --image-size {a['image_size']} --size {a['size']} --epochs {a['epochs']} --seeds "
             f"{' '.join(map(str, a['seeds']))}` ({res['seconds']} s; load average at the end "
             f"{', '.join(res.get('load_at_end') or [])} on 2 shared cores). {a['model']} at {a['size']} px "
             f"({a['size'] // 16}x{a['size'] // 16} patch grid); {res['n_train_patients']} training and "
             f"{res['n_test_patients']} test patients (one exam each); mean over seeds of the per-seed estimate "
             "and patient-bootstrap 95% CI (CI bounds averaged over seeds).", ""]
    for part, title in (("summary", "test patients"), ("train_summary", "training exams (the known answer)")):
        t = res.get(part, {})
        lines += [f"**{title}**", "", "| arm | seeds | side alignment | (raw) | Recall@5 (chance) | median rank "
                  "(chance) | abnormality AUC | lesion-type AUC |", "|" + "---|" * 8]
        for arm in ARMS:
            if arm not in t:
                continue
            r = t[arm]
            lines.append(f"| {arm} | {r['seeds']} | {_ci(r.get('side_alignment'))} | {_ci(r.get('side_alignment_raw'))} | "
                         f"{_ci(r.get('recall@5'))} ({r['chance_recall@5']['mean']:.3f}) | "
                         f"{r['median_rank']['mean']:.1f} ({r['chance_median_rank']['mean']:.1f}) | "
                         f"{r['abnormality_auc']['mean']:.3f} | {r['lesion_type_auc']['mean']:.3f} |")
        lines.append("")
    t = res.get("summary", {})
    loc = [(arm, t[arm]) for arm in ("report", "label") if arm in t and "pointing" in t[arm]]
    if loc:
        lines += ["**localization (test lesion views, pooled over seeds)**", "",
                  "| arm | map | n images | pointing game | Dice | chance (lesion / breast area) |", "|" + "---|" * 6]
        for arm, r in loc:
            lines.append(f"| {arm} | {'text-to-patch' if arm == 'report' else 'GradCAM'} | {r['pointing']['n']} | "
                         f"{_ci(r['pointing'])} | {_ci(r['dice'])} | {_ci(r['chance'])} |")
        for m, d in t.get("paired", {}).items():
            lines.append(f"\nreport text map − label GradCAM, {m}: {d['mean_diff']:+.3f} [{d['lo']:+.3f}, "
                         f"{d['hi']:+.3f}] over {d['n_patients']} patients (clustered bootstrap), sign-flip p "
                         f"{d['p_signflip']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="work folder (cohort, cache, runs)")
    ap.add_argument("--patients", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=160, help="height of the simulated images")
    ap.add_argument("--size", type=int, default=128, help="cache / model input size")
    ap.add_argument("--model", default="tiny-clip", help="tiny-clip: ViT, 16 px patches (8x8 grid at 128 px)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS))
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--write", default=str(OUT_JSON))
    args = ap.parse_args(argv)
    out = Path(args.out)
    t0 = time.time()
    cache = make_data(out / "cohort", args.patients, args.image_size, args.size)
    index, train_rows, test_rows = split(cache)
    results: dict = {}
    on_train: dict = {}
    summary: dict = {}
    for seed in args.seeds:
        for arm in args.arms:
            run = train_arm(arm, cache, out / "runs", train_rows, seed, args.epochs, args.model, args.size)
            results.setdefault(arm, {})[str(seed)] = score(run, index, test_rows, n_boot=args.n_boot,
                                                           localize=arm in ("report", "label"))
            # the training exams too: does the method fit the known answer at all (memorisation check)
            on_train.setdefault(arm, {})[str(seed)] = score(run, index, train_rows, n_boot=args.n_boot, localize=False)
            print(f"seed {seed} {arm}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
            summary = {"args": vars(args), "summary": summarise(results, args.n_boot),
                       "train_summary": summarise(on_train, args.n_boot), "seconds": round(time.time() - t0),
                       "n_test_patients": int(index.iloc[test_rows]["patient_id"].nunique()),
                       "n_train_patients": int(index.iloc[train_rows]["patient_id"].nunique()),
                       "load_at_end": open("/proc/loadavg").read().split()[:3] if Path("/proc/loadavg").exists()
                       else None}
            Path(args.write).parent.mkdir(parents=True, exist_ok=True)
            Path(args.write).write_text(json.dumps(summary, indent=1, default=float))  # after every arm
    return summary


if __name__ == "__main__":
    print(json.dumps(main()["summary"], indent=1, default=float))
