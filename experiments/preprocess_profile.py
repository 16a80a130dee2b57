"""Per-image cost of the one image path on one core, stage by stage, against the naive loop and the peer (ms).

    python experiments/preprocess_profile.py --size 3328x2560 --render-scale 2 --work /tmp/prof_pre

Writes (once) the same synthetic files as ``mammolens bench`` and prints the median over ``--repeats`` x files
of: the naive per-file loop; the competent peer (``bench.peer.peer_tile``, when dicomsdl and OpenCV are
installed); ``pipeline.prepare`` with the quality gate (what the cache builder and ``Predictor`` run per file);
and its stages: **read** (``read_image`` as ``prepare`` calls it plus ``reduce_image``, the working copy: with
the lazy reader the table lookup happens while reducing, so the two are one stage), **mask** (the breast mask,
shared by the gate and the crop), **gate** (``check_reduced``'s own measures, the mask excluded) and
**preprocess** (crop, flip, resize, uint16). Runs on older trees too (no ``lazy`` reader: the eager read).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="3328x2560")
    ap.add_argument("--render-scale", type=int, default=2)
    ap.add_argument("--n", type=int, default=8, help="distinct files")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default="/tmp/mammolens_prof_pre")
    args = ap.parse_args()

    from mammolens.bench import make_bench_files
    from mammolens.bench._common import eval_transform
    from mammolens.bench.preprocess import _naive_preprocess_file
    from mammolens.data.cache import PreprocessCfg
    from mammolens.io import read_image
    from mammolens.pipeline.prepare import prepare
    from mammolens.transforms.breast import preprocess_reduced, reduce_image
    from mammolens.transforms.quality import QualityCfg, check_reduced

    h, w = (int(v) for v in args.size.split("x"))
    files = make_bench_files(args.work, args.n, (h, w), n_unique=args.n, render_scale=args.render_scale)
    transform, cfg, q = eval_transform(224), PreprocessCfg(), QualityCfg()
    try:
        read_image(files[0], lazy=True)
        lazy = True
    except TypeError:  # a tree before issue 19: the eager reader
        lazy = False
    try:
        from mammolens.bench.peer import peer_available, peer_tile

        peer = peer_tile if peer_available() is None else None
    except ImportError:
        peer = None
    if peer is not None:
        import cv2

        cv2.setNumThreads(1)  # one core, as in a worker process

    def read(f):
        im = read_image(f, lazy=True) if lazy else read_image(f)
        return im, reduce_image(im if hasattr(im, "bands") else im.pixels, cfg.size)

    t: dict[str, list[float]] = {k: [] for k in ("naive", "peer", "prepare", "read", "mask", "gate", "preprocess")}
    for _ in range(args.repeats):
        for f in files:
            t0 = time.perf_counter()
            _naive_preprocess_file(f, transform, f"{args.work}/naive.npy")
            t1 = time.perf_counter()
            if peer is not None:
                peer(f)
            t2 = time.perf_counter()
            prepare(str(f), cfg, q)
            t3 = time.perf_counter()
            im, red = read(f)
            t4 = time.perf_counter()
            red.compute_mask()
            t5 = time.perf_counter()
            check_reduced(red, q)
            t6 = time.perf_counter()
            preprocess_reduced(red, cfg, im.meta.get("laterality"))
            t7 = time.perf_counter()
            for k, a, b in (("naive", t0, t1), ("peer", t1, t2), ("prepare", t2, t3), ("read", t3, t4),
                            ("mask", t4, t5), ("gate", t5, t6), ("preprocess", t6, t7)):
                t[k].append((b - a) * 1000)
    med = {k: statistics.median(v) for k, v in t.items() if v and (k != "peer" or peer is not None)}
    print(f"{len(files)} files {h}x{w}, {'lazy' if lazy else 'eager'} reader, ms per image (median): "
          + " | ".join(f"{k} {v:.1f}" for k, v in med.items()))
    peer_txt = f", to the peer {med['peer'] / med['prepare']:.2f}x" if "peer" in med else ""
    print(f"gate share of prepare {med['gate'] / med['prepare']:.1%}; prepare per-core ratio to naive "
          f"{med['naive'] / med['prepare']:.2f}x{peer_txt}")


if __name__ == "__main__":
    main()
