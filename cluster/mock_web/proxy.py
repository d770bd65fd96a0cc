"""Mock HTTP forward proxies on loopback, for the crawler's proxy tests (SHELL).

A crawler configured with proxies sends each request through one of them; the issue's
tests check from the *proxies'* side that every proxy's minimum interval between request
starts held. :class:`MockProxies` runs several such proxies in background threads of this
process, forwards what they receive to the mock web (:mod:`cluster.mock_web.web`) and logs every
request, like the mock web logs its own.

Theory of operation
-------------------
* **Forward proxies, plain HTTP.** Proxy ``k`` (named ``proxy-k``) listens on its own port
  of 127.0.0.1. It accepts absolute-form requests (``GET http://127.0.1.3:PORT/p/2.html
  HTTP/1.1``), GET and HEAD only: an origin-form or non-``http`` request target answers
  400, any other method (``CONNECT`` included: no tunnels) 405. Only literal addresses in
  127.0.0.0/8 are forwarded; any other target (a name, ``::1``, the internet) answers 403,
  so nothing this module does can leave the machine and no name is ever resolved.
* **Forwarding.** One upstream connection per request (``Connection: close``), with the
  hop-by-hop headers of RFC 9110 section 7.6.1 removed both ways and a ``Via`` header
  added. An upstream that refuses, resets or answers garbage gives 502; one that does not
  answer within ``upstream_timeout_s`` gives 504. Request bodies are never read nor
  forwarded: a request announcing one gets its answer and the connection closes.
* **Relaying, streamed and bounded.** The answer is copied in chunks of at most 64 KiB,
  never held whole. A body of known length (``Content-Length``, at most
  ``relay_bytes_max``) keeps the client connection alive; any other body (close-delimited,
  chunked, or larger than the bound) is relayed without ``Content-Length`` and the
  connection closes after it, so a client can stop reading at its own limit. At most
  ``relay_bytes_max`` body bytes are relayed per answer.
* **Threads and stop.** As in :class:`cluster.mock_web.web.MockWeb`: one acceptor thread
  selects over every listener and a wake-up socket pair; each client connection gets a
  handler thread; at most ``connections_max`` client connections are open at once.
  :meth:`MockProxies.stop` shuts every client *and upstream* connection down, so no
  relay outlives it, and joins every thread.
* **The log.** Every request for which a method was parsed is recorded once its answer is
  written: see :class:`ProxyRecord`. The newest ``log_records_max`` stay in memory, and
  every record is appended to ``log_path`` as one JSON line, flushed, when one is given.
  :func:`min_start_gap_ns`, :func:`max_concurrency` and :func:`interval_violations` answer
  per proxy what :mod:`cluster.mock_web.log` answers per host.
* **Unreachable proxies.** ``unreachable=N`` reserves N more ports on 127.0.0.1 with
  sockets that are bound but never listen: connecting to one is refused (the kernel
  answers RST) for as long as the proxies run, and no other process can take the port.

Run them as their own process for the demo::

    python -m cluster.mock_web.proxy --proxies 3 --unreachable 1 --out DIR

writes ``DIR/proxies.txt`` (one proxy URL a line, the unreachable ones last; atomically,
once every proxy listens), logs requests to ``DIR/proxy_requests.jsonl`` and serves until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import contextlib
import email.message
import http.client
import ipaddress
import itertools
import logging
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import click

from cluster.mock_web.log import max_concurrency_by, min_start_gap_ns_by, spans_by
from cluster.mock_web.server import LoopbackHandler, LoopbackServers
from cluster.mock_web.site import STREAM_CHUNK_BYTES, MockWebError
from cluster.mock_web.web import (
    BACKLOG,
    CONNECTIONS_MAX,
    IDLE_TIMEOUT_S,
    LOG_RECORDS_MAX,
    STOP_TIMEOUT_S,
)

LOG = logging.getLogger(__name__)

PROXIES_MAX: Final = 256
UPSTREAM_TIMEOUT_S: Final = 10.0
RELAY_BYTES_MAX: Final = 1 << 30  # 1 GiB per answer: streamed, never held in memory
PROXIES_FILE: Final = "proxies.txt"
PROXY_REQUESTS_FILE: Final = "proxy_requests.jsonl"
TARGET_NETWORK: Final = ipaddress.ip_network("127.0.0.0/8")
# RFC 9110 section 7.6.1, plus the de-facto Proxy-Connection and Keep-Alive.
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)


@dataclass(frozen=True)
class ProxyRecord:
    """One request a mock proxy answered, as its log holds it.

    ``proxy`` is the proxy's name, ``target`` the netloc the request named, forwarded or
    refused (``""`` when the request target had none), ``path`` the request target as
    received. Times as in
    :class:`cluster.mock_web.log.RequestRecord`: monotonic ``start_ns`` (request parsed)
    and ``end_ns`` (answer relayed), ``start_wall_ms`` since the Unix epoch. ``status``
    is what the client got: the upstream's status, or the proxy's own 400, 403, 405, 502
    or 504; 0 when the client went away before the answer's head was written.
    ``bytes_sent`` counts the body bytes relayed.
    """

    proxy: str
    target: str
    method: str
    path: str
    start_ns: int
    end_ns: int
    start_wall_ms: int
    status: int
    client: str
    bytes_sent: int

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _proxy(record: ProxyRecord) -> str:
    return record.proxy


def min_start_gap_ns(records: Iterable[ProxyRecord]) -> dict[str, int]:
    """Per proxy with two requests or more: the smallest gap between consecutive starts."""
    return min_start_gap_ns_by(records, _proxy)


def max_concurrency(records: Iterable[ProxyRecord]) -> dict[str, int]:
    """Per proxy: the most requests in progress at once, each over [start_ns, end_ns)."""
    return max_concurrency_by(records, _proxy)


def interval_violations(
    records: Iterable[ProxyRecord], interval_ms: int | Mapping[str, int]
) -> tuple[tuple[ProxyRecord, ProxyRecord], ...]:
    """Consecutive request starts at one proxy closer than its minimum interval.

    ``interval_ms`` is one interval for all proxies or one per proxy name (a proxy not in
    the mapping has no minimum). Returns the offending (earlier, later) pairs.
    """
    found = []
    for name, ordered in spans_by(records, _proxy).items():
        gap_ms = interval_ms if isinstance(interval_ms, int) else interval_ms.get(name, 0)
        for first, second in itertools.pairwise(ordered):
            if second.start_ns - first.start_ns < gap_ms * 1_000_000:
                found.append((first, second))
    return tuple(found)


@dataclass(frozen=True)
class MockProxiesStatistics:
    requests: int  # recorded since start, dropped ones included
    requests_dropped: int  # recorded but no longer in memory (log_records_max)
    by_status: dict[int, int]
    by_proxy: dict[str, int]
    connections_open: int  # client connections
    connections_total: int
    handler_errors: int


class MockProxies(LoopbackServers[ProxyRecord]):
    """Forward proxies on loopback, served from background threads of this process.

    Use as a context manager (``with MockProxies(3) as proxies: ...``) or call
    :meth:`start` and :meth:`stop`. :attr:`urls` and :attr:`unreachable_urls` are known
    once started.

    Args:
        proxies: how many working proxies (named ``proxy-0``, ``proxy-1``, ...).
        unreachable: how many more URLs to reserve on which nothing listens.
        log_path: a file to append every request to as JSON Lines.
        connections_max: open client connections at most, over all proxies.
        log_records_max: records kept in memory for :meth:`requests`.
        idle_timeout_s: a client connection idle (or not reading) this long is closed.
        upstream_timeout_s: connect and read timeout towards the target (then 504).
        relay_bytes_max: body bytes relayed per answer at most.

    Raises:
        MockWebError: an option out of range (naming it and the range).
    """

    _kind = "mock proxy"
    _kinds = "mock proxies"
    _thread_prefix = "mockproxy"
    _stop_timeout_s = STOP_TIMEOUT_S

    def __init__(
        self,
        proxies: int,
        *,
        unreachable: int = 0,
        log_path: Path | None = None,
        connections_max: int = CONNECTIONS_MAX,
        log_records_max: int = LOG_RECORDS_MAX,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        upstream_timeout_s: float = UPSTREAM_TIMEOUT_S,
        relay_bytes_max: int = RELAY_BYTES_MAX,
    ) -> None:
        if min(proxies, unreachable) < 0 or not 1 <= proxies + unreachable <= PROXIES_MAX:
            raise MockWebError(
                f"mock proxies proxies={proxies}, unreachable={unreachable}: expected counts "
                f">= 0 with 1 .. {PROXIES_MAX} in all"
            )
        if (
            connections_max < 1
            or log_records_max < 1
            or idle_timeout_s <= 0
            or upstream_timeout_s <= 0
            or relay_bytes_max < 0
        ):
            raise MockWebError(
                f"mock proxies connections_max={connections_max}, log_records_max="
                f"{log_records_max}, idle_timeout_s={idle_timeout_s}, upstream_timeout_s="
                f"{upstream_timeout_s}, relay_bytes_max={relay_bytes_max}: expected positive "
                "values (relay_bytes_max may be 0)"
            )
        super().__init__(
            log_path=log_path,
            log_records_max=log_records_max,
            connections_max=connections_max,
            idle_timeout_s=idle_timeout_s,
        )
        self.names: Final = tuple(f"proxy-{k}" for k in range(proxies))
        self.upstream_timeout_s: Final = upstream_timeout_s
        self.relay_bytes_max: Final = relay_bytes_max
        self._unreachable = unreachable
        # Guarded by self._lock (the base class's); self._open holds client connections.
        self._by_proxy: Counter[str] = Counter()
        self._upstream: set[socket.socket] = set()
        self._reserved: list[socket.socket] = []  # bound, never listening
        self._urls: tuple[str, ...] = ()
        self._unreachable_urls: tuple[str, ...] = ()

    # -- life cycle: start(), stop() and `with` come from LoopbackServers --------------

    def _bind(self) -> None:
        """Bind every proxy and reserve the unreachable ports."""
        for _ in self.names:
            listener = socket.create_server(("127.0.0.1", 0), backlog=BACKLOG)
            listener.setblocking(False)
            self._listeners.append(listener)
        for _ in range(self._unreachable):
            reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._reserved.append(reserved)
            reserved.bind(("127.0.0.1", 0))  # never listen(): connecting is refused

    def _announce(self) -> None:
        self._urls = tuple(_url(listener) for listener in self._listeners)
        self._unreachable_urls = tuple(_url(reserved) for reserved in self._reserved)
        LOG.info("mock proxies serving: %s", " ".join(self.urls))

    def _connections_to_cut(self) -> set[socket.socket]:
        # Upstream connections too, so that no relay outlives stop().
        return self._open | self._upstream

    def _close_listeners(self) -> None:
        super()._close_listeners()
        for reserved in self._reserved:
            reserved.close()  # the unreachable ports are reserved until stop(), no longer

    # -- addresses ----------------------------------------------------------------------

    @property
    def urls(self) -> tuple[str, ...]:
        """``http://127.0.0.1:PORT`` of every working proxy, by index (as :attr:`names`)."""
        return self._urls

    @property
    def unreachable_urls(self) -> tuple[str, ...]:
        """URLs of reserved ports nothing listens on: connecting is refused until stop."""
        return self._unreachable_urls

    # -- the log: requests() and wait_requests() come from LoopbackServers --------------

    def statistics(self) -> MockProxiesStatistics:
        with self._lock:
            return MockProxiesStatistics(
                requests=self._records_total,
                requests_dropped=self._records_total - len(self._records),
                by_status=dict(sorted(self._by_status.items())),
                by_proxy=dict(sorted(self._by_proxy.items())),
                connections_open=len(self._open),
                connections_total=self._connections_total,
                handler_errors=self._handler_errors,
            )

    # -- internals ----------------------------------------------------------------------

    def _serve(self, connection: socket.socket, client: tuple[str, int], index: int) -> None:
        _Handler(connection, client, _Context(self, self.names[index]))  # type: ignore[arg-type]

    def _listener_name(self, index: int) -> str:
        return self.names[index]

    def _track_upstream(self, upstream: socket.socket) -> None:
        """Register an upstream socket so that stop() can cut it (cut now if stopping)."""
        with self._lock:
            self._upstream.add(upstream)
        if self._stopping.is_set():
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_RDWR)

    def _untrack_upstream(self, upstream: socket.socket) -> None:
        with self._lock:
            self._upstream.discard(upstream)

    def _count(self, record: ProxyRecord) -> None:
        self._by_proxy[record.proxy] += 1


