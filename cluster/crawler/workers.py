"""Crawl workers: processes that lease the crawler net's work and do its effects (SHELL).

``cpn worker --role fetch|parse|store --data CLUSTER_DIR`` runs one worker against the
cluster in ``CLUSTER_DIR`` (its net must be the crawler's, ``nets.scraper:net``):

* ``fetch`` leases ``fetch_queue``, waits for the start time and GETs the URL (the late
  rule, :mod:`cluster.crawler.fetch`), and completes with a ``fetched`` token;
* ``parse`` leases ``parse_queue``, extracts the title and the links
  (:mod:`cluster.crawler.parse`), and completes with ``parse_done`` and ``links`` tokens;
* ``store`` leases ``store_queue``, appends each page's JSON record once (flock +
  fsync, :mod:`cluster.crawler.store`), and completes with ``store_done`` tokens.

Theory of operation:

* **Every shard.** Each shard holds its own slots' part of a work queue, so a worker
  leases from all of them: a *lane* per shard. A lane learns where its shard listens
  from the router and caches it, like every client; a shard restarted on another port
  is looked up again, and a router restarted elsewhere is found again through the
  cluster directory. Everything runs on one event loop (:mod:`zmq.asyncio`), each
  request in flight on a client of its own (a shard orders a client's requests).
* **Long polls.** A lease asks the shard to wait for work (``LEASE_WAIT_MS``) when it
  has none: the shard answers the moment a firing puts tokens in the queue, so work is
  leased within a round trip of being decided, and an idle worker asks once a second.
  ``POLLS_PER_SHARD`` polls wait at once per shard (four for fetch workers, whose
  leases carry one token each: a burst of fetches decided in one batch is leased at
  once).
* **Concurrency.** ``--concurrency N`` leases are held at once, over all lanes (at
  least one per poll: a waiting poll holds its slot).
* **Completion.** A result is completed on the shard that granted the lease, retried
  while the shard is unreachable until the lease expires. ``lease_expired`` means the
  tokens went back to the queue (or an earlier try was committed): the work is not
  lost, and nothing is counted twice. A worker killed at any point loses nothing: its
  leases expire and their tokens are leased again.
* **Fault points** for tests: ``CPN_FAULT=store_after_write`` SIGKILLs a store worker
  right after its first write reached the file, before it completes the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import zmq.asyncio

from cluster.async_client import AsyncShardClient
from cluster.client import ClusterClient, Redirected, ShardError, ShardUnavailable
from cluster.crawler.fetch import Fetcher, FetchSettings, wall_ms
from cluster.crawler.parse import parse_results
from cluster.crawler.store import PageStore, page_record
from cluster.layout import ClusterConfig, ClusterLayout
from nets.errors import CpnError
from router.wire import Leased

log = logging.getLogger("cpn.worker")

ROLES: Final = ("fetch", "parse", "store")
QUEUE_OF: Final = {"fetch": "fetch_queue", "parse": "parse_queue", "store": "store_queue"}
BATCH_OF: Final = {"fetch": 1, "parse": 1, "store": 32}
# Long polls per shard: a fetch lease carries one token, so several wait at once and a
# burst of fetches decided in one batch is leased in one round trip.
POLLS_PER_SHARD: Final = {"fetch": 4, "parse": 1, "store": 1}
CONCURRENCY_DEFAULT: Final = {"fetch": 32, "parse": 1, "store": 1}
LEASE_WAIT_MS: Final = 1_000  # how long a shard holds a lease request that finds no work
ERROR_WAIT_MS: Final = 100  # after a failed lease request, before the next
REQUEST_TIMEOUT_MS: Final = 1_500
# A fetch's answer (or its timeout) comes at least this long before its lease ends,
# so that its result is completed in time (see _within_lease).
LEASE_END_MARGIN_MS: Final = 1_000
# A fetch lease outlasts the fetch's deadline (twice its timeout) by at least this: the
# lead of its decision, its late limit and the margin above.
FETCH_LEASE_SLACK_MS: Final = 5_000
FETCH_START_AT: Final = 7  # Fetch(domain, url, kind, depth, attempt, proxy, proxy_url,
FETCH_LATE: Final = 8  #       start_at_ms, late_ms): the fields the lease rule reads
REQUEST_RETRIES: Final = 1
COMPLETE_RETRY_MS: Final = 100
STOP_GRACE_S: Final = 5.0
FAULT_ENV: Final = "CPN_FAULT"
SLOW_STORE_ENV: Final = "CPN_STORE_DELAY_MS"  # tests: a deliberately slow store stage

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """One worker's settings. It finds its cluster by ``data_dir`` (a local ``cpn up``
    directory: the router's endpoint, the shard count and the net's parameters are
    recorded there) or, on a host of its own, by ``router_endpoint`` and ``shards``
    (from the cluster file, ``cpn worker --config``) with the net's ``params``."""

    role: str
    data_dir: Path | None
    out: Path | None = None
    concurrency: int = 0  # 0: the role's default
    lease_ms: int = 30_000
    timings: Path | None = None
    fetch: FetchSettings = field(default_factory=FetchSettings)
    durable: bool = True
    router_endpoint: str = ""
    shards: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    ready_file: Path | None = None  # created once the worker is leasing

    def __post_init__(self) -> None:
        assert self.role in ROLES, self.role


