"""``python -m mammolens.train --config FILE [--set key=value ...]``; also the torchrun entry point:
``torchrun --nproc-per-node N -m mammolens.train --config FILE`` (DDP, one process per GPU)."""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mammolens.train", description=__doc__)
    p.add_argument("--config", required=True, help="YAML TrainCfg (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set epochs=3 --set data.modalities=[DM]")
    p.add_argument("--folds", type=int, default=0, help="run k-fold cross-validation instead of one run")
    args = p.parse_args(argv)

    from mammolens.train import cross_validate, load_cfg, train

    cfg = load_cfg(args.config, args.overrides)
    if args.folds:
        res = cross_validate(cfg, k=args.folds)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(res["mean_sd"], indent=2))
        return 0
    run_dir = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        summary = json.loads((run_dir / "summary.json").read_text())
        print(f"run: {run_dir}\nbest val macro AUC: {summary.get('best_metric')} (epoch {summary.get('best_epoch')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
