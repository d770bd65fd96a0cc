"""The mock web over real HTTP on loopback: answers, the request log, resets, streaming.

Every test starts its own :class:`MockWeb` on port 0 and stops it (joining its threads)
before it ends; clients are ``http.client`` connections with timeouts, and every wait is on
a condition (``wait_requests``, a file appearing, a process exiting), never a bare sleep.
"""

from __future__ import annotations

import http.client
import ipaddress
import itertools
import json
import logging
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

import cluster.mock_web.web
from cluster.mock_web.log import STATUS_RESET, max_concurrency
from cluster.mock_web.site import PageKind, PageRef, SiteConfig, SiteModel, render_html
from cluster.mock_web.web import HOSTS_FILE, REQUESTS_FILE, MockWeb

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0
OVERSIZED_BYTES = 64 * 1024 * 1024  # far beyond socket buffers: the server must stream


def _site(seed: int, **overrides: object) -> SiteModel:
    options: dict[str, object] = {"hosts": 4, "pages_per_host": 15, "seed": seed}
    options.update(overrides)
    return SiteModel(SiteConfig(**options))  # type: ignore[arg-type]


@pytest.fixture
def web(seed: int) -> Iterator[MockWeb]:
    site = _site(
        seed,
        failing_fraction=0.4,
        non_html_fraction=0.3,
        reset_host=True,
        oversized_body_bytes=OVERSIZED_BYTES,
    )
    with MockWeb(site, latency_ms=5) as running:
        yield running
    assert not [t.name for t in threading.enumerate() if t.name.startswith("mockweb-")]


def _connect(web: MockWeb, host: int) -> http.client.HTTPConnection:
    address, port = web.netlocs[host].rsplit(":", 1)
    return http.client.HTTPConnection(address, int(port), timeout=TIMEOUT_S)


