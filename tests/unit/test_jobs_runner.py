"""The job runner's pure parts: the jobs the demo puts, how their ends are judged, the
worker's key, URL, deadline and send-time late rule (cluster/jobs/report.py, worker.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from cluster.jobs.mockapi_log import CallRecord, measure_calls
from cluster.jobs.report import JobsReport, customers_at_limit, job_outcomes, plan_jobs
from cluster.jobs.worker import (
    API_URL_ENV,
    LEASE_END_MARGIN_MS,
    REQUEST_TIMEOUT_S,
    SEND_STARTED,
    LateAtSend,
    api_url_from,
    call_deadline_s,
    job_key,
    refuse_late,
    refuse_when_late,
    run_job,
)
from nets.errors import CpnError
from nets.jobs import Dead, Job, Run


def test_planned_jobs_are_one_to_jobs_max_per_customer_and_replay_by_seed(seed: int) -> None:
    jobs = plan_jobs(300, 3, seed)
    assert jobs == plan_jobs(300, 3, seed)
    per_customer: dict[str, int] = {}
    for job in jobs:
        per_customer[job.customer] = per_customer.get(job.customer, 0) + 1
        assert job.attempt == 0
    assert len(per_customer) == 300
    assert set(per_customer.values()) <= {1, 2, 3}
    assert len({(j.customer, j.job_id) for j in jobs}) == len(jobs)


def test_outcomes_name_lost_doubled_and_unexpected_jobs() -> None:
    put = [Job("a", "j0", 0), Job("a", "j1", 0), Job("b", "j0", 0), Job("c", "j0", 0)]
    done = [Job("a", "j0", 2), Job("b", "j0", 0), Job("b", "j0", 1), Job("x", "j9", 0)]
    dead = [Dead("c", "j0", 3, "http 503")]
    found = job_outcomes(put, done, dead)
    assert (found.put, found.done, found.dead) == (4, 4, 1)
    assert found.lost == (("a", "j1"),)
    assert found.doubled == (("b", "j0"),)
    assert found.unexpected == (("x", "j9"),)
    assert found.retries == 2 + 0 + 1 + 0 + 3
    assert found.dead_errors == {"http 503": 1}
    assert not found.ok
    clean = job_outcomes(put[:1], done[:1], [])
    assert clean.ok


def call(
    customer: str, at_ms: int, *, key: str = "", status: int = 200, replayed: bool = False
) -> CallRecord:
    """A call of job ``key`` (default: the customer's name) with key ``key``."""
    start_ns, key = at_ms * 1_000_000, key or customer
    return CallRecord(
        start_ns, start_ns + 5_000_000, customer, key, 0, key, status, 1, replayed=replayed
    )


def test_customers_at_limit_counts_those_whose_window_filled() -> None:
    records = [
        call("a", 0), call("a", 999),  # two within a window: the limit of 2 reached
        call("b", 0), call("b", 1_000),  # exactly a window apart: not reached
        call("c", 0),
    ]  # fmt: skip
    assert customers_at_limit(records, rate=2, window_ms=1_000) == 1
    assert customers_at_limit(records, rate=1, window_ms=1_000) == 3


def report(records: list[CallRecord], **fields: object) -> JobsReport:
    outcomes = job_outcomes([Job("a", "j", 0)], [Job("a", "j", 0)], [])
    base: dict[str, object] = {
        "customers": 1, "outcomes": outcomes,
        "figures": measure_calls(records, rate=2, window_ms=1_000), "concurrency": 2,
        "complete": True, "late_refusals": 0, "startup_s": 1.0, "wall_s": 2.0,
    }  # fmt: skip
    return JobsReport(**{**base, **fields})  # type: ignore[arg-type]


def test_a_report_fails_on_each_broken_promise_and_says_which() -> None:
    fine = report([call("a", 0)])
    assert fine.ok
    assert fine.lines().__next__().startswith("jobs: 1 put for 1 customers; every job ended")
    assert list(fine.lines())[-1] == "  OK: every promise held"
    over = report([call("a", 0), call("a", 10), call("a", 20, key="k2")])
    assert over.failures == ["1 limit violations", "1 duplicate executions (a/a)"]
    # A replay is the API's answer to a repeated key: no execution, no failure.
    replayed = report([call("a", 0), call("a", 1_000, replayed=True)])
    assert replayed.ok and replayed.to_json()["replays"] == 1
    assert (replayed.to_json()["executions"], replayed.to_json()["duplicates"]) == (1, 0)
    assert any(line.startswith("    executions:       1 ") for line in replayed.lines())
    late = report([call("a", 0)], complete=False)
    assert late.failures == ["not every job ended in time"]
    crowded = report([call("a", 0), call("b", 1), call("c", 2)])
    assert crowded.failures == ["3 calls in flight, over the cap of 2"]
    assert crowded.to_json()["ok"] is False


def test_the_idempotency_key_is_the_job_never_the_attempt() -> None:
    first, retry = Run("acme", "j7", 0, 1_000, 200), Run("acme", "j7", 3, 9_000, 200)
    assert job_key(first) == job_key(retry) == "acme/j7"
    assert run_job.idempotency_key(retry) == "acme/j7"
    assert refuse_late(first).place == "late"


def test_the_api_url_comes_from_the_environment_or_the_error_says_how() -> None:
    assert api_url_from({API_URL_ENV: "http://127.0.0.1:8080/"}) == "http://127.0.0.1:8080/run"
    with pytest.raises(CpnError, match=f"set {API_URL_ENV}"):
        api_url_from({})
    with pytest.raises(CpnError, match="not an http"):
        api_url_from({API_URL_ENV: "127.0.0.1:8080"})


def test_a_call_deadline_ends_before_its_lease_does() -> None:
    assert call_deadline_s(0, 60_000) == REQUEST_TIMEOUT_S
    assert call_deadline_s(0, 3_000 + LEASE_END_MARGIN_MS) == 3.0
    assert call_deadline_s(5_000, 5_000) < 0


def test_the_send_hook_refuses_only_a_late_request_and_only_at_its_head() -> None:
    now_ms = time.time_ns() // 1_000_000
    late = refuse_when_late(now_ms - 1)
    on_time = refuse_when_late(now_ms + 60_000)
    asyncio.run(late("connection.connect_tcp.started", {}))  # connecting is not sending
    asyncio.run(on_time(SEND_STARTED, {}))
    with pytest.raises(LateAtSend):
        asyncio.run(late(SEND_STARTED, {}))
