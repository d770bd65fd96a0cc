"""Mock forward proxies over real HTTP on loopback, in front of the mock web.

Every test starts its own :class:`MockWeb` and :class:`MockProxies` on free ports and stops
them (joining their threads) before it ends; clients are ``http.client`` connections to a
proxy that send absolute-form requests (as any HTTP client configured with a proxy does),
with timeouts; every wait is on a condition (``wait_requests``, a file appearing, a
process exiting), never a bare sleep.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.crawler.fetch import ROBOTS_KIND, Fetcher, FetchSettings, wall_ms
from cluster.mock_web.proxy import (
    PROXIES_FILE,
    PROXY_REQUESTS_FILE,
    MockProxies,
    ProxyRecord,
    interval_violations,
    max_concurrency,
    min_start_gap_ns,
)
from cluster.mock_web.site import MockWebError, PageKind, PageRef, SiteConfig, SiteModel
from cluster.mock_web.web import MockWeb

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0
OVERSIZED_BYTES = 64 * 1024 * 1024  # far beyond socket buffers: both hops must stream


@pytest.fixture
def web(seed: int) -> Iterator[MockWeb]:
    site = SiteModel(
        SiteConfig(
            hosts=3,
            pages_per_host=12,
            seed=seed,
            failing_fraction=0.4,
            reset_host=True,
            oversized_body_bytes=OVERSIZED_BYTES,
        )
    )
    with MockWeb(site, latency_ms=2) as running:
        yield running


@pytest.fixture
def proxies() -> Iterator[MockProxies]:
    with MockProxies(2, unreachable=1) as running:
        yield running
    assert not [t.name for t in threading.enumerate() if t.name.startswith("mockproxy-")]


def _connect(url: str) -> http.client.HTTPConnection:
    address, port = url.removeprefix("http://").rsplit(":", 1)
    return http.client.HTTPConnection(address, int(port), timeout=TIMEOUT_S)


def _via(
    proxy_url: str, target: str, method: str = "GET"
) -> tuple[int, http.client.HTTPResponse, bytes]:
    """One request through the proxy at ``proxy_url`` (absolute-form ``target``)."""
    connection = _connect(proxy_url)
    try:
        connection.request(method, target)
        response = connection.getresponse()
        return response.status, response, response.read()
    finally:
        connection.close()


def _direct(web: MockWeb, ref: PageRef) -> bytes:
    connection = _connect(f"http://{web.netlocs[ref.host]}")
    try:
        connection.request("GET", ref.path)
        return connection.getresponse().read()
    finally:
        connection.close()


def _first(web: MockWeb, kind: PageKind, *, failing: bool = False) -> PageRef:
    return next(
        page.ref
        for host in range(web.site.hosts)
        if host != web.site.reset_host
        for page in web.site.pages(host)
        if page.kind is kind and bool(page.failures) is failing
    )


def test_a_page_through_a_proxy_is_the_page_and_both_logs_show_it(
    web: MockWeb, proxies: MockProxies
) -> None:
    ref = _first(web, PageKind.HTML)
    status, response, body = _via(proxies.urls[0], web.url(ref))
    assert status == 200 and body == _direct(web, ref)
    assert response.getheader("Content-Type") == "text/html; charset=utf-8"
    assert response.getheader("Via") == "1.1 proxy-0"
    assert proxies.wait_requests(1, timeout_s=TIMEOUT_S)
    assert web.wait_requests(2, timeout_s=TIMEOUT_S)
    (record,) = proxies.requests()
    assert (record.proxy, record.target, record.method, record.status) == (
        "proxy-0",
        web.netlocs[ref.host],
        "GET",
        200,
    )
    assert record.path == web.url(ref) and record.bytes_sent == len(body)
    assert record.start_ns < record.end_ns and record.client.startswith("127.0.0.1:")
    # The mock web saw the request in origin form, from the proxy, inside its time span.
    forwarded = web.requests()[0]
    assert forwarded.path == ref.path and record.start_ns < forwarded.start_ns < record.end_ns


def test_keep_alive_503_headers_and_head_are_relayed(web: MockWeb, proxies: MockProxies) -> None:
    failing = _first(web, PageKind.HTML, failing=True)
    connection = _connect(proxies.urls[1])
    try:
        answers = []
        for method in ("GET", "GET", "HEAD", "GET"):
            connection.request(method, web.url(failing))
            response = connection.getresponse()
            answers.append((response.status, response.getheader("Retry-After"), response.read()))
        assert [status for status, _, _ in answers] == [503, 503, 200, 200]
        assert answers[0][1] == "0"  # the upstream's own headers pass through
        assert answers[2][2] == b"" and answers[3][2] == _direct(web, failing)
    finally:
        connection.close()
    assert proxies.wait_requests(4, timeout_s=TIMEOUT_S)
    records = proxies.requests()
    assert len({r.client for r in records}) == 1  # one client connection, kept alive
    assert [r.method for r in records] == ["GET", "GET", "HEAD", "GET"]


def _fetch_via(proxy_url: str, url: str) -> tuple[object, ...]:
    """The ``Fetched`` fields of one robots.txt fetch by the workers' Fetcher."""

    async def fetch() -> tuple[object, ...]:
        fetcher = Fetcher(FetchSettings(timeout_s=TIMEOUT_S, connect_timeout_s=TIMEOUT_S))
        try:
            fetcher.prepare([proxy_url])
            job = ("d", url, ROBOTS_KIND, 0, 0, "p0", proxy_url, wall_ms(), 1_000)
            return (await fetcher.fetch(job)).fetched
        finally:
            await fetcher.aclose()

    return asyncio.run(asyncio.wait_for(fetch(), TIMEOUT_S * 4))


