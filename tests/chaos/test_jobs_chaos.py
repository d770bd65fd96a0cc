"""SIGKILL mid-run of the job runner: a worker (the run starts a replacement) and then a
shard (its supervisor restarts it). No job is lost or ends twice, counted over every
shard; the API sees no limit violation, never more calls at once than the cap, and no
job executed twice.

A kill can still make a job call the API twice with one idempotency key: a worker
killed after the API executed its call and before its completion committed loses that
result; the lease expires, the job is refused as late and planned again, and calls
again (docs/jobs.md, "Retries"). The API honours the key, as a real one with
idempotency keys does: the repeat is a replay, answered with the first answer and not
executed. So duplicates (a job executed twice) must be 0 outright; the replays the
kills caused are printed, and may be none (a kill may find no call in that gap).
"""

from __future__ import annotations

import os
import signal
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
    kills: set[str] = set()  # the victims killed so far

    def chaos(run: JobsDemo, tokens: dict[str, int]) -> None:
        ended = tokens.get("done", 0) + tokens.get("dead", 0)
        if "worker" not in kills and ended >= WORKER_KILL_AT:
            victim = run.worker_pids()[0]  # a worker this run started
            kills.add("worker")
            os.kill(victim, signal.SIGKILL)
        elif "worker" in kills and "shard" not in kills and ended >= SHARD_KILL_AT:
            assert run.layout is not None
            published = live_endpoint(run.layout.shard_dir(1))
            if published is not None and len(run.worker_pids()) == len(run.workers):
                kills.add("shard")
                os.kill(published[1], signal.SIGKILL)  # a shard of the cluster it started

    run = JobsDemo(
        JobsDemoOptions(
            customers=500, seed=seed, lease_ms=LEASE_MS, timeout_ms=90_000,
            data_dir=tmp_path / "jobs", progress=False,
        )
    )  # fmt: skip
    report = run.run(on_poll=chaos)
    print("\n".join(report.lines()))  # shown when the test fails
    figures = report.figures
    print(f"replays caused by the kills: {figures.replays} (executions {figures.executions})")

    assert sorted(kills) == ["shard", "worker"], report.to_json()
    assert run.workers[0].restarts + run.workers[1].restarts >= 1  # the replacement ran
    outcomes = report.outcomes
    assert report.complete, report.to_json()
    assert outcomes.lost == () and outcomes.doubled == () and outcomes.unexpected == ()
    assert outcomes.done + outcomes.dead == outcomes.put
    assert figures.violations == (), figures.violations[:3]
    assert figures.in_flight_max <= report.concurrency
    # Exactly once at the API: the key is stable across attempts and the API executes it
    # once, so a kill between its answer and the completion causes a replay, never a
    # second execution.
    assert figures.duplicates == 0, figures.duplicated_jobs[:5]
    assert figures.replays >= 0
    # Every job done had its call executed (a replay answers only an executed key).
    assert outcomes.done <= figures.executions, (outcomes.done, figures.executions)
    assert report.ok, report.failures
