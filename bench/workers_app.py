"""What ``bench/workers.py`` runs in its worker processes: the job runner's worker, written
on the SDK, and the same work as a bare loop on :mod:`cluster.client`.

* :data:`noop` and :data:`call_api` are SDK workers of ``nets.jobs``'s ``run_queue``
  (``cpn worker run bench.workers_app:noop --data DIR``): ``noop`` completes every job
  with its ``ran`` token and does nothing else; ``call_api`` first posts the job to the
  mock job API (:mod:`cluster.jobs.mockapi`) with its idempotency key, once, and
  completes with ``ran`` on a 200 (any other answer raises: the SDK completes with a
  ``failed`` token). Both honour the job's start time and late limit as the SDK does
  (``start_field``/``late_field``; a late job completes with ``late``).
* ``python -m bench.workers_app bare noop|call_api --data DIR`` is the baseline: the
  same leases (``BATCH`` tokens, a long poll of ``LEASE_WAIT_MS``) and the same
  function, with ``CONCURRENCY`` leases at once per process, written by hand on
  :class:`cluster.client.ClusterClient`: one thread per lease in progress, each
  leasing from one shard (threads are dealt to the shards in turn), calling the
  function on every token of its lease at once on the thread's own event loop (the
  function is ``async``), and completing the lease with all its results in one
  ``Complete``. No heartbeats (a no-op ends long before its lease), no hand-back on
  stop (the leases expire), no retries beyond the client's own.
* ``python -m bench.workers_app api --port-file F --log F`` serves the mock API in a
  process of its own until SIGTERM (so that its threads do not share an interpreter
  with the benchmark's driver).

**Round trip samples.** With ``CPN_BENCH_SAMPLES=FILE`` in its environment, a worker
process (SDK or bare) records, for every token whose completion the shard confirmed,
``(available_ms, leased_ms, committed_ms)``: when the job became work (the ``start``
firing that put it into ``run_queue``: its ``start_at_ms`` less the net's ``ready_ms``,
from ``CPN_BENCH_READY_MS``; the shard's clock, whole milliseconds), when the grant of
its lease arrived, and when the ``Completed`` reply arrived (this process's wall clock,
same host); and the duration of every mock API call. It writes them to FILE as JSON when
it stops. An SDK worker takes the times by wrapping ``ShardLane.lease`` and
``ShardLane.complete`` (the requests every lease and every completion go through),
installed by the worker's ``lifespan`` only when the variable is set: a clock read and
an append per lease and per completed token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

from cluster.client import ClusterClient
from cluster.jobs.mockapi import MockApi, MockApiConfig
from cluster.sdk import Output, WorkerEnv, current, to, worker
from cluster.sdk import lanes as sdk_lanes
from cluster.sdk.spec import WorkerSpec
from nets.errors import CpnError
from nets.jobs import Run
from router.wire import Leased

PLACE: Final = "run_queue"
BATCH: Final = 8  # tokens per lease, SDK and bare loop alike
CONCURRENCY: Final = 16  # leases worked on at once per process
POLLS_PER_SHARD: Final = 8
LEASE_MS: Final = 5_000  # outlasts late_ms (2 s) plus a call's timeout: docs/jobs.md
LEASE_WAIT_MS: Final = 1_000  # as the SDK's long polls (cluster/sdk/runner.py)
CLIENT_TIMEOUT_MS: Final = 1_500  # as the SDK's lanes
SAMPLES_ENV: Final = "CPN_BENCH_SAMPLES"
READY_MS_ENV: Final = "CPN_BENCH_READY_MS"
PROFILE_ENV: Final = "CPN_BENCH_PROFILE"  # cProfile an SDK worker into FILE.<pid>
API_URL_ENV: Final = "CPN_BENCH_API"  # the mock API's host:port, for call_api
API_CONNECTIONS_MAX: Final = CONCURRENCY * BATCH  # per event loop: no call waits for one
API_TIMEOUT_S: Final = 2.0
API_SERVER_CONNECTIONS_MAX: Final = 8 * API_CONNECTIONS_MAX  # 4 workers, and slack
HEADER_BYTES_MAX: Final = 16_384


def wall_ms() -> float:
    return time.time_ns() / 1e6


class Samples:
    """Round trip samples of one process, written as JSON when it stops: for each
    completed token ``(available_ms, leased_ms, committed_ms)``, and the duration of
    each mock API call in ms."""

    def __init__(self, path: str | None, ready_ms: int) -> None:
        self.path = Path(path) if path else None
        self.ready_ms = ready_ms
        self.round_trips: list[tuple[int, float, float]] = []
        self.calls_ms: list[float] = []
        self._leased_ms: dict[str, float] = {}  # lease id -> when its grant arrived
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> Samples:
        return cls(os.environ.get(SAMPLES_ENV), int(os.environ.get(READY_MS_ENV, "0")))

    def leased(self, lease_id: str) -> None:
        """A lease's grant arrived (a few thousand a second at most, kept until exit)."""
        if self.path is not None:
            self._leased_ms[lease_id] = wall_ms()

    def completed(self, lease_id: str, results: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Every result token of a confirmed completion (``Run`` and ``Failed`` tokens
        carry the job's ``start_at_ms`` in field 3)."""
        if self.path is None:
            return
        now = wall_ms()
        leased = self._leased_ms.get(lease_id, math.nan)
        samples = [(fields[3] - self.ready_ms, leased, now) for _place, fields in results]
        with self._lock:
            self.round_trips.extend(samples)

    def called(self, duration_ms: float) -> None:
        if self.path is not None:
            with self._lock:
                self.calls_ms.append(duration_ms)

    def write(self) -> None:
        if self.path is not None:
            with self._lock:
                body = {"round_trips": self.round_trips, "calls_ms": self.calls_ms}
                self.path.write_text(json.dumps(body), encoding="utf-8")


SAMPLES: Final = Samples.from_env()  # this process's (its environment names the file)


def _time_requests(samples: Samples) -> None:
    """Wrap the SDK's lease and completion requests: every lease and every confirmed
    completion goes through one of these two methods."""
    lease, complete = sdk_lanes.ShardLane.lease, sdk_lanes.ShardLane.complete

    async def timed_lease(self: sdk_lanes.ShardLane, *args: Any, **kwargs: Any) -> Leased:
        leased = await lease(self, *args, **kwargs)
        if leased.entries:
            samples.leased(leased.lease_id)
        return leased

    async def timed_complete(
        self: sdk_lanes.ShardLane,
        lease_id: str,
        results: Sequence[tuple[str, Any]],
        indexes: tuple[int, ...] = (),
    ) -> None:
        await complete(self, lease_id, results, indexes)
        samples.completed(lease_id, results)

    sdk_lanes.ShardLane.lease = timed_lease  # type: ignore[method-assign]
    sdk_lanes.ShardLane.complete = timed_complete  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def _lifespan(env: WorkerEnv) -> AsyncIterator[None]:
    del env
    if SAMPLES.path is not None:
        _time_requests(SAMPLES)
    profile_path = os.environ.get(PROFILE_ENV)
    profiler = cProfile.Profile(time.thread_time) if profile_path else None
    if profiler is not None:
        profiler.enable()
    try:
        yield
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{profile_path}.{os.getpid()}")
        await _close_api_clients()
        SAMPLES.write()


# -- the functions --------------------------------------------------------------------------


class ApiClient:
    """A minimal HTTP/1.1 client of the mock API: kept-alive connections of one event
    loop, one request at a time on each (what the mock API's log needs, and no more:
    a general client such as httpx costs more CPU per call than the rest of a job)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(API_CONNECTIONS_MAX)

    async def post_run(self, run: Run, key: str) -> int:
        """POST the job to ``/run``; the answer's status.

        The late rule is checked again right before the request is written: between
        the SDK's check and here the call may have waited on the event loop (or for a
        new connection), and a call sent after its late limit can break the rate limit
        at the API (docs/jobs.md, "The worker").

        Raises:
            LateCall: the request would leave after ``start_at_ms + late_ms``: not sent.
            OSError, asyncio.IncompleteReadError, TimeoutError: the call failed.
        """
        body = json.dumps(
            {"customer": run.customer, "job_id": run.job_id, "attempt": run.attempt, "key": key}
        ).encode()
        head = (
            f"POST /run HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        async with self._slots:
            reader, writer = self._idle.pop() if self._idle else await self._open()
            if wall_ms() > run.start_at_ms + run.late_ms:
                self._idle.append((reader, writer))
                raise LateCall(f"{run.customer}/{run.job_id}: late at the send")
            try:
                writer.write(head + body)
                status, keep = await asyncio.wait_for(self._answer(reader), API_TIMEOUT_S)
            except BaseException:
                writer.close()
                raise
            if keep:
                self._idle.append((reader, writer))
            else:
                writer.close()
            return status

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)

    @staticmethod
    async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > HEADER_BYTES_MAX:
            raise OSError("mock API answer head too long")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, keep = 0, True
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                keep = False
        await reader.readexactly(length)
        return status, keep

    async def close(self) -> None:
        for _reader, writer in self._idle:
            writer.close()
        self._idle.clear()


_api_clients: dict[asyncio.AbstractEventLoop, ApiClient] = {}
_api_lock = threading.Lock()


def _api_client() -> ApiClient:
    """This event loop's client (a bare loop runs one event loop per thread)."""
    loop = asyncio.get_running_loop()
    client = _api_clients.get(loop)
    if client is None:
        address = os.environ.get(API_URL_ENV, "")
        if not address:
            raise CpnError(f"call_api needs the mock API's host:port in ${API_URL_ENV}")
        client = ApiClient(address)
        with _api_lock:
            _api_clients[loop] = client
    return client


async def _close_api_clients() -> None:
    client = _api_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.close()


class ApiRefused(CpnError):
    """The mock API answered with something other than 200."""


class LateCall(CpnError):
    """A call not sent: it would have left after its late limit."""


def _late(run: Run) -> Output:
    return to("late", run)


@worker(
    PLACE, batch=BATCH, concurrency=CONCURRENCY, lease_ms=LEASE_MS, polls_per_shard=POLLS_PER_SHARD,
    start_field="start_at_ms", late_field="late_ms", on_late=_late, lifespan=_lifespan,
)  # fmt: skip
async def noop(run: Run) -> Output:
    """Nothing: the job ran."""
    return to("ran", run)


@worker(
    PLACE, batch=BATCH, concurrency=CONCURRENCY, lease_ms=LEASE_MS, polls_per_shard=POLLS_PER_SHARD,
    key=lambda run: f"{run.customer}/{run.job_id}",
    start_field="start_at_ms", late_field="late_ms", on_late=_late, lifespan=_lifespan,
)  # fmt: skip
async def call_api(run: Run) -> Output:
    """One call to the mock API with the job's idempotency key."""
    started = time.perf_counter()
    try:
        status = await _api_client().post_run(run, _key_of(run))
    except LateCall:
        return _late(run)  # no call made: the net plans it again
    SAMPLES.called((time.perf_counter() - started) * 1000)
    if status != 200:
        raise ApiRefused(f"mock API answered {status}")
    return to("ran", run)


def _key_of(run: Run) -> str:
    """The idempotency key: the SDK's, inside an SDK worker; the same rule in a bare loop."""
    try:
        return current().idempotency_key
    except CpnError:
        return f"{run.customer}/{run.job_id}"


FUNCTIONS: Final[dict[str, WorkerSpec]] = {"noop": noop, "call_api": call_api}


# -- the bare loop ------------------------------------------------------------------------


class BareLoop:
    """``concurrency`` threads, each leasing from one shard and completing by hand."""

    def __init__(self, data_dir: Path, function: Callable[[Run], Awaitable[Any]]) -> None:
        self.data_dir = data_dir
        self.function = function
        self.stopping = threading.Event()
        self.samples = SAMPLES
        self.counters: dict[str, int] = {"leased": 0, "completed": 0, "late": 0, "failed": 0}
        self._lock = threading.Lock()

    def run(self, concurrency: int, ready_file: Path | None) -> None:
        with ClusterClient.for_data_dir(self.data_dir) as probe:
            shards = probe.table().shard_count
        threads = [
            threading.Thread(target=self._thread, args=(k % shards,), name=f"bare-{k}")
            for k in range(concurrency)
        ]
        for thread in threads:
            thread.start()
        if ready_file is not None:
            ready_file.touch()
        for thread in threads:
            thread.join()
        self.samples.write()
        print(f"bare loop stopped: {self.counters}", file=sys.stderr)

    def _thread(self, shard_id: int) -> None:
        loop = asyncio.new_event_loop()
        client = ClusterClient.for_data_dir(self.data_dir, timeout_ms=CLIENT_TIMEOUT_MS, retries=1)
        try:
            while not self.stopping.is_set():
                try:
                    self._lease(client, loop, shard_id)
                except CpnError as exc:
                    print(f"bare loop, shard {shard_id}: {exc}", file=sys.stderr)
                    self.stopping.wait(0.1)
        finally:
            client.close()
            loop.run_until_complete(_close_api_clients())
            loop.close()

    def _lease(self, client: ClusterClient, loop: asyncio.AbstractEventLoop, shard_id: int) -> None:
        leased = client.lease(
            shard_id, PLACE, max_tokens=BATCH, lease_ms=LEASE_MS, wait_ms=LEASE_WAIT_MS
        )
        if not leased.entries:
            return
        self.samples.leased(leased.lease_id)
        runs = [Run(*fields) for _time_ms, fields in leased.entries]
        results = loop.run_until_complete(self._results(runs))
        client.complete(shard_id, leased.lease_id, results)
        self.samples.completed(leased.lease_id, results)
        with self._lock:
            self.counters["leased"] += len(runs)
            self.counters["completed"] += len(runs)
            self.counters["late"] += sum(place == "late" for place, _fields in results)
            self.counters["failed"] += sum(place == "failed" for place, _fields in results)

    async def _results(self, runs: list[Run]) -> list[tuple[str, tuple[Any, ...]]]:
        return list(await asyncio.gather(*(self._one(run) for run in runs)))

    async def _one(self, run: Run) -> tuple[str, tuple[Any, ...]]:
        if wall_ms() > run.start_at_ms + run.late_ms:
            return ("late", tuple(run))
        try:
            returned = await self.function(run)
        except Exception as exc:  # noqa: BLE001 - a failure token, as the SDK makes it
            return ("failed", (*run, f"{type(exc).__name__}: {exc}"))
        assert isinstance(returned, Output), returned
        return (returned.place, tuple(returned.token))


def _run_bare(args: argparse.Namespace) -> int:
    spec = FUNCTIONS[args.function]
    bare = BareLoop(args.data, spec.function)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: bare.stopping.set())
    bare.run(args.concurrency, args.ready_file)
    return 0


