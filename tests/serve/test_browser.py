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


UPSCALE = 4  # the fake "reads" each upload 4x larger: a 1024-px-tall original that the card must scale to fit


def _real_heatmap_png(grey: np.ndarray, pred: str, prob: float) -> tuple[bytes, tuple[int, int]]:
    """The real drawing path (``inference.heatmap_on_original``) on a GradCAM-like blob; returns the PNG and
    the original image's (width, height)."""
    from mammolens.data.cache import PreprocessCfg
    from mammolens.inference import heatmap_on_original
    from mammolens.transforms.breast import display_copy, preprocess_image

    orig = np.kron(grey.astype(np.float32) / 255.0, np.ones((UPSCALE, UPSCALE), np.float32))  # [4H, 4W]
    _, info = preprocess_image(orig, PreprocessCfg(size=64))
    yy, xx = np.mgrid[0:64, 0:64]
    cam = np.exp(-(((yy - 32) / 12.0) ** 2 + ((xx - 20) / 12.0) ** 2)).astype(np.float32)  # on the model tile
    display, _ = display_copy(orig)
    rgb = heatmap_on_original(display, cam, info, pred, prob)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue(), (orig.shape[1], orig.shape[0])


class FakePredictor:
    """Predictor protocol with a brightness rule and heat-map overlays drawn by the real renderer."""

    model_name = "fake-clip"
    classes = ["A", "B", "C", "D"]

    def __init__(self):
        self.sizes: dict[str, tuple] = {}  # upload name -> ((w, h) of the original, class, probability)

    def predict_files(self, paths):
        images = []
        for p in paths:
            grey = np.asarray(Image.open(p).convert("L"))
            lat = "R" if "_R" in Path(p).name else "L"
            probs = {"A": 0.05, "B": 0.15, "C": 0.6, "D": 0.2} if lat == "L" else {"A": 0.1, "B": 0.5, "C": 0.3, "D": 0.1}
            pred = max(probs, key=probs.get)
            png, size = _real_heatmap_png(grey, pred, probs[pred])
            self.sizes[Path(p).name] = (size, pred, probs[pred])
            images.append(
                {
                    "file": str(p),
                    "laterality": lat,
                    "view": "CC",
                    "modality": "DM",
                    "probs": probs,
                    "pred": pred,
                    "dense": pred in "CD",
                    "overlay_png": png,
                    "gradcam_class": pred,
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
def fake():
    return FakePredictor()


@pytest.fixture(scope="module")
def server_url(fake):
    port = _free_port()
    config = uvicorn.Config(create_app(fake), host="127.0.0.1", port=port, log_level="warning")
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


def test_page_shows_heat_map_at_original_size_scaled_to_fit(server_url, fake, tmp_path):
    """The overlay is the original image (1024 px tall) plus its colour bar, and the card scales it down."""
    import re

    from mammolens.explain.overlay import heatmap_panel_width

    dom = _chromium(tmp_path, "--dump-dom", f"{server_url}/?demo=1").stdout
    assert 'data-state="done"' in dom, dom[-3000:]
    natural = re.findall(r'data-natural="(\d+)x(\d+)"', dom)
    shown = re.findall(r'data-shown="(\d+)x(\d+)"', dom)
    assert len(natural) == len(shown) == 2, dom[-3000:]
    for name, (nw, nh), (sw, sh) in zip(("demo_L_CC.png", "demo_R_CC.png"), natural, shown):
        (w0, h0), pred, prob = fake.sizes[name]
        assert (int(nw), int(nh)) == (w0 + heatmap_panel_width(h0, pred, prob), h0) and h0 == 1024
        assert 0 < int(sw) <= 400 and 0 < int(sh) <= 520  # scaled to fit its card, aspect kept
        assert abs(int(sw) / int(sh) - int(nw) / int(nh)) < 0.03
    assert dom.count("heat map: GradCAM for class ") == 2
    shot = tmp_path / "heatmap_page.png"  # kept under the test's tmp dir for a look
    _chromium(tmp_path, f"--screenshot={shot}", f"{server_url}/?demo=1")
    img = np.asarray(Image.open(shot).convert("RGB"), np.float32)
    turbo_red = (img[..., 0] > 150) & (img[..., 1] < 90) & (img[..., 2] < 60)  # the map's hot centre and bar top
    assert turbo_red.sum() > 200


class MiasPredictor(FakePredictor):
    """A MIAS F/G/D predictor whose run is zero-shot on random weights: no dense wording, a random-weights banner."""

    classes = ["F", "G", "D"]

    def __init__(self):
        super().__init__()
        from mammolens.tasks import get_task

        self.task = get_task("mias")
        self.random_weights = "random weights: tiny-clip was built without pretrained weights"

    def predict_files(self, paths):
        self.classes = FakePredictor.classes  # the parent draws A-D images; relabelled below
        try:
            out = super().predict_files(paths)
        finally:
            self.classes = MiasPredictor.classes
        probs = {"F": 0.1, "G": 0.2, "D": 0.7}
        for row in (*out["images"], *out["breasts"], *out["exams"]):
            row.update(probs=probs, pred="D", dense=None)
            row.pop("gradcam_class", None)
        return {**out, "classes": self.classes, "task": self.task.wording(), "random_weights": self.random_weights,
                "outside_training_distribution": True}


def test_page_of_a_mias_run_uses_the_task_words(tmp_path):
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(MiasPredictor()), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        dom = _chromium(tmp_path, "--dump-dom", f"http://127.0.0.1:{port}/?demo=1").stdout
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert 'data-state="done"' in dom, dom[-3000:]
    assert "MIAS background tissue" in dom and "BI-RADS" not in dom
    assert "dense-glandular" in dom and "xtremely dense" not in dom
    assert "Not dense" not in dom and "Dense (C/D)" not in dom  # a task without a dense rule shows none
    assert 'id="exam-dense" class="badge hidden"' in dom
    assert "Random weights — random weights: tiny-clip" in dom
    assert "Outside the training distribution" in dom
