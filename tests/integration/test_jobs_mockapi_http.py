"""The mock job API over real HTTP on loopback: answers, idempotency keys (a repeat of an
executed key is replayed, not executed), the call log, the figures.

Every test starts its own :class:`MockApi` on port 0 and stops it (joining its threads)
before it ends; calls are made with httpx, with timeouts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cluster.jobs.mockapi import MockApi, MockApiConfig, planned_status, read_log
from cluster.jobs.mockapi_log import measure_calls

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0
LATENCY_MS = 50
AT_ONCE = 8  # calls of one key sent at once


def key_with(config: MockApiConfig, statuses: list[int]) -> str:
    """A key whose first calls are answered ``statuses``, by the API's own rule."""
    for n in range(10_000):
        key = f"probe/{n}"
        if [planned_status(config, key, i + 1) for i in range(len(statuses))] == statuses:
            return key
    raise AssertionError(f"no key answers {statuses} under {config}")


@pytest.fixture
def api(seed: int, tmp_path: Path) -> Iterator[MockApi]:
    config = MockApiConfig(
        seed=seed, latency_ms=LATENCY_MS, flaky_rate=0.3, flaky_failures=1, broken_rate=0.2
    )
    with MockApi(config, log_path=tmp_path / "calls.jsonl") as running:
        yield running
    assert not [t.name for t in threading.enumerate() if t.name.startswith("mockapi-")]


def body(customer: str, job_id: str, key: str, attempt: int = 0) -> dict[str, object]:
    return {"customer": customer, "job_id": job_id, "attempt": attempt, "key": key}


def post(client: httpx.Client, api: MockApi, customer: str, job_id: str, key: str) -> int:
    return client.post(api.run_url, json=body(customer, job_id, key)).status_code


def test_calls_are_answered_by_the_rule_and_logged(api: MockApi, tmp_path: Path) -> None:
    config = api.config
    fine, flaky, broken = (
        key_with(config, [200, 200]),
        key_with(config, [503, 200]),
        key_with(config, [503, 503, 503]),
    )
    with httpx.Client(timeout=TIMEOUT_S) as client:
        assert [post(client, api, "a", "j1", fine) for _ in range(2)] == [200, 200]
        assert [post(client, api, "b", "j2", flaky) for _ in range(3)] == [503, 200, 200]
        assert [post(client, api, "c", "j3", broken) for _ in range(3)] == [503] * 3
        bad = client.post(api.run_url, content=b'{"customer": "a"}')
        assert bad.status_code == 400 and "exactly customer" in bad.json()["error"]
        assert client.post(api.url + "/other", json={}).status_code == 404
    assert api.wait_requests(10, timeout_s=TIMEOUT_S)  # each is logged after its answer
    records = api.requests()
    assert len(records) == 10 and api.statistics().by_status == {200: 4, 400: 1, 404: 1, 503: 4}
    assert all(r.end_ns - r.start_ns >= LATENCY_MS * 1_000_000 for r in records if r.key)
    assert [r.call for r in records if r.key == broken] == [1, 2, 3]
    # The second call of `fine` and the third of `flaky` repeat an executed key: replays.
    assert [(r.call, r.replayed) for r in records if r.key == flaky] == [
        (1, False), (2, False), (3, True)
    ]  # fmt: skip
    assert api.statistics().keys_executed == 2
    # The log file holds the same records (in the order they were answered).
    logged = read_log(tmp_path / "calls.jsonl")
    assert sorted(logged, key=lambda r: r.start_ns) == list(records)
    figures = measure_calls(logged, rate=config.rate, window_ms=config.window_ms)
    assert figures == api.figures()
    # Each accepted key executed once: `fine` at its first call, `flaky` at its second
    # (a retry after a 503 executes); their later calls were replayed.
    assert (figures.executions, figures.replays, figures.accepted) == (2, 2, 4)
    assert (figures.duplicates, figures.duplicated_jobs) == (0, ())
    assert figures.violations == () and figures.customers == 3 and figures.in_flight_max == 1


def test_the_limit_and_calls_in_flight_are_measured_at_the_server(tmp_path: Path) -> None:
    config = MockApiConfig(latency_ms=200, flaky_rate=0.0, rate=2, window_ms=60_000)

    async def burst(url: str) -> list[int]:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            calls = [
                client.post(
                    url, json={"customer": "a", "job_id": f"j{n}", "attempt": 0, "key": f"a/{n}"}
                )
                for n in range(4)
            ]
            return [answer.status_code for answer in await asyncio.gather(*calls)]

    with MockApi(config, log_path=tmp_path / "calls.jsonl") as api:
        assert asyncio.run(burst(api.run_url)) == [200] * 4
    logged = sorted(read_log(tmp_path / "calls.jsonl"), key=lambda r: r.start_ns)
    figures = measure_calls(logged, rate=2, window_ms=60_000)
    # Four calls of one customer within a minute at a limit of two: the third and the
    # fourth to arrive are violations.
    assert [v.call for v in figures.violations] == logged[2:]
    # Four calls sent at once, each answered after 200 ms: they overlap at the server.
    assert 2 <= figures.in_flight_max <= 4
    with pytest.raises(httpx.ConnectError), httpx.Client(timeout=TIMEOUT_S) as client:
        client.post(api.run_url, json={})


def test_a_repeat_of_an_executed_key_is_replayed_not_executed(tmp_path: Path) -> None:
    # Answers take long enough that two calls sent at once are both at the API.
    config = MockApiConfig(latency_ms=500, flaky_rate=0.0)

    async def at_once(url: str, key: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            calls = [client.post(url, json=body("a", "j2", key, n)) for n in range(AT_ONCE)]
            return list(await asyncio.gather(*calls))

    with MockApi(config, log_path=tmp_path / "calls.jsonl") as api:
        with httpx.Client(timeout=TIMEOUT_S) as client:
            first, again = (
                client.post(api.run_url, json=body("a", "j1", "a/j1", n)) for n in (0, 1)
            )
        concurrent = asyncio.run(at_once(api.run_url, "a/j2"))
    # One after the other: the repeat is answered with the first answer, marked replayed.
    assert (first.status_code, again.status_code) == (200, 200)
    assert first.json() == {"key": "a/j1", "call": 1, "ok": True}
    assert again.json() == {**first.json(), "replayed": True}
    # All in flight at once: one executes, the others are its replays, never a second run.
    assert [answer.status_code for answer in concurrent] == [200] * AT_ONCE
    flags = sorted(answer.json().get("replayed", False) for answer in concurrent)
    assert flags == [False] + [True] * (AT_ONCE - 1)
    assert {answer.json()["call"] for answer in concurrent} == {1}  # the first answer's
    logged = sorted(read_log(tmp_path / "calls.jsonl"), key=lambda r: r.start_ns)
    (executed,) = [r for r in logged if r.key == "a/j2" and not r.replayed]
    replayed = [r for r in logged if r.key == "a/j2" and r.replayed]
    assert executed.call == 1 and sorted(r.call for r in replayed) == list(range(2, AT_ONCE + 1))
    # Replays that arrived before the execution was answered: the calls overlapped.
    assert any(r.start_ns < executed.end_ns for r in replayed)
    figures = measure_calls(logged, rate=config.rate, window_ms=config.window_ms)
    assert (figures.executions, figures.replays, figures.duplicates) == (2, AT_ONCE, 0)