def _get(web: MockWeb, ref: PageRef, method: str = "GET") -> tuple[int, str, bytes]:
    connection = _connect(web, ref.host)
    try:
        connection.request(method, ref.path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def _pages(web: MockWeb, kind: PageKind, *, failing: bool | None = None) -> list[PageRef]:
    return [
        page.ref
        for host in range(web.site.hosts)
        if host != web.site.reset_host
        for page in web.site.pages(host)
        if page.kind is kind and (failing is None or bool(page.failures) is failing)
    ]


def test_every_host_is_its_own_loopback_address(web: MockWeb) -> None:
    addresses = [netloc.rsplit(":", 1)[0] for netloc in web.netlocs]
    assert len(set(web.netlocs)) == 4
    assert all(ipaddress.ip_address(address).is_loopback for address in addresses)
    assert web.seeds() == tuple(f"http://{netloc}/" for netloc in web.netlocs)


def test_pages_and_robots_are_served_as_the_model_says(web: MockWeb) -> None:
    ref = _pages(web, PageKind.HTML, failing=False)[0]
    status, content_type, body = _get(web, ref)
    page = web.site.page(ref)
    assert page is not None
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    assert body == render_html(page, web.netlocs)
    status, content_type, body = _get(web, PageRef(ref.host, "/robots.txt"))
    assert (status, body.decode()) == (200, web.site.robots_txt(ref.host))
    assert content_type.startswith("text/plain")


def test_a_failing_page_answers_503_then_200(web: MockWeb) -> None:
    ref = _pages(web, PageKind.HTML, failing=True)[0]
    statuses = [_get(web, ref)[0] for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    assert web.wait_requests(4, timeout_s=TIMEOUT_S)
    assert [(r.attempt, r.status) for r in web.requests()] == [
        (1, 503),
        (2, 503),
        (3, 200),
        (4, 200),
    ]


def test_missing_pages_non_html_head_and_other_methods(web: MockWeb) -> None:
    gone = _pages(web, PageKind.NOT_FOUND)[0]
    assert [_get(web, gone)[0] for _ in range(2)] == [404, 404]
    assert _get(web, PageRef(0, "/no/such/page"))[0] == 404
    binary = (_pages(web, PageKind.BINARY) + _pages(web, PageKind.IMAGE))[0]
    status, content_type, body = _get(web, binary)
    assert status == 200 and not content_type.startswith("text/html") and body
    assert _get(web, binary, "HEAD")[::2] == (200, b"")
    assert _get(web, PageRef(0, "/"), "POST")[0] == 405
    assert web.wait_requests(6, timeout_s=TIMEOUT_S)
    assert [r.status for r in web.requests()] == [404, 404, 404, 200, 200, 405]


def test_the_reset_host_resets_but_serves_robots(web: MockWeb) -> None:
    reset = web.site.reset_host
    assert reset is not None
    with pytest.raises(ConnectionResetError):
        _get(web, PageRef(reset, "/"))
    assert _get(web, PageRef(reset, "/robots.txt"))[0] == 200
    assert web.wait_requests(2, timeout_s=TIMEOUT_S)
    assert [(r.path, r.status) for r in web.requests()] == [
        ("/", STATUS_RESET),
        ("/robots.txt", 200),
    ]


def test_the_oversized_page_is_streamed_while_other_requests_are_served(web: MockWeb) -> None:
    (big,) = _pages(web, PageKind.OVERSIZED)
    streaming = _connect(web, big.host)
    streaming.request("GET", big.path)
    response = streaming.getresponse()
    assert response.status == 200 and response.getheader("Content-Length") is None
    assert response.getheader("Connection") == "close"
    prefix = response.read(256 * 1024)  # a bounded prefix of a 64 MiB body
    assert prefix.startswith(b"<!DOCTYPE html>") and len(prefix) == 256 * 1024
    # The stream is still being written (it is far larger than the socket buffers), so a
    # request to the same host now overlaps it: the log must show two at once.
    assert _get(web, PageRef(big.host, "/robots.txt"))[0] == 200
    assert web.wait_requests(1, timeout_s=TIMEOUT_S)
    response.close()  # the response holds the socket too: close both to hang up
    streaming.close()
    assert web.wait_requests(2, timeout_s=TIMEOUT_S)
    records = web.requests()
    assert [r.path for r in records] == [big.path, "/robots.txt"]
    assert 0 < records[0].bytes_sent < OVERSIZED_BYTES
    assert max_concurrency(records) == {big.host: 2}


def test_the_log_records_every_request_with_latency_inside(seed: int, tmp_path: Path) -> None:
    log_path = tmp_path / "requests.jsonl"
    site = _site(seed, failing_fraction=0.0)
    with MockWeb(site, latency_ms=20, log_path=log_path) as web:
        refs = [page.ref for host in range(4) for page in site.pages(host)[:3]]
        statuses = [_get(web, ref)[0] for ref in refs]
        assert web.wait_requests(len(refs), timeout_s=TIMEOUT_S)
        records = web.requests()
        stats = web.statistics()
    assert [(r.host, r.path, r.status) for r in records] == [
        (ref.host, ref.path, status) for ref, status in zip(refs, statuses, strict=True)
    ]
    for before, after in itertools.pairwise(records):
        # The client waited for each answer (the server records an end only after the
        # client may already have sent its next request, so starts are what is ordered).
        assert before.start_ns + 20_000_000 <= after.start_ns
        assert before.start_wall_ms <= after.start_wall_ms
    # The answer waited out its latency between the request's start and end.
    assert all(r.end_ns - r.start_ns >= 20_000_000 for r in records)
    assert all(r.client.startswith("127.") and r.netloc == web.netlocs[r.host] for r in records)
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert sorted(lines, key=lambda line: line["start_ns"]) == [r.to_json() for r in records]
    assert stats.requests == len(refs) and stats.requests_dropped == 0


def test_the_in_memory_log_is_bounded_and_counts_what_it_dropped(seed: int) -> None:
    with MockWeb(_site(seed, failing_fraction=0.0), log_records_max=2) as web:
        for _ in range(5):
            _get(web, PageRef(0, "/robots.txt"))
        assert web.wait_requests(5, timeout_s=TIMEOUT_S)
        assert [r.attempt for r in web.requests()] == [4, 5]
        assert web.statistics().requests_dropped == 3


def test_connections_beyond_the_maximum_wait_for_a_free_slot(seed: int) -> None:
    with MockWeb(_site(seed, failing_fraction=0.0), connections_max=1) as web:
        first = _connect(web, 0)
        first.request("GET", "/robots.txt")
        first.getresponse().read()  # keep-alive: the connection holds the only slot
        second = _connect(web, 0)
        second.request("GET", "/robots.txt")
        assert web.wait_requests(1, timeout_s=TIMEOUT_S)
        assert web.statistics().connections_open == 1
        assert len(web.requests()) == 1
        first.close()
        assert second.getresponse().status == 200
        second.close()
        assert web.wait_requests(2, timeout_s=TIMEOUT_S)


def test_stop_closes_idle_connections_and_the_ports(seed: int) -> None:
    web = MockWeb(_site(seed, failing_fraction=0.0), latency_ms=0).start()
    idle = _connect(web, 1)
    idle.request("GET", "/")
    idle.getresponse().read()
    address, port = web.netlocs[1].rsplit(":", 1)
    web.stop()
    idle.close()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("mockweb-")]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, int(port)), timeout=TIMEOUT_S).close()


def test_without_extra_loopback_addresses_hosts_share_127_0_0_1(
    seed: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_listen = cluster.mock_web.web._listen

    def only_127_0_0_1(address: str, port: int) -> socket.socket:
        if address != "127.0.0.1":
            raise OSError(99, "Cannot assign requested address")
        return real_listen(address, port)

    monkeypatch.setattr(cluster.mock_web.web, "_listen", only_127_0_0_1)
    with caplog.at_level(logging.WARNING, "cluster.mock_web.web"), MockWeb(_site(seed)) as web:
        assert {netloc.rsplit(":", 1)[0] for netloc in web.netlocs} == {"127.0.0.1"}
        assert len(set(web.netlocs)) == 4
        assert _get(web, PageRef(2, "/robots.txt"))[0] == 200
    assert "127.0.0.1 with its own port" in caplog.text


def test_runs_as_its_own_process_until_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "web"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "cluster.mock_web.web", "--hosts", "3", "--pages", "5"),
            *("--seed", "7", "--latency-ms", "0", "--failing-fraction", "0", "--out", str(out)),
        ],
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (out / HOSTS_FILE).exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the mock web never wrote its hosts file"
            time.sleep(0.02)  # polling a file another process writes: no event to wait on
        seeds = (out / HOSTS_FILE).read_text().split()
        assert len(seeds) == 3
        address, port = seeds[0].removeprefix("http://").rstrip("/").rsplit(":", 1)
        connection = http.client.HTTPConnection(address, int(port), timeout=TIMEOUT_S)
        connection.request("GET", "/")
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, stderr
    (line,) = (out / REQUESTS_FILE).read_text().splitlines()
    assert json.loads(line)["status"] == 200
