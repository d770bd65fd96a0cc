"""The dashboard's HTTP server: the page, its static files and three JSON routes (SHELL).

Routes (all GET):

* ``/``: the page (``static/index.html``); ``/static/NAME``: its script and style, read
  from the package (they ship in the wheel; the page needs no network);
* ``/api/net``: the net's layout (:func:`nets.layout.layout_net`), each place's fields
  and the sampling interval, fetched once by the page;
* ``/api/state``: the latest :class:`~cluster.dashboard.snapshot.Snapshot`, polled;
* ``/api/tokens?place=P&limit=N``: the tokens of one place, asked of the shards.

Token values come from users; the page inserts them as text only. The responses add a
Content-Security-Policy that allows no inline script at all, so that even a page bug
could not run markup taken from a token. A server bound to loopback also refuses a
``Host`` that is not a loopback name: a web page elsewhere cannot reach it through a
DNS name rebound to 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from cluster.dashboard.sampler import Sampler
from nets.errors import CpnError
from router.endpoints import is_loopback

STATIC_FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
TOKENS_LIMIT_DEFAULT: Final = 100


class _ThreadingHTTPServer6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def static_file(name: str) -> bytes:
    """The bytes of package data file ``static/NAME`` (one of :data:`STATIC_FILES`)."""
    assert name in STATIC_FILES, name
    return (resources.files("cluster.dashboard") / "static" / name).read_bytes()


class DashboardServer:
    """Serves the dashboard on ``(host, port)`` from ``sampler``, in a thread per request.

    Port 0 picks a free port; :attr:`url` says which. :meth:`serve_forever` blocks until
    :meth:`shutdown` (from another thread) or an exception; :meth:`close` frees the port.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sampler: Sampler,
        net_json: Mapping[str, Any],
        allow_remote: bool,
    ) -> None:
        files = {name: static_file(name) for name in STATIC_FILES}
        net_body = json.dumps(net_json).encode()
        handler = _handler(sampler, files, net_body, check_host=not allow_remote)
        server_class = _ThreadingHTTPServer6 if ":" in host else ThreadingHTTPServer
        self._server = server_class((host, port), handler)
        self._server.daemon_threads = True
        self._shutdown_lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = (str(part) for part in self._server.server_address[:2])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        with self._shutdown_lock:
            self._server.shutdown()

    def close(self) -> None:
        self._server.server_close()


def _handler(
    sampler: Sampler, files: Mapping[str, bytes], net_body: bytes, *, check_host: bool
) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to this dashboard's sampler and files."""
    routes: dict[str, Callable[[Mapping[str, list[str]]], tuple[int, str, bytes]]] = {
        "/": lambda _query: (HTTPStatus.OK, STATIC_FILES["index.html"], files["index.html"]),
        "/api/net": lambda _query: (HTTPStatus.OK, "application/json", net_body),
        "/api/state": lambda _query: _json(HTTPStatus.OK, sampler.snapshot().to_json()),
        "/api/tokens": lambda query: _tokens(sampler, query),
    }
    for name, content_type in STATIC_FILES.items():
        routes[f"/static/{name}"] = _fixed(content_type, files[name])

    class Handler(BaseHTTPRequestHandler):
        server_version = "cpn-dashboard"

        def do_GET(self) -> None:
            if check_host and not _loopback_host(self.headers.get("Host", "")):
                self._send(*_json(HTTPStatus.FORBIDDEN, {"error": "not a loopback Host"}))
                return
            parts = urlsplit(self.path)
            route = routes.get(parts.path)
            if route is None:
                self._send(*_json(HTTPStatus.NOT_FOUND, {"error": f"no page {parts.path!r}"}))
                return
            self._send(*route(parse_qs(parts.query)))

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Requests are not logged: the page polls several times a second."""

    return Handler


def _fixed(content_type: str, body: bytes) -> Callable[[object], tuple[int, str, bytes]]:
    return lambda _query: (HTTPStatus.OK, content_type, body)


def _json(status: int, value: object) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(value, default=repr).encode()


def _tokens(sampler: Sampler, query: Mapping[str, list[str]]) -> tuple[int, str, bytes]:
    place = query.get("place", [""])[0]
    try:
        limit = int(query.get("limit", [str(TOKENS_LIMIT_DEFAULT)])[0])
    except ValueError:
        return _json(HTTPStatus.BAD_REQUEST, {"error": "limit must be an integer"})
    if not place:
        return _json(HTTPStatus.BAD_REQUEST, {"error": "which place? ?place=NAME"})
    try:
        entries = sampler.tokens(place, limit=limit)
    except CpnError as exc:
        return _json(HTTPStatus.NOT_FOUND, {"place": place, "error": str(exc)})
    total = sampler.snapshot().places.get(place, len(entries))
    return _json(
        HTTPStatus.OK,
        {
            "place": place,
            "total": total,
            "tokens": [
                {"shard": shard_id, "time_ms": time_ms, "fields": list(fields)}
                for shard_id, time_ms, fields in entries
            ],
        },
    )


def _loopback_host(header: str) -> bool:
    """Whether a ``Host`` header names a loopback address (any port)."""
    host = header.strip()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    else:
        host = host.rsplit(":", 1)[0]
    return is_loopback(host)
