"""Benchmark: the job runner's workers on the worker SDK, against a bare loop (worker SDK issue).

``python -m bench.workers [--quick] [--profile]`` starts, on 127.0.0.1 in a temporary
directory, one cluster of ``nets.jobs:net`` (``cpn up``: a router and 2 shards,
durability ``fsync``) and the mock job API (``cluster/jobs/mockapi.py``, latency 0, no
failures, in a process of its own), and runs on that cluster, one after the other, sets of
4 worker processes (:mod:`bench.workers_app`):

* **sdk**: ``cpn worker run bench.workers_app:noop``: the SDK leasing ``run_queue`` from
  both shards (``BATCH`` tokens a lease, ``CONCURRENCY`` leases at once, ``POLLS_PER_SHARD``
  long polls per shard, so that every lease in progress may be a waiting poll) and
  completing each job with its ``ran`` token, doing nothing else;
* **bare**: the baseline, ``python -m bench.workers_app bare noop``: the same function, the
  same leases, the same concurrency, written by hand on :class:`cluster.client.ClusterClient`
  (a thread per lease in progress; each lease completed in one request);
* **api**: ``cpn worker run bench.workers_app:call_api``: the SDK again, each job posting
  one call with its idempotency key to the mock API before completing.

The SDK's headline figures are the no-op's (``sdk``): with the API call, the figure
measures the mock API's Python HTTP server as much as the SDK, so it is reported apart
(``api_*`` keys), and the ``violations`` key comes from that run. Customers with a few
jobs each never reach the rate limit, so the api run's paced part starts with
``HOT_CUSTOMERS`` new customers putting twice the rate of jobs at once: each makes
``rate`` calls at once and ``rate`` more when its permits come back, and the mock API's
log says how many customers reached the limit (``api_customers_at_limit``) and whether
any call broke it.

Net parameters: ``concurrency`` = 4 x ``CONCURRENCY`` x ``BATCH`` (the cap never holds
back what the workers can take), ``ready_ms`` 0 (a job is leased as soon as it starts,
so the round trip has no planned wait in it), ``late_ms`` 2,000 (a job queued behind a
burst is still on time), the default rate (5 calls per customer per 1,000 ms, which the
mock API measures), over ``customers`` customers (10,000; 4,000 with ``--quick``), so
that the rate limit is far from the bottleneck (customers x 5 permits per
``window_ms + late_ms + margin_ms`` allows over 6,000 starts/s).

Each set of workers runs one **phase**:

1. start the 4 processes and wait until each is leasing; the first phase puts one job
   per customer (every customer known, as in a runner that has been up a while); every
   phase puts ``WARMUP_JOBS`` and waits for them; then waits until the earlier leases'
   timers are spent (``LEASE_MS``, 5 s, after each lease), so that no phase pays for
   another's;
2. **throughput**: put ``jobs`` jobs at once (40,000; 8,000 with ``--quick``) and time
   from the first put to the cluster's ``done`` count (answered after the commit)
   holding them all: completions/s, each job leased, run, completed and its ``done``
   token durable. The phase's own lease timers that come due within it are spent in it,
   as in a steady state. The CPU time of every process (workers, shards, router, mock
   API) over that interval, per completion, and the shards' lease and completion
   requests say where the time goes; the jobs refused as late over the whole phase
   (``replan`` firings) are printed with them;
3. **paced**: put ``PACED_JOBS_PER_S`` (1,000 jobs/s, a third of the throughput target)
   for ``paced_s`` seconds (6; 2 with ``--quick``) and wait for them: the **round trip**
   of every one of those jobs, from *work available* (the ``start`` firing that put the
   job into ``run_queue``: its ``start_at_ms`` less ``ready_ms``, the shard's clock in
   whole milliseconds, so up to 1 ms too long) to *result committed* (the ``Completed``
   reply reaching the worker, its clock; one host), recorded by the workers and gathered
   from their sample files (:mod:`bench.workers_app`). Its p50 and p99 are the headline
   round trip; those of the throughput phase (jobs queued behind the burst, so mostly
   the queue's length over the rate) are reported as ``loaded_roundtrip_*``. A
   completion into ``late`` is a committed result too: a job refused as late and
   started again has a round trip for each lease;
4. stop the workers (SIGTERM), read their samples.

Without ``--quick`` the two no-op sets run 3 times in alternating order (sdk, bare; bare,
sdk; sdk, bare), since other load on the machine (2 cores, shared) moves every figure:
each figure is the median over the rounds of that round's figure, and ``sdk_ratio`` is
the median of each round's sdk / bare completions/s (two runs next to each other in
time). Since a run's rate is the share of the cores it got, ``sdk_cpu_ratio`` (the bare
run's CPU per completion over the SDK run's, every process counted, median over rounds)
is printed beside it: the rate ratio when the cores are the limit, which other load moves
far less. ``--quick`` runs each set once and fits in a minute on an idle machine.
``--profile`` runs the SDK workers under cProfile (thread CPU time) and prints their
costliest functions; its figures are slowed by the profiler.

Targets (the issue's): ``COMPLETIONS_PER_S_MIN``, ``ROUNDTRIP_P50_MS_MAX``,
``ROUNDTRIP_P99_MS_MAX``, ``VIOLATIONS_MAX``, ``SDK_RATIO_MIN``. A missed target is
printed with what limits it: the CPU per completion of each kind of process against the
cores the run got, the shards' commit latency against the round trip, the workers' CPU
against the bare loop's. The last line is one JSON object with the keys of
:data:`JSON_KEYS`: first ``completions_per_s``, ``roundtrip_p50_ms``,
``roundtrip_p99_ms``, ``violations`` and ``sdk_ratio``, then the bare loop's rate, the
round trip under load, the API run's figures, the CPU per completion (us) of the SDK's
and the bare loop's workers and of the shards, the cores the SDK runs used, the shards'
commit p50, the CPU per request through each client and the number of rounds. The CPU
per request is measured last, on the idle cluster: ``PINGS`` pings of shard 0, one at a
time, through :class:`cluster.client.ShardClient` (the bare loop's) and through
:class:`cluster.async_client.AsyncShardClient` (the SDK's), in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psutil
import zmq.asyncio

from bench import workers_app as app
from cluster.async_client import AsyncShardClient
from cluster.client import ClusterClient, ShardClient
from cluster.jobs.mockapi import read_log
from cluster.jobs.mockapi_log import measure_calls
from cluster.jobs.report import customers_at_limit
from cluster.launch import down as stop_cluster
from cluster.layout import ClusterLayout, live_endpoint, net_param_args
from cluster.processes import ERROR_PREFIX, run_cpn
from nets.errors import CpnError
from nets.jobs import Job, JobsPolicy
from router.wire import Ping, Pong

ROOT: Final = Path(__file__).resolve().parent.parent
NET: Final = "nets.jobs:net"
SHARDS: Final = 2
WORKERS: Final = 4
POLICY: Final = JobsPolicy(
    concurrency=WORKERS * app.CONCURRENCY * app.BATCH, ready_ms=0, late_ms=2_000
)
NET_PARAMS: Final = {
    "concurrency": POLICY.concurrency,
    "ready_ms": POLICY.ready_ms,
    "late_ms": POLICY.late_ms,
}
CUSTOMERS_FULL: Final = 10_000
CUSTOMERS_QUICK: Final = 4_000
JOBS_FULL: Final = 40_000
JOBS_QUICK: Final = 8_000
ROUNDS_FULL: Final = 3
ROUNDS_QUICK: Final = 1
WARMUP_JOBS: Final = 500
PACED_JOBS_PER_S: Final = 1_000
PACED_S_FULL: Final = 6.0
PACED_S_QUICK: Final = 2.0
PACE_TICK_S: Final = 0.005
# The API phase's paced part starts with this many customers putting twice the rate of
# jobs at once: half start at once, the other half on the same permits a permit's hold
# later, so that the limit is reached and the mock API's violations count means something.
HOT_CUSTOMERS: Final = 20
HOT_JOBS: Final = 2 * JobsPolicy().rate
PUT_TOKENS_MAX: Final = 10_000
POLL_S: Final = 0.01
PHASE_TIMEOUT_S: Final = 300.0
READY_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 30.0
UP_TIMEOUT_S: Final = 120.0
PROFILE_LINES: Final = 15
PINGS: Final = 2_000
REQUEST_COUNTERS: Final = ("requests_Lease", "leases_granted", "requests_Complete")

COMPLETIONS_PER_S_MIN: Final = 3_000
ROUNDTRIP_P50_MS_MAX: Final = 5.0
ROUNDTRIP_P99_MS_MAX: Final = 25.0
VIOLATIONS_MAX: Final = 0
SDK_RATIO_MIN: Final = 0.8

JSON_KEYS: Final = (
    "completions_per_s",
    "roundtrip_p50_ms",
    "roundtrip_p99_ms",
    "violations",
    "sdk_ratio",
    "sdk_cpu_ratio",
    "bare_completions_per_s",
    "loaded_roundtrip_p50_ms",
    "loaded_roundtrip_p99_ms",
    "api_completions_per_s",
    "api_roundtrip_p50_ms",
    "api_roundtrip_p99_ms",
    "api_calls",
    "api_duplicates",
    "api_customers_at_limit",
    "api_late_refusals",
    "sdk_worker_cpu_us",
    "bare_worker_cpu_us",
    "shard_cpu_us",
    "cores_busy",
    "commit_ms_p50",
    "sync_request_cpu_us",
    "async_request_cpu_us",
    "rounds",
)


# -- pure parts (tests/unit/test_bench_workers.py) ---------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``values``; NaN for none."""
    assert 0 < q <= 1, q
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


