"""Wall time of the demo's training on one cache, torch imported *before* mammolens so the environment decides.

    python experiments/shared_cpu_train.py mammolens-demo/cache                       # libgomp default (spinning)
    OMP_WAIT_POLICY=PASSIVE python experiments/shared_cpu_train.py mammolens-demo/cache
    BM_THREADS=1 python experiments/shared_cpu_train.py mammolens-demo/cache          # one intra-op thread

Run beside busy processes (``python -c "while True: pass" &`` x K) to see the shared-CPU slowdown.
"""

import json
import os
import sys
import tempfile
import time

import torch  # first: the OpenMP runtime reads OMP_WAIT_POLICY now, before mammolens could set it

if os.environ.get("BM_THREADS"):
    torch.set_num_threads(int(os.environ["BM_THREADS"]))

from mammolens.train import train  # noqa: E402

cfg = dict(data={"cache": sys.argv[1], "val_frac": 0.25}, task="density", model="tiny-clip", image_size=64,
           method="contrastive", epochs=2, batch_size=16, lr=1e-3, warmup_steps=2, precision="fp32", augment=True,
           workers=0, seed=0, out_dir=tempfile.mkdtemp(prefix="shared-cpu-"), overwrite=True, max_steps_per_epoch=6)
t0 = time.perf_counter()
train(cfg, progress=False)
print(json.dumps({"threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                  "seconds": round(time.perf_counter() - t0, 2), "load_avg_1m": os.getloadavg()[0]}))
