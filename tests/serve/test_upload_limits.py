"""Per-request limits of the web upload (issue 20): a pixel budget over all files, a cap on files, and an
aborted upload that logs one line."""

import asyncio
import logging
import struct
import zlib

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from mammolens.serve.app import create_app  # noqa: E402
from mammolens.serve.upload import (  # noqa: E402
    MAX_FILES,
    REQUEST_MAX_PIXELS,
    PixelBudget,
    UploadAborted,
    receive_files,
)

BASE = "http://127.0.0.1:8000"


def _png_header(width: int, height: int, bits: int = 16) -> bytes:
    """A PNG whose header declares ``width × height`` grey pixels (its data is a stub: nothing decodes it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bits, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class Recorder:
    def __init__(self):
        self.calls = []

    def predict_files(self, paths):
        self.calls.append([p.name for p in paths])
        return {"images": [], "breasts": [], "exams": [], "errors": [], "classes": ["A", "B", "C", "D"]}


def test_pixel_budget_counts_every_file_of_a_request():
    budget = PixelBudget(100_000_000)
    assert budget.take((5000, 5000, 2)) is None and budget.used == 50_000_000
    reason = budget.take((10000, 6000, 1))
    assert "request" in reason and "100 M pixels" in reason and budget.used == 50_000_000  # refused: not counted
    assert budget.take((5000, 10000, 1)) is None and budget.used == 100_000_000


def test_request_pixel_budget_refuses_files_past_it_before_decoding():
    rec = Recorder()
    client = TestClient(create_app(rec), base_url=BASE)
    big = _png_header(9000, 9000)  # 81 M pixels each: under the per-file limit, three are over the request's
    assert 2 * 81_000_000 <= REQUEST_MAX_PIXELS < 3 * 81_000_000
    r = client.post("/api/predict", files=[("files", (f"b{i}.png", big, "image/png")) for i in range(3)])
    assert r.status_code == 200, r.text
    errors = r.json()["errors"]
    assert [e["file"] for e in errors] == ["b2.png"] and "this request" in errors[0]["reason"]
    assert rec.calls == [["b0.png", "b1.png"]]


def test_files_per_request_are_capped():
    rec = Recorder()
    client = TestClient(create_app(rec), base_url=BASE)
    small = _png_header(8, 8)
    r = client.post("/api/predict", files=[("files", (f"f{i}.png", small, "image/png")) for i in range(MAX_FILES + 1)])
    assert r.status_code == 413 and str(MAX_FILES) in r.json()["detail"]
    assert rec.calls == []


def test_aborted_upload_logs_one_line_not_a_traceback(tmp_path, caplog):
    from starlette.requests import ClientDisconnect

    async def body():
        yield b"--xyz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
        yield b"\x89PNG" + b"\0" * 100
        raise ClientDisconnect()

    async def run():
        return await receive_files(body(), "multipart/form-data; boundary=xyz", tmp_path, max_bytes=10**6,
                                   max_body=10**6)

    with caplog.at_level(logging.INFO, logger="mammolens.serve"), pytest.raises(UploadAborted):
        asyncio.run(run())
    lines = [r for r in caplog.records if "aborted" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None and "\n" not in lines[0].getMessage()
