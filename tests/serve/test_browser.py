"""End-to-end check of the web page in headless Chromium (skipped when Chromium is absent).

A uvicorn server with a fake predictor runs in a thread on a free localhost port; Chromium loads
``/?demo=1``, where the page draws a two-view sample, posts it to ``/api/predict`` and renders the
results. ``--dump-dom`` shows the rendered DOM; ``--screenshot`` must be a non-blank PNG.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
from PIL import Image  # noqa: E402

from mammolens.serve.app import create_app  # noqa: E402

CHROMIUM = next(
    (p for p in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")) if p and Path(p).is_file()),
    None,
)
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)"),
    pytest.mark.timeout(180),
]


def _heatmap_png(grey: np.ndarray) -> bytes:
    """Grey image blended with a red-yellow blob: stands in for a GradCAM overlay."""
    h, w = grey.shape
    yy, xx = np.mgrid[0:h, 0:w]
    heat = np.exp(-(((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 3) / (w / 4)) ** 2))
    rgb = np.stack([grey] * 3, -1).astype(np.float32)
    color = np.stack([255 * np.ones_like(heat), 255 * heat, np.zeros_like(heat)], -1)
    a = (0.55 * heat)[..., None]
    out = ((1 - a) * rgb + a * color).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="PNG")
    return buf.getvalue()


class FakePredictor:
    """Predictor protocol with a brightness rule and heat-map overlays."""

    model_name = "fake-clip"
    classes = ["A", "B", "C", "D"]

    def predict_files(self, paths):
        images = []
        for p in paths:
            grey = np.asarray(Image.open(p).convert("L"))
            lat = "R" if "_R" in Path(p).name else "L"
            probs = {"A": 0.05, "B": 0.15, "C": 0.6, "D": 0.2} if lat == "L" else {"A": 0.1, "B": 0.5, "C": 0.3, "D": 0.1}
            pred = max(probs, key=probs.get)
            images.append(
                {
                    "file": str(p),
                    "laterality": lat,
                    "view": "CC",
                    "modality": "DM",
                    "probs": probs,
                    "pred": pred,
                    "dense": pred in "CD",
                    "overlay_png": _heatmap_png(grey),
                }
            )
        breasts = [{k: i[k] for k in ("laterality", "probs", "pred", "dense")} | {"study": "s"} for i in images]
        mean = {c: float(np.mean([i["probs"][c] for i in images])) for c in self.classes}
        exams = [{"study": "s", "probs": mean, "pred": max(mean, key=mean.get), "dense": True}]
        return {"images": images, "breasts": breasts, "exams": exams, "errors": [], "classes": self.classes}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url():
    port = _free_port()
    config = uvicorn.Config(create_app(FakePredictor()), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start within 20 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,900",
        "--virtual-time-budget=15000",  # let the demo's fetches finish before dumping
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_page_demo_renders_results_in_dom(server_url, tmp_path):
    proc = _chromium(tmp_path, "--dump-dom", f"{server_url}/?demo=1")
    dom = proc.stdout
    assert "<html" in dom, proc.stderr[-2000:]
    assert 'data-state="done"' in dom, dom[-3000:]
    assert 'id="exam-letter" class="letter C">C</div>' in dom
    assert "heterogeneously dense" in dom
    assert dom.count('class="card"') == 2
    assert dom.count("data:image/png;base64,") == 2  # both heat maps shown
    assert "demo_L_CC.png" in dom and "demo_R_CC.png" in dom
    assert "model: fake-clip" in dom


def test_page_screenshot_is_not_blank(server_url, tmp_path):
    shot = tmp_path / "page.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", f"{server_url}/?demo=1")
    assert shot.is_file(), proc.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    img = np.asarray(Image.open(shot).convert("RGB"), np.float32)
    assert img.shape[:2] == (900, 1200)
    assert img.std() > 20  # not a blank page
    # the header bar is dark navy, the page background light grey
    assert img[10:40, 300:900].mean() < 60
    # the heat maps put saturated warm colours on screen
    warm = (img[..., 0] > 200) & (img[..., 2] < 80)
    assert warm.sum() > 500
    out = os.environ.get("MAMMOLENS_SCREENSHOT_OUT")
    if out:
        shutil.copy(shot, out)


def test_report_screenshot_shows_banner_and_figures(tmp_path):
    """The evaluation report renders in Chromium: the simulated-data banner on top, figures below."""
    import pandas as pd

    from mammolens.evaluation.report import evaluate_predictions, write_report

    rng = np.random.default_rng(0)
    n, classes = 160, ["A", "B", "C", "D"]
    y = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    df = pd.DataFrame(p, columns=[f"prob_{c}" for c in classes]).assign(
        label=y, patient_id=[f"p{i // 4}" for i in range(n)], study_id=[f"s{i // 4}" for i in range(n)],
        laterality=np.where(np.arange(n) % 2, "L", "R"), modality=rng.choice(["DM", "DBT"], n), simulated=True)
    report = write_report(tmp_path / "eval", df, classes, evaluate_predictions(df, classes, n_boot=20))
    shot = tmp_path / "report.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", report.as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"), np.float32)
    assert img.shape[:2] == (900, 1200) and img.std() > 20  # not blank
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    banner = (r > 240) & (g > 230) & (g < 250) & (b > 190) & (b < 220)  # the banner's #fff3cd
    assert banner[:300].sum() > 20_000, "no simulated-data banner near the top of the report"
    out = os.environ.get("MAMMOLENS_REPORT_SCREENSHOT_OUT")
    if out:
        shutil.copy(shot, out)