Sample = tuple[float, float, float]  # (available_ms, leased_ms, committed_ms), wall clock


def round_trips_ms(samples: Iterable[Sample], start_ms: float, end_ms: float) -> list[float]:
    """The round trips of the jobs that became available in ``[start_ms, end_ms)``."""
    return [done - ready for ready, _leased, done in samples if start_ms <= ready < end_ms]


def segments_ms(
    samples: Iterable[Sample], start_ms: float, end_ms: float
) -> tuple[list[float], list[float]]:
    """Those round trips in two parts: from available to the lease's grant arriving, and
    from there to the completion committed (samples without a lease time left out)."""
    waits, works = [], []
    for ready, leased, done in samples:
        if start_ms <= ready < end_ms and not math.isnan(leased):
            waits.append(leased - ready)
            works.append(done - leased)
    return waits, works


def median_ratio(pairs: Sequence[tuple[float, float]]) -> float:
    """The median of ``a / b`` over the pairs (each round's sdk and bare figures)."""
    return statistics.median(a / b for a, b in pairs) if pairs else math.nan


def median_of(runs: Sequence[PhaseResult], figure: Callable[[PhaseResult], float]) -> float:
    """The median of one figure over rounds (NaN where a round has none)."""
    values = [value for value in map(figure, runs) if not math.isnan(value)]
    return statistics.median(values) if values else math.nan