def _url(bound: socket.socket) -> str:
    address, port = bound.getsockname()[:2]
    return f"http://{address}:{port}"


@dataclass(frozen=True)
class _Context:
    """What a handler needs: the proxies and the name of the one it answers for."""

    proxies: MockProxies
    name: str


class _Refused(Exception):
    """The proxy answers this request itself, with ``status``, and forwards nothing."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class _Target:
    netloc: str
    address: str
    port: int
    path: str  # origin-form: path and query


def parse_target(request_target: str) -> _Target:
    """The forwarding target of an absolute-form request target.

    Raises:
        _Refused: 400 when it is not ``http://ADDRESS[:PORT]/...``, 403 when the address
            is not a literal in 127.0.0.0/8.
    """
    try:
        parts = urlsplit(request_target)
    except ValueError as error:
        raise _Refused(400, f"bad request target {request_target}: {error}") from error
    if parts.scheme.lower() != "http" or not parts.netloc:
        raise _Refused(400, f"expected an absolute-form http:// request target: {request_target}")
    try:
        port = parts.port or 80
    except ValueError as error:
        raise _Refused(400, f"bad port in {request_target}: {error}") from error
    if parts.username is not None or not parts.hostname:
        raise _Refused(400, f"expected http://ADDRESS:PORT/PATH, got {request_target}")
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        address = None  # a name: never resolved
    if address is None or address not in TARGET_NETWORK:
        raise _Refused(403, f"target {parts.hostname} is not an address in {TARGET_NETWORK}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.netloc.lower(), str(address), port, path)


def _hop_by_hop(headers: email.message.Message) -> frozenset[str]:
    """The hop-by-hop header names, with those the Connection header lists."""
    listed = {
        token.strip().lower()
        for value in headers.get_all("Connection", [])
        for token in value.split(",")
    }
    return _HOP_BY_HOP | listed


class _Handler(LoopbackHandler):
    """Parses requests on one client connection and forwards them (GET and HEAD)."""

    server_version = "cpn-mockproxy/1"
    server: _Context  # type: ignore[assignment]

    def do_GET(self) -> None:  # noqa: N802 (the name BaseHTTPRequestHandler dispatches to)
        self._forward()

    def do_HEAD(self) -> None:  # noqa: N802 (as do_GET)
        self._forward()

    def _refuse(self) -> None:
        self._forward(allowed=False)

    def _forward(self, *, allowed: bool = True) -> None:
        proxies = self.server.proxies
        start_ns, start_wall_ms = time.monotonic_ns(), time.time_ns() // 1_000_000
        if "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # a body, unread, must not parse as a request
        target = ""  # the netloc the request names, refused or not
        with contextlib.suppress(ValueError):
            target = urlsplit(self.path).netloc.lower()
        status = bytes_sent = 0
        try:
            try:
                if not allowed:
                    raise _Refused(405, f"method {self.command} not allowed: GET and HEAD only")
                parsed = parse_target(self.path)
                status, bytes_sent = self._relay(parsed)
            except _Refused as refusal:
                status = refusal.status
                self._answer_self(refusal.status, str(refusal))
        finally:
            proxies._record(
                ProxyRecord(
                    proxy=self.server.name,
                    target=target,
                    method=self.command,
                    path=self.path,
                    start_ns=start_ns,
                    end_ns=time.monotonic_ns(),
                    start_wall_ms=start_wall_ms,
                    status=status,
                    client=f"{self.client_address[0]}:{self.client_address[1]}",
                    bytes_sent=bytes_sent,
                )
            )

    def _relay(self, target: _Target) -> tuple[int, int]:
        """Forward the request to ``target`` and relay its answer: (status, body bytes).

        Raises:
            _Refused: 502 when the upstream refuses, resets or answers garbage, 504 when
                it does not answer in time; nothing was sent to the client yet.
        """
        proxies = self.server.proxies
        upstream = http.client.HTTPConnection(
            target.address, target.port, timeout=proxies.upstream_timeout_s
        )
        # http.client hands the socket over to a response that closes the connection,
        # so both are kept here and closed in the end.
        sock: socket.socket | None = None
        response: http.client.HTTPResponse | None = None
        try:
            try:
                upstream.connect()
                sock = upstream.sock
                assert sock is not None
                proxies._track_upstream(sock)
                upstream.putrequest(
                    self.command, target.path, skip_host=True, skip_accept_encoding=True
                )
                upstream.putheader("Host", target.netloc)
                skip = _hop_by_hop(self.headers) | {"host", "content-length"}
                for name, value in self.headers.items():
                    if name.lower() not in skip:
                        upstream.putheader(name, value)
                upstream.putheader("Via", f"1.1 {self.server.name}")
                upstream.putheader("Connection", "close")
                upstream.endheaders()
                response = upstream.getresponse()
            except TimeoutError as error:
                raise _Refused(504, f"{target.netloc} did not answer: {error}") from error
            except (OSError, http.client.HTTPException) as error:
                raise _Refused(502, f"{target.netloc} failed: {error!r}") from error
            return response.status, self._copy(response)
        finally:
            if response is not None:
                response.close()
            upstream.close()
            if sock is not None:
                proxies._untrack_upstream(sock)

    def _copy(self, response: http.client.HTTPResponse) -> int:
        """Relay ``response`` to the client chunk by chunk; returns the body bytes sent."""
        proxies = self.server.proxies
        limit = proxies.relay_bytes_max
        length = response.length  # None: close-delimited or chunked
        keep_length = length is not None and length <= limit
        self.send_response_only(response.status, response.reason)
        skip = _hop_by_hop(response.msg) | {"content-length"}
        for name, value in response.getheaders():
            if name.lower() not in skip:
                self.send_header(name, value)
        self.send_header("Via", f"1.1 {self.server.name}")
        if self.command == "HEAD":
            length_header = response.getheader("Content-Length")
            if length_header is not None:
                self.send_header("Content-Length", length_header)
            self.end_headers()
            return 0
        if keep_length:
            self.send_header("Content-Length", str(length))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        sent = 0
        while sent < limit and not proxies._stopping.is_set():
            try:
                chunk = response.read1(min(STREAM_CHUNK_BYTES, limit - sent))
            except (OSError, http.client.HTTPException):
                break  # the upstream failed mid-body: the client sees it cut short
            if not chunk:
                break
            try:
                self.wfile.write(chunk)
            except OSError:
                break  # the client stopped reading: the expected end of a long stream
            sent += len(chunk)
        if not keep_length or sent != length:
            self.close_connection = True  # a body cut short must not look complete
        return sent

    def _answer_self(self, status: int, reason: str) -> None:
        body = f"{status} {reason}\n".encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Via", f"1.1 {self.server.name}")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# -- as its own process ---------------------------------------------------------------


@click.command()
@click.option("--proxies", type=click.IntRange(0, PROXIES_MAX), default=3, show_default=True)
@click.option("--unreachable", type=click.IntRange(0, PROXIES_MAX), default=0, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help=f"Directory for {PROXIES_FILE} (proxy URLs, unreachable ones last) and "
    f"{PROXY_REQUESTS_FILE} (the request log).",
)
def main(proxies: int, unreachable: int, out: Path) -> None:
    """Serve mock forward proxies on loopback until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="mockproxy: %(message)s")
    try:
        out.mkdir(parents=True, exist_ok=True)
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        running = MockProxies(proxies, unreachable=unreachable, log_path=out / PROXY_REQUESTS_FILE)
        with running:
            urls = running.urls + running.unreachable_urls
            partial = out / f".{PROXIES_FILE}.{os.getpid()}"
            partial.write_text("".join(url + "\n" for url in urls), encoding="utf-8")
            partial.replace(out / PROXIES_FILE)  # atomic: a reader never sees half a list
            stop.wait()
    except MockWebError as error:
        raise click.ClickException(str(error)) from error


if __name__ == "__main__":
    main()
