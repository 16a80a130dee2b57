"""Screenshots of the web page (docs/images/web_*.png) showing a real run's real response, in its task's words.

The files are posted to the real app (``serve.app.create_app(Predictor.from_run(RUN))``, with an optional
sidecar CSV through the page's sidecar field); the page is then loaded in headless Chromium with one extra
script that renders that response (``window.mammolens.render``), exactly as after a drop.

Example (issue 21's screenshots)::

    PYTHONPATH=src python experiments/web_screenshots.py --run mias_run --out docs/images/web_mias.png \\
        --sidecar mias_side.csv mini-mias/images/mdb001.pgm mini-mias/images/mdb002.pgm
    PYTHONPATH=src python experiments/web_screenshots.py --run demo/run --out docs/images/web_density.png \\
        demo/external/dicom/SYN0001/study1/*.dcm
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--sidecar", help="sidecar CSV sent with the files (path, patient, study, laterality, view)")
    ap.add_argument("--size", default="1200,1500", help="window width,height")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args(argv)

    import uvicorn
    from fastapi.responses import HTMLResponse, Response
    from fastapi.testclient import TestClient

    from mammolens.inference import Predictor
    from mammolens.serve.app import STATIC_DIR, create_app

    app = create_app(Predictor.from_run(args.run, device="cpu", workers=0))
    client = TestClient(app, base_url="http://127.0.0.1:8000")
    files = [("files", (Path(f).name, Path(f).read_bytes(), "application/octet-stream")) for f in args.files]
    if args.sidecar:
        files.append(("sidecar", (Path(args.sidecar).name, Path(args.sidecar).read_bytes(), "text/csv")))
    r = client.post("/api/predict", files=files)
    r.raise_for_status()
    data = r.json()

    page = (STATIC_DIR / "index.html").read_text().replace(
        '<script src="/static/app.js"></script>', '<script src="/static/app.js"></script><script src="/shot.js"></script>')
    n = len(data["images"])
    status = (f"Done: {n} image{'s' if n != 1 else ''} in {data['elapsed_s']:.1f} s"
              + "".join(f" · {w}" for w in data.get("warnings", [])))
    script = ("setTimeout(function(){window.mammolens.render(" + json.dumps(data) + ");"
              "document.getElementById('status').textContent=" + json.dumps(status) + ";"
              "document.body.dataset.state='done';}, 300);")

    @app.get("/shot", include_in_schema=False)
    def shot():
        return HTMLResponse(page)

    @app.get("/shot.js", include_in_schema=False)
    def shot_js():
        return Response(script, media_type="text/javascript")

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as prof:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-dev-shm-usage", f"--user-data-dir={prof}",
                        f"--window-size={args.size}", "--virtual-time-budget=8000", "--hide-scrollbars",
                        f"--screenshot={Path(args.out).resolve()}", f"http://127.0.0.1:{port}/shot"],
                       capture_output=True, text=True, timeout=120, check=False)
    server.should_exit = True
    thread.join(timeout=10)
    summary = {"out": args.out, "images": n, "task": data["task"]["task"], "exam": data["exams"][:1],
               "warnings": data.get("warnings"), "random_weights": data.get("random_weights")}
    print(json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    main()
