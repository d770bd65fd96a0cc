"""bench/workers.py's stable parts: percentiles, round trips, the ratio, and the keys of its
last line; and bench/workers_app.py's samples and its reading of an HTTP answer.

Timings never decide a test: these check only what the benchmark counts and prints.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from bench.workers import (
    JSON_KEYS,
    NET_PARAMS,
    PhaseResult,
    median_ratio,
    percentile,
    round_trips_ms,
    segments_ms,
    summary,
)
from bench.workers_app import BATCH, CONCURRENCY, POLLS_PER_SHARD, ApiClient, Samples, noop
from nets.jobs import JobsPolicy, Run


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1 .. 100, in any order
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7
    assert percentile([1.0, 2.0], 0.5) == 1
    assert math.isnan(percentile([], 0.5))


def test_round_trips_count_the_jobs_that_became_available_in_the_window() -> None:
    samples = [
        (1_000.0, 1_003.0, 1_004.5),
        (1_010.0, math.nan, 1_012.0),  # no lease time: in the round trips, not the parts
        (999.0, 1_001.0, 1_020.0),
        (1_020.0, 1_020.5, 1_021.0),
    ]
    assert round_trips_ms(samples, 1_000, 1_020) == [4.5, 2.0]
    assert segments_ms(samples, 1_000, 1_020) == ([3.0], [1.5])


def test_the_ratio_is_the_median_of_each_rounds_ratio() -> None:
    assert median_ratio([(900, 1_000), (2_000, 1_000), (800, 1_000)]) == 0.9
    assert math.isnan(median_ratio([]))


def _run(name: str, per_s: float, paced: list[float]) -> PhaseResult:
    return PhaseResult(
        name=name,
        jobs=1_000,
        seconds=1_000 / per_s,
        loaded_ms=[100.0, 200.0],
        paced_ms=paced,
        paced_jobs=len(paced),
        paced_wait_ms=[],
        paced_work_ms=[],
        calls_ms=[],
        cpu_s={"worker": 0.1, "shard": 0.2, "router": 0.0},
        commit_ms=(2.0, 9.0),
    )


def test_the_last_line_has_the_issues_keys_first_and_medians_over_rounds() -> None:
    assert JSON_KEYS[:5] == (
        "completions_per_s",
        "roundtrip_p50_ms",
        "roundtrip_p99_ms",
        "violations",
        "sdk_ratio",
    )
    sdk = [_run("sdk", 3_000, [4.0, 6.0]), _run("sdk", 3_600, [5.0]), _run("sdk", 1_000, [])]
    bare = [_run("bare", 3_000, [1.0]), _run("bare", 4_000, [1.0]), _run("bare", 2_000, [1.0])]
    figures = summary(sdk, bare, _run("api", 2_000, [30.0]), violations=0, api_calls=9,
                      api_duplicates=0, api_at_limit=20, request_cpu_us=(40.0, 110.0))  # fmt: skip
    assert tuple(figures) == JSON_KEYS
    assert figures["completions_per_s"] == 3_000
    assert figures["roundtrip_p50_ms"] == 4.5  # rounds' p50s 4 and 5; the empty one skipped
    assert figures["sdk_ratio"] == 0.9  # of the rounds' 1.0, 0.9 and 0.5
    assert figures["sdk_cpu_ratio"] == 1.0  # every run here costs 300 us per completion
    assert figures["bare_completions_per_s"] == 3_000
    assert figures["sdk_worker_cpu_us"] == 100
    assert figures["cores_busy"] == 0.9  # 0.3 CPU-s over 1/3 s
    assert figures["rounds"] == 3
    json.dumps(figures)  # a JSON line: no NaN, no objects


def test_the_net_lets_every_worker_lease_in_progress_hold_a_slot() -> None:
    policy = JobsPolicy(**NET_PARAMS)
    assert policy.concurrency == 4 * CONCURRENCY * BATCH
    assert POLLS_PER_SHARD * 2 == CONCURRENCY  # 2 shards: every lease may be a waiting poll
    assert (noop.batch, noop.concurrency, noop.polls_per_shard) == (
        BATCH,
        CONCURRENCY,
        POLLS_PER_SHARD,
    )


def test_samples_date_a_job_from_its_start_firing(tmp_path: Path) -> None:
    samples = Samples(str(tmp_path / "s.json"), ready_ms=20)
    run = Run("c1", "j1", 0, 1_000_020, 200)
    samples.leased("lease-1")
    samples.completed("lease-1", [("ran", tuple(run)), ("failed", (*run, "boom"))])
    samples.called(1.5)
    samples.write()
    written = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert [ready for ready, _leased, _done in written["round_trips"]] == [1_000_000] * 2
    assert all(1_000_000 < leased <= done for _r, leased, done in written["round_trips"])
    assert written["calls_ms"] == [1.5]


@pytest.mark.parametrize(
    ("head", "status", "keep"),
    [
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", 200, True),
        (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n", 503, True),
        (b"HTTP/1.1 400 Bad\r\nContent-Length: 2\r\nConnection: close\r\n\r\n", 400, False),
    ],
)
def test_the_api_client_reads_a_status_and_whether_the_connection_stays(
    head: bytes, status: int, keep: bool
) -> None:
    async def read() -> tuple[int, bool, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(head + b"{}" + b"next")
        answer = await ApiClient._answer(reader)
        return (*answer, await reader.readexactly(4))

    assert asyncio.run(read()) == (status, keep, b"next")  # the body is read, no more
