"""Tests for mammolens.serve.security: Host/Origin checks, security headers, API docs off by default."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from mammolens.serve.app import STATIC_DIR, create_app, served_hosts  # noqa: E402
from mammolens.serve.security import CSP, split_host  # noqa: E402

BASE = "http://127.0.0.1:8000"


class Recorder:
    """Predictor protocol: records calls, predicts nothing."""

    model_name = "rec"
    classes = ["A", "B", "C", "D"]

    def __init__(self):
        self.calls = []

    def predict_files(self, paths):
        self.calls.append(list(paths))
        return {"images": [], "breasts": [], "exams": [], "errors": [], "classes": self.classes}


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32  # sniffed as PNG; header unreadable, so the predictor is called


@pytest.fixture
def rec():
    return Recorder()


@pytest.fixture
def client(rec):
    return TestClient(create_app(rec), base_url=BASE)


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/static/style.css", "/api/health"])
def test_security_headers_on_every_response(client, path):
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    csp = r.headers["content-security-policy"]
    assert csp == CSP
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "img-src 'self' data: blob:" in csp
    assert (r.headers.get("cache-control") == "no-store") == path.startswith("/api/")


def test_security_headers_on_errors_and_predictions(client):
    for r in (
        client.post("/api/predict", files=[("files", ("a_L.png", PNG, "image/png"))]),
        client.post("/api/predict", data={"x": "1"}),  # 400 from the handler
        client.get("/api/nope"),  # 404
        client.get("/", headers={"host": "evil.example"}),  # 400 from the middleware
    ):
        assert r.headers["x-content-type-options"] == "nosniff", r.status_code
        assert r.headers["content-security-policy"] == CSP
    assert r.headers["cache-control"] == "no-store"


def test_page_needs_nothing_the_csp_forbids():
    # CSP default-src 'self' blocks inline scripts, inline event handlers and inline style attributes
    html = (STATIC_DIR / "index.html").read_text()
    js = (STATIC_DIR / "app.js").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert re.findall(r"\son[a-z]+\s*=", html) == [] and "style=" not in html and "<style" not in html
    assert "innerHTML" not in js and "eval(" not in js and "setAttribute(\"style\"" not in js
    assert re.findall(r"(?:src|href)=\"(?!/static/)", html) == []  # only same-origin assets


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "testserver", "127.0.0.1.nip.io:8000", "[::1", "a:b:c"]
)
def test_foreign_host_is_refused(client, rec, host):
    r = client.get("/api/health", headers={"host": host})
    assert r.status_code == 400
    assert "Host header not allowed" in r.json()["detail"] and "--allowed-host" in r.json()["detail"]
    r = client.post("/api/predict", headers={"host": host}, files=[("files", ("a.png", PNG, "image/png"))])
    assert r.status_code == 400 and rec.calls == []


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.1"])
def test_local_hosts_are_allowed(client, host):
    assert client.get("/api/health", headers={"host": host}).status_code == 200


def test_allowed_hosts_with_port_match_exactly(rec):
    app = create_app(rec, allowed_hosts=served_hosts("127.0.0.1", 8000, ["mammo.lan", "proxy.example:443"]))
    client = TestClient(app, base_url=BASE)
    ok = ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "mammo.lan:8000", "proxy.example:443"]
    for host in ok:
        assert client.get("/api/health", headers={"host": host}).status_code == 200, host
    for host in ["127.0.0.1:9000", "mammo.lan", "mammo.lan:9000", "proxy.example:8000", "evil.example:8000"]:
        assert client.get("/api/health", headers={"host": host}).status_code == 400, host


def test_served_hosts():
    assert served_hosts("127.0.0.1", 8000) == ["localhost:8000", "127.0.0.1:8000", "[::1]:8000"]
    assert served_hosts("0.0.0.0", 80, ["Box.lan"]) == ["localhost:80", "127.0.0.1:80", "[::1]:80", "box.lan:80"]
    assert served_hosts("192.168.1.5", 8000)[-1] == "192.168.1.5:8000"
    assert served_hosts("fe80::1", 8000)[-1] == "[fe80::1]:8000"
    with pytest.raises(ValueError, match="host"):
        served_hosts("127.0.0.1", 8000, ["a:b:c"])


def test_split_host():
    assert split_host("Example.org:8000") == ("example.org", 8000)
    assert split_host("[::1]") == ("[::1]", None)
    assert split_host("[::1]:80") == ("[::1]", 80)
    for bad in ["", "::1", "a:", "a:99999", "[::1]x", "[::1"]:
        with pytest.raises(ValueError):
            split_host(bad)


@pytest.mark.parametrize("origin", ["https://evil.example", "http://127.0.0.1:9000", "http://localhost:8000", "null"])
def test_cross_origin_post_is_refused(client, rec, origin):
    r = client.post("/api/predict", headers={"origin": origin}, files=[("files", ("a_L.png", PNG, "image/png"))])
    assert r.status_code == 403
    assert "cross-origin" in r.json()["detail"]
    assert rec.calls == []


@pytest.mark.parametrize("origin", [None, "http://127.0.0.1:8000", "HTTP://127.0.0.1:8000"])
def test_same_origin_or_no_origin_post_is_accepted(client, rec, origin):
    headers = {"origin": origin} if origin else {}
    r = client.post("/api/predict", headers=headers, files=[("files", ("a_L.png", PNG, "image/png"))])
    assert r.status_code == 200, r.text
    assert [p.name for p in rec.calls[0]] == ["a_L.png"]


def test_origin_default_port_matches_host_without_port(rec):
    client = TestClient(create_app(rec), base_url="http://localhost")
    files = [("files", ("a.png", PNG, "image/png"))]
    r = client.post("/api/predict", headers={"origin": "http://localhost"}, files=files)
    assert r.status_code == 200, r.text


def test_cross_origin_get_is_not_blocked(client):
    # reads are harmless: a foreign page cannot read the answer (no CORS headers), only the Host check applies
    assert client.get("/api/health", headers={"origin": "https://evil.example"}).status_code == 200


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_api_docs_off_by_default_and_on_when_asked(rec, path):
    assert TestClient(create_app(rec), base_url=BASE).get(path).status_code == 404
    r = TestClient(create_app(rec, api_docs=True), base_url=BASE).get(path)
    assert r.status_code == 200
    if path == "/openapi.json":
        assert "/api/predict" in r.json()["paths"]


def test_api_docs_pages_keep_framing_rule_only(rec):
    client = TestClient(create_app(rec, api_docs=True), base_url=BASE)
    assert client.get("/docs").headers["content-security-policy"] == "frame-ancestors 'none'"  # CDN scripts
    assert client.get("/openapi.json").headers["content-security-policy"] == CSP
    assert client.get("/").headers["content-security-policy"] == CSP


def test_create_app_rejects_bad_allowed_hosts(rec):
    with pytest.raises(ValueError, match="allowed_hosts"):
        create_app(rec, allowed_hosts=[])
    with pytest.raises(ValueError, match="host"):
        create_app(rec, allowed_hosts=["a:b:c"])