def summary(
    sdk: Sequence[PhaseResult],
    bare: Sequence[PhaseResult],
    api: PhaseResult,
    *,
    violations: int,
    api_calls: int,
    api_duplicates: int,
    api_at_limit: int,
    request_cpu_us: tuple[float, float],
) -> dict[str, Any]:
    """The benchmark's last line: exactly the keys of :data:`JSON_KEYS`, in order. Each
    figure is the median over rounds of that round's figure (one round with --quick)."""
    ratios = [(s.per_s, b.per_s) for s, b in zip(sdk, bare, strict=True)]
    cpu_ratios = [(b.cpu_us_all, s.cpu_us_all) for s, b in zip(sdk, bare, strict=True)]
    figures = {
        "completions_per_s": round(median_of(sdk, lambda r: r.per_s)),
        "roundtrip_p50_ms": _ms(median_of(sdk, lambda r: percentile(r.paced_ms, 0.50))),
        "roundtrip_p99_ms": _ms(median_of(sdk, lambda r: percentile(r.paced_ms, 0.99))),
        "violations": violations,
        "sdk_ratio": round(median_ratio(ratios), 3),
        "sdk_cpu_ratio": round(median_ratio(cpu_ratios), 3),
        "bare_completions_per_s": round(median_of(bare, lambda r: r.per_s)),
        "loaded_roundtrip_p50_ms": _ms(median_of(sdk, lambda r: percentile(r.loaded_ms, 0.50))),
        "loaded_roundtrip_p99_ms": _ms(median_of(sdk, lambda r: percentile(r.loaded_ms, 0.99))),
        "api_completions_per_s": round(api.per_s),
        "api_roundtrip_p50_ms": _ms(percentile(api.paced_ms, 0.50)),
        "api_roundtrip_p99_ms": _ms(percentile(api.paced_ms, 0.99)),
        "api_calls": api_calls,
        "api_duplicates": api_duplicates,
        "api_customers_at_limit": api_at_limit,
        "api_late_refusals": api.replans,
        "sdk_worker_cpu_us": round(median_of(sdk, lambda r: r.cpu_us("worker"))),
        "bare_worker_cpu_us": round(median_of(bare, lambda r: r.cpu_us("worker"))),
        "shard_cpu_us": round(median_of(sdk, lambda r: r.cpu_us("shard"))),
        "cores_busy": round(median_of(sdk, lambda r: r.cores), 2),
        "commit_ms_p50": _ms(median_of(sdk, lambda r: r.commit_ms[0])),
        "sync_request_cpu_us": round(request_cpu_us[0]),
        "async_request_cpu_us": round(request_cpu_us[1]),
        "rounds": len(sdk),
    }
    assert tuple(figures) == JSON_KEYS
    return figures


def _ms(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 2)


