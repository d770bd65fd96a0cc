"""`cpn demo` (a crawl through a real cluster) stopped by SIGTERM stops every process it
started: its forked supervisor, router and shards, its workers and its mock web. Before
cluster/commands/terminate.py, SIGTERM ended the command at once and left the rest
crawling on their own.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.commands.terminate import EXIT_TERMINATED
from cluster.pids import processes_naming
from cluster.testing import assert_eventually

pytestmark = [pytest.mark.integration, pytest.mark.serial]

TIMEOUT_S = 60.0
PROGRESS = re.compile(rb"crawl: [1-9][0-9]* pages stored")


def test_sigterm_stops_the_crawl_and_every_process_it_started(tmp_path: Path) -> None:
    data = tmp_path / "data"
    err_path = tmp_path / "demo.err"
    with err_path.open("wb") as stderr:
        demo = subprocess.Popen(
            [sys.executable, "-m", "cluster.cli", "demo", "--hosts", "4", "--pages", "60",
             "--delay", "200ms", "--data", str(data)],
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    seen: set[int] = set()
    try:
        assert_eventually(
            lambda: PROGRESS.search(err_path.read_bytes()), bool, timeout_s=TIMEOUT_S,
            what="the demo's crawl storing pages",
        )  # fmt: skip
        seen.update(processes_naming(data))
        assert len(seen) >= 5, f"expected the crawl's processes, found {sorted(seen)}"
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=TIMEOUT_S) == EXIT_TERMINATED, err_path.read_text()
        left = assert_eventually(
            lambda: processes_naming(data), lambda pids: not pids, timeout_s=TIMEOUT_S,
            what="every process of the crawl stopped",
        )  # fmt: skip
        assert left == []
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=TIMEOUT_S)
        for pid in processes_naming(data):  # still this crawl's: it names the directory
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
