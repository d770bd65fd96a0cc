"""The mock job API's pure parts: the figures from crafted call logs, the failure rule,
reading calls and logs."""

from __future__ import annotations

import json
import random

import pytest

from cluster.jobs.mockapi import MockApiConfig, parse_call, planned_status
from cluster.jobs.mockapi_log import (
    CallRecord,
    MockApiError,
    measure_calls,
    parse_log,
)

MS = 1_000_000  # ns


def call(
    start_ms: float,
    end_ms: float | None = None,
    *,
    customer: str = "c1",
    key: str = "",
    job: str = "",
    status: int = 200,
    number: int = 1,
    replayed: bool = False,
) -> CallRecord:
    end = start_ms + 1 if end_ms is None else end_ms
    return CallRecord(
        start_ns=round(start_ms * MS),
        end_ns=round(end * MS),
        customer=customer,
        job_id=job or key or f"j{start_ms}",
        attempt=0,
        key=key or f"{customer}/j{start_ms}",
        status=status,
        call=number,
        replayed=replayed,
    )


def test_a_violation_needs_rate_plus_one_calls_within_less_than_a_window() -> None:
    edge = [call(0), call(500), call(1_000)]  # calls 1 and 3 exactly one window apart
    assert measure_calls(edge, rate=2, window_ms=1_000).violations == ()
    inside = [call(0), call(500), call(999.999999)]
    (violation,) = measure_calls(inside, rate=2, window_ms=1_000).violations
    assert (violation.first, violation.call) == (inside[0], inside[2])
    assert violation.span_ns == 999_999_999 and violation.customer == "c1"
    # One customer's calls never count against another's, and a rate of 3 allows it.
    mixed = [call(0), call(500, customer="c2"), call(999)]
    assert measure_calls(mixed, rate=1, window_ms=1_000).violations[0].customer == "c1"
    assert len(measure_calls(mixed, rate=1, window_ms=1_000).violations) == 1
    assert measure_calls(inside, rate=3, window_ms=1_000).violations == ()


def test_every_answered_call_counts_against_the_limit_but_unreadable_ones_do_not() -> None:
    failed = [call(0, status=503), call(10, status=503), call(20)]
    assert len(measure_calls(failed, rate=2, window_ms=1_000).violations) == 1
    # A replay executes nothing, but the API received it: it counts like any call.
    replays = [call(0, key="k"), call(10, key="k", number=2, replayed=True)]
    replays.append(call(20, key="k", number=3, replayed=True))
    (violation,) = measure_calls(replays, rate=2, window_ms=1_000).violations
    assert (violation.first, violation.call) == (replays[0], replays[2])
    unreadable = [call(0, customer=""), call(10, customer=""), call(20)]
    figures = measure_calls(unreadable, rate=1, window_ms=1_000)
    assert figures.violations == () and figures.customers == 1 and figures.calls == 3


def test_each_call_in_a_burst_is_a_violation_once() -> None:
    burst = [call(t) for t in range(0, 70, 10)]  # 7 calls in 70 ms
    figures = measure_calls(burst, rate=5, window_ms=1_000)
    assert [v.call for v in figures.violations] == burst[5:]


def test_a_replay_or_a_retry_after_a_503_is_no_duplicate() -> None:
    records = [
        call(0, key="a", status=503),
        call(10, key="a", status=200, number=2),  # a retry after a rejection: executed
        call(20, key="b", status=201),
        call(30, key="b", status=200, number=2, replayed=True),  # a lost answer, again
        call(40, key="b", status=200, number=3, replayed=True),
        call(50, key="c", status=503),
        call(60, key="c", status=503, number=2),  # never executed
    ]
    figures = measure_calls(records, rate=100, window_ms=1_000)
    assert (figures.duplicates, figures.duplicated_jobs) == (0, ())
    assert (figures.executions, figures.replays, figures.accepted) == (2, 2, 4)
    assert figures.by_status == {200: 3, 201: 1, 503: 3}


def test_a_job_executed_twice_is_a_duplicate_whatever_its_keys() -> None:
    # A worker whose key changed between attempts: the API saw two keys, executed both.
    records = [
        call(0, customer="c1", job="j7", key="c1/j7#0"),
        call(10, customer="c1", job="j7", key="c1/j7#1"),
        call(20, customer="c1", job="j7", key="c1/j7#1", number=2, replayed=True),
        call(30, customer="c2", job="j7", key="c2/j7"),  # another customer's job j7
        call(40, customer="c3", job="j1", key="x"),
        call(50, customer="c3", job="j1", key="y"),
        call(60, customer="c3", job="j1", key="z", status=204),  # three executions: two
    ]
    figures = measure_calls(records, rate=100, window_ms=1_000)
    assert figures.duplicated_jobs == (("c1", "j7"), ("c3", "j1"))
    assert (figures.duplicates, figures.executions, figures.replays) == (3, 6, 1)


