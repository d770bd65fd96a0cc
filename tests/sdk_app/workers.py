"""A user's workers of tests/sdk_app/net.py, one per behaviour the SDK tests need.

Every call appends ``job_id attempt idempotency_key pid`` to the file named by
``SDK_CALLS`` (O_APPEND: lines from concurrent processes do not interleave), so a test
can count calls and check keys across retries and processes. ``SDK_GATE`` names a file
the ``gated`` worker waits for (a call that runs until the test lets it end).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from cluster import current, worker
from tests.sdk_app.net import Done, Job

GATE_WAIT_S = 30.0


def _record(job: Job) -> None:
    calls = os.environ.get("SDK_CALLS")
    if calls:
        line = f"{job.job_id} {job.attempt} {current().idempotency_key} {os.getpid()}\n"
        fd = os.open(calls, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


@worker(place="queue", batch=4, concurrency=4, lease_ms=5_000)
def double(job: Job) -> Done:
    """Doubles the job id; every fifth job fails its first attempt."""
    _record(job)
    if job.job_id % 5 == 0 and job.attempt == 0:
        raise ValueError(f"job {job.job_id} fails its first attempt")
    return Done(job.group, job.job_id, job.attempt, job.job_id * 2)


@worker(place="queue", concurrency=8, lease_ms=600)
async def slow(job: Job) -> Done:
    """Runs 1.5 s under a 600 ms lease: only heartbeats keep it leased."""
    _record(job)
    current().progress(f"job {job.job_id}: halfway")
    await asyncio.sleep(1.5)
    return Done(job.group, job.job_id, job.attempt, 0)


@worker(place="queue", concurrency=8, lease_ms=60_000)
def gated(job: Job) -> Done:
    """Waits for the gate file (at most 30 s): a call still running when asked to stop."""
    _record(job)
    gate = Path(os.environ.get("SDK_GATE", "/nonexistent"))
    deadline = time.monotonic() + GATE_WAIT_S
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return Done(job.group, job.job_id, job.attempt, 1)


@worker(place="queue", concurrency=4, lease_ms=1_000)
def steady(job: Job) -> Done:
    """20 ms per job under a short lease: killed mid-run, its leases expire in 1 s."""
    _record(job)
    time.sleep(0.02)
    return Done(job.group, job.job_id, job.attempt, 2)


not_a_worker = double.function  # the plain function: `cpn worker run` must refuse it
