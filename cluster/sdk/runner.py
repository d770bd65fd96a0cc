"""Running a worker against every shard of a cluster (SHELL): ``cpn worker run``.

Theory of operation:

* **Lanes and long polls.** A lane per shard (:mod:`cluster.sdk.lanes`), each with
  ``polls_per_shard`` long polls waiting for work at once: the shard answers the
  moment a firing puts tokens in the queue, so work is leased within a round trip of
  being decided, and an idle worker asks once a second per poll. The router's table is
  read again every few seconds, and a shard added by ``cpn scale`` gets its lane.
* **Concurrency.** At most ``concurrency`` leases are worked on at once (at least one
  per poll: a waiting poll holds its slot, so one shard's poll never starves another).
  Sync functions run on a thread pool of that size, async ones on the loop.
* **Token by token.** A lease of several tokens runs one call per token; each token
  completes (``Complete`` with its lease index) as soon as its call returns, so a slow
  token does not hold the others' results back. Tokens whose calls return in the same
  turn of the event loop complete together, in one ``Complete`` with their indexes: a
  lease of quick calls costs the shard one request, not one per token (should the shard
  refuse such a joint completion, each token is completed on its own, so a bad result
  holds back only its own token). ``many=True`` calls the function once with every
  token and completes the lease at once.
* **Heartbeats.** While any call of a lease runs, the lease is renewed every third of
  its length (``Renew``), with the latest progress the function reported. A renewal
  refused as ``lease_expired`` means the tokens went back: their results are dropped
  (a completion would be refused too), and nothing is lost.
* **Failures.** An exception completes the token with a failure token (see
  :mod:`cluster.sdk.spec`); a worker whose queue declares no failure place, and which
  has no ``on_error``, leaves the token leased until it expires.
* **Completion** retries while the shard is unreachable, until the lease expires:
  ``lease_expired`` means the tokens went back to the queue or an earlier try was
  committed; either way nothing is lost or counted twice.
* **Stopping.** SIGTERM (or SIGINT) stops the polls (a cancelled long poll closes its
  socket; the shard takes back a lease it could not deliver), lets running calls
  finish for ``drain_s``, hands back the tokens of calls that did not finish or had
  not started (``Release``), and exits 0: a sync call still running then cannot be
  interrupted, so the process leaves without it (its result would be refused anyway).
  After a SIGKILL, leases expire and their tokens are leased again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import zmq.asyncio
from prometheus_client.metrics_core import Metric

from cluster.async_client import AsyncShardClient
from cluster.client import ClusterClient, Redirected, ShardError
from cluster.sdk.context import LeaseContext, enter
from cluster.sdk.lanes import REQUEST_RETRIES, REQUEST_TIMEOUT_MS, ShardEndpoints, ShardLane
from cluster.sdk.metrics import WorkerMetrics, WorkerSample
from cluster.sdk.results import QueueShape, Results
from cluster.sdk.spec import WorkerEnv, WorkerSpec
from nets.errors import CpnError
from nets.model import Net
from router.shell.logsetup import configure_logging
from router.shell.metrics import METRICS_DEFAULT, MetricsServer, metrics_address, serve_metrics
from router.wire import Leased

log = logging.getLogger("cpn.worker")

LEASE_WAIT_MS: Final = 1_000  # how long a shard holds a lease request that finds no work
ERROR_WAIT_MS: Final = 100  # after a failed lease request, before the next
COMPLETE_RETRY_MS: Final = 100
HEARTBEATS_PER_LEASE: Final = 3  # renew every third of the lease's length
DRAIN_S_DEFAULT: Final = 10.0
RELEASE_TIMEOUT_S: Final = 2.0
READY_LOOKUP_S: Final = 30.0  # a worker with a ready file waits this long for the shards
READY_LOOKUP_PAUSE_S: Final = 0.01
TABLE_CHECK_S: Final = 2.0  # how often the router's table is read for new shards
CALL_THREAD_PREFIX: Final = "cpn-call"  # the threads sync worker functions run on

# The (lease index, results) of a lease's tokens whose calls returned in one turn of the
# event loop: they complete in one request.
Joined = list[tuple[int, Results]]


def wall_ms() -> int:
    """Milliseconds since the Unix epoch: the clock of the shards and of start times."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Target:
    """The cluster a worker runs against: how to reach its router, its shard count at
    start, its net (for the queue's colours and results) and the net's parameters."""

    connect: Callable[[], ClusterClient]
    shards: int
    net: Net
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How one worker process runs a spec (``cpn worker run`` options)."""

    concurrency: int = 0  # 0: the spec's
    lease_ms: int = 0  # 0: the spec's
    drain_s: float = DRAIN_S_DEFAULT
    ready_file: Path | None = None  # created once the worker is leasing
    log_json: bool = False  # `--log-json`: JSON lines on stderr (router/shell/logsetup.py)
    # /metrics (cluster/sdk/metrics.py): HOST:PORT or "off", where its URL is published,
    # and the families an application adds (called on the loop at each sample).
    metrics: str = METRICS_DEFAULT
    metrics_file: Path | None = None
    allow_remote: bool = False
    extra_metrics: Callable[[], tuple[Metric, ...]] | None = None


class Runner:
    """One worker process's loop (see the module docstring)."""

    def __init__(
        self, spec: WorkerSpec, target: Target, options: RunOptions, stopping: asyncio.Event
    ) -> None:
        self.spec = spec
        self.target = target
        self.shape = QueueShape.of(target.net, spec.place)
        self.lease_ms = options.lease_ms or spec.lease_ms
        self.options = options
        self.stopping = stopping
        self.counters: Counter[str] = Counter()
        self._executor: ThreadPoolExecutor | None = None
        self._expiry: dict[str, int] = {}  # lease id -> its expiry, as heartbeats renewed it
        self._calls_lock = threading.Lock()
        self.sync_calls_running = 0  # calls on the thread pool (not cancellable)
        self._working: set[asyncio.Task[None]] = set()
        self._pollers: list[asyncio.Task[None]] = []

    def concurrency(self, shards: int) -> int:
        polls = shards * self.spec.polls_per_shard
        return max(self.options.concurrency or self.spec.concurrency, polls)

    async def _await_endpoints(self, endpoints: ShardEndpoints) -> None:
        """Wait until every shard's endpoint is known (the worker may start while its
        cluster does), at most ``READY_LOOKUP_S``: a shard that stays down does not keep
        the worker from saying it is ready."""
        deadline = time.monotonic() + READY_LOOKUP_S
        for shard_id in range(self.target.shards):
            refresh = False  # a table without this shard's endpoint is asked for again
            while not self.stopping.is_set():
                try:
                    await endpoints.endpoint(shard_id, refresh=refresh)
                    break
                except CpnError:
                    refresh = True
                    if time.monotonic() >= deadline:
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), READY_LOOKUP_PAUSE_S)

    async def run(self) -> Counter[str]:
        """Lease and work until ``stopping`` is set, then drain; the counters."""
        env = WorkerEnv(self.target.params, self.target.shards)
        lifespan = self.spec.lifespan(env) if self.spec.lifespan else contextlib.nullcontext()
        async with lifespan:
            await self._run()
        return self.counters

    async def _run(self) -> None:
        context = zmq.asyncio.Context()
        endpoints = ShardEndpoints(self.target.connect)
        lanes: list[ShardLane] = []
        concurrency = self.concurrency(self.target.shards)
        slots = asyncio.Semaphore(concurrency)
        if not self.spec.is_async:
            self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix=CALL_THREAD_PREFIX)
        log.info(
            "%s on %s: %d shards, concurrency %d, lease %d ms",
            self.spec.title, self.spec.place, self.target.shards, concurrency, self.lease_ms,
        )  # fmt: skip

        def add_lanes(count: int) -> None:
            for shard_id in range(len(lanes), count):
                lane = ShardLane(endpoints, shard_id, context)
                lanes.append(lane)
                for _ in range(self.spec.polls_per_shard):
                    self._pollers.append(
                        asyncio.create_task(self._poll(lane, lane.client(), slots))
                    )

        add_lanes(self.target.shards)
        served = self._serve_metrics()
        if self.options.ready_file is not None:
            await self._await_endpoints(endpoints)
            self.options.ready_file.touch()
        try:
            while not self.stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), TABLE_CHECK_S)
                if not self.stopping.is_set():
                    with contextlib.suppress(CpnError):
                        add_lanes(await endpoints.shard_count())
        finally:
            await self._drain()
            for lane in lanes:
                lane.close()
            await endpoints.close()
            context.term()
            if served is not None:
                served[1].cancel()
                await asyncio.gather(served[1], return_exceptions=True)
                served[0].stop()
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
            log.info("%s stopped: %s", self.spec.title, dict(sorted(self.counters.items())))

    def _serve_metrics(self) -> tuple[MetricsServer, asyncio.Task[None]] | None:
        """Serve /metrics (None when off): samples taken on this loop, served by a thread.

        Raises:
            CpnError: the metrics address is not valid, not allowed or cannot be bound.
        """
        options = self.options
        address = metrics_address(options.metrics, allow_remote=options.allow_remote)
        if address is None:
            return None
        metrics = WorkerMetrics(self._metrics_sample)
        server = serve_metrics(address, metrics.collect, url_file=options.metrics_file)
        log.info("%s: metrics on %s", self.spec.title, server.url)
        return server, asyncio.create_task(metrics.refresh(self.stopping))

    def _metrics_sample(self) -> WorkerSample:
        extra = self.options.extra_metrics
        return WorkerSample(
            worker=self.spec.title,
            place=self.spec.place,
            counters=dict(self.counters),
            leases_working=len(self._working),
            sync_calls_running=self.sync_calls_running,
            extra=extra() if extra is not None else (),
        )

    async def _drain(self) -> None:
        for poller in self._pollers:
            poller.cancel()
        await asyncio.gather(*self._pollers, return_exceptions=True)
        if self._working:
            log.info(
                "draining %d leases (at most %.1f s)", len(self._working), self.options.drain_s
            )
            await asyncio.wait(self._working, timeout=self.options.drain_s)
        for task in list(self._working):
            task.cancel()  # its tokens are handed back (see _lease_work)
        await asyncio.gather(*self._working, return_exceptions=True)

    async def _poll(
        self, lane: ShardLane, client: AsyncShardClient, slots: asyncio.Semaphore
    ) -> None:
        while not self.stopping.is_set():
            await slots.acquire()
            try:
                leased = await lane.lease(
                    client, self.spec.place, max_tokens=self.spec.batch,
                    lease_ms=self.lease_ms, wait_ms=LEASE_WAIT_MS,
                )  # fmt: skip
            except CpnError as exc:
                slots.release()
                self.counters["lease_errors"] += 1
                log.info("shard %d: no lease (%s)", lane.shard_id, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), ERROR_WAIT_MS / 1000)
                continue
            except BaseException:
                slots.release()
                raise
            if not leased.entries:
                slots.release()  # the shard's wait ended without work: ask again
                continue
            self.counters["leased"] += len(leased.entries)
            task = asyncio.create_task(self._lease_work(lane, leased, slots))
            self._working.add(task)
            task.add_done_callback(self._working.discard)

    # -- one lease --------------------------------------------------------------------

    async def _lease_work(self, lane: ShardLane, leased: Leased, slots: asyncio.Semaphore) -> None:
        contexts = [
            LeaseContext(
                leased.lease_id, lane.shard_id, index, "", leased.expires_at_ms, self.target.params
            )
            for index in range(len(leased.entries))
        ]
        pending = set(range(len(leased.entries)))  # not completed yet
        # The heartbeat is a task only once the lease has run a third of its length: most
        # calls end sooner, and a timer costs a lease less than a task started and cancelled.
        beats: list[asyncio.Task[None]] = []
        heartbeat = asyncio.get_running_loop().call_later(
            self.lease_ms / HEARTBEATS_PER_LEASE / 1000,
            lambda: beats.append(asyncio.create_task(self._heartbeat(lane, leased, contexts))),
        )
        try:
            tokens = [self.shape.token(fields) for _time_ms, fields in leased.entries]
            for context, token in zip(contexts, tokens, strict=True):
                context.idempotency_key = self.spec.idempotency_key(token)
            if self.spec.many:
                results = await self._call_many(tokens, contexts[0])
                if await self._complete(lane, leased, results, ()):
                    pending.clear()
            else:
                joining: list[Joined] = []  # results of this turn, while one is open
                calls = [
                    self._one(lane, leased, index, token, contexts[index], pending, joining)
                    for index, token in enumerate(tokens)
                ]
                if len(calls) == 1:  # on this lease's task: no task of its own to start
                    await calls[0]
                    return
                # Every token's call ends before the lease's slot is given back, even
                # when another token's fails; the first failure is then reported below.
                failures = [
                    outcome
                    for outcome in await asyncio.gather(*calls, return_exceptions=True)
                    if isinstance(outcome, BaseException)
                ]
                if failures:
                    raise failures[0]
        except asyncio.CancelledError:
            if pending:  # stopping: hand back what did not finish
                await self._release(lane, leased.lease_id, tuple(sorted(pending)))
            raise
        except CpnError as exc:
            # Not completed: the lease expires and its tokens are leased again.
            self.counters["work_errors"] += 1
            log.warning("shard %d lease %s: %s", lane.shard_id, leased.lease_id, exc)
        except Exception:  # a bug must not end a task silently; the lease expires
            self.counters["work_failed"] += 1
            log.exception("shard %d lease %s failed", lane.shard_id, leased.lease_id)
        finally:
            heartbeat.cancel()
            for beat in beats:
                beat.cancel()
            await asyncio.gather(*beats, return_exceptions=True)
            self._expiry.pop(leased.lease_id, None)
            slots.release()

    async def _release(self, lane: ShardLane, lease_id: str, indexes: tuple[int, ...]) -> None:
        """Hand ``indexes`` back; one by one if the shard refuses them together (a
        completion in flight when the drain began may have been applied meanwhile)."""
        try:
            await asyncio.wait_for(lane.release(lease_id, indexes), RELEASE_TIMEOUT_S)
            self.counters["released"] += len(indexes)
            return
        except ShardError as exc:
            if exc.code != "unknown_index" or len(indexes) == 1:
                return
        except (CpnError, TimeoutError):
            return
        for index in indexes:
            await self._release(lane, lease_id, (index,))

    async def _one(
        self,
        lane: ShardLane,
        leased: Leased,
        index: int,
        token: tuple[Any, ...],
        context: LeaseContext,
        pending: set[int],
        joining: list[Joined],
    ) -> None:
        results = await self._results_of(token, context)
        if results is None:
            return  # an exception without a failure place: the lease expires
        if len(leased.entries) == 1:
            if await self._complete(lane, leased, results, ()):
                pending.discard(index)
            return
        if joining:  # another token's results wait for this turn to end: go with them
            joining[0].append((index, results))
            return
        joined: Joined = [(index, results)]
        joining.append(joined)
        try:
            await asyncio.sleep(0)  # the calls that return in this turn join
        finally:
            joining.clear()
        await self._complete_joined(lane, leased, joined, pending)

    async def _complete_joined(
        self, lane: ShardLane, leased: Leased, joined: Joined, pending: set[int]
    ) -> None:
        indexes = tuple(sorted(index for index, _results in joined))
        results = tuple(result for _index, own in joined for result in own)
        try:
            completed = await self._complete(lane, leased, results, indexes)
        except ShardError:
            if len(joined) == 1:
                raise
            completed = None  # refused together: each on its own, below
        if completed is None:
            # A completion is applied whole or not at all: complete each token on its
            # own, so that only the refused result's token stays leased. Every single
            # completion ends before the lease's work does (its slot, its heartbeat);
            # the first refusal is reported after all of them.
            singles = [self._complete_joined(lane, leased, [one], pending) for one in joined]
            refusals = [
                outcome
                for outcome in await asyncio.gather(*singles, return_exceptions=True)
                if isinstance(outcome, BaseException)
            ]
            if refusals:
                raise refusals[0]
            return
        if completed:
            pending.difference_update(indexes)

    async def _results_of(self, token: tuple[Any, ...], context: LeaseContext) -> Results | None:
        spec = self.spec
        if spec.start_field is not None and spec.late_field is not None:
            start_ms = getattr(token, spec.start_field)
            late_at_ms = start_ms + getattr(token, spec.late_field)
            wait_ms = start_ms - wall_ms()
            if wait_ms > 0:
                await asyncio.sleep(wait_ms / 1000)
            if wall_ms() > late_at_ms:
                self.counters["late"] += 1
                assert spec.on_late is not None  # WorkerSpec checks it
                return self.shape.outputs(spec.on_late(token))
        try:
            returned = await self._call(token, context)
        except Exception as exc:  # noqa: BLE001 - the function's failure becomes a failure token
            return self._failure(token, exc)
        self.counters["succeeded"] += 1
        # A result the queue does not declare is the worker's bug, not the token's
        # failure: it raises, is logged, and the lease expires.
        return self.shape.outputs(returned)

    def _failure(self, token: tuple[Any, ...], error: Exception) -> Results | None:
        self.counters["failed"] += 1
        log.info("%s failed on %r: %s", self.spec.title, token, error)
        try:
            if self.spec.on_error is not None:
                return self.shape.outputs(self.spec.on_error(token, error))
            return self.shape.failure(token, error)
        except CpnError as exc:
            log.warning("%s", exc)
            return None

    async def _call(self, token: tuple[Any, ...], context: LeaseContext) -> Any:
        if self.spec.is_async:
            # This task's context: a lease's only call runs on the lease's task, and gather
            # gives each call of a lease of several a task of its own.
            enter(context)
            return await self.spec.function(token)
        return await self._on_thread(context, token)

    async def _call_many(self, tokens: list[tuple[Any, ...]], context: LeaseContext) -> Results:
        returned = await self._call_list(tokens, context)
        if not isinstance(returned, list | tuple) or len(returned) != len(tokens):
            raise CpnError(
                f"{self.spec.title} (many=True) must return one result per token "
                f"({len(tokens)}), got {type(returned).__name__}"
            )
        self.counters["succeeded"] += len(tokens)
        return tuple(r for item in returned for r in self.shape.outputs(item))

    async def _call_list(self, tokens: list[tuple[Any, ...]], context: LeaseContext) -> Any:
        if self.spec.is_async:
            enter(context)
            return await self.spec.function(tokens)
        return await self._on_thread(context, tokens)

    async def _on_thread(self, context: LeaseContext, argument: Any) -> Any:
        """The sync function on the thread pool, counted while its thread runs it (a
        cancelled await does not stop the thread: see :func:`run`)."""
        run = copy_context()
        run.run(enter, context)

        def call() -> Any:
            # Counted on its thread: a call queued and then cancelled by the pool's
            # shutdown never starts, and never counts.
            with self._calls_lock:
                self.sync_calls_running += 1
            try:
                return run.run(self.spec.function, argument)
            finally:
                with self._calls_lock:
                    self.sync_calls_running -= 1

        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _heartbeat(
        self, lane: ShardLane, leased: Leased, contexts: Sequence[LeaseContext]
    ) -> None:
        """Renew now (a third of the lease has run), then every third of its length."""
        interval_s = self.lease_ms / HEARTBEATS_PER_LEASE / 1000
        while await self._renew(lane, leased, contexts):
            await asyncio.sleep(interval_s)

    async def _renew(
        self, lane: ShardLane, leased: Leased, contexts: Sequence[LeaseContext]
    ) -> bool:
        """One heartbeat; False once the lease is known to have expired."""
        progress = next((c.progress_text for c in contexts if c.progress_text), "")
        try:
            expires = await lane.renew(leased.lease_id, self.lease_ms, progress)
        except ShardError as exc:
            if exc.code == "lease_expired":
                self.counters["renew_expired"] += 1
                return False
            log.info("shard %d: renewal refused (%s)", lane.shard_id, exc)
            return True
        except CpnError as exc:
            log.info("shard %d: renewal failed, retrying (%s)", lane.shard_id, exc)
            return True
        self.counters["renewed"] += 1
        self._expiry[leased.lease_id] = expires
        for context in contexts:
            context.expires_at_ms = expires
        return True

    async def _complete(
        self, lane: ShardLane, leased: Leased, results: Results, indexes: tuple[int, ...]
    ) -> bool:
        """Complete (part of) ``leased``; whether the shard took it."""
        while True:
            try:
                await lane.complete(leased.lease_id, results, indexes)
                self.counters["completed"] += len(indexes) or len(leased.entries)
                if self.spec.on_completed is not None:
                    self.spec.on_completed(results)
                return True
            except ShardError as exc:
                # lease_expired: the tokens went back, or an earlier try of this very
                # completion was committed (a retry after a lost reply is a new request);
                # unknown_index is the same for a token-by-token completion.
                if exc.code not in ("lease_expired", "unknown_index"):
                    raise
                self.counters["expired"] += 1
                return False
            except Redirected as exc:
                self.counters["redirected"] += 1
                log.warning("shard %d: completion redirected (%s)", lane.shard_id, exc)
                return False
            except CpnError as exc:
                if wall_ms() >= self._expiry.get(leased.lease_id, leased.expires_at_ms):
                    self.counters["gave_up"] += 1
                    log.warning(
                        "shard %d: lease expired while unreachable (%s)", lane.shard_id, exc
                    )
                    return False
                log.info("shard %d: completion failed, retrying (%s)", lane.shard_id, exc)
                await asyncio.sleep(COMPLETE_RETRY_MS / 1000)