@dataclass
class PhaseResult:
    """One set of workers' figures."""

    name: str
    jobs: int
    seconds: float
    loaded_ms: list[float]  # round trips in the throughput phase
    paced_ms: list[float]  # round trips in the paced phase
    paced_jobs: int
    paced_wait_ms: list[float]  # the paced round trips' parts: until the grant arrived,
    paced_work_ms: list[float]  # and from there until the completion was committed
    calls_ms: list[float]  # the mock API calls' durations (the api phase)
    cpu_s: dict[str, float]  # per kind of process, over the throughput phase
    commit_ms: tuple[float, float] = (math.nan, math.nan)  # the shards' p50, p99 (worst)
    counters: dict[str, int] = field(default_factory=dict)  # REQUEST_COUNTERS' deltas
    wall_s: float = 0.0  # the whole phase, from starting the workers to stopping them
    replans: int = 0  # jobs refused as late and planned again, in the whole phase

    @property
    def per_s(self) -> float:
        return self.jobs / self.seconds

    def cpu_us(self, kind: str) -> float:
        """CPU microseconds of ``kind`` processes per completion (throughput phase)."""
        return self.cpu_s.get(kind, 0.0) / self.jobs * 1e6

    @property
    def cpu_us_all(self) -> float:
        """CPU microseconds of every process per completion (throughput phase)."""
        return sum(self.cpu_s.values()) / self.jobs * 1e6

    @property
    def cores(self) -> float:
        """The cores the cluster and its workers used in the throughput phase."""
        return sum(self.cpu_s.values()) / self.seconds


# -- the cluster and the processes -------------------------------------------------------------


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    ready: Path
    samples: Path
    log: Path