class ShardEndpoints:
    """Where each shard listens, from the router's partition table: cached, and asked
    again when a shard does not answer (it may have restarted on another port, and the
    router may have moved: ``connect`` reads where it is now). The router is asked on a
    thread of its own (a rare, blocking request)."""

    def __init__(self, connect: Callable[[], ClusterClient]) -> None:
        self._connect = connect
        self._client: ClusterClient | None = None  # used on the executor's thread only
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="router")

    def _lookup(self, shard_id: int, refresh: bool) -> str:
        if self._client is None:
            self._client = self._connect()
        try:
            endpoint = self._client.table(refresh=refresh).endpoints[shard_id]
        except CpnError:
            self._drop()
            raise
        if not endpoint:
            raise ShardUnavailable(f"shard {shard_id} has not told the router where it listens")
        return endpoint

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def endpoint(self, shard_id: int, *, refresh: bool = False) -> str:
        """Where shard ``shard_id`` listens.

        Raises:
            CpnError: the router did not answer, or the shard has no endpoint yet.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._lookup, shard_id, refresh)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._drop)
        self._executor.shutdown(wait=True)


class ShardLane:
    """One shard's leases and completions: clients of their own (a shard orders each
    client's requests, so every request in flight has its own client), all found at
    the shard's endpoint, which is looked up again when the shard does not answer."""

    def __init__(
        self, endpoints: ShardEndpoints, shard_id: int, context: zmq.asyncio.Context
    ) -> None:
        self.shard_id = shard_id
        self._endpoints = endpoints
        self._context = context
        self._clients: list[AsyncShardClient] = []
        self._idle_completers: list[AsyncShardClient] = []
        self._stale = False  # the shard did not answer: ask the router where it is now

    def client(self) -> AsyncShardClient:
        """A new client of this shard (it connects on its first request)."""
        client = AsyncShardClient(
            "", self._context, timeout_ms=REQUEST_TIMEOUT_MS, retries=REQUEST_RETRIES
        )
        self._clients.append(client)
        return client

    async def _call(self, client: AsyncShardClient, call: Callable[[], Awaitable[T]]) -> T:
        if not client.endpoint:
            refresh, self._stale = self._stale, False
            client.reconnect(await self._endpoints.endpoint(self.shard_id, refresh=refresh))
        try:
            return await call()
        except ShardUnavailable:
            # Look the shard up again for the next try (it may listen elsewhere now).
            client.reconnect("")
            self._stale = True
            raise

    async def lease(
        self, client: AsyncShardClient, place: str, *, max_tokens: int, lease_ms: int
    ) -> Leased:
        """A long poll: the shard answers when it has work, or empty after a while."""
        return await self._call(
            client,
            lambda: client.lease(
                place, max_tokens=max_tokens, lease_ms=lease_ms, wait_ms=LEASE_WAIT_MS
            ),
        )

    async def complete(self, lease_id: str, results: Sequence[tuple[str, Any]]) -> None:
        client = self._idle_completers.pop() if self._idle_completers else self.client()
        try:
            await self._call(client, lambda: client.complete(lease_id, results))
        finally:
            self._idle_completers.append(client)

    def close(self) -> None:
        for client in self._clients:
            client.close()


Handler = Callable[[Leased], Awaitable[list[tuple[str, Any]]]]