def test_the_fetcher_used_by_the_workers_goes_through_a_proxy(
    web: MockWeb, proxies: MockProxies
) -> None:
    fetched = _fetch_via(proxies.urls[0], web.url(PageRef(1, "/robots.txt")))
    assert (fetched[4], fetched[5], fetched[8]) == (200, "", web.site.robots_txt(1))
    assert proxies.wait_requests(1, timeout_s=TIMEOUT_S)
    assert [(r.proxy, r.target) for r in proxies.requests()] == [("proxy-0", web.netlocs[1])]


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("GET", "http://192.0.2.1/", 403),  # TEST-NET-1: never leaves the machine
        ("GET", "http://localhost:80/", 403),  # names are never resolved
        ("GET", "http://[::1]:80/", 403),
        ("GET", "/p/1.html", 400),  # origin form: not a proxy request
        ("GET", "https://127.0.0.1:443/", 400),
        ("GET", "http://127.0.0.1:99999/", 400),
        ("CONNECT", "127.0.0.1:443", 405),
        ("POST", "http://127.0.0.1:1/", 405),
    ],
)
def test_refused_requests_forward_nothing_and_are_logged(
    web: MockWeb, proxies: MockProxies, method: str, target: str, status: int
) -> None:
    answer, response, body = _via(proxies.urls[0], target, method)
    assert answer == status and body.startswith(str(status).encode())
    assert response.getheader("Content-Type") == "text/plain; charset=utf-8"
    assert proxies.wait_requests(1, timeout_s=TIMEOUT_S)
    (record,) = proxies.requests()
    assert (record.method, record.path, record.status) == (method, target, status)
    assert web.statistics().requests == 0


def test_a_closed_upstream_or_a_reset_is_a_502(web: MockWeb, proxies: MockProxies) -> None:
    closed_port = proxies.unreachable_urls[0].rsplit(":", 1)[1]
    assert _via(proxies.urls[0], f"http://127.0.0.1:{closed_port}/")[0] == 502
    reset = web.site.reset_host
    assert reset is not None
    assert _via(proxies.urls[0], web.url(PageRef(reset, "/")))[0] == 502
    assert proxies.wait_requests(2, timeout_s=TIMEOUT_S)
    assert [r.status for r in proxies.requests()] == [502, 502]


def test_a_slow_upstream_is_a_504(seed: int) -> None:
    site = SiteModel(SiteConfig(hosts=1, pages_per_host=2, seed=seed))
    with (
        MockWeb(site, latency_ms=2_000) as web,
        MockProxies(1, upstream_timeout_s=0.1) as proxies,
    ):
        assert _via(proxies.urls[0], web.url(PageRef(0, "/")))[0] == 504
        assert proxies.wait_requests(1, timeout_s=TIMEOUT_S)
        assert proxies.requests()[0].status == 504


def test_an_unreachable_proxy_refuses_connections(proxies: MockProxies) -> None:
    (url,) = proxies.unreachable_urls
    assert url not in proxies.urls
    address, port = url.removeprefix("http://").rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, int(port)), timeout=TIMEOUT_S).close()
    assert _fetch_via(url, "http://127.0.1.1:1/robots.txt")[4:6] == (0, "proxy")


def test_a_long_body_is_streamed_and_the_client_may_hang_up(
    web: MockWeb, proxies: MockProxies
) -> None:
    big = _first(web, PageKind.OVERSIZED)
    connection = _connect(proxies.urls[0])
    connection.request("GET", web.url(big))
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Length") is None
    assert response.getheader("Connection") == "close"
    prefix = response.read(256 * 1024)  # a bounded prefix of a 64 MiB body
    assert prefix.startswith(b"<!DOCTYPE html>") and len(prefix) == 256 * 1024
    response.close()
    connection.close()
    assert proxies.wait_requests(1, timeout_s=TIMEOUT_S)
    assert 0 < proxies.requests()[0].bytes_sent < OVERSIZED_BYTES


