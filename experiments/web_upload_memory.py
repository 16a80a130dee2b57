"""Peak memory of one web-page request holding N 9000x9000 16-bit PNGs (in-process, FastAPI TestClient).

Usage: PYTHONPATH=TREE/src python experiments/web_upload_memory.py RUN_DIR N
"""

import io
import resource
import sys

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from mammolens.inference import Predictor
from mammolens.serve.app import create_app

p = Predictor.from_run(sys.argv[1], device="cpu", workers=0)
client = TestClient(create_app(p), base_url="http://127.0.0.1:8000")
a = np.zeros((9000, 9000), np.uint16)
a[1000:8000, :5000] = 30000
buf = io.BytesIO()
Image.fromarray(a).save(buf, format="PNG", compress_level=9)
data = buf.getvalue()
del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
n = int(sys.argv[2])
files = [("files", (f"big{i}.png", data, "image/png")) for i in range(n)]
r = client.post("/api/predict", files=files, headers={"origin": "http://127.0.0.1:8000"})
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(f"{n} x 9000x9000 16-bit PNG ({len(data) // 1024} KB each): HTTP {r.status_code}; "
      f"peak RSS {before} -> {after} MiB (+{after - before})")
body = r.json()
print("errors:", [e.get("reason", "")[:100] for e in body.get("errors", [])] if isinstance(body, dict) else body)