class Bench:
    """One cluster, the mock API, and the phases run on them."""

    def __init__(self, root: Path, *, customers: int, profile: bool) -> None:
        self.root = root
        self.layout = ClusterLayout(root / "cluster")
        self.customers = [f"c{n:05d}" for n in range(customers)]
        self.profile_dir = root / "profile" if profile else None
        self.api_log = root / "api" / "calls.jsonl"
        self.api_address = ""
        self._api: subprocess.Popen[bytes] | None = None
        self._cluster_up = False
        self._jobs_put = 0
        self._client: ClusterClient | None = None

    # -- setting up and down

    def start(self) -> None:
        self.api_log.parent.mkdir(parents=True)
        port_file = self.api_log.parent / "address"
        self._api = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.workers_app", "api"),
                *("--port-file", str(port_file), "--log", str(self.api_log)),
                *("--rate", str(POLICY.rate), "--window-ms", str(POLICY.window_ms)),
            ],
            stdin=subprocess.DEVNULL,
            stderr=(self.api_log.parent / "stderr.log").open("wb"),
            env=_env(),
        )
        done = run_cpn(
            *("up", "--net", NET, "--shards", str(SHARDS), "--data", str(self.layout.root)),
            *("--durability", "fsync", *net_param_args(NET_PARAMS)),
            env=_env(),
            timeout_s=UP_TIMEOUT_S,
        )
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
            raise CpnError(f"the cluster did not start: {lines[-1].removeprefix(ERROR_PREFIX)}")
        self._cluster_up = True
        self._client = ClusterClient.for_data_dir(self.layout.root, timeout_ms=60_000)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not port_file.exists():
            if self._api.poll() is not None or time.monotonic() > deadline:
                raise CpnError("the mock API did not start (see api/stderr.log)")
            time.sleep(POLL_S)  # another process writes the file: no event to wait on
        self.api_address = port_file.read_text(encoding="utf-8")

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster_up:
            stop_cluster(self.layout)
        if self._api is not None:
            self._api.send_signal(signal.SIGTERM)
            try:
                self._api.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._api.kill()
                self._api.wait()

    @property
    def client(self) -> ClusterClient:
        assert self._client is not None
        return self._client

    def pids(self) -> dict[str, list[int]]:
        """The cluster's processes by kind (the supervisor's own work is negligible)."""
        found: dict[str, list[int]] = {"shard": [], "router": []}
        for k in range(SHARDS):
            live = live_endpoint(self.layout.shard_dir(k))
            if live is not None:
                found["shard"].append(live[1])
        live = live_endpoint(self.layout.router_dir)
        if live is not None:
            found["router"].append(live[1])
        return found

    # -- workers

    @contextmanager
    def workers(
        self, name: str, command: list[str], env: dict[str, str], *, sdk: bool
    ) -> Iterator[list[Worker]]:
        logs = self.root / "workers"
        logs.mkdir(exist_ok=True)
        started: list[Worker] = []
        try:
            for k in range(WORKERS):
                stem = logs / f"{name}-{k}"
                ready, samples, log = (Path(f"{stem}.{s}") for s in ("ready", "json", "log"))
                extra = {**env, app.SAMPLES_ENV: str(samples)}
                extra[app.READY_MS_ENV] = str(POLICY.ready_ms)
                if self.profile_dir is not None and sdk:
                    self.profile_dir.mkdir(exist_ok=True)
                    extra[app.PROFILE_ENV] = str(self.profile_dir / name)
                with log.open("wb") as out:
                    process = subprocess.Popen(
                        [*command, "--ready-file", str(ready)],
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=out,
                        env=_env(extra),
                        cwd=ROOT,
                    )
                started.append(Worker(process, ready, samples, log))
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not all(w.ready.exists() for w in started):
                dead = [w for w in started if w.process.poll() is not None]
                if dead or time.monotonic() > deadline:
                    raise CpnError(f"{name} workers did not start: {_tail(dead or started)}")
                time.sleep(POLL_S)  # the workers create the files: no event to wait on
            yield started
        finally:
            for worker in started:
                if worker.process.poll() is None:
                    worker.process.send_signal(signal.SIGTERM)
            for worker in started:
                try:
                    worker.process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    worker.process.kill()
                    worker.process.wait()

    # -- jobs

    def _jobs(self, count: int) -> list[Job]:
        first, self._jobs_put = self._jobs_put, self._jobs_put + count
        n = len(self.customers)
        return [Job(self.customers[i % n], f"j{i}", 0) for i in range(first, first + count)]

    def put(self, jobs: Sequence[Job]) -> None:
        for i in range(0, len(jobs), PUT_TOKENS_MAX):
            self.client.put("submitted", jobs[i : i + PUT_TOKENS_MAX])

    def done(self) -> int:
        return self.client.counts().get("done", 0)

    def wait_done(self, count: int) -> float:
        """Until ``count`` jobs are done (committed); the wall clock then."""
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while (now := self.done()) < count:
            if time.monotonic() > deadline:
                raise CpnError(f"only {now} of {count} jobs done after {PHASE_TIMEOUT_S} s")
            time.sleep(POLL_S)
        return time.time()

    def wait_timers_spent(self) -> None:
        """Until no lease timer is pending (bounded by the lease length)."""
        deadline = time.monotonic() + app.LEASE_MS / 1000 + 10
        while self.client.counts().get("run_queue__timer", 0):
            if time.monotonic() > deadline:
                raise CpnError("lease timers still pending after the lease length")
            time.sleep(0.05)

    def cpu_s(self, workers: Sequence[Worker]) -> dict[str, float]:
        pids = {**self.pids(), "worker": [w.process.pid for w in workers]}
        if self._api is not None:
            pids["mock API"] = [self._api.pid]
        used: dict[str, float] = {}
        for kind, members in pids.items():
            for pid in members:
                try:
                    times = psutil.Process(pid).cpu_times()
                except psutil.Error:
                    continue
                used[kind] = used.get(kind, 0.0) + times.user + times.system
        return used

    def requests(self) -> Counter[str]:
        """The shards' lease and completion counters and their ``replan`` firings (a job
        refused as late, planned again), summed."""
        total: Counter[str] = Counter()
        for stats in self.client.statistics().values():
            counters = stats["counters"]
            total.update({name: counters.get(name, 0) for name in REQUEST_COUNTERS})
            total["replans"] += stats["firings"].get("replan", 0)
        return total

    def request_cpu_us(self) -> tuple[float, float]:
        """This process's CPU per request (a ping of shard 0, one at a time) through
        :mod:`cluster.client` and through :mod:`cluster.async_client`, the SDK's."""
        endpoint = self.client.table().endpoints[0]
        with ShardClient(endpoint) as sync:
            sync.ping()
            started = time.process_time()
            for _ in range(PINGS):
                sync.ping()
            sync_us = (time.process_time() - started) / PINGS * 1e6

        async def pings() -> float:
            context = zmq.asyncio.Context()
            client = AsyncShardClient(endpoint, context)
            try:
                await client.request(Ping(), Pong)
                started = time.process_time()
                for _ in range(PINGS):
                    await client.request(Ping(), Pong)
                return (time.process_time() - started) / PINGS * 1e6
            finally:
                client.close()
                context.term()

        return sync_us, asyncio.run(pings())

    def commit_ms(self) -> tuple[float, float]:
        stats = self.client.statistics().values()
        return (
            max(float(s["commit_ms_p50"]) for s in stats),
            max(float(s["commit_ms_p99"]) for s in stats),
        )

    # -- one phase

    def phase(
        self,
        name: str,
        command: list[str],
        *,
        jobs: int,
        paced_s: float,
        first: bool,
        hot: bool = False,
        env: dict[str, str] | None = None,
    ) -> PhaseResult:
        phase_started = time.monotonic()
        with self.workers(name, command, env or {}, sdk=name != "bare") as workers:
            replans_before = self.requests()["replans"]
            done = self.done()
            warmup = [Job(c, "w", 0) for c in self.customers] if first else []
            self.put(warmup + self._jobs(WARMUP_JOBS))
            done += len(warmup) + WARMUP_JOBS
            self.wait_done(done)
            self.wait_timers_spent()

            before, requests_before = self.cpu_s(workers), self.requests()
            started = time.time()
            self.put(self._jobs(jobs))
            ended = self.wait_done(done + jobs)
            after, requests = self.cpu_s(workers), self.requests()
            requests.subtract(requests_before)
            done += jobs

            paced_start = time.time()
            paced = self._paced(paced_s, hot=hot)
            paced_end = time.time()
            self.wait_done(done + paced)
            commit_ms = self.commit_ms()
            replans = self.requests()["replans"] - replans_before
        samples: list[Sample] = []
        calls_ms: list[float] = []
        for worker in workers:
            if worker.samples.exists():
                written = json.loads(worker.samples.read_text(encoding="utf-8"))
                samples.extend(tuple(sample) for sample in written["round_trips"])
                calls_ms.extend(written["calls_ms"])
        paced_window = (paced_start * 1000, paced_end * 1000 + 1)
        waits, works = segments_ms(samples, *paced_window)
        return PhaseResult(
            name=name,
            jobs=jobs,
            seconds=ended - started,
            loaded_ms=round_trips_ms(samples, started * 1000, ended * 1000),
            paced_ms=round_trips_ms(samples, *paced_window),
            paced_jobs=paced,
            paced_wait_ms=waits,
            paced_work_ms=works,
            calls_ms=calls_ms,
            cpu_s={k: after.get(k, 0.0) - before.get(k, 0.0) for k in after},
            commit_ms=commit_ms,
            counters=dict(requests),
            replans=replans,
            wall_s=time.monotonic() - phase_started,
        )

    def _paced(self, seconds: float, *, hot: bool) -> int:
        """Put ``PACED_JOBS_PER_S`` for ``seconds``: those due at each tick; how many.
        ``hot``: first, ``HOT_JOBS`` jobs for each of ``HOT_CUSTOMERS`` new customers."""
        total = round(PACED_JOBS_PER_S * seconds)
        hot_jobs = [
            Job(f"hot{n:02d}-{self._jobs_put}", f"h{k}", 0)
            for n in range(HOT_CUSTOMERS if hot else 0)
            for k in range(HOT_JOBS)
        ]
        self.put(hot_jobs)
        put = 0
        started = time.monotonic()
        while put < total:
            due = min(total, round(PACED_JOBS_PER_S * (time.monotonic() - started)))
            if due > put:
                self.put(self._jobs(due - put))
                put = due
            time.sleep(PACE_TICK_S)
        return total + len(hot_jobs)


