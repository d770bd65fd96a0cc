"""The embedded mock web: a seeded site served over HTTP on loopback (SHELL).

The crawler's demo, tests and benchmark crawl this instead of the internet. What it
serves is decided by the pure :class:`~cluster.mock_web.site.SiteModel`; this module only
binds sockets, answers requests, waits out the latency and logs every request.

Theory of operation
-------------------
* **One address per host.** Host ``h`` listens on ``127.0.<1 + h // 254>.<1 + h % 254>``
  (Linux routes all of 127/8 to loopback with no configuration), so every host is its own
  domain (netloc ``127.0.1.7:PORT``) without DNS tricks. Where such an address cannot be
  bound, every host listens on 127.0.0.1 with its own port instead, and a warning says so
  (a crawler must then key politeness on host *and* port). Nothing but loopback is bound.
* **Threads.** One acceptor thread selects over every listening socket and a wake-up
  socket pair; each accepted connection gets a handler thread (HTTP/1.1, keep-alive, idle
  timeout). At most ``connections_max`` connections are open at once: when that many are,
  the acceptor waits before accepting more (the kernel's backlog holds the rest).
  :meth:`MockWeb.stop` wakes the acceptor, shuts every open connection down, cuts latency
  waits and streams short, and joins every thread.
* **Answers.** A request for (host, path) is the k-th one for it (counted under a lock,
  for paths the site has); the site model says what the k-th answer is. The answer waits
  ``latency_ms`` (on the stop event, so stopping is never delayed) before its status line.
  A reset closes the socket with ``SO_LINGER`` 0, which sends a TCP RST. The oversized
  page is written chunk by chunk with no ``Content-Length`` and the connection closes at
  its end, so a client can stop reading at its own limit.
* **The log.** Every request for which a method was parsed is recorded once its answer is
  written (or the connection reset): see :class:`~cluster.mock_web.site.RequestRecord`. The
  newest ``log_records_max`` stay in memory (older ones are counted as dropped), and every
  record is also appended to ``log_path`` as one JSON line, flushed, when one is given.

Run it as its own process for the demo::

    python -m cluster.mock_web.web --hosts 20 --pages 40 --seed 1 --out DIR

writes ``DIR/hosts.txt`` (one root URL a line, written atomically once every host
listens), logs requests to ``DIR/requests.jsonl`` and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import click

from cluster.mock_web.log import RequestRecord
from cluster.mock_web.server import LoopbackHandler, LoopbackServers, limits_problem
from cluster.mock_web.site import (
    ROBOTS_PATH,
    CrawlExpectation,
    MockWebError,
    PageRef,
    Response,
    ResponseKind,
    SiteConfig,
    SiteModel,
    oversized_chunks,
)

LOG = logging.getLogger(__name__)

CONNECTIONS_MAX: Final = 64
# `python -m cluster.mock_web.web` allows this many open connections per host (at least
# CONNECTIONS_MAX in all): a crawler keeps a connection or two alive at each host, and
# with 64 over 200 hosts the 65th waited in the backlog until another's 10 s idle
# timeout, so a crawl of many hosts measured the mock web's cap, not the crawler.
CONNECTIONS_PER_HOST: Final = 4
LOG_RECORDS_MAX: Final = 1_000_000
IDLE_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 10.0
LATENCY_MS_MAX: Final = 60_000
BACKLOG: Final = 128
HOSTS_FILE: Final = "hosts.txt"
REQUESTS_FILE: Final = "requests.jsonl"
_LINGER_RESET: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST


def host_address(host: int) -> str:
    """The loopback address of host ``host``: 127.0.1.1, 127.0.1.2, ..., 127.0.2.1, ..."""
    assert 0 <= host < 254 * 254, host
    return f"127.0.{1 + host // 254}.{1 + host % 254}"


@dataclass(frozen=True)
class MockWebStatistics:
    requests: int  # recorded since start, dropped ones included
    requests_dropped: int  # recorded but no longer in memory (log_records_max)
    by_status: dict[int, int]
    connections_open: int
    connections_total: int
    handler_errors: int


class MockWeb(LoopbackServers[RequestRecord]):
    """The mock web's hosts, served from background threads of this process.

    Use as a context manager (``with MockWeb(site) as web: ...``) or call :meth:`start`
    and :meth:`stop`. Accessors that need the chosen ports (:meth:`seeds`, :meth:`url`,
    :attr:`netlocs`) work once started.

    Args:
        site: the site model, or a config to build it from.
        latency_ms: wait before every answer's status line.
        port: the port of every host (0: each picks a free one).
        log_path: a file to append every request to as JSON Lines.
        connections_max: open connections at most, over all hosts.
        log_records_max: records kept in memory for :meth:`requests`.
        idle_timeout_s: a connection idle (or not reading) this long is closed.
    """

    _kind = "mock web"
    _kinds = "mock web"
    _thread_prefix = "mockweb"
    _stop_timeout_s = STOP_TIMEOUT_S

    def __init__(
        self,
        site: SiteModel | SiteConfig,
        *,
        latency_ms: int = 0,
        port: int = 0,
        log_path: Path | None = None,
        connections_max: int = CONNECTIONS_MAX,
        log_records_max: int = LOG_RECORDS_MAX,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        if not 0 <= latency_ms <= LATENCY_MS_MAX:
            raise MockWebError(f"mock web latency_ms={latency_ms}: expected 0 .. {LATENCY_MS_MAX}")
        problem = limits_problem(
            "mock web", port=port, connections_max=connections_max,
            log_records_max=log_records_max, idle_timeout_s=idle_timeout_s,
        )  # fmt: skip
        if problem is not None:
            raise MockWebError(problem)
        super().__init__(
            log_path=log_path,
            log_records_max=log_records_max,
            connections_max=connections_max,
            idle_timeout_s=idle_timeout_s,
        )
        self.site: Final = site if isinstance(site, SiteModel) else SiteModel(site)
        self.latency_ms: Final = latency_ms
        self._port = port
        # Guarded by self._lock (the base class's), as its own connection state is.
        self._attempts: dict[PageRef, int] = {}
        self._netlocs: tuple[str, ...] = ()

    # -- life cycle: start(), stop() and `with` come from LoopbackServers --------------

    def _announce(self) -> None:
        LOG.info("mock web serving %d hosts: %s ...", len(self._netlocs), self._netlocs[0])

    # -- addresses ----------------------------------------------------------------------

    @property
    def netlocs(self) -> tuple[str, ...]:
        """``address:port`` of every host, by host index (empty before :meth:`start`)."""
        return self._netlocs

    def url(self, ref: PageRef) -> str:
        """The absolute URL of ``ref``."""
        assert self._netlocs, "MockWeb.url() before start()"
        return f"http://{self._netlocs[ref.host]}{ref.path}"

    def seeds(self) -> tuple[str, ...]:
        """The root URL of every host, by host index."""
        return tuple(self.url(PageRef(host, "/")) for host in range(self.site.hosts))

    def expected_urls(self, expectation: CrawlExpectation) -> frozenset[str]:
        """The URLs of the pages a perfect crawl stores (see ``expected_crawl``)."""
        return frozenset(self.url(ref) for ref in expectation.stored)

    # -- the log: requests() and wait_requests() come from LoopbackServers --------------

    def statistics(self) -> MockWebStatistics:
        with self._lock:
            return MockWebStatistics(
                requests=self._records_total,
                requests_dropped=self._records_total - len(self._records),
                by_status=dict(sorted(self._by_status.items())),
                connections_open=len(self._open),
                connections_total=self._connections_total,
                handler_errors=self._handler_errors,
            )

    # -- internals ----------------------------------------------------------------------

    def _bind(self) -> None:
        hosts = self.site.hosts
        try:
            self._listeners.append(_listen(host_address(0), self._port))
            addresses = [host_address(host) for host in range(hosts)]
        except OSError as error:
            LOG.warning(
                "mock web cannot bind %s (%s): every host listens on 127.0.0.1 with its own "
                "port instead, so a domain is a host *and* port",
                host_address(0),
                error,
            )
            addresses = ["127.0.0.1"] * hosts
        for host in range(len(self._listeners), hosts):
            port = (
                self._port + host if self._port and addresses[host] == "127.0.0.1" else self._port
            )
            self._listeners.append(_listen(addresses[host], port))
        netlocs = []
        for listener in self._listeners:
            address, port = listener.getsockname()[:2]
            netlocs.append(f"{address}:{port}")
        self._netlocs = tuple(netlocs)

    def _serve(self, connection: socket.socket, client: tuple[str, int], index: int) -> None:
        _Handler(connection, client, _Context(self, index))  # type: ignore[arg-type]

    def _listener_name(self, index: int) -> str:
        return f"host {index}"

    def _next_attempt(self, ref: PageRef) -> int:
        if ref.path != ROBOTS_PATH and self.site.page(ref) is None:
            return 0  # unknown paths are not counted: the table stays bounded by the site
        with self._lock:
            attempt = self._attempts.get(ref, 0) + 1
            self._attempts[ref] = attempt
            return attempt


def _listen(address: str, port: int) -> socket.socket:
    assert ipaddress.ip_address(address).is_loopback, address  # never anything else
    listener = socket.create_server((address, port), backlog=BACKLOG)
    listener.setblocking(False)
    return listener


@dataclass(frozen=True)
class _Context:
    """What a handler needs: the mock web and the host it answers for."""

    web: MockWeb
    host: int


class _Handler(LoopbackHandler):
    """Parses HTTP/1.1 requests on one connection and answers from the site model."""

    server_version = "cpn-mockweb/1"
    server: _Context  # type: ignore[assignment]

    def do_GET(self) -> None:  # noqa: N802 (the name BaseHTTPRequestHandler dispatches to)
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802 (as do_GET)
        self._answer(head=True)

    def _refuse(self) -> None:
        self.close_connection = True  # a request body, unread, must not parse as a request
        self._answer(head=False, allowed=False)

    def _answer(self, *, head: bool, allowed: bool = True) -> None:
        web, host = self.server.web, self.server.host
        start_ns, start_wall_ms = time.monotonic_ns(), time.time_ns() // 1_000_000
        path = urlsplit(self.path).path or "/"
        ref = PageRef(host, path)
        attempt = web._next_attempt(ref) if allowed else 0
        if not allowed:
            response = Response(ResponseKind.BODY, 405, "text/plain", b"405 method not allowed\n")
        elif attempt == 0:
            response = Response(ResponseKind.BODY, 404, "text/plain", f"404: {path}\n".encode())
        else:
            response = web.site.response(ref, attempt, web.netlocs)
        if web.latency_ms:
            web._stopping.wait(web.latency_ms / 1000)
        bytes_sent = 0
        try:
            bytes_sent = self._write(response, head=head)
        finally:
            web._record(
                RequestRecord(
                    host=host,
                    netloc=web.netlocs[host],
                    method=self.command,
                    path=self.path,
                    start_ns=start_ns,
                    end_ns=time.monotonic_ns(),
                    start_wall_ms=start_wall_ms,
                    status=response.status,
                    client=f"{self.client_address[0]}:{self.client_address[1]}",
                    attempt=attempt,
                    bytes_sent=bytes_sent,
                )
            )

    def _write(self, response: Response, *, head: bool) -> int:
        """Write ``response``; returns the body bytes written."""
        if response.kind is ResponseKind.RESET:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            self.close_connection = True
            # The descriptor really closes (with an RST) once the handler's files close.
            self.connection.close()
            return 0
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        for name, value in response.headers:
            self.send_header(name, value)
        if response.kind is ResponseKind.STREAM:
            self.send_header("Connection", "close")
            self.close_connection = True
            self.end_headers()
            return 0 if head else self._stream(response.body_bytes)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if head:
            return 0
        self.wfile.write(response.body)
        return len(response.body)

    def _stream(self, size_bytes: int) -> int:
        sent = 0
        chunks: Iterator[bytes] = oversized_chunks(size_bytes)
        for chunk in chunks:
            if self.server.web._stopping.is_set():
                break
            try:
                self.wfile.write(chunk)
            except OSError:
                break  # the client stopped reading at its limit: the expected end
            sent += len(chunk)
        return sent


# -- as its own process ---------------------------------------------------------------


@click.command()
@click.option("--hosts", type=click.IntRange(1), default=20, show_default=True)
@click.option("--pages", type=click.IntRange(1), default=40, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--latency-ms", type=click.IntRange(0, LATENCY_MS_MAX), default=10, show_default=True)
@click.option("--failing-fraction", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--failures", type=click.IntRange(0), default=2, show_default=True)
@click.option(
    "--retry-after-fraction", type=click.FloatRange(0, 1), default=0.0, show_default=True,
    help="Pages (not roots) that always answer 503 with Retry-After.",
)  # fmt: skip
@click.option("--retry-after-s", type=click.IntRange(1, 3_600), default=1, show_default=True)
@click.option("--reset-host/--no-reset-host", default=False, show_default=True)
@click.option("--oversized-bytes", type=click.IntRange(0), default=0, show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help=f"Directory for {HOSTS_FILE} (root URLs) and {REQUESTS_FILE} (the request log).",
)
def main(
    hosts: int,
    pages: int,
    seed: int,
    latency_ms: int,
    failing_fraction: float,
    failures: int,
    retry_after_fraction: float,
    retry_after_s: int,
    reset_host: bool,
    oversized_bytes: int,
    port: int,
    out: Path,
) -> None:
    """Serve the seeded mock web on loopback until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="mockweb: %(message)s")
    try:
        config = SiteConfig(
            hosts=hosts,
            pages_per_host=pages,
            seed=seed,
            failing_fraction=failing_fraction,
            failures_before_success=failures,
            retry_after_fraction=retry_after_fraction,
            retry_after_s=retry_after_s,
            reset_host=reset_host,
            oversized_body_bytes=oversized_bytes,
        )
        out.mkdir(parents=True, exist_ok=True)
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        web = MockWeb(
            config,
            latency_ms=latency_ms,
            port=port,
            log_path=out / REQUESTS_FILE,
            connections_max=max(CONNECTIONS_MAX, CONNECTIONS_PER_HOST * hosts),
        )
        with web:
            partial = out / f".{HOSTS_FILE}.{os.getpid()}"
            partial.write_text("".join(url + "\n" for url in web.seeds()), encoding="utf-8")
            partial.replace(out / HOSTS_FILE)  # atomic: a reader never sees half a list
            stop.wait()
    except MockWebError as error:
        raise click.ClickException(str(error)) from error


if __name__ == "__main__":
    main()