def _serve_api(args: argparse.Namespace) -> int:
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stopping.set())
    config = MockApiConfig(latency_ms=0, flaky_rate=0.0, rate=args.rate, window_ms=args.window_ms)
    with MockApi(config, log_path=args.log, connections_max=API_SERVER_CONNECTIONS_MAX) as api:
        args.port_file.write_text(f"127.0.0.1:{api.port}", encoding="utf-8")
        stopping.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bench/workers.py's child processes")
    commands = parser.add_subparsers(dest="command", required=True)
    bare = commands.add_parser("bare", help="the baseline: a bare lease-and-complete loop")
    bare.add_argument("function", choices=sorted(FUNCTIONS))
    bare.add_argument("--data", type=Path, required=True)
    bare.add_argument("--concurrency", type=int, default=CONCURRENCY)
    bare.add_argument("--ready-file", type=Path)
    api = commands.add_parser("api", help="serve the mock API until SIGTERM")
    api.add_argument("--port-file", type=Path, required=True)
    api.add_argument("--log", type=Path, required=True)
    api.add_argument("--rate", type=int, required=True)
    api.add_argument("--window-ms", type=int, required=True)
    args = parser.parse_args(argv)
    return _run_bare(args) if args.command == "bare" else _serve_api(args)


if __name__ == "__main__":
    raise SystemExit(main())
