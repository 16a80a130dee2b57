"""Browser-facing protections of the local web app: Host and Origin checks, security headers.

The server has no authentication and listens on loopback, so what must be stopped is a foreign web
page in the user's own browser making it work: by DNS rebinding (the foreign name resolves to
127.0.0.1, the browser sends ``Host: evil.example``) or by a cross-site POST (``Origin`` of another
site). Every response also tells the browser not to sniff types, not to frame the page and not to
leak the address in a Referer.
"""

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["CSP", "DOCS_CSP", "LOCAL_HOSTS", "SecurityMiddleware", "split_host"]

LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# the page loads /static/app.js and /static/style.css and shows overlays as data: URLs
CSP = "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
# the opt-in /docs and /redoc pages run inline scripts from a CDN: they keep only the framing rule
DOCS_CSP = "frame-ancestors 'none'"
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
_DOCS_HEADERS = [(k, DOCS_CSP.encode() if k == b"content-security-policy" else v) for k, v in _HEADERS]
_NO_STORE = (b"cache-control", b"no-store")
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def split_host(value: str) -> tuple[str, int | None]:
    """``"Example.org:8000"`` → ``("example.org", 8000)``; ``"[::1]"`` → ``("[::1]", None)``.

    Raises:
        ValueError: not a ``host[:port]`` (e.g. an unbracketed IPv6 address or a bad port).
    """
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        host, rest = value[: end + 1], value[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            raise ValueError(f"not a host[:port]: {value!r}")
        port = rest[1:] if rest else None
    else:
        host, sep, port = value.partition(":")
        port = port if sep else None
        if ":" in (port or ""):
            raise ValueError(f"not a host[:port]: {value!r}")
    if not host or (port is not None and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError(f"not a host[:port]: {value!r}")
    return host, int(port) if port is not None else None


class SecurityMiddleware:
    """ASGI middleware: refuse foreign Host (400) and cross-origin writes (403); add headers.

    Args:
        app: the ASGI app to wrap.
        allowed_hosts: ``host`` (any port) or ``host:port`` entries the Host header may name.
        docs_paths: paths served with :data:`DOCS_CSP` instead of :data:`CSP`.

    Raises:
        ValueError: ``allowed_hosts`` is empty or holds a malformed entry.
    """

    def __init__(self, app, allowed_hosts: Iterable[str] = LOCAL_HOSTS, docs_paths: Iterable[str] = ()):
        self.app = app
        self.allowed = [split_host(h) for h in allowed_hosts]
        if not self.allowed:
            raise ValueError("allowed_hosts is empty: no request could reach the server")
        self.docs_paths = frozenset(docs_paths)

    def _host_ok(self, host_port: tuple[str, int]) -> bool:
        return any(h == host_port[0] and (p is None or p == host_port[1]) for h, p in self.allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        default_port = _DEFAULT_PORTS.get(scope.get("scheme", "http"), 80)
        try:
            host, port = split_host(headers.get("host", ""))
            host_port = (host, port or default_port)
        except ValueError:
            host_port = None
        if host_port is None or not self._host_ok(host_port):
            # DNS rebinding: a foreign name that resolves to this machine
            names = ", ".join(_show(h, p) for h, p in self.allowed)
            detail = (
                f"Host header not allowed: this server answers only to {names} "
                "(start it with --allowed-host NAME to add a name)"
            )
            return await _refuse(send, 400, detail)
        origin = headers.get("origin")
        if origin is not None and scope["method"] not in _SAFE_METHODS and not _same_origin(origin, host_port):
            detail = "cross-origin request refused: uploads are accepted only from this server's own page"
            return await _refuse(send, 403, detail)
        extra = _DOCS_HEADERS if scope["path"] in self.docs_paths else _HEADERS
        if scope["path"].startswith("/api/"):
            extra = extra + [_NO_STORE]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k for k, _ in extra}
                kept = [h for h in message.get("headers", []) if h[0].lower() not in names]
                message = {**message, "headers": kept + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _same_origin(origin: str, host_port: tuple[str, int]) -> bool:
    """The Origin names the host and port the request was sent to (``"null"`` never does)."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https"):
        return False
    try:
        host, port = split_host(parts.netloc)
    except ValueError:
        return False
    return (host, port or _DEFAULT_PORTS[parts.scheme]) == host_port


def _show(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


async def _refuse(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + _HEADERS + [_NO_STORE]})
    await send({"type": "http.response.body", "body": body})
