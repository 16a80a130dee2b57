"""Flat-memory check for Predictor.predict: N symlinked 512x416 16-bit PNGs (4 per study) through a run.

Usage: python experiments/predict_memory.py RUN_DIR N   (writes the images under /tmp/mem10k/imgs)
"""
import os
import sys
import time
import resource
from pathlib import Path
import numpy as np
from PIL import Image
root = Path("/tmp/mem10k/imgs"); root.mkdir(exist_ok=True)
src = []
rng = np.random.default_rng(0)
for i in range(8):
    p = Path(f"/tmp/mem10k/src{i}.png")
    a = (rng.random((512, 416)) * 65535).astype(np.uint16); a[:, 300:] = 0
    Image.fromarray(a).save(p); src.append(p)
n = int(sys.argv[2])
for i in range(n):
    d = root / f"s{i//4:05d}" ; d.mkdir(exist_ok=True)
    l = d / f"img{i%4}.png"
    if not l.exists(): os.symlink(src[i % 8], l)
from mammolens.inference import Predictor
p = Predictor.from_run(sys.argv[1], batch_size=32)
def rss(): return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024
t = time.perf_counter()
peaks = []
res = p.predict(root, explain=False)
dt = time.perf_counter() - t
main_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
workers_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
print(f"{len(res.images)} images, {len(res.exams)} exams, {len(res.errors)} errors in {dt:.1f} s "
      f"({len(res.images)/dt:.1f} img/s); peak RSS main {main_mib} MiB, workers max {workers_mib} MiB")