async def run_async(
    spec: WorkerSpec, target: Target, options: RunOptions, stopping: asyncio.Event | None = None
) -> Runner:
    """Run ``spec`` until ``stopping`` is set (default: until SIGTERM or SIGINT); the
    runner, with its counters and the sync calls still running."""
    if stopping is None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
    runner = Runner(spec, target, options, stopping)
    await runner.run()
    return runner


def run(spec: WorkerSpec, target: Target, options: RunOptions) -> Counter[str]:
    """``cpn worker run``: run one worker process until SIGTERM or SIGINT."""
    configure_logging(
        None,
        json_lines=options.log_json,
        text_format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s: %(message)s",
    )
    started = time.monotonic()
    runner = asyncio.run(run_async(spec, target, options))
    log.info("ran %.1f s", time.monotonic() - started)
    if runner.sync_calls_running:
        # A sync call that outlived the drain cannot be interrupted, and the thread pool's
        # exit hook would wait for it: its tokens were handed back, so leave without it.
        log.warning(
            "%d calls still running after the drain; exiting without them",
            runner.sync_calls_running,
        )
        logging.shutdown()
        os._exit(0)
    return runner.counters


def connect_to(router_endpoint: str) -> Callable[[], ClusterClient]:
    """A connect function for a router at a fixed endpoint (a cluster file's)."""
    return lambda: ClusterClient(
        router_endpoint, timeout_ms=REQUEST_TIMEOUT_MS, retries=REQUEST_RETRIES
    )