def _tail(workers: Sequence[Worker]) -> str:
    texts = []
    for worker in workers:
        lines = worker.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        texts.append(f"{worker.log.name}: {lines[-1] if lines else 'no output'}")
    return "; ".join(texts)


# -- reporting ---------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _cpu_line(run: PhaseResult) -> str:
    parts = ", ".join(f"{kind} {run.cpu_us(kind):,.0f}" for kind in sorted(run.cpu_s))
    return f"CPU per completion (us): {parts}; {run.cores:.2f} cores busy"


def describe(run: PhaseResult) -> list[str]:
    return [
        f"{run.name}: {run.jobs:,} jobs in {run.seconds:.2f} s = {run.per_s:,.0f} completions/s; "
        f"round trip under that load p50 {percentile(run.loaded_ms, 0.5):.1f} ms, "
        f"p99 {percentile(run.loaded_ms, 0.99):.1f} ms",
        f"  paced {PACED_JOBS_PER_S:,} jobs/s ({len(run.paced_ms):,} of {run.paced_jobs:,} "
        f"sampled): round trip p50 {percentile(run.paced_ms, 0.5):.1f} ms, "
        f"p99 {percentile(run.paced_ms, 0.99):.1f} ms; shards' commit p50 "
        f"{run.commit_ms[0]:.1f} ms, p99 {run.commit_ms[1]:.1f} ms",
        f"    its parts: available -> lease granted {_p50_p99(run.paced_wait_ms)}, "
        f"granted -> completion committed {_p50_p99(run.paced_work_ms)}"
        + (f" (the API call {_p50_p99(run.calls_ms)})" if run.calls_ms else ""),
        f"  {_cpu_line(run)}",
        f"  shards' requests: {_requests_line(run)}; the phase took {run.wall_s:.1f} s",
    ]


def _p50_p99(values: Sequence[float]) -> str:
    return f"p50 {percentile(values, 0.5):.1f} ms, p99 {percentile(values, 0.99):.1f} ms"


def _requests_line(run: PhaseResult) -> str:
    counts = run.counters
    granted = counts.get("leases_granted", 0)
    return (
        f"{counts.get('requests_Lease', 0):,} leases ({granted:,} granted, "
        f"{run.jobs / max(granted, 1):.1f} jobs each), "
        f"{counts.get('requests_Complete', 0):,} completions; {run.replans:,} jobs refused "
        "as late in the phase"
    )