def test_in_flight_max_counts_overlaps_with_half_open_intervals() -> None:
    assert measure_calls([], rate=1, window_ms=1).in_flight_max == 0
    chain = [call(0, 10), call(10, 20), call(20, 30)]  # each starts as the last ends
    assert measure_calls(chain, rate=10, window_ms=1).in_flight_max == 1
    nested = [call(0, 100), call(10, 20, customer="c2"), call(15, 50, customer=""), call(20, 30)]
    assert measure_calls(nested, rate=10, window_ms=1).in_flight_max == 3


def test_figures_do_not_depend_on_the_order_of_records(seed: int) -> None:
    draw = random.Random(seed)
    records = [
        call(
            draw.randrange(0, 3_000),
            customer=f"c{draw.randrange(5)}",
            key=f"k{draw.randrange(40)}",
            status=draw.choice((200, 503)),
            replayed=draw.random() < 0.3,
        )
        for _ in range(200)
    ]
    shuffled = records[:]
    draw.shuffle(shuffled)
    assert measure_calls(records, rate=3, window_ms=500) == measure_calls(
        shuffled, rate=3, window_ms=500
    )
    with pytest.raises(MockApiError, match="rate=0"):
        measure_calls(records, rate=0, window_ms=500)


def test_the_log_round_trips_and_garbage_names_its_line() -> None:
    records = [
        call(0, key="a"),
        call(3, key="a", number=2, replayed=True),
        call(5, 9, customer="", status=400, number=0),
    ]
    lines = [json.dumps(r.to_json()) + "\n" for r in records]
    assert parse_log(["\n", *lines]) == records
    # A log written before replays existed has no `replayed`: none of its calls was one.
    old = {k: v for k, v in records[0].to_json().items() if k != "replayed"}
    assert parse_log([json.dumps(old)]) == [records[0]]
    with pytest.raises(MockApiError, match="field 'replayed' must be bool, got 1"):
        parse_log([json.dumps(dict(old, replayed=1))])
    with pytest.raises(MockApiError, match="call log, line 2: not JSON"):
        parse_log([lines[0], "{"])
    bad = dict(records[0].to_json(), status="200")
    with pytest.raises(MockApiError, match="line 1: field 'status' must be int, got '200'"):
        parse_log([json.dumps(bad)])
    with pytest.raises(MockApiError, match="line 1: expected an object with fields"):
        parse_log(["[1, 2]"])


def test_the_failure_rule_is_a_function_of_seed_key_and_call() -> None:
    config = MockApiConfig(seed=3, flaky_rate=0.3, flaky_failures=2, broken_rate=0.1)
    keys = [f"c{n}/j{n}" for n in range(2_000)]
    runs = {key: [planned_status(config, key, n) for n in range(1, 6)] for key in keys}
    broken = [k for k, statuses in runs.items() if statuses == [503] * 5]
    flaky = [k for k, statuses in runs.items() if statuses == [503, 503, 200, 200, 200]]
    fine = [k for k, statuses in runs.items() if statuses == [200] * 5]
    assert len(broken) + len(flaky) + len(fine) == len(keys)
    assert 150 < len(broken) < 250 and 500 < len(flaky) < 700
    assert runs == {key: [planned_status(config, key, n) for n in range(1, 6)] for key in keys}
    other = MockApiConfig(seed=4, flaky_rate=0.3, flaky_failures=2, broken_rate=0.1)
    assert broken != [k for k in keys if planned_status(other, k, 5) == 503]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "body is not JSON"),
        (b"[]", "exactly customer, job_id, attempt, key"),
        (b'{"customer": "c", "job_id": "j", "attempt": 0}', "exactly customer"),
        (b'{"customer": "", "job_id": "j", "attempt": 0, "key": "k"}', "customer must be"),
        (b'{"customer": "c", "job_id": "j", "attempt": true, "key": "k"}', "attempt must be"),
        (b'{"customer": "c", "job_id": "j", "attempt": -1, "key": "k"}', "attempt must be"),
        (b'{"customer": "c", "job_id": 7, "attempt": 0, "key": "k"}', "job_id must be"),
    ],
)
def test_a_call_body_is_checked_field_by_field(body: bytes, message: str) -> None:
    with pytest.raises(MockApiError, match=message):
        parse_call(body)


def test_the_config_names_a_bad_value() -> None:
    with pytest.raises(MockApiError, match=r"flaky_rate=1\.5: expected 0 \.\. 1"):
        MockApiConfig(flaky_rate=1.5)
    with pytest.raises(MockApiError, match="may not exceed 1"):
        MockApiConfig(flaky_rate=0.6, broken_rate=0.6)
    with pytest.raises(MockApiError, match="latency_ms=-1"):
        MockApiConfig(latency_ms=-1)
    with pytest.raises(MockApiError, match="latency_ms='5'"):
        MockApiConfig(latency_ms="5")  # type: ignore[arg-type]
    assert MockApiConfig(flaky_rate=0, broken_rate=1).broken_rate == 1
