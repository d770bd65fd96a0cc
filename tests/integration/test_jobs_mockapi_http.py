"""The mock job API over real HTTP on loopback: answers, the call log, the figures.

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


def post(client: httpx.Client, api: MockApi, customer: str, job_id: str, key: str) -> int:
    body = {"customer": customer, "job_id": job_id, "attempt": 0, "key": key}
    return client.post(api.run_url, json=body).status_code


def test_calls_are_answered_by_the_rule_and_logged(api: MockApi, tmp_path: Path) -> None:
    config = api.config
    fine, flaky, broken = (
        key_with(config, [200, 200]),
        key_with(config, [503, 200]),
        key_with(config, [503, 503, 503]),
    )
    with httpx.Client(timeout=TIMEOUT_S) as client:
        assert [post(client, api, "a", "j1", fine) for _ in range(2)] == [200, 200]
        assert [post(client, api, "b", "j2", flaky) for _ in range(2)] == [503, 200]
        assert [post(client, api, "c", "j3", broken) for _ in range(3)] == [503] * 3
        bad = client.post(api.run_url, content=b'{"customer": "a"}')
        assert bad.status_code == 400 and "exactly customer" in bad.json()["error"]
        assert client.post(api.url + "/other", json={}).status_code == 404
    records = api.requests()
    assert len(records) == 9 and api.statistics().by_status == {200: 3, 400: 1, 404: 1, 503: 4}
    assert all(r.end_ns - r.start_ns >= LATENCY_MS * 1_000_000 for r in records if r.key)
    assert [r.call for r in records if r.key == broken] == [1, 2, 3]
    # The log file holds the same records (in the order they were answered).
    logged = read_log(tmp_path / "calls.jsonl")
    assert sorted(logged, key=lambda r: r.start_ns) == list(records)
    figures = measure_calls(logged, rate=config.rate, window_ms=config.window_ms)
    assert figures == api.figures()
    # `fine` was accepted twice: the one duplicate; `flaky` was rejected, then accepted.
    assert (figures.duplicates, figures.duplicate_keys) == (1, (fine,))
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