def limits(
    figures: dict[str, Any],
    sdk: PhaseResult,
    bare: PhaseResult,
    request_cpu_us: tuple[float, float],
) -> list[str]:
    """What limits each missed target, from the figures measured (not from a guess)."""
    lines = []
    cores = os.cpu_count() or 1
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    if figures["completions_per_s"] < COMPLETIONS_PER_S_MIN:
        cpu_us = sum(sdk.cpu_s.values()) / sdk.jobs * 1e6
        lines.append(
            f"completions/s is CPU-bound: a completion costs {cpu_us:,.0f} us of CPU in all "
            f"(shards {sdk.cpu_us('shard'):,.0f}, workers {sdk.cpu_us('worker'):,.0f}, router "
            f"{sdk.cpu_us('router'):,.0f}), so {COMPLETIONS_PER_S_MIN:,}/s needs "
            f"{cpu_us * COMPLETIONS_PER_S_MIN / 1e6:.1f} cores; the run had {sdk.cores:.2f} of "
            f"this machine's {cores} (load average {load})"
        )
    p50, p99 = figures["roundtrip_p50_ms"], figures["roundtrip_p99_ms"]
    if p50 is None or p50 > ROUNDTRIP_P50_MS_MAX or p99 is None or p99 > ROUNDTRIP_P99_MS_MAX:
        lines.append(
            f"the round trip spans two fsync commits (the one that makes the start and its "
            f"lease durable, then the completion's), each two LMDB syncs: the shards' commit "
            f"p50 was {sdk.commit_ms[0]:.1f} ms and p99 {sdk.commit_ms[1]:.1f} ms, so p50 "
            f">= {2 * sdk.commit_ms[0]:.1f} ms before any work or transit; measured, "
            f"available -> granted {_p50_p99(sdk.paced_wait_ms)} (the start's batch and "
            f"commit), granted -> committed {_p50_p99(sdk.paced_work_ms)} (the worker, "
            f"then the completion's wait for a batch, its commit)"
        )
    if min(figures["sdk_ratio"], figures["sdk_cpu_ratio"]) < SDK_RATIO_MIN:
        leases = sdk.counters.get("leases_granted", 0)
        tokens = sdk.jobs / max(leases, 1)
        lines.append(
            f"sdk_ratio {figures['sdk_ratio']} by wall clock, {figures['sdk_cpu_ratio']} by CPU "
            f"(the bare run's CPU per completion over the SDK run's, all processes: "
            f"{bare.cpu_us_all:,.0f} / {sdk.cpu_us_all:,.0f} us; the rate ratio when the "
            f"cores are the limit, whatever share of them a run got)"
        )
        lines.append(
            f"the SDK's workers cost {sdk.cpu_us('worker'):,.0f} us of CPU per completion, the "
            f"bare loop's {bare.cpu_us('worker'):,.0f} us, with the same requests (a lease and "
            f"a completion per {tokens:.1f} jobs); a request costs {request_cpu_us[1]:.0f} us "
            f"through cluster/async_client.py (zmq.asyncio), {request_cpu_us[0]:.0f} us through "
            f"cluster/client.py; the rest is the event loop's tasks (a task per lease, per "
            f"token, per heartbeat); --profile shows the functions"
        )
    if figures["violations"] > VIOLATIONS_MAX:
        lines.append("limit violations: see the mock API's log (measure_calls)")
    return lines


