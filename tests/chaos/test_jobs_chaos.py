"""SIGKILL mid-run of the job runner: a worker (the run starts a replacement) and then a
shard (its supervisor restarts it). No job is lost or ends twice, counted over every
shard; the API sees no limit violation and never more calls at once than the cap; and
the only duplicate calls are those a kill explains.

A duplicate is a call the API accepted twice with one idempotency key. The net cannot
prevent every one (docs/jobs.md, "Retries"): a worker killed after the API accepted its
call and before its completion committed loses that result; the lease expires, the
job is refused as late and planned again, and its next call is accepted again. So
each duplicate must be such a call: accepted before a kill, at most a lease earlier
(a completion is retried until the lease ends). Without kills there are none
(tests/integration/test_jobs_demo.py).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from cluster.jobs.demo import JobsDemo, JobsDemoOptions
from cluster.layout import live_endpoint

pytestmark = [pytest.mark.integration, pytest.mark.serial]

LEASE_MS = 5_000  # a killed worker's jobs come back this soon
WORKER_KILL_AT = 150  # jobs ended
SHARD_KILL_AT = 450


def test_killed_worker_and_shard_lose_no_job_and_break_no_promise(
    tmp_path: Path, seed: int
) -> None:
    kills: dict[str, int] = {}  # victim -> when it was killed (monotonic ns, the API's clock)

    def chaos(run: JobsDemo, tokens: dict[str, int]) -> None:
        ended = tokens.get("done", 0) + tokens.get("dead", 0)
        if "worker" not in kills and ended >= WORKER_KILL_AT:
            victim = run.worker_pids()[0]  # a worker this run started
            kills["worker"] = time.monotonic_ns()
            os.kill(victim, signal.SIGKILL)
        elif "worker" in kills and "shard" not in kills and ended >= SHARD_KILL_AT:
            assert run.layout is not None
            published = live_endpoint(run.layout.shard_dir(1))
            if published is not None and len(run.worker_pids()) == len(run.workers):
                kills["shard"] = time.monotonic_ns()
                os.kill(published[1], signal.SIGKILL)  # a shard of the cluster it started

    run = JobsDemo(
        JobsDemoOptions(
            customers=500, seed=seed, lease_ms=LEASE_MS, timeout_ms=90_000,
            data_dir=tmp_path / "jobs", progress=False,
        )
    )  # fmt: skip
    report = run.run(on_poll=chaos)
    print("\n".join(report.lines()))  # shown when the test fails

    assert sorted(kills) == ["shard", "worker"], report.to_json()
    assert run.workers[0].restarts + run.workers[1].restarts >= 1  # the replacement ran
    outcomes, figures = report.outcomes, report.figures
    assert report.complete, report.to_json()
    assert outcomes.lost == () and outcomes.doubled == () and outcomes.unexpected == ()
    assert outcomes.done + outcomes.dead == outcomes.put
    assert figures.violations == (), figures.violations[:3]
    assert figures.in_flight_max <= report.concurrency
    assert run.api is not None
    lease_ns = LEASE_MS * 1_000_000
    accepted = sorted((r for r in run.api.requests() if r.accepted), key=lambda r: r.start_ns)
    for key in figures.duplicate_keys:
        first = next(r for r in accepted if r.key == key)
        explained = [at for at in kills.values() if at - lease_ns <= first.end_ns <= at]
        assert explained, f"duplicate {key}: first accepted {first}, kills {kills}"
    assert figures.duplicates <= report.lost_results
    assert figures.duplicates <= report.concurrency
