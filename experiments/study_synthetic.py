"""The reference study (issue 14 §4) on the synthetic DM/s2D/DBT cohort, small settings for a CPU.

Same as ``mammolens study`` (``mammolens.study.run_study``) on a synthetic cohort plus a separate synthetic
cohort as the external set; tiny-clip (random init) at 64 px. Prints the table as markdown.

Example::

    PYTHONPATH=src python experiments/study_synthetic.py --out /tmp/exp_study --seeds 0 1 2 3 4 --folds 2 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


def _f(v) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.3f}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--n-patients", type=int, default=36)
    ap.add_argument("--n-external", type=int, default=12)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)

    import torch

    from mammolens.data.synthetic import make_cohort
    from mammolens.study import StudyCfg, run_study

    torch.set_num_threads(2)
    root = Path(args.out)
    t0 = time.time()
    for name, n, seed in (("cohort", args.n_patients, 0), ("external", args.n_external, 1000)):
        if not (root / name / "manifest.parquet").is_file():
            make_cohort(root / name, n_patients=n, seed=seed, image_size=(128, 104), dbt_frames=4,
                        density_probs=[0.25] * 4)
    train = dict(model="tiny-clip", image_size=args.size, epochs=args.epochs, batch_size=16, lr=1e-3,
                 precision="fp32", augment=False, workers=0, device="cpu", data={"preprocess": {"size": args.size}})
    res = run_study(StudyCfg(manifest=str(root / "cohort" / "manifest.parquet"), out_dir=str(root / "study"),
                             train=train, folds=args.folds, seeds=args.seeds, n_boot=args.n_boot,
                             external=[str(root / "external" / "manifest.parquet")]))
    lines = ["| trained on | tested on | predictions (images × seeds) | accuracy [95% CI] | macro AUC [95% CI] "
             "| multi − this: AUC [95% CI] (p) |",
             "|---|---|---|---|---|---|"]
    for r in res["table"]:
        d = "" if r["train"] == "multi" else (f"{_f(r['macro_auc_diff'])} [{_f(r['macro_auc_diff_lo'])}, "
                                              f"{_f(r['macro_auc_diff_hi'])}] (p={_f(r['macro_auc_p'])})")
        lines.append(f"| {r['train']} | {r['test']} | {r['n_predictions']} | {_f(r['accuracy'])} [{_f(r['accuracy_lo'])}, "
                     f"{_f(r['accuracy_hi'])}] | {_f(r['macro_auc'])} [{_f(r['macro_auc_lo'])}, "
                     f"{_f(r['macro_auc_hi'])}] | {d} |")
    md = "\n".join(lines)
    print(md)
    print(f"{res['n_runs']} runs, total {time.time() - t0:.0f}s")
    (root / "results.json").write_text(json.dumps({"args": vars(args), "markdown": md, "n_runs": res["n_runs"],
                                                   "seconds_total": time.time() - t0}, indent=2))
    return res


if __name__ == "__main__":
    main()
