"""A worker SIGKILLed mid-run loses nothing: its leases expire and another worker
finishes the jobs, each done once (the worker SDK on a real cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sdk_app.net import Job

pytestmark = [pytest.mark.integration, pytest.mark.serial]

NET = "tests.sdk_app.net:net"
JOBS = 300


def test_a_killed_workers_leases_come_back_and_every_job_is_done_once(
    cpn_cluster, cpn_workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    monkeypatch.setenv("SDK_CALLS", str(calls))
    cluster = cpn_cluster(NET, shards=2)
    first = cpn_workers(cluster, "tests.sdk_app.workers:steady")
    cluster.put("queue", *(Job(f"g{n % 30}", n, 0) for n in range(JOBS)))
    cluster.wait_until(lambda: cluster.counts().get("done", 0) >= 30, timeout_s=60.0)
    first.kill()  # SIGKILL mid-run, with leases held
    cpn_workers(cluster, "tests.sdk_app.workers:steady")
    cluster.wait_until(lambda: cluster.counts().get("done", 0) == JOBS, timeout_s=60.0)
    assert sorted(t.job_id for t in cluster.tokens("done")) == list(range(JOBS))
    assert cluster.counts().get("queue__held", 0) == 0
    pids = {line.split()[3] for line in calls.read_text().splitlines()}
    assert len(pids) == 2  # both workers did part of the work
