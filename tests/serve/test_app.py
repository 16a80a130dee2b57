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


BASE = "http://127.0.0.1:8000"  # a local Host: TestClient's default "testserver" is refused


@pytest.fixture
def client(fake):
    return TestClient(create_app(fake, max_upload_mb=1), base_url=BASE)


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


# --- limits enforced while streaming (bytes) and from headers (pixels) -------------------------


def _asgi_post(app, body_chunks, headers: dict[str, str], on_receive=None):
    """POST straight through the ASGI interface, one ``http.request`` message per chunk.

    TestClient reads a generator body whole before the app sees it; here the app pulls chunk by
    chunk, so what it read before answering is exact. Returns (status, headers, body, bytes pulled).
    """
    import asyncio

    chunks = iter(body_chunks)
    pulled = 0
    sent: list[dict] = []

    async def receive():
        nonlocal pulled
        if on_receive is not None:
            on_receive()
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/predict",
        "raw_path": b"/api/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict((k.decode(), v.decode()) for k, v in start["headers"]), body, pulled


def _multipart_chunks(name: str, payload_bytes: int, chunk: int = 64 * 1024, boundary: str = "XyZ123"):
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + b"\x89PNG\r\n\x1a\n"
    for _ in range(payload_bytes // chunk):
        yield b"\0" * chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def test_predict_chunked_body_over_limit_stops_reading(fake, tmp_path, monkeypatch):
    import json
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the app's per-request folders land here
    app = create_app(fake, max_upload_mb=1)
    chunk, limit = 64 * 1024, 1024 * 1024
    on_disk = []

    def disk_bytes():
        on_disk.append(sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()))

    status, headers, body, pulled = _asgi_post(
        app,
        _multipart_chunks("big.png", 16 * limit, chunk),  # 16 MB, no Content-Length (chunked)
        {"host": "127.0.0.1:8000", "content-type": "multipart/form-data; boundary=XyZ123"},
        on_receive=disk_bytes,
    )
    assert status == 413
    assert "limit is 1 MB" in json.loads(body)["detail"]
    assert pulled <= limit + 64 * 1024 + 2 * chunk  # stopped at the limit, not after 16 MB
    assert max(on_disk) <= limit  # never more than the limit written to disk
    assert list(tmp_path.iterdir()) == []  # per-request folder removed
    assert fake.calls == []


def test_predict_chunked_body_within_limit_is_received(fake):
    import json

    status, _, body, pulled = _asgi_post(
        create_app(fake, max_upload_mb=1),
        [b'--B\r\nContent-Disposition: form-data; name="files"; filename="x_L.png"\r\n\r\n', _png(90), b"\r\n--B--\r\n"],
        {"host": "127.0.0.1:8000", "content-type": "multipart/form-data; boundary=B"},
    )
    assert status == 200, body
    assert [i["file"] for i in json.loads(body)["images"]] == ["x_L.png"]
    assert [p.name for p in fake.calls[0]] == ["x_L.png"]


def test_predict_malformed_multipart_is_400(client, fake):
    r = client.post(
        "/api/predict",
        content=b"--B\r\nno headers end here",
        headers={"content-type": "multipart/form-data; boundary=B"},
    )
    assert r.status_code == 400, r.text
    assert fake.calls == []


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG of zeros: ~160 KB on the wire for 13000×13000 declared pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    block = b"\0" * ((width + 1) * 1000)  # filter byte + row, 1000 rows at a time
    idat = b"".join(comp.compress(block) for _ in range(height // 1000))
    idat += comp.compress(b"\0" * ((width + 1) * (height % 1000))) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_predict_png_declaring_huge_size_refused_from_header(fake):
    import time
    import tracemalloc

    bomb = _png_bomb(13000, 13000)
    assert len(bomb) < 400_000
    client = TestClient(create_app(fake, max_upload_mb=5), base_url=BASE)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        r = client.post(
            "/api/predict",
            files=[("files", ("bomb_L_CC.png", bomb, "image/png")), ("files", ("ok_R_CC.png", _png(), "image/png"))],
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 10
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["errors"][0]["file"] == "bomb_L_CC.png"
    reason = body["errors"][0]["reason"]
    assert "13000×13000 = 169 M pixels" in reason and "limit of 100 M pixels" in reason and "--max-pixels" in reason
    assert [p.name for p in fake.calls[0]] == ["ok_R_CC.png"]  # the other file still predicted
    assert [i["file"] for i in body["images"]] == ["ok_R_CC.png"]
    assert peak < 40 * 1024 * 1024  # decoding it would take 169 MB


def test_predict_pixel_limit_counts_dicom_frames(fake, tmp_path, monkeypatch):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.13.1.3"  # breast tomosynthesis
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns, ds.NumberOfFrames = 2000, 1500, 50  # 150 M pixels declared
    ds.BitsAllocated, ds.SamplesPerPixel = 16, 1
    ds.PixelData = b"\0\0" * 16  # the header lies: decoding never starts
    path = tmp_path / "dbt.dcm"
    ds.save_as(path, enforce_file_format=True)
    monkeypatch.setenv("MAMMOLENS_MAX_PIXELS", "100000000")  # the reader's whole-file budget
    client = TestClient(create_app(fake, max_pixels=100_000_000), base_url=BASE)
    r = client.post("/api/predict", files=[("files", ("dbt.dcm", path.read_bytes(), "application/dicom"))])
    assert r.status_code == 200, r.text
    assert r.json()["errors"][0]["file"] == "dbt.dcm"
    assert "1500×2000×50 frames = 150 M pixels in all" in r.json()["errors"][0]["reason"]
    assert fake.calls == []
    # frames count against the reader's budget (default 1.2 G pixels), not the per-frame area limit
    monkeypatch.delenv("MAMMOLENS_MAX_PIXELS")
    client = TestClient(create_app(fake, max_pixels=100_000_000), base_url=BASE)
    client.post("/api/predict", files=[("files", ("dbt.dcm", path.read_bytes(), "application/dicom"))])
    assert [p.name for p in fake.calls[0]] == ["dbt.dcm"]


def test_create_app_rejects_nonpositive_max_pixels(fake):
    with pytest.raises(ValueError, match="max_pixels"):
        create_app(fake, max_pixels=0)


def test_serve_cli_passes_limits_hosts_and_docs_flags(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import mammolens.inference
    import mammolens.serve.app
    from mammolens.cli import app

    got = {}
    monkeypatch.setattr(mammolens.inference.Predictor, "from_run", classmethod(lambda cls, run: FakePredictor()))
    monkeypatch.setattr(mammolens.serve.app, "serve", lambda predictor, **kw: got.update(kw))
    args = ["serve", str(tmp_path), "--port", "9000", "--max-pixels", "5000000", "--allowed-host", "mammo.lan"]
    res = CliRunner().invoke(app, [*args, "--allowed-host", "proxy:443", "--api-docs"])
    assert res.exit_code == 0, res.output
    assert got["max_pixels"] == 5_000_000 and got["api_docs"] is True
    assert list(got["allowed_hosts"]) == ["mammo.lan", "proxy:443"] and got["port"] == 9000
    res = CliRunner().invoke(app, ["serve", str(tmp_path)])
    assert got["max_pixels"] == 100_000_000 and got["api_docs"] is False and list(got["allowed_hosts"]) == []
    res = CliRunner().invoke(app, ["serve", str(tmp_path), "--allowed-host", "a:b:c"])
    assert res.exit_code == 2 and "--allowed-host" in res.output