def test_relayed_bodies_are_bounded(web: MockWeb) -> None:
    big = _first(web, PageKind.OVERSIZED)
    with MockProxies(1, relay_bytes_max=100_000) as proxies:
        status, response, body = _via(proxies.urls[0], web.url(big))
        assert status == 200 and len(body) == 100_000  # cut at the bound, then closed
        assert response.getheader("Connection") == "close"
        page = _first(web, PageKind.HTML)
        assert _via(proxies.urls[0], web.url(page))[2] == _direct(web, page)
        assert proxies.wait_requests(2, timeout_s=TIMEOUT_S)
        assert [r.bytes_sent for r in proxies.requests()] == [100_000, len(_direct(web, page))]


def test_stop_cuts_relays_in_progress_and_joins_every_thread(seed: int) -> None:
    site = SiteModel(SiteConfig(hosts=1, pages_per_host=4, seed=seed, oversized_body_bytes=1 << 30))
    big = next(p.ref for p in site.pages(0) if p.kind is PageKind.OVERSIZED)
    with MockWeb(site) as web:
        proxies = MockProxies(1).start()
        streaming = _connect(proxies.urls[0])
        streaming.request("GET", web.url(big))
        response = streaming.getresponse()
        response.read(64 * 1024)  # the relay is running and blocked on this client
        started = time.monotonic()
        proxies.stop()
        assert time.monotonic() - started < TIMEOUT_S
        response.close()
        streaming.close()
        assert not [t.name for t in threading.enumerate() if t.name.startswith("mockproxy-")]
        assert proxies.statistics().requests == 1
        with pytest.raises(ConnectionRefusedError):
            _via(proxies.urls[0], web.url(big))


def test_per_proxy_logs_gaps_concurrency_and_the_log_file(web: MockWeb, tmp_path: Path) -> None:
    log_path = tmp_path / PROXY_REQUESTS_FILE
    refs = [page.ref for page in web.site.pages(0)[:3]]
    with MockProxies(2, log_path=log_path) as proxies:
        for ref in refs:
            for url in proxies.urls:
                assert _via(url, web.url(ref))[0] in {200, 404, 503}
        assert proxies.wait_requests(2 * len(refs), timeout_s=TIMEOUT_S)
        records = proxies.requests()
        stats = proxies.statistics()
    assert stats.by_proxy == {"proxy-0": 3, "proxy-1": 3} and stats.handler_errors == 0
    gaps = min_start_gap_ns(records)
    assert set(gaps) == {"proxy-0", "proxy-1"}
    # Sequential requests: a proxy's next request starts after its previous one ended.
    assert all(gap > 0 for gap in gaps.values())
    assert max_concurrency(records) == {"proxy-0": 1, "proxy-1": 1}
    assert interval_violations(records, 0) == ()
    assert interval_violations(records, {"proxy-1": 10**9}) != ()
    assert {pair[0].proxy for pair in interval_violations(records, 10**9)} == {
        "proxy-0",
        "proxy-1",
    }
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert sorted(lines, key=lambda line: line["start_ns"]) == [r.to_json() for r in records]


def _record(proxy: str, start_ms: int, end_ms: int) -> ProxyRecord:
    return ProxyRecord(proxy, "127.0.1.1:1", "GET", "http://127.0.1.1:1/", start_ms * 10**6,
                       end_ms * 10**6, 0, 200, "127.0.0.1:2", 0)  # fmt: skip


def test_the_log_helpers_group_by_proxy_whatever_the_order() -> None:
    records = [
        _record("b", 0, 50),
        _record("a", 100, 120),
        _record("a", 0, 100),  # starts when the next one ends: no overlap
        _record("b", 30, 40),
        _record("a", 250, 260),
    ]
    assert min_start_gap_ns(records) == {"a": 100_000_000, "b": 30_000_000}
    assert list(min_start_gap_ns(reversed(records))) == ["a", "b"]
    assert max_concurrency(records) == {"a": 1, "b": 2}
    assert interval_violations(records, {"a": 100}) == ()
    assert interval_violations(records, 101) == (
        (records[2], records[1]),
        (records[0], records[3]),
    )


def test_bad_options_are_refused() -> None:
    with pytest.raises(MockWebError, match="proxies=0, unreachable=0"):
        MockProxies(0)
    with pytest.raises(MockWebError, match="upstream_timeout_s=0"):
        MockProxies(1, upstream_timeout_s=0)


def test_runs_as_its_own_process_until_sigterm(web: MockWeb, tmp_path: Path) -> None:
    out = tmp_path / "proxies"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "cluster.mock_web.proxy"),
            *("--proxies", "2", "--unreachable", "1", "--out", str(out)),
        ],
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (out / PROXIES_FILE).exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the proxies never wrote their file"
            time.sleep(0.02)  # polling a file another process writes: no event to wait on
        urls = (out / PROXIES_FILE).read_text().split()
        assert len(urls) == 3
        assert _via(urls[1], web.url(PageRef(0, "/robots.txt")))[0] == 200
        with pytest.raises(ConnectionRefusedError):
            _via(urls[2], web.url(PageRef(0, "/robots.txt")))
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, stderr
    (line,) = (out / PROXY_REQUESTS_FILE).read_text().splitlines()
    assert json.loads(line)["proxy"] == "proxy-1"
