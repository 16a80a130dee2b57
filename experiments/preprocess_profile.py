"""Per-image cost of reading and preprocessing on one core, against the naive loop (ms per image).

    python experiments/preprocess_profile.py --size 3328x2560 --render-scale 2 --work /tmp/prof_pre

Writes (once) the same synthetic files as ``mammolens bench`` and prints the median over ``--repeats``
of: the naive per-file loop, ``read_image`` alone, and ``read_image`` + ``preprocess_image``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from mammolens.bench import _eval_transform, _naive_preprocess_file, make_bench_files
from mammolens.data.cache import PreprocessCfg
from mammolens.io import read_image
from mammolens.transforms.breast import preprocess_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="3328x2560")
    ap.add_argument("--render-scale", type=int, default=2)
    ap.add_argument("--n", type=int, default=8, help="distinct files")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default="/tmp/mammolens_prof_pre")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    files = make_bench_files(args.work, args.n, (h, w), n_unique=args.n, render_scale=args.render_scale)
    transform, cfg = _eval_transform(224), PreprocessCfg()

    def ms_per_image(fn) -> float:
        runs = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            for f in files:
                fn(f)
            runs.append((time.perf_counter() - t) / len(files) * 1000)
        return statistics.median(runs)

    naive = ms_per_image(lambda f: _naive_preprocess_file(f, transform, f"{args.work}/naive.npy"))
    read = ms_per_image(read_image)
    both = ms_per_image(lambda f: preprocess_image(read_image(f).pixels, cfg))
    print(f"{len(files)} files {h}x{w}: naive {naive:.1f} ms | read {read:.1f} ms | read+preprocess {both:.1f} ms "
          f"| per-core ratio {naive / both:.2f}x")


if __name__ == "__main__":
    main()
