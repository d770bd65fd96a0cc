"""The mock web served from a child process (cluster/mock_web/child.py), as `cpn demo` runs it.

The pytest process may run more than one thread (pytest-xdist), so it never forks here:
these tests take the new-interpreter path, and the forked path is exercised by `cpn demo`
run as its own process (one thread), here and in tests/integration/test_crawl.py.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import cluster.mock_web.child
from cluster.mock_web.child import LOG_FILE, read_requests, serve_in_child
from cluster.mock_web.site import MockWebError, SiteConfig, SiteModel
from cluster.mock_web.web import REQUESTS_FILE
from cluster.pids import parent_pid, pid_running, process_args, processes_naming
from cluster.testing import assert_eventually

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0
CONFIG = SiteConfig(hosts=2, pages_per_host=3, seed=5, failing_fraction=0)


@pytest.fixture(autouse=True)
def _never_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster.mock_web.child, "fork_is_safe", lambda: False)


def test_serves_and_logs_every_request_to_read_after_it_stopped(tmp_path: Path) -> None:
    with serve_in_child(CONFIG, latency_ms=0, out=tmp_path) as web:
        assert "cluster.mock_web.web" in process_args(web.pid)
        address, port = web.netlocs[1].rsplit(":", 1)
        connection = http.client.HTTPConnection(address, int(port), timeout=TIMEOUT_S)
        connection.request("GET", "/")
        assert connection.getresponse().status == 200
        connection.close()
    assert not pid_running(web.pid)
    (record,) = read_requests(tmp_path / REQUESTS_FILE)
    assert (record.host, record.path, record.status, record.attempt) == (1, "/", 200, 1)
    # The model rebuilt here from the config names the URLs the child serves.
    expected = web.expected_urls(SiteModel(CONFIG).expected_crawl(attempts_max=4))
    assert set(web.seeds()) <= expected


def test_the_child_is_stopped_when_the_block_raises(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="the crawl failed"),
        serve_in_child(CONFIG, latency_ms=0, out=tmp_path) as web,
    ):
        raise RuntimeError("the crawl failed")
    assert not pid_running(web.pid)


def test_a_child_that_cannot_serve_fails_in_one_line(tmp_path: Path) -> None:
    failure = r"exited with 2 before serving: .*latency-ms"
    with (
        pytest.raises(MockWebError, match=failure),
        serve_in_child(CONFIG, latency_ms=-1, out=tmp_path),
    ):
        pytest.fail("served with a negative latency")


def _mock_webs(pid: int) -> list[int]:
    """The children of ``pid`` writing to a mock web's log (their stderr)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and parent_pid(int(name)) == pid:
            try:
                stderr = os.readlink(f"/proc/{name}/fd/2")
            except OSError:
                continue  # gone, or not ours to read
            if stderr.endswith(LOG_FILE):
                found.append(int(name))
    return found


@pytest.mark.serial
def test_an_interrupted_demo_stops_its_forked_mock_web(tmp_path: Path) -> None:
    data = tmp_path / "data"
    stderr = (tmp_path / "demo.err").open("wb")
    demo = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "demo", "--hosts", "2", "--pages", "3",
         "--delay", "2s", "--data", str(data)],
        stdout=subprocess.DEVNULL, stderr=stderr,
    )  # fmt: skip
    try:
        (web,) = assert_eventually(
            lambda: _mock_webs(demo.pid), bool, timeout_s=TIMEOUT_S, what="a mock web of the demo"
        )
        assert process_args(web) == process_args(demo.pid)  # forked: no interpreter of its own
        # Only the demo is interrupted (not its process group): it must stop the web itself.
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=TIMEOUT_S)
        assert_eventually(
            lambda: pid_running(web), lambda running: not running, timeout_s=TIMEOUT_S,
            what="the mock web stopped",
        )  # fmt: skip
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=TIMEOUT_S)
        # Killed, the demo stopped nothing it started: its router, shards and workers
        # all name its data directory.
        for pid in processes_naming(data):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stderr.close()
