"""Regenerates sections 1 (class weighting), 2 (mini-MIAS), the issue-14 tables (fixed vs adaptive modality
weighting, the single- vs multi-modality study) and the issue-22 report-learning controls
(``report_controls.py``; ``--report-controls-json`` reuses a finished run) of ``experiments/RESULTS.md``.

Runs ``experiments/weighting.py`` and ``experiments/mias.py`` with fixed seeds, adds a paired test to every
comparison (seeds paired by seed; methods on one test set paired by patient) and writes the two sections
between their ``<!-- make_results:NAME -->`` / ``<!-- /make_results:NAME -->`` markers, with wording
chosen from the tests (a difference is only called a difference when its paired test says so).

Example::

    PYTHONPATH=src python experiments/make_results.py --out /tmp/exp14 --seeds 0 1 2 3 4 5 6 7 8 9

``--mias-before PATH`` adds the CV numbers of an earlier code version (its ``results.json``), measured by
the same ``mias.py --cv 3`` command in a worktree of that commit.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ALPHA = 0.05
METRICS = [("balanced_accuracy", "bal. acc"), ("auc_macro", "macro AUC"), ("recall_A", "recall A"),
           ("recall_B", "recall B"), ("recall_C", "recall C"), ("recall_D", "recall D")]


def paired(a, b) -> dict:
    """Paired comparison of ``a - b`` (one value per seed): mean, t 95% CI, paired t and Wilcoxon p."""
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    n = d.size
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1) * sd / np.sqrt(n)) if n > 1 else float("nan")
    t_p = float(stats.ttest_rel(a, b, nan_policy="omit").pvalue) if n > 1 and sd > 0 else 1.0
    w_p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return {"n": n, "mean": float(d.mean()), "sd": sd, "lo": float(d.mean()) - half, "hi": float(d.mean()) + half,
            "better": int((d > 0).sum()), "worse": int((d < 0).sum()), "p_t": t_p, "p_w": w_p}


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _verdict(r: dict) -> str:
    """``"both"`` when the paired t and Wilcoxon tests reject, ``"t"`` when only the t-test does, else ``""``."""
    return "both" if r["p_t"] < ALPHA and r["p_w"] < ALPHA else "t" if r["p_t"] < ALPHA else ""


def _says(name: str, r: dict) -> str:
    ci = f"Δ {r['mean']:+.3f}, 95% CI [{r['lo']:+.3f}, {r['hi']:+.3f}], paired t p {_p(r['p_t'])}"
    word = "higher" if r["mean"] > 0 else "lower"
    v = _verdict(r)
    if v == "both":
        return f"{name} {word} ({ci}, Wilcoxon p {_p(r['p_w'])})"
    if v == "t":
        return (f"{name} {word} in {max(r['better'], r['worse'])}/{r['n']} seeds by the t-test only ({ci}; "
                f"Wilcoxon p {_p(r['p_w'])}): suggestive, not established")
    return f"{name}: no detectable difference ({ci})"


def weighting_section(res: dict, seeds: list[int], epochs: int) -> str:
    runs = res["runs"]
    by = {(r["method"], r["seed"]): r for r in runs}
    methods = [m for m in ("inverse", "effective") if any(r["method"] == m for r in runs)]
    cmd = (f"PYTHONPATH=src python experiments/make_results.py --out OUT --seeds {' '.join(map(str, seeds))} "
           f"--epochs {epochs}")
    out = [f"Command (regenerates this section): `{cmd}` (runs `experiments/weighting.py --epochs {epochs} "
           f"--seeds {' '.join(map(str, seeds))}` with its defaults: `--methods none inverse effective --n-train 60 "
           "--n-test 40 --probs 0.05 0.45 0.45 0.05 --test-probs 0.25 0.25 0.25 0.25 --size 64`).", "",
           "Setup: training cohort `make_cohort(n_patients=60, seed=0, image_size=(128, 104), "
           "density_probs=[0.05, 0.45, 0.45, 0.05])` → 240 images (A 16, B 88, C 128, D 8; 4, 22, 32 and 2 "
           "patients). `TrainCfg(data={\"cache\": ..., \"val_frac\": 0.3}, model=\"tiny-clip\", image_size=64, "
           f"epochs={epochs}, batch_size=16, lr=1e-3, precision=\"fp32\", seed=s, class_weighting=...)`; the best-"
           "validation-macro-AUC checkpoint is scored on a held-out cohort `make_cohort(n_patients=40, "
           "seed=1000, density_probs=[0.25]*4)` (160 images, A 52, B 36, C 40, D 32). The seed sets the "
           "validation split and the initialisation, so runs with the same seed are paired.", "",
           *([f"Runs reused, not retrained: {res['source']}. Regenerated with `--weighting-json "
              "experiments/data/weighting_s0-4.json`, which only recomputes the paired tests; without the flag the "
              "script retrains every seed (about 10 s per run on an idle 2-core CPU).", ""] if "source" in res else []),
           res["table"], "",
           f"Paired by seed against `none` (n = {len(seeds)} seeds; mean Δ with 95% t-interval, seeds better/"
           "worse, two-sided paired t-test and Wilcoxon signed-rank p):", "",
           "| weighting vs none | metric | Δ mean [95% CI] | better/worse | p (paired t) | p (Wilcoxon) |",
           "|---|---|---|---|---|---|"]
    tests = {}
    for m in methods:
        for key, label in METRICS:
            a = [by[(m, s)][key] for s in seeds]
            b = [by[("none", s)][key] for s in seeds]
            r = tests[(m, key)] = paired(a, b)
            out.append(f"| {m} | {label} | {r['mean']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}] | "
                       f"{r['better']}/{r['worse']} | {r['p_t']:.3f} | {r['p_w']:.3f} |")
    both = [(m, label) for m in methods for key, label in METRICS if _verdict(tests[(m, key)]) == "both"]
    t_only = [(m, label) for m in methods for key, label in METRICS if _verdict(tests[(m, key)]) == "t"]
    min_w = 2.0 / 2 ** len(seeds)  # smallest two-sided exact Wilcoxon p with n seeds
    out += ["", f"Reading ({len(tests)} paired tests, no multiplicity correction, so one p just under {ALPHA} is "
            f"weak evidence; with {len(seeds)} seeds the exact Wilcoxon p cannot go below {min_w:.4f}):", ""]
    for m in methods:
        out.append(f"- `{m}` vs `none`: " + "; ".join(_says(label, tests[(m, key)]) for key, label in METRICS) + ".")
    out.append("")
    summary = f"With {len(seeds)} paired seeds "
    if both:
        summary += "both tests agree on: " + ", ".join(f"`{m}` {lab}" for m, lab in both) + ". "
    else:
        summary += "no weighting differs from `none` by both tests on any metric. "
    if t_only:
        summary += ("The t-test alone points at " + ", ".join(f"`{m}` {lab}" for m, lab in t_only)
                    + " (a direction worth a larger study, not a finding). ")
    if not any(lab in ("bal. acc", "macro AUC") for _, lab in both + t_only):
        summary += "Balanced accuracy and macro AUC show no detectable difference. "
    summary += ("The experiment neither "
                "supports nor contradicts the default `inverse`: it is a design choice (rare classes weigh as much "
                "as common ones in the loss), not a measured improvement; 1–2 rare patients in training make the "
                "seed-to-seed spread as large as the mean differences.")
    out.append(summary)
    return "\n".join(out)


def _cv_line(name: str, cv: dict) -> str:
    f = [x["macro_auc"] for x in cv["folds"]]
    p = cv["pooled"]
    return (f"| {name} | {' / '.join(f'{v:.3f}' for v in f)} | {np.mean(f):.3f} ± {np.std(f, ddof=1):.3f} | "
            f"{p['macro_auc']:.3f} | {p['balanced_accuracy']:.3f} |")


def mias_section(res: dict, before: dict | None, epochs: int, n_boot: int) -> str:
    from mammolens.evaluation.metrics import macro_auc
    from mammolens.evaluation.stats import bootstrap_ci, mcnemar_test

    c = res["split_counts"]
    out = ["Command (regenerates this section with the one above): `make_results.py` runs "
           f"`experiments/mias.py --epochs {epochs} --cv 3 --cv-last --n-boot {n_boot}`.", "",
           "Setup: `import_dataset(\"mias\", \"/work/shared/data/mini-mias\")` (322 films, 161 patients = film "
           "pairs) → `build_cache(PreprocessCfg(size=96))`; one patient-level split `train_val_test_split(val=0.15, "
           f"test=0.25, label_col=\"mias_density\", seed=0)`: train {sum(c['train'].values())}, val "
           f"{sum(c['val'].values())}, test {sum(c['test'].values())} images (F/G/D test {c['test']['F']}/"
           f"{c['test']['G']}/{c['test']['D']}). Task `mias`; `tiny-clip` (random init), `image_size=96`, "
           f"`batch_size=16`, `lr=1e-3`, fp32, seed 0, {epochs} epochs, best checkpoint by validation macro AUC; "
           "`zeroshot` and `linear-probe` on the same split. Test metrics with patient-level bootstrap 95% CIs "
           f"({n_boot} replicates).", "", "Test split, estimate [95% CI]:", "", res["table"].split("\n\n")[0], ""]
    probs, y, g = res["test_probs"], res["test_labels"], res["test_groups"]
    ref = next((k for k in probs if k.startswith("contrastive")), None)
    if ref is not None:
        out += [f"Paired by patient on the same {len(y)} test images (one training seed, so these compare these "
                "three fitted models, not the methods in general): macro AUC difference with a paired patient "
                "bootstrap 95% CI, accuracy with the clustered McNemar test.", "",
                "| comparison | Δ macro AUC [95% CI] | Δ accuracy | McNemar p (method) |", "|---|---|---|---|"]
        for other in (k for k in probs if k != ref):
            both = np.concatenate([probs[ref], probs[other]], axis=1)
            k = probs[ref].shape[1]
            d = bootstrap_ci(lambda yy, ss, k=k: macro_auc(yy, ss[:, :k], warn=False) - macro_auc(yy, ss[:, k:], warn=False),
                             y, both, g, n_boot=n_boot, seed=0)
            ca, cb = probs[ref].argmax(1) == y, probs[other].argmax(1) == y
            mc = mcnemar_test(ca, cb, groups=g)
            out.append(f"| {ref} − {other} | {d['estimate']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] | "
                       f"{ca.mean() - cb.mean():+.3f} | {mc['p']:.3g} ({mc['method']}) |")
        out.append("")
    out += ["3-fold patient-level CV of the contrastive method over all labelled images (folds independent of "
            "the split above). Per-fold macro AUC is each held-out fold's; pooled = all out-of-fold predictions "
            "together.", "",
            "| checkpoint choice | per-fold macro AUC | mean ± sd | pooled macro AUC | pooled bal. acc |",
            "|---|---|---|---|---|"]
    if before and before.get("cv"):
        out.append(_cv_line("before (f5d92b6): best epoch on the held-out fold itself", before["cv"]))
    out.append(_cv_line("nested: best epoch on an inner patient split of the training folds (val_frac 0.2)",
                        res["cv"]))
    if res.get("cv_last"):
        out.append(_cv_line("last epoch (no selection)", res["cv_last"]))
    out += ["", "Each run folder's `cv_rows.parquet` records which image served as train, val or test in each "
            "fold. With 3 folds there is no useful test of the before/after difference; the before numbers are "
            "optimistic by construction (the fold that is reported also chose its checkpoint), the nested ones "
            "are not.", "",
            "Reading: a **pipeline check, not a clinical result** (random-init tiny CLIP, 322 scanned films). "
            "The zero-shot baseline with random weights is at chance by construction. Rebuild caches before "
            "comparing with older tables (preprocessing changes move the pixels)."]
    return "\n".join(out)


# the settings of the issue-14 tables (5 seeds; small enough for a 2-core CPU in about two minutes)
ADAPTIVE_ARGS = ["--epochs", "4", "--seeds", "0", "1", "2", "3", "4", "--n-train", "40", "--n-test", "24", "--size", "64"]
STUDY_ARGS = ["--seeds", "0", "1", "2", "3", "4", "--folds", "2", "--epochs", "6", "--n-patients", "48",
              "--n-external", "12", "--size", "64"]


REPORT_ARGS = ["--patients", "36", "--image-size", "160", "--size", "128", "--epochs", "8", "--seeds", "0", "1", "2"]


def _script_section(script: str, script_args: list[str], table: str) -> str:
    return (f"Command (run by `make_results.py`): `PYTHONPATH=src python experiments/{script} --out OUT "
            f"{' '.join(script_args)}`\n\n{table}")


def replace_section(text: str, name: str, body: str) -> str:
    pat = re.compile(rf"(<!-- make_results:{name} -->\n).*?(\n<!-- /make_results:{name} -->)", re.S)
    if not pat.search(text):
        raise ValueError(f"RESULTS.md has no <!-- make_results:{name} --> ... <!-- /make_results:{name} --> block")
    return pat.sub(lambda m: m.group(1) + body + m.group(2), text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="work folder (cohorts, caches, runs)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)), help="weighting seeds")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--mias-before", type=Path, help="results.json of mias.py --cv 3 at an earlier commit")
    ap.add_argument("--skip", nargs="*", default=[], choices=["weighting", "mias", "adaptive", "study",
                                                             "report_controls"])
    ap.add_argument("--report-controls-json", type=Path,
                    help="the results.json of an earlier report_controls.py call (default: run it, REPORT_ARGS)")
    ap.add_argument("--report-controls-large-json", type=Path,
                    help="results.json of report_controls.py --patients 48 --epochs 16 (the larger table)")
    ap.add_argument("--weighting-json", type=Path,
                    help="reuse the runs of an earlier weighting.py call (its results_*.json) instead of training")
    ap.add_argument("--reuse", action="store_true", help="reuse OUT/mias/make_results.pkl of an earlier call")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import mias
    import weighting

    out = Path(args.out)
    text = args.results.read_text()
    t0 = time.time()
    if "weighting" not in args.skip:
        if args.weighting_json:
            res = json.loads(args.weighting_json.read_text())
            args.seeds = sorted({r["seed"] for r in res["runs"]})
            args.epochs = res["args"]["epochs"]
        else:
            res = weighting.main(["--out", str(out / "weighting"), "--epochs", str(args.epochs),
                                  "--seeds", *map(str, args.seeds)])
        text = replace_section(text, "weighting", weighting_section(res, args.seeds, args.epochs))
        args.results.write_text(text)
    if "mias" not in args.skip:
        saved = out / "mias" / "make_results.pkl"
        if args.reuse and saved.is_file():
            res = pickle.loads(saved.read_bytes())
        else:
            res = mias.main(["--out", str(out / "mias"), "--epochs", str(args.epochs), "--cv", "3", "--cv-last",
                             "--n-boot", str(args.n_boot)])
            # patients as integer codes: the saved file holds no identifiers
            res["test_groups"] = np.unique(res["test_groups"], return_inverse=True)[1]
            saved.write_bytes(pickle.dumps(res))
        before = json.loads(args.mias_before.read_text()) if args.mias_before else None
        text = replace_section(text, "mias", mias_section(res, before, args.epochs, args.n_boot))
        args.results.write_text(text)
    if "adaptive" not in args.skip:  # issue 14 §1: fixed vs adaptive modality weighting
        import modality_adaptive

        res = modality_adaptive.main(["--out", str(out / "adaptive"), *ADAPTIVE_ARGS])
        text = replace_section(text, "adaptive", _script_section("modality_adaptive.py", ADAPTIVE_ARGS, res["markdown"]))
        args.results.write_text(text)
    if "study" not in args.skip:  # issue 14 §4: single- vs multi-modality study
        import study_synthetic

        study_synthetic.main(["--out", str(out / "study"), *STUDY_ARGS])
        md = json.loads((out / "study" / "results.json").read_text())["markdown"]
        text = replace_section(text, "study", _script_section("study_synthetic.py", STUDY_ARGS, md))
        args.results.write_text(text)
    if "report_controls" not in args.skip:  # issue 22: positive and shuffled controls of report learning
        import report_controls

        if args.report_controls_json:
            res = json.loads(args.report_controls_json.read_text())
        else:
            res = report_controls.main(["--out", str(out / "report_controls"), *REPORT_ARGS])
        text = replace_section(text, "report_controls", report_controls.markdown(res))
        if args.report_controls_large_json:  # the same controls on a larger cohort, longer training
            large = json.loads(args.report_controls_large_json.read_text())
            text = replace_section(text, "report_controls_large", report_controls.markdown(large))
        args.results.write_text(text)
    print(f"RESULTS.md sections regenerated in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
