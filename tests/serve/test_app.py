"""Tests for mammolens.serve.app (FastAPI TestClient with a fake predictor)."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from mammolens.serve.app import create_app, is_loopback, sanitize_filename, sniff_kind  # noqa: E402

SECRET_PATIENT = "Doe^Jane-PID-778899"


def _png(value: int = 128, size: tuple[int, int] = (24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(size, value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class FakePredictor:
    """Implements the predictor protocol: probabilities from the mean grey value, laterality from the name."""

    model_name = "fake-clip"
    classes = ["A", "B", "C", "D"]

    def __init__(self):
        self.calls: list[list[Path]] = []
        self.seen_existing: list[bool] = []

    def predict_files(self, paths):
        self.calls.append(list(paths))
        self.seen_existing.append(all(Path(p).is_file() for p in paths))
        images, errors = [], []
        for p in paths:
            try:
                g = np.asarray(Image.open(p).convert("L"), np.float32).mean() / 255.0
            except Exception:  # noqa: BLE001 - the real predictor reports unreadable files
                errors.append({"file": str(p), "reason": "cannot read image"})
                continue
            logits = -((np.arange(4) / 3.0 - g) ** 2) * 20
            probs = np.exp(logits) / np.exp(logits).sum()
            pred = "ABCD"[int(probs.argmax())]
            lat = "R" if "_R" in p.name else "L"
            images.append(
                {
                    "file": str(p),
                    "laterality": lat,
                    "view": "CC",
                    "modality": "DM",
                    "probs": {c: np.float32(v) for c, v in zip("ABCD", probs)},
                    "pred": pred,
                    "dense": np.bool_(pred in "CD"),
                    "overlay_png": _png(200, (8, 8)),
                    "patient_id": SECRET_PATIENT,  # must never reach the response
                }
            )
        if images:
            mean = {c: float(np.mean([i["probs"][c] for i in images])) for c in "ABCD"}
            pred = max(mean, key=mean.get)
            breasts = [
                {"study": SECRET_PATIENT, "laterality": lat, "probs": mean, "pred": pred, "dense": pred in "CD"}
                for lat in sorted({i["laterality"] for i in images})
            ]
            exams = [{"study": SECRET_PATIENT, "probs": mean, "pred": pred, "dense": pred in "CD"}]
        else:
            breasts, exams = [], []
        return {"images": images, "breasts": breasts, "exams": exams, "errors": errors, "classes": self.classes}


@pytest.fixture
def fake():
    return FakePredictor()


@pytest.fixture
def client(fake):
    return TestClient(create_app(fake, max_upload_mb=1))


def test_sanitize_filename_strips_folders_and_traversal():
    assert sanitize_filename("../../etc/passwd") == "passwd"
    assert sanitize_filename("/abs/path/img.dcm") == "img.dcm"
    assert sanitize_filename("C:\\Users\\x\\a b.dcm") == "a_b.dcm"
    assert sanitize_filename("..") == "upload"
    assert sanitize_filename(".hidden") == "hidden"
    assert sanitize_filename("", fallback="f1") == "f1"
    assert sanitize_filename("x" * 300 + ".png").endswith(".png")
    assert len(sanitize_filename("x" * 300 + ".png")) <= 120


def test_sniff_kind_by_content():
    assert sniff_kind(b"\0" * 128 + b"DICM" + b"\0") == "dicom"
    assert sniff_kind(_png()) == "png"
    assert sniff_kind(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sniff_kind(b"hello world") is None


def test_is_loopback_hosts():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


def test_health_reports_model_and_classes(client):
    r = client.get("/api/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["model"] == "fake-clip"
    assert body["classes"] == ["A", "B", "C", "D"] and body["max_upload_mb"] == 1


def test_index_serves_the_page_and_static_assets(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert 'id="drop"' in r.text and "/static/app.js" in r.text
    assert "http://" not in r.text and "https://" not in r.text  # offline: no CDN
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "/api/predict" in js.text
    assert client.get("/static/style.css").status_code == 200


def test_predict_single_file(client, fake):
    r = client.post("/api/predict", files=[("files", ("img_L_CC.png", _png(250), "image/png"))])
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["images"]) == 1
    img = body["images"][0]
    assert img["file"] == "img_L_CC.png" and img["pred"] == "D" and img["dense"] is True
    assert sum(img["probs"].values()) == pytest.approx(1.0, abs=1e-5)
    assert img["description"] == "extremely dense"
    assert img["overlay"].startswith("data:image/png;base64,")
    png = base64.b64decode(img["overlay"].split(",", 1)[1])
    assert Image.open(io.BytesIO(png)).size == (8, 8)
    assert body["exams"][0]["pred"] == "D" and body["errors"] == []
    assert fake.seen_existing == [True]


def test_predict_multiple_files_and_temp_cleanup(client, fake):
    files = [
        ("files", ("a_L_CC.png", _png(10), "image/png")),
        ("files", ("a_R_CC.png", _png(20), "image/png")),
        ("files", ("a_L_CC.png", _png(30), "image/png")),  # duplicate name kept apart
    ]
    r = client.post("/api/predict", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [i["file"] for i in body["images"]] == ["a_L_CC.png", "a_R_CC.png", "a_L_CC-1.png"]
    assert {b["laterality"] for b in body["breasts"]} == {"L", "R"}
    assert body["exams"][0]["pred"] == "A"
    paths = fake.calls[0]
    assert len({p.parent for p in paths}) == 1
    assert not paths[0].parent.exists()  # per-request temp dir removed


def test_predict_traversal_filename_stays_in_temp_dir(client, fake):
    r = client.post(
        "/api/predict",
        files=[
            ("files", ("../../etc/passwd_L.png", _png(), "image/png")),
            ("files", ("/tmp/abs_R.png", _png(), "image/png")),
        ],
    )
    assert r.status_code == 200, r.text
    names = [p.name for p in fake.calls[0]]
    assert names == ["passwd_L.png", "abs_R.png"]
    tmp = fake.calls[0][0].parent
    assert all(p.parent == tmp for p in fake.calls[0])
    assert [i["file"] for i in r.json()["images"]] == names


@pytest.mark.parametrize("extra", [1000, 3 * 1024 * 1024], ids=["counted-while-streaming", "content-length"])
def test_predict_oversize_is_413(client, fake, extra):
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (1024 * 1024 + extra)
    r = client.post("/api/predict", files=[("files", ("big.png", big, "image/png"))])
    assert r.status_code == 413
    assert "limit is 1 MB" in r.json()["detail"]
    assert fake.calls == []


def test_predict_unsupported_file_listed_in_errors(client, fake):
    r = client.post(
        "/api/predict",
        files=[
            ("files", ("notes.txt", b"just text", "text/plain")),
            ("files", ("ok_L.png", _png(), "image/png")),
        ],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["errors"][0]["file"] == "notes.txt"
    assert "unsupported file type" in body["errors"][0]["reason"]
    assert [i["file"] for i in body["images"]] == ["ok_L.png"]
    assert [p.name for p in fake.calls[0]] == ["ok_L.png"]


def test_predict_only_unsupported_files_skips_predictor(client, fake):
    r = client.post("/api/predict", files=[("files", ("a.txt", b"x", "text/plain"))])
    assert r.status_code == 200
    assert r.json()["images"] == [] and len(r.json()["errors"]) == 1
    assert fake.calls == []


def test_predict_predictor_errors_reported_by_basename(client):
    # PNG magic but truncated body: the fake predictor cannot read it
    r = client.post("/api/predict", files=[("files", ("broken.png", b"\x89PNG\r\n\x1a\nxx", "image/png"))])
    assert r.status_code == 200
    assert r.json()["errors"] == [{"file": "broken.png", "reason": "cannot read image"}]


def test_predict_no_files_is_400(client):
    r = client.post("/api/predict", data={"x": "1"})
    assert r.status_code == 400 and "no files" in r.json()["detail"]


def test_predict_response_and_logs_hold_no_patient_identity(client, caplog):
    with caplog.at_level(logging.DEBUG, logger="mammolens.serve"):
        r = client.post("/api/predict", files=[("files", ("x_L.png", _png(), "image/png"))])
    assert r.status_code == 200
    assert SECRET_PATIENT not in r.text and "PID" not in r.text
    assert "patient_id" not in r.text
    assert r.json()["exams"][0]["study"] == "exam-1"
    assert r.json()["breasts"][0]["study"] == "exam-1"
    assert SECRET_PATIENT not in caplog.text
    assert "1 file(s)" in caplog.text


def test_create_app_rejects_nonpositive_limit(fake):
    with pytest.raises(ValueError, match="max_upload_mb"):
        create_app(fake, max_upload_mb=0)


def test_serve_cli_warns_on_public_host(tmp_path):
    from typer.testing import CliRunner

    from mammolens.cli import app

    res = CliRunner().invoke(app, ["serve", str(tmp_path / "no-run"), "--host", "0.0.0.0"])
    assert res.exit_code != 0  # no run there (or no predictor yet): clear error, no server
    assert "warning: binding to 0.0.0.0" in res.output
