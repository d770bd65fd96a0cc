"""The job runner end to end: its worker against a real cluster and the mock API, and
``cpn demo jobs``.

Every test starts its own mock API (port 0), cluster (``cpn up`` under ``tmp_path``) and
worker processes, waits on conditions with timeouts, and stops everything it started by
pid before it ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cluster.client import ClusterClient
from cluster.jobs.mockapi import MockApi, MockApiConfig, planned_status
from cluster.jobs.worker import API_URL_ENV, LateAtSend, refuse_when_late
from cluster.launch import down as stop_cluster
from cluster.launch import record_config
from cluster.layout import ClusterConfig, ClusterLayout, supervisor_pid
from cluster.processes import ShardProcess, run_cpn, stop_all, wait_for
from nets.jobs import Job

pytestmark = pytest.mark.integration

WORKER = "cluster.jobs.worker:run_job"
TIMEOUT_S = 60.0


def job_with(config: MockApiConfig, customer: str, statuses: list[int]) -> str:
    """A job id of ``customer`` whose calls are answered ``statuses`` by the API's rule
    (its idempotency key is ``customer/job_id``)."""
    for n in range(100_000):
        key = f"{customer}/j{n}"
        if [planned_status(config, key, i + 1) for i in range(len(statuses))] == statuses:
            return f"j{n}"
    raise AssertionError(f"no job of {customer} is answered {statuses} under {config}")


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Iterator[Path]:
    """A running 2-shard cluster of the job runner's net, stopped afterwards."""
    root = tmp_path / "cluster"
    started = run_cpn(
        "up", "--net", "nets.jobs:net", "--shards", "2", "--data", str(root),
        "--durability", "process", "--net-param", "backoff_ms=20", timeout_s=TIMEOUT_S,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        yield root
    finally:
        stop_cluster(ClusterLayout(root))


def start_worker(cluster: Path, logs: Path, env: dict[str, str]) -> ShardProcess:
    logs.mkdir(parents=True, exist_ok=True)
    ready = logs / "worker.ready"
    args = [
        sys.executable, "-m", "cluster.cli", "worker", "run", WORKER, "--data", str(cluster),
        "--ready-file", str(ready),
    ]  # fmt: skip
    with (logs / "worker.log").open("ab") as log:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env={**os.environ, **env}
        )
    handle = ShardProcess(logs, process, args=args, role="worker")
    wait_for(
        lambda: ready.exists() or not handle.alive(), bool,
        what="the worker to lease", timeout_s=TIMEOUT_S,
    )  # fmt: skip
    assert handle.alive(), (logs / "worker.log").read_text()
    return handle


def test_the_worker_runs_jobs_to_done_or_dead_with_one_key_per_job(
    cluster_dir: Path, tmp_path: Path, seed: int
) -> None:
    config = MockApiConfig(seed=seed, latency_ms=2, flaky_rate=0.3, broken_rate=0.2)
    fine = Job("c-fine", job_with(config, "c-fine", [200]), 0)
    flaky = Job("c-flaky", job_with(config, "c-flaky", [503, 503, 200]), 0)
    broken = Job("c-broken", job_with(config, "c-broken", [503] * 4), 0)
    worker: ShardProcess | None = None
    with MockApi(config) as api:
        try:
            worker = start_worker(cluster_dir, tmp_path / "worker", {API_URL_ENV: api.url})
            with ClusterClient.for_data_dir(cluster_dir) as client:
                client.put("submitted", [fine, flaky, broken])
                wait_for(
                    client.counts,
                    lambda counts: counts.get("done", 0) + counts.get("dead", 0) == 3,
                    what="every job done or dead", timeout_s=TIMEOUT_S, interval_s=0.1,
                )  # fmt: skip
                done = sorted(tuple(t) for _s, _t, t in client.tokens("done"))
                dead = [tuple(t) for _s, _t, t in client.tokens("dead")]
        finally:
            stop_all([worker] if worker is not None else [])
        # A call is logged after its answer is written: wait for all 8 (1 + 3 + 4).
        assert api.wait_requests(8, timeout_s=TIMEOUT_S)
        calls = api.requests()
        figures = api.figures()
    # Attempts count up to the one that ended the job (attempts_max 4, the default).
    assert done == sorted([tuple(fine), (*flaky[:2], 2)])
    assert dead == [(*broken[:2], 3, "ApiCallFailed: http 503")]
    # Every call of a job carries the same idempotency key, whatever its attempt.
    keys = Counter(r.key for r in calls)
    assert keys == {"c-fine/" + fine.job_id: 1, "c-flaky/" + flaky.job_id: 3,
                    "c-broken/" + broken.job_id: 4}  # fmt: skip
    assert sorted(r.attempt for r in calls if r.customer == "c-broken") == [0, 1, 2, 3]
    assert not figures.violations
    assert figures.duplicates == 0


def test_a_worker_without_the_api_url_says_which_variable_to_set(tmp_path: Path) -> None:
    # The URL is read as the worker starts, before it reaches for the cluster: a
    # recorded cluster.json is all it needs to get that far.
    layout = ClusterLayout(tmp_path / "cluster")
    record_config(layout, ClusterConfig("nets.jobs:net", 2))
    env = {k: v for k, v in os.environ.items() if k != API_URL_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "worker", "run", WORKER, "--data", str(layout.root)],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"set {API_URL_ENV}" in done.stderr.splitlines()[-1]


def test_a_request_late_at_its_head_leaves_no_byte() -> None:
    async def post(client: httpx.AsyncClient, url: str, late_at_ms: int) -> None:
        body = {"customer": "c", "job_id": "j", "attempt": 0, "key": "c/j"}
        await client.post(url, json=body, extensions={"trace": refuse_when_late(late_at_ms)})

    async def both(url: str) -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            await post(client, url, time.time_ns() // 1_000_000 + 60_000)  # on time: sent
            with pytest.raises(LateAtSend):
                await post(client, url, time.time_ns() // 1_000_000 - 1)

    with MockApi(MockApiConfig(latency_ms=0, flaky_rate=0)) as api:
        asyncio.run(both(api.run_url))
        assert api.wait_requests(1, timeout_s=TIMEOUT_S)
        assert len(api.requests()) == 1  # the late one never reached the API


def test_cpn_demo_jobs_keeps_every_promise(tmp_path: Path) -> None:
    figures = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "demo", "jobs", "--customers", "200",
         "--report-json", str(figures), "--quiet", "--data", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(figures.read_text())
    assert report["ok"] and report["complete"], done.stdout
    assert report["violations"] == 0 and report["duplicates"] == 0, done.stdout
    # Every job done ran at the API, once; a replay (a repeated key) ran nothing.
    assert report["executions"] >= report["done"] and report["replays"] >= 0, done.stdout
    assert report["duplicated_jobs"] == []
    assert report["lost"] == report["doubled"] == report["unexpected"] == 0, done.stdout
    assert report["done"] + report["dead"] == report["jobs"] > 200
    assert report["in_flight_max"] <= report["concurrency"]
    assert report["dead"] > 0 and report["retries"] > 0  # the seeded failures happened
    assert "the mock API's own measurement" in done.stdout
    assert "    replays:   " in done.stdout
    assert supervisor_pid(ClusterLayout(tmp_path / "demo" / "cluster")) is None  # stopped


def test_crawl_demo_options_do_not_mix_with_the_jobs_demo() -> None:
    done = run_cpn("demo", "--hosts", "3", "jobs", timeout_s=TIMEOUT_S)
    assert done.returncode == 2
    assert "--hosts: options of the crawl demo" in done.stderr