class Worker:
    """One worker process's loop (see the module docstring)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        if config.data_dir is None:
            assert config.router_endpoint, config
            assert config.shards > 0, config
            endpoint = config.router_endpoint
            self.shards = config.shards
            self.params = dict(config.params)
            self._connect = lambda: ClusterClient(
                endpoint, timeout_ms=REQUEST_TIMEOUT_MS, retries=REQUEST_RETRIES
            )
        else:
            layout = ClusterLayout(config.data_dir.resolve())
            recorded = ClusterConfig.read(layout)
            if recorded is None:
                raise CpnError(
                    f"no cluster in {layout.root} (no {layout.cluster_file.name}); "
                    "start one with `cpn up` or `cpn crawl`"
                )
            self.shards = recorded.shards
            self.params = {**recorded.params, **config.params}
            # for_data_dir reads where the router is now (it may have moved).
            self._connect = lambda: ClusterClient.for_data_dir(
                layout.root, timeout_ms=REQUEST_TIMEOUT_MS, retries=REQUEST_RETRIES
            )
        self.place = QUEUE_OF[config.role]
        self.batch = BATCH_OF[config.role]
        # Each long poll holds a slot while it waits: at least one per poll, so that
        # one shard's waiting poll never keeps another shard's work from being leased.
        polls = self.shards * POLLS_PER_SHARD[config.role]
        self.concurrency = max(config.concurrency or CONCURRENCY_DEFAULT[config.role], polls)
        self.counters: Counter[str] = Counter()
        self.stopping = asyncio.Event()
        self._fetcher: Fetcher | None = None
        self._timings: IO[str] | None = None
        self._store: PageStore | None = None
        self._fetch_deadline_ms = int(config.fetch.timeout_s * 2 * 1000)  # see Fetcher.fetch
        self._fault = os.environ.get(FAULT_ENV, "")
        self._store_delay_s = int(os.environ.get(SLOW_STORE_ENV, "0") or 0) / 1000
        self._handler: Handler = {
            "fetch": self._fetch,
            "parse": self._parse,
            "store": self._store_pages,
        }[config.role]

    # -- the handlers ---------------------------------------------------------------------

    async def _fetch(self, leased: Leased) -> list[tuple[str, Any]]:
        assert self._fetcher is not None
        results: list[tuple[str, Any]] = []
        for _time_ms, fetch in leased.entries:
            job = _within_lease(fetch, leased.expires_at_ms, self._fetch_deadline_ms)
            outcome = await self._fetcher.fetch(job)
            self.counters["late" if outcome.timing is None else "sent"] += 1
            if outcome.timing is not None and self._timings is not None:
                self._timings.write(json.dumps(outcome.timing.to_json()) + "\n")
                self._timings.flush()
            results.append(("fetched", outcome.fetched))
        return results

    async def _parse(self, leased: Leased) -> list[tuple[str, Any]]:
        results: list[tuple[str, Any]] = []
        for _time_ms, page in leased.entries:
            results += parse_results(page)
            self.counters["parsed"] += 1
        return results

    async def _store_pages(self, leased: Leased) -> list[tuple[str, Any]]:
        assert self._store is not None
        entries = leased.entries
        if self._store_delay_s:
            await asyncio.sleep(self._store_delay_s * len(entries))
        summary = self._store.write(page_record(parsed) for _t, parsed in entries)
        self.counters["written"] += summary.written
        self.counters["already_written"] += summary.present
        if self._fault == "store_after_write" and summary.written:
            log.warning("fault point store_after_write: killing myself (pid %d)", os.getpid())
            os.kill(os.getpid(), signal.SIGKILL)
        return [("store_done", (parsed[0], parsed[1])) for _t, parsed in entries]

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        role = self.config.role
        if role == "fetch":
            settings = self.config.fetch
            self._fetcher = Fetcher(
                FetchSettings(
                    user_agent=str(self.params.get("user_agent", settings.user_agent)),
                    body_max_bytes=int(self.params.get("body_max_bytes", settings.body_max_bytes)),
                    timeout_s=settings.timeout_s,
                    connect_timeout_s=settings.connect_timeout_s,
                )
            )
            proxies = self.params.get("proxies") or []
            self._fetcher.prepare([str(url) for url in proxies])
            await self._fetcher.warm_up()
            if self.config.timings is not None:
                self._timings = self.config.timings.open("a", encoding="utf-8")
        elif role == "store":
            if self.config.out is None:
                raise CpnError("a store worker needs --out FILE (the JSON Lines output)")
            self._store = PageStore(self.config.out, durable=self.config.durable)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        context = zmq.asyncio.Context()
        endpoints = ShardEndpoints(self._connect)
        lanes = [ShardLane(endpoints, k, context) for k in range(self.shards)]
        slots = asyncio.Semaphore(self.concurrency)
        working: set[asyncio.Task[None]] = set()
        log.info(
            "%s worker (pid %d): %d shards, concurrency %d, lease %d ms",
            role,
            os.getpid(),
            self.shards,
            self.concurrency,
            self.config.lease_ms,
        )
        pollers = [
            asyncio.create_task(self._poll(lane, lane.client(), slots, working))
            for lane in lanes
            for _ in range(POLLS_PER_SHARD[role])
        ]
        if self.config.ready_file is not None:
            # Ready once the shards are known (the table is cached: every poll's lease
            # goes out at once), or the router did not answer and the polls will retry.
            for shard_id in range(self.shards):
                with contextlib.suppress(CpnError):
                    await endpoints.endpoint(shard_id)
            self.config.ready_file.touch()
        try:
            await self.stopping.wait()
        finally:
            # A cancelled poll closes its socket: a lease granted after that cannot be
            # delivered, and the shard puts its tokens back at once.
            for poller in pollers:
                poller.cancel()
            await asyncio.gather(*pollers, return_exceptions=True)
            if working:
                await asyncio.wait(working, timeout=STOP_GRACE_S)
            for task in working:
                task.cancel()
            await asyncio.gather(*working, return_exceptions=True)
            for lane in lanes:
                lane.close()
            await endpoints.close()
            context.term()
            if self._fetcher is not None:
                await self._fetcher.aclose()
            if self._timings is not None:
                self._timings.close()
            if self._store is not None:
                self._store.close()
            log.info("%s worker stopped: %s", role, dict(sorted(self.counters.items())))

    async def _poll(
        self,
        lane: ShardLane,
        client: AsyncShardClient,
        slots: asyncio.Semaphore,
        working: set[asyncio.Task[None]],
    ) -> None:
        while not self.stopping.is_set():
            await slots.acquire()
            try:
                leased = await lane.lease(
                    client, self.place, max_tokens=self.batch, lease_ms=self.config.lease_ms
                )
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
            task = asyncio.create_task(self._work(lane, leased, slots))
            working.add(task)
            task.add_done_callback(working.discard)

    async def _work(self, lane: ShardLane, leased: Leased, slots: asyncio.Semaphore) -> None:
        try:
            results = await self._handler(leased)
            await self._complete(lane, leased, results)
        except CpnError as exc:
            # Not completed: the lease expires and its tokens are leased again.
            self.counters["work_errors"] += 1
            log.warning("shard %d lease %s: %s", lane.shard_id, leased.lease_id, exc)
        except Exception:  # a bug must not end a task silently; the lease expires
            self.counters["work_failed"] += 1
            log.exception("shard %d lease %s failed", lane.shard_id, leased.lease_id)
        finally:
            slots.release()

    async def _complete(
        self, lane: ShardLane, leased: Leased, results: Sequence[tuple[str, Any]]
    ) -> None:
        while True:
            try:
                await lane.complete(leased.lease_id, results)
                self.counters["completed"] += 1
                return
            except ShardError as exc:
                if exc.code != "lease_expired":
                    raise
                self.counters["expired"] += 1
                return
            except Redirected as exc:
                self.counters["redirected"] += 1
                log.warning("shard %d: completion redirected (%s)", lane.shard_id, exc)
                return
            except CpnError as exc:
                if wall_ms() >= leased.expires_at_ms:
                    self.counters["gave_up"] += 1
                    log.warning(
                        "shard %d: lease expired while unreachable (%s)", lane.shard_id, exc
                    )
                    return
                log.info("shard %d: completion failed, retrying (%s)", lane.shard_id, exc)
                await asyncio.sleep(COMPLETE_RETRY_MS / 1000)


def _within_lease(fetch: tuple[Any, ...], expires_at_ms: int, deadline_ms: int) -> tuple[Any, ...]:
    """``fetch`` with its late limit cut so that its answer comes within its lease.

    A fetch sent no later than ``deadline_ms`` (the fetch's own deadline) plus a margin
    before its lease ends is answered, or given up, while the lease holds: its result
    reaches the net, and with it the answer the domain's next start waits for. An
    expired lease's fetch is leased again and refused as late by the next worker, so
    a stalled worker must not send it either: two requests at once at a host.
    """
    start_at_ms, late_ms = fetch[FETCH_START_AT], fetch[FETCH_LATE]
    latest_ms = expires_at_ms - deadline_ms - LEASE_END_MARGIN_MS
    if start_at_ms + late_ms <= latest_ms:
        return fetch
    # Negative when even the start is too close to the end: the fetcher refuses it.
    return (*fetch[:FETCH_LATE], latest_ms - start_at_ms, *fetch[FETCH_LATE + 1 :])


def run_worker(config: WorkerConfig) -> None:
    """``cpn worker``: run one worker until SIGTERM or SIGINT.

    Raises:
        CpnError: no cluster in the directory, or the output file cannot be opened.
    """
    logging.basicConfig(
        format=f"%(asctime)s {config.role}[{os.getpid()}] %(levelname)s: %(message)s",
        level=logging.INFO,
        force=True,
    )
    # httpx logs every request at INFO: thousands of lines, and CPU, for nothing new
    # (the fetch timings log has them).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    started = time.monotonic()
    asyncio.run(Worker(config).run())
    log.info("ran %.1f s", time.monotonic() - started)
