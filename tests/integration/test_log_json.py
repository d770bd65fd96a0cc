"""Logs under pressure and as JSON lines, on real processes.

* 3,000 garbage frames from a raw ZeroMQ DEALER at a real shard: each gets its
  ``malformed_frame`` reply, and the shard's log grows by a bounded number of lines
  whose summaries count every frame that was not written out.
* ``cpn up --log-json --allow-impure`` on the impure test net: the flags reach the
  detached supervisor and, through it, the router and the shard; every line of their
  logs is one JSON object with time, level, logger, message and fields.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from cluster.layout import ClusterLayout, supervisor_pid
from cluster.pids import pid_running, process_args
from cluster.processes import run_cpn, start_shard
from router.shell.datadir import read_endpoint
from router.wire import Error, decode

pytestmark = pytest.mark.integration

NET = "tests.nets_for_tests:jobs"
IMPURE = "tests.impure_nets:clocked"
GARBAGE_FRAMES = 3_000
LOG_LINES_MAX = 40  # start-up, the first lines of each kind, summaries, the stop
REPLY_TIMEOUT_MS = 10_000
CPN_TIMEOUT_S = 90.0
REPO_ROOT = Path(__file__).resolve().parents[2]
KEYS = {"time", "level", "logger", "message", "fields"}


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert all(isinstance(line, dict) and set(line) == KEYS for line in parsed), lines[:5]
    return parsed


def test_garbage_frames_at_a_shard_give_a_bounded_log_with_counts(tmp_path: Path) -> None:
    data = tmp_path / "shard"
    shard = start_shard(NET, data, durability="process", extra_args=("--log-json",), env=_env())
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        log = data / "shard.log"
        before = len(_json_lines(log))
        dealer.connect(shard.endpoint)
        for n in range(GARBAGE_FRAMES):
            dealer.send(b"\xc1garbage %d" % n)  # 0xc1: never valid msgpack
        for _ in range(GARBAGE_FRAMES):  # every frame answered: every frame was handled
            assert dealer.poll(REPLY_TIMEOUT_MS), "the shard stopped answering"
            reply = decode(dealer.recv()).message
            assert isinstance(reply, Error)
            assert reply.code == "malformed_frame"
        assert shard.terminate() == 0  # a graceful stop writes what is still held back
        lines = _json_lines(log)[before:]
    finally:
        dealer.close(linger=0)
        context.term()
        shard.kill()
    assert len(lines) <= LOG_LINES_MAX, [line["message"] for line in lines]
    written = [line for line in lines if line["message"].startswith("malformed frame from")]
    summaries = [line for line in lines if "more like this in the last" in line["message"]]
    assert summaries, [line["message"] for line in lines]
    held = sum(line["fields"]["suppressed"] for line in summaries)
    assert len(written) + held == GARBAGE_FRAMES, "every frame is written or counted"
    assert all(line["level"] == "WARNING" for line in written + summaries)
    assert all(line["logger"] == "cpn.shard" for line in written + summaries)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A cluster directory; whatever `cpn up` started there is stopped by pid after."""
    root = tmp_path / "cluster"
    try:
        yield root
    finally:
        layout = ClusterLayout(root)
        pids = [supervisor_pid(layout)]
        pids += [
            published[1]
            for child in (layout.router_dir, layout.shard_dir(0))
            if (published := read_endpoint(child)) is not None
        ]
        if any(pid is not None and pid_running(pid) for pid in pids):
            run_cpn("down", "--data", str(root), env=_env(), timeout_s=CPN_TIMEOUT_S)
        for pid in pids:
            if pid is not None and pid_running(pid) and str(root) in " ".join(process_args(pid)):
                os.kill(pid, signal.SIGKILL)


def _env() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.getenv("PYTHONPATH")]))}


def test_up_passes_log_json_and_allow_impure_to_its_processes(data_dir: Path) -> None:
    up = run_cpn(
        "up", "--net", IMPURE, "--shards", "1", "--data", str(data_dir), "--durability",
        "process", "--log-json", "--allow-impure", env=_env(), timeout_s=CPN_TIMEOUT_S,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert "cpn: warning: net 'impure' is impure" in up.stderr
    down = run_cpn("down", "--data", str(data_dir), env=_env(), timeout_s=CPN_TIMEOUT_S)
    assert down.returncode == 0, down.stderr
    layout = ClusterLayout(data_dir)
    router = _json_lines(layout.router_dir / "router.log")
    shard = _json_lines(layout.shard_dir(0) / "shard.log")
    assert any("serving on" in line["message"] for line in router)
    assert any("serving on" in line["message"] for line in shard)
    assert {line["logger"] for line in shard} >= {"cpn.shard"}
    assert all(isinstance(line["fields"]["pid"], int) for line in router + shard)
    # The supervisor's stderr holds the foreground `cpn up`'s warning; its log is JSON.
    supervisor = [
        json.loads(line)
        for line in layout.supervisor_log.read_text().splitlines()
        if line.startswith("{")
    ]
    assert supervisor, layout.supervisor_log.read_text()[-2000:]
    assert all(set(line) == KEYS for line in supervisor)