def print_profile(directory: Path, name: str) -> None:
    files = sorted(str(p) for p in directory.glob(f"{name}.*"))
    if not files:
        print(f"profile: no files for {name} in {directory}")
        return
    print(f"profile of the {name} workers (thread CPU time, {len(files)} processes):")
    stats = pstats.Stats(*files, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(PROFILE_LINES)
    stats.sort_stats("cumulative").print_stats(r"cluster/|router/|nets/", PROFILE_LINES)


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs, one round, < 60 s")
    parser.add_argument("--profile", action="store_true", help="cProfile the SDK workers")
    args = parser.parse_args(argv)
    customers = CUSTOMERS_QUICK if args.quick else CUSTOMERS_FULL
    jobs = JOBS_QUICK if args.quick else JOBS_FULL
    rounds = ROUNDS_QUICK if args.quick else ROUNDS_FULL
    paced_s = PACED_S_QUICK if args.quick else PACED_S_FULL
    py = sys.executable
    data = ["--data"]  # completed below, once the cluster's directory is known
    root = Path(tempfile.mkdtemp(prefix="cpn-bench-workers-"))
    bench = Bench(root, customers=customers, profile=args.profile)
    data.append(str(bench.layout.root))
    commands = {
        "sdk": [py, "-m", "cluster.cli", "worker", "run", "bench.workers_app:noop", *data],
        "bare": [py, "-m", "bench.workers_app", "bare", "noop", *data],
        "api": [py, "-m", "cluster.cli", "worker", "run", "bench.workers_app:call_api", *data],
    }
    print(
        f"jobs net on {SHARDS} shards (fsync), {WORKERS} worker processes each, batch "
        f"{app.BATCH}, concurrency {app.CONCURRENCY}, {app.POLLS_PER_SHARD} polls per shard; "
        f"{customers:,} customers, {jobs:,} jobs per throughput phase, net params {NET_PARAMS}"
    )
    started = time.perf_counter()
    runs: dict[str, list[PhaseResult]] = {"sdk": [], "bare": []}
    try:
        bench.start()
        first = True
        for n in range(rounds):
            for name in ("sdk", "bare") if n % 2 == 0 else ("bare", "sdk"):
                run = bench.phase(name, commands[name], jobs=jobs, paced_s=paced_s, first=first)
                first = False
                runs[name].append(run)
                for line in describe(run):
                    print(line)
        api_env = {app.API_URL_ENV: bench.api_address}
        api = bench.phase(
            "api", commands["api"], jobs=jobs, paced_s=paced_s, first=False, hot=True,
            env=api_env,
        )  # fmt: skip
        for line in describe(api):
            print(line)
        request_cpu_us = bench.request_cpu_us()
        print(
            f"CPU per request ({PINGS:,} pings of shard 0, one at a time): cluster/client.py "
            f"{request_cpu_us[0]:.0f} us, cluster/async_client.py {request_cpu_us[1]:.0f} us"
        )
    except BaseException:
        print(f"failed; logs kept in {root}", file=sys.stderr)
        raise
    finally:
        bench.stop()
    records = read_log(bench.api_log)
    calls = measure_calls(records, rate=POLICY.rate, window_ms=POLICY.window_ms)
    at_limit = customers_at_limit(records, rate=POLICY.rate, window_ms=POLICY.window_ms)
    print(
        f"mock API: {calls.calls:,} calls, {calls.accepted:,} accepted, {calls.customers:,} "
        f"customers ({at_limit} reached the limit of {POLICY.rate} per {POLICY.window_ms} ms), "
        f"at most {calls.in_flight_max} in flight, {calls.duplicates} duplicates, "
        f"{len(calls.violations)} violations"
    )
    sdk_runs, bare_runs = runs["sdk"], runs["bare"]
    figures = summary(
        sdk_runs,
        bare_runs,
        api,
        violations=len(calls.violations),
        api_calls=calls.calls,
        api_duplicates=calls.duplicates,
        api_at_limit=at_limit,
        request_cpu_us=request_cpu_us,
    )
    checks = [
        ("completions/s", figures["completions_per_s"], f">= {COMPLETIONS_PER_S_MIN:,}",
         figures["completions_per_s"] >= COMPLETIONS_PER_S_MIN),
        ("round trip p50 ms", figures["roundtrip_p50_ms"], f"<= {ROUNDTRIP_P50_MS_MAX:g}",
         (figures["roundtrip_p50_ms"] or math.inf) <= ROUNDTRIP_P50_MS_MAX),
        ("round trip p99 ms", figures["roundtrip_p99_ms"], f"<= {ROUNDTRIP_P99_MS_MAX:g}",
         (figures["roundtrip_p99_ms"] or math.inf) <= ROUNDTRIP_P99_MS_MAX),
        ("violations", figures["violations"], f"<= {VIOLATIONS_MAX}",
         figures["violations"] <= VIOLATIONS_MAX),
        ("sdk_ratio", figures["sdk_ratio"], f">= {SDK_RATIO_MIN}",
         figures["sdk_ratio"] >= SDK_RATIO_MIN),
        ("sdk_cpu_ratio (not a target of the issue)", figures["sdk_cpu_ratio"],
         f">= {SDK_RATIO_MIN}", figures["sdk_cpu_ratio"] >= SDK_RATIO_MIN),
    ]  # fmt: skip
    for label, value, target, ok in checks:
        print(f"{label}: {value} (target {target}): {_verdict(ok)}")
    middle = sorted(sdk_runs, key=lambda r: r.per_s)[len(sdk_runs) // 2]
    middle_bare = sorted(bare_runs, key=lambda r: r.per_s)[len(bare_runs) // 2]
    for line in limits(figures, middle, middle_bare, request_cpu_us):
        print(f"limit: {line}")
    if bench.profile_dir is not None:
        print_profile(bench.profile_dir, "sdk")
    print(
        f"wall time {time.perf_counter() - started:.1f} s, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
