"""`cpn top` as a user runs it: under a pseudo-terminal, against a real local cluster.

The cluster is a real router and two real shards (cluster/testbed.py) of the jobs and
circulation net: the balls keep transitions firing, and five notes sit in ``notes``,
a place that no transition touches, so the screen must show ``notes`` with 5. The view
runs as a real ``cpn top`` process on a pty (TERM=xterm, 30x120): the test reads the
screen until it shows the shards and that count, sends ``q``, and requires exit 0 and
the process gone. Every wait polls a condition with a deadline.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.processes import run_cpn
from cluster.testbed import LocalCluster

pytestmark = pytest.mark.integration

NET = "tests.nets_for_tests:jobs_and_circulation"
REPO_ROOT = Path(__file__).resolve().parents[2]
SCREEN_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 10.0
ROWS, COLUMNS = 30, 120
# CSI and other escape sequences, and the charset switches curses sends; what is left is
# the text drawn on the screen.
ESCAPES = re.compile(rb"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78MDEc])")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(NET, tmp_path / "cluster", shards=2) as running:
        running.start()
        running.put("notes", *[("q", f"note{i}", i) for i in range(5)])
        running.wait_until(lambda: running.counts().get("notes") == 5, what="5 notes")
        yield running


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    # LINES and COLUMNS would override the pty's window size in curses.
    inherited = {k: v for k, v in os.environ.items() if k not in ("LINES", "COLUMNS")}
    return {**inherited, "TERM": "xterm", "PYTHONPATH": path}


def _read_until(fd: int, screen: bytearray, pattern: re.Pattern[str], what: str) -> None:
    deadline = time.monotonic() + SCREEN_TIMEOUT_S
    while pattern.search(ESCAPES.sub(b"", bytes(screen)).decode(errors="replace")) is None:
        left_s = deadline - time.monotonic()
        assert left_s > 0, (
            f"the screen did not show {what} within {SCREEN_TIMEOUT_S} s:\n"
            + (ESCAPES.sub(b" ", bytes(screen)).decode(errors="replace")[-3000:])
        )
        ready, _, _ = select.select([fd], [], [], left_s)
        if ready:
            try:
                screen += os.read(fd, 65536)
            except OSError:  # EIO: the process closed the terminal (exited)
                break


def test_top_draws_the_cluster_and_q_quits(cluster: LocalCluster) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "top", "--data", str(cluster.data_dir)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=_env(),
        start_new_session=True,  # the pty becomes its controlling terminal's session
        close_fds=True,
    )
    os.close(slave)
    try:
        screen = bytearray()
        header = re.compile(r"2/2\s*shards\s*alive,\s*router\s*pid\s*\d+")
        _read_until(master, screen, header, "both shards alive and the router's pid")
        _read_until(master, screen, re.compile(r"notes\s*5"), "place 'notes' with 5 tokens")
        # Later frames are sent as changes only: a rate shows as its new digits.
        _read_until(master, screen, re.compile(r"\d\.\d/s"), "a transition's firing rate")
        os.write(master, b"q")
        assert process.wait(timeout=EXIT_TIMEOUT_S) == 0
        with pytest.raises(ProcessLookupError):
            os.kill(process.pid, 0)  # reaped: the pid no longer names a process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=EXIT_TIMEOUT_S)
        os.close(master)


def test_top_without_a_terminal_is_one_line_and_once_prints_a_frame(
    cluster: LocalCluster,
) -> None:
    env = {"PYTHONPATH": _env()["PYTHONPATH"]}
    refused = run_cpn("top", "--data", str(cluster.data_dir), env=env, timeout_s=60)
    assert refused.returncode == 2, refused
    assert refused.stderr.splitlines() == [
        "cpn: error: cpn top draws on a terminal, and stdin or stdout is not one; "
        "use `cpn top --once` to print one frame"
    ]
    once = run_cpn("top", "--data", str(cluster.data_dir), "--once", "--interval", "200ms", env=env)
    assert once.returncode == 0, once.stderr
    assert "2/2 shards alive" in once.stdout
    assert re.search(r"^  notes\s+5$", once.stdout, re.MULTILINE), once.stdout
    assert re.search(r"^  to_left\s+[\d,.]+/s\s+[\d,]+$", once.stdout, re.MULTILINE), once.stdout
