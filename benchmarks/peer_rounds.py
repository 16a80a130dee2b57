"""Issue 19's table, interleaved: two source trees (before / after) and the competent peer, round by round.

    python benchmarks/peer_rounds.py --before /path/to/old/checkout --after . --rounds 3 --n 48

Each round runs, each in a fresh process and in turn: ``build_cache`` of the before tree, of the after tree and
the peer's preprocessing (``mammolens.bench.peer.peer_preprocess``, taken from the after tree); then
``Predictor.predict`` (``--model``, default tiny-clip, random weights, bf16) of both trees and the peer's DataLoader loop
(``peer_predict``). Every process times only the work (imports, model build and one warm-up pass excluded) and
prints img/s; the medians, the median per-round ratios and the 1-minute load before each round are printed.
The files are ``mammolens.bench.make_bench_files`` (3328x2560 by default, uncompressed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, shutil, sys, time
from pathlib import Path
kind, work, n, size, workers, model = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]
h, w = (int(v) for v in size.split("x"))
from mammolens.bench import make_bench_files
files = make_bench_files(work / "dicom", n, (h, w), n_unique=8, render_scale=2)
if kind == "pre":
    import pandas as pd
    from mammolens.data.cache import PreprocessCfg, build_cache
    m = pd.DataFrame({"image_path": [str(f) for f in files]})
    out = work / f"cache_{os.getpid()}"
    build_cache(m.iloc[:8], out, PreprocessCfg(size=224), workers=workers, progress=False)  # warm-up
    shutil.rmtree(out)
    t = time.perf_counter(); build_cache(m, out, PreprocessCfg(size=224), workers=workers, progress=False)
    dt = time.perf_counter() - t; shutil.rmtree(out)
elif kind == "peer_pre":
    from mammolens.bench.peer import peer_preprocess
    peer_preprocess(files[:8], work / "peer.u8", 224, workers)
    t = time.perf_counter(); peer_preprocess(files, work / "peer.u8", 224, workers); dt = time.perf_counter() - t
else:
    import torch
    from mammolens.bench.inference import _ZeroShot
    from mammolens.models import create_model
    from mammolens.tasks import get_task
    torch.manual_seed(0)
    import warnings
    warnings.simplefilter("ignore")  # random weights, on purpose
    clip = create_model(model, pretrained=None).eval()
    with torch.inference_mode():
        emb = clip.class_embeddings("density").float()
    if kind == "predict":
        from mammolens.data.cache import PreprocessCfg
        from mammolens.inference import Predictor
        p = Predictor(_ZeroShot(clip, emb).eval(), get_task("density"), PreprocessCfg(size=int(clip.image_size)),
                      device="cpu", batch_size=32, workers=workers, precision="bf16")
        p.predict([str(f) for f in files[:8]])
        t = time.perf_counter(); r = p.predict([str(f) for f in files]); dt = time.perf_counter() - t
        assert len(r.images) == n, r.errors
        extra = {"data_wait_frac": getattr(p, "last_timing", {}).get("data_wait_frac", float("nan"))}
    else:
        from mammolens.bench.peer import peer_predict
        peer_predict(clip.clip, emb, files[:8], int(clip.image_size), 32, workers)
        t = time.perf_counter(); peer_predict(clip.clip, emb, files, int(clip.image_size), 32, workers)
        dt = time.perf_counter() - t
print("RESULT " + json.dumps({"img_s": n / dt, **(extra if kind == "predict" else {})}))
"""


def run(src: str, kind: str, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve() / "src")}
    code = "import os\n" + CHILD
    out = subprocess.run([sys.executable, "-c", code, kind, args.work, str(args.n), args.size, str(args.workers), args.model],
                         env=env, capture_output=True, text=True, check=False)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        raise RuntimeError(f"{kind} ({src}) failed:\n{out.stderr[-3000:]}")
    return json.loads(line[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default=".")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--size", default="3328x2560")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default="tiny-clip", help="model of the predict rows (random weights): tiny-clip, biomedclip, ...")
    ap.add_argument("--work", default="/tmp/mammolens_peer_rounds")
    ap.add_argument("--json", default=None, help="write every round's numbers here")
    args = ap.parse_args()
    plan = [("pre", "before", args.before), ("pre", "after", args.after), ("peer_pre", "peer", args.after),
            ("predict", "before", args.before), ("predict", "after", args.after), ("peer_predict", "peer", args.after)]
    rounds = []
    for r in range(args.rounds):
        load = os.getloadavg()[0]
        rec = {"load_1m": round(load, 2)}
        for kind, who, src in plan:
            task = "pre" if "pre" in kind and "predict" not in kind else "predict"
            rec[f"{task}/{who}"] = run(src, kind, args)
        rounds.append(rec)
        print(f"round {r + 1} (load {load:.2f}): " + " | ".join(
            f"{k} {v['img_s']:.1f}" + (f" (wait {v['data_wait_frac']:.0%})" if v.get("data_wait_frac") == v.get("data_wait_frac")
                                       and "data_wait_frac" in v else "")
            for k, v in rec.items() if k != "load_1m"), flush=True)
    for task in ("pre", "predict"):
        med = {who: statistics.median(rr[f"{task}/{who}"]["img_s"] for rr in rounds) for who in ("before", "after", "peer")}
        ratio = {who: statistics.median(rr[f"{task}/after"]["img_s"] / rr[f"{task}/{who}"]["img_s"] for rr in rounds)
                 for who in ("before", "peer")}
        print(f"{task}: before {med['before']:.1f} | after {med['after']:.1f} | peer {med['peer']:.1f} img/s; "
              f"after/before {ratio['before']:.2f}x, after/peer {ratio['peer']:.2f}x, before/peer "
              f"{statistics.median(rr[f'{task}/before']['img_s'] / rr[f'{task}/peer']['img_s'] for rr in rounds):.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rounds, indent=1))


if __name__ == "__main__":
    main()
