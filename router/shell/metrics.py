"""Prometheus metrics over HTTP for every process of a cluster (SHELL).

Each process (router, shard, worker) serves ``/metrics`` on an address of its own,
``HOST:PORT`` (port 0: any free port), checked by the rule its ZeroMQ sockets follow
(:func:`router.endpoints.listen_address`: loopback unless ``--allow-remote``), and
publishes the URL it got in ``DATA/metrics`` (``url\\npid\\n``, atomically), beside
``DATA/endpoint``. ``off`` switches metrics off.

Theory of operation (docs/observability.md, "Serving /metrics"): the process's loop
builds a frozen snapshot of its figures once per batch or turn and swaps it in with
one attribute assignment; prometheus_client's HTTP server runs on a daemon thread and
renders whatever snapshot is current when a scrape arrives. The two threads share
nothing else, so neither waits on the other beyond the GIL: a slow scrape never
stalls a batch, and a long batch never stalls a scrape for longer than the GIL's
switch interval.

Conventions (checked by :func:`name_problem` and the tests): every name starts with
``cpn_``, is in base units (``_seconds``, ``_bytes``, never ``_ms``), and a counter's
samples end in ``_total``. Labels take values from small fixed sets (transitions,
places, queues, states, codes), never from token keys or URLs.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nets.errors import CpnError
from router.endpoints import listen_address
from router.shell.datadir import publish, read_published, unpublish

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

METRICS_FILE: Final = "metrics"
METRICS_OFF: Final = "off"
METRICS_DEFAULT: Final = "127.0.0.1:0"
STOP_WAKES_MAX: Final = 50  # connections that wake a stopping server (one is enough)
NAME_PREFIX: Final = "cpn_"
_NAME: Final = re.compile(r"cpn_[a-z][a-z0-9_]*")
# Units that are not base units: a name carrying one is a mistake.
_NOT_BASE_UNITS: Final = ("_ms", "_milliseconds", "_us", "_kb", "_mb", "_kib", "_mib")
# Seconds buckets for latencies from a tenth of a millisecond to a minute.
LATENCY_BUCKETS_S: Final = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 60.0,
)  # fmt: skip
SIZE_BUCKETS: Final = (1, 4, 16, 64, 256, 1_024, 4_096, 16_384, 65_536)


def name_problem(name: str, kind: str) -> str | None:
    """What is wrong with metric family ``name`` of ``kind`` (None: nothing).

    ``kind`` is the family's type as prometheus_client names it (``counter``,
    ``gauge``, ``histogram``); a counter family's name excludes ``_total``.
    """
    if not _NAME.fullmatch(name):
        return f"metric {name!r} must match {_NAME.pattern}"
    for unit in _NOT_BASE_UNITS:
        if name.endswith(unit) or f"{unit}_" in name:
            return f"metric {name!r} is not in base units ({unit!r}: use seconds or bytes)"
    if kind != "counter" and name.endswith("_total"):
        return f"metric {name!r} is a {kind} but ends in _total (counters only)"
    return None


def metrics_address(value: str, *, allow_remote: bool) -> tuple[str, int] | None:
    """The ``(host, port)`` to serve metrics on, or None when ``value`` is ``off``.

    Raises:
        CpnError: not ``HOST:PORT``, or not loopback without ``allow_remote``.
    """
    if value == METRICS_OFF:
        return None
    try:
        address = listen_address(f"tcp://{value}", allow_remote=allow_remote)
    except CpnError as exc:
        raise CpnError(f"metrics address {value!r} (HOST:PORT or 'off'): {exc}") from None
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return host.strip("[]"), 0 if port == "*" else int(port)


class Histogram:
    """A histogram owned by one thread (the loop's): observations go into plain
    bucket counts; :meth:`value` is a frozen copy for a snapshot."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += count
        self._sum += value * count

    def value(self) -> HistogramValue:
        cumulative, total = [], 0
        for bound, count in zip((*self._bounds, float("inf")), self._counts, strict=True):
            total += count
            cumulative.append((_bound_text(bound), float(total)))
        return HistogramValue(tuple(cumulative), self._sum)


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


@dataclass(frozen=True, slots=True)
class HistogramValue:
    buckets: tuple[tuple[str, float], ...]  # cumulative, as Prometheus expects
    sum: float


class _Latest:
    """Renders the process's current snapshot (called on the HTTP server's thread)."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


@dataclass(frozen=True, slots=True)
class MetricsServer:
    """A running ``/metrics`` server and where it was published."""

    url: str
    server: WSGIServer
    thread: threading.Thread
    data_dir: Path | None

    def stop(self) -> None:
        """Stop serving and remove the published URL (if this process wrote it)."""
        if self.data_dir is not None:
            unpublish(self.data_dir / METRICS_FILE)
        # shutdown() waits until serve_forever looks at its flag again, which it does
        # after a request or every 0.5 s (prometheus_client's poll interval): a
        # connection of our own wakes it at once, so a process stops that much sooner.
        stopper = threading.Thread(target=self.server.shutdown, name="metrics-stop")
        stopper.start()
        host, port = self.server.server_address[:2]
        for _ in range(STOP_WAKES_MAX):
            with contextlib.suppress(OSError):
                socket.create_connection((str(host), int(port)), timeout=0.1).close()
            stopper.join(timeout=0.02)
            if not stopper.is_alive():
                break
        stopper.join()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(
    address: tuple[str, int],
    collect: Callable[[], Iterable[Metric]],
    *,
    data_dir: Path | None = None,
    url_file: Path | None = None,
) -> MetricsServer:
    """Serve ``collect``'s families on ``http://HOST:PORT/metrics`` from a daemon thread,
    and publish the URL in ``data_dir/metrics`` (and in ``url_file`` if given).

    Raises:
        CpnError: the address cannot be bound.
    """
    # Imported here: every `cpn` command imports this module (for its names and checks),
    # and prometheus_client takes some 40 ms to import, which only a server needs.
    from prometheus_client import start_http_server  # noqa: PLC0415
    from prometheus_client.registry import CollectorRegistry  # noqa: PLC0415

    host, port = address
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Latest(collect))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise CpnError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from exc
    bound_port = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound_port}/metrics"
    if data_dir is not None:
        publish(data_dir / METRICS_FILE, url)
    if url_file is not None:
        publish(url_file, url)
    return MetricsServer(url, server, thread, data_dir)


def read_metrics_url(path: Path) -> tuple[str, int] | None:
    """The ``(url, pid)`` published in ``path`` (a data directory's ``metrics`` file, or
    a worker's ``--metrics-file``); None until it is."""
    return read_published(path / METRICS_FILE if path.is_dir() else path)
