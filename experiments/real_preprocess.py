"""Preprocessing throughput on real images: ``build_cache`` against the naive PIL + open_clip loop.

    python experiments/real_preprocess.py ../shared/data/mini-mias/images --workers 2

Every image file in the folder (PNG/PGM/TIFF/JPEG/DICOM, as ``mammolens.inference.find_images`` finds
them); naive: one process, per file ``PIL.Image.open(...).convert("RGB")`` → open_clip eval transform →
``np.save`` (for DICOM files the pydicom + min-max path of ``mammolens bench``). Median of 3 runs after a
warm-up, images/s.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mammolens.bench import _eval_transform, _naive_preprocess_file
from mammolens.data.cache import PreprocessCfg, build_cache
from mammolens.inference import find_images
from mammolens.io import is_dicom


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    files = find_images(args.folder)
    if not files:
        raise SystemExit(f"no images in {args.folder}")
    tr = _eval_transform(224)
    work = Path(tempfile.mkdtemp(prefix="real-pre-"))
    manifest = pd.DataFrame({"image_path": [str(f) for f in files]})

    def naive() -> None:
        for f in files:
            if is_dicom(f):
                _naive_preprocess_file(f, tr, work / "x.npy")
            else:
                np.save(work / "x.npy", tr(Image.open(f).convert("RGB")).numpy())

    def ours() -> None:
        shutil.rmtree(work / "cache", ignore_errors=True)
        build_cache(manifest, work / "cache", PreprocessCfg(), workers=args.workers, progress=False)

    try:
        for name, fn in (("naive (1 process)", naive), (f"build_cache (workers={args.workers or 'all'})", ours)):
            fn()
            runs = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - t)
            print(f"{name}: {len(files) / statistics.median(runs):.1f} img/s over {len(files)} files")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
