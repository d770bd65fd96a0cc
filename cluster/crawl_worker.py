"""Crawl workers: processes that lease the crawler net's work and do its effects (SHELL).

``cpn worker --role fetch|parse|store --data CLUSTER_DIR`` runs one worker against the
cluster in ``CLUSTER_DIR`` (its net must be the crawler's, ``nets.scraper:net``):

* ``fetch`` leases ``fetch_queue``, waits for the start time and GETs the URL (the late
  rule, :mod:`cluster.crawl_fetch`), and completes with a ``fetched`` token;
* ``parse`` leases ``parse_queue``, extracts the title and the links
  (:mod:`cluster.crawl_parse`), and completes with ``parse_done`` and ``links`` tokens;
* ``store`` leases ``store_queue``, appends each page's JSON record once (flock +
  fsync, :mod:`cluster.crawl_store`), and completes with ``store_done`` tokens.

Theory of operation:

* **Every shard.** Each shard holds its own slots' part of a work queue, so a worker
  leases from all of them: one *lane* per shard, each with its own thread and client
  (a ZeroMQ socket belongs to one thread), so that a shard that is down or restarting
  only delays its own lane. A lane learns where its shard listens from the router and
  caches it, like every client; a shard restarted on another port is looked up again,
  and a router restarted elsewhere is found again through the cluster directory.
* **Concurrency.** ``--concurrency N`` leases are worked on at once, over all lanes.
  A fetch lease takes one token (each has its own start time, and its result should
  reach the net as soon as it exists), so a fetch worker runs several lanes per shard
  to keep enough leases in flight; parse and store leases take a few.
* **Idle polling.** A lane that finds nothing waits, doubling the wait from
  ``IDLE_MS_MIN`` up to a maximum (``IDLE_MS_MAX_OF``: 20 ms for fetch workers, below the
  net's ready time, so a fetch is leased before its start, and for parse workers, whose
  links feed the fetches; 100 ms for store workers),
  and polls again at once after a lease that brought work.
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

from cluster.client import ClusterClient, Redirected, ShardError
from cluster.crawl_fetch import Fetcher, FetchSettings, wall_ms
from cluster.crawl_parse import parse_results
from cluster.crawl_store import PageStore, page_record
from cluster.local import ClusterConfig, ClusterLayout
from nets.errors import CpnError
from router.wire import Leased

log = logging.getLogger("cpn.worker")

ROLES: Final = ("fetch", "parse", "store")
QUEUE_OF: Final = {"fetch": "fetch_queue", "parse": "parse_queue", "store": "store_queue"}
BATCH_OF: Final = {"fetch": 1, "parse": 1, "store": 32}
# Lanes per shard: a fetch lease carries one token, so several lanes keep leases in
# flight at once (the shard answers them in one commit) and fetches are leased in time.
LANES_PER_SHARD: Final = {"fetch": 4, "parse": 1, "store": 1}
CONCURRENCY_DEFAULT: Final = {"fetch": 32, "parse": 1, "store": 1}
IDLE_MS_MIN: Final = 2
# Fetch and parse are on the crawl's critical path (a parsed page is how the next URLs
# of a host are found), so their workers look again within 20 ms; the store is not.
IDLE_MS_MAX_OF: Final = {"fetch": 20, "parse": 20, "store": 100}
REQUEST_TIMEOUT_MS: Final = 1_500
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

    def __post_init__(self) -> None:
        assert self.role in ROLES, self.role


class ShardLane:
    """One shard's leases and completions, on a thread and a client of their own."""

    def __init__(self, connect: Callable[[], ClusterClient], shard_id: int) -> None:
        self._connect = connect
        self.shard_id = shard_id
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"lane-{shard_id}")
        self._client: ClusterClient | None = None  # created and used on the lane's thread

    def _with_client(self, call: Callable[[ClusterClient], T]) -> T:
        if self._client is None:
            self._client = self._connect()
        try:
            return call(self._client)
        except ShardError:
            raise  # the shard answered: the client is fine
        except CpnError:
            # Unreachable shard or router: start afresh next time (the router may have
            # moved; for_data_dir reads where it is now).
            self._drop_client()
            raise

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def run(self, call: Callable[[ClusterClient], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._with_client, call)

    async def lease(self, place: str, *, max_tokens: int, lease_ms: int) -> Leased:
        k = self.shard_id
        return await self.run(lambda c: c.lease(k, place, max_tokens=max_tokens, lease_ms=lease_ms))

    async def complete(self, lease_id: str, results: Sequence[tuple[str, Sequence[Any]]]) -> None:
        k = self.shard_id
        await self.run(lambda c: c.complete(k, lease_id, results))

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._drop_client)
        self._executor.shutdown(wait=True)


Handler = Callable[[Sequence[tuple[int, tuple[Any, ...]]]], Awaitable[list[tuple[str, Any]]]]


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
                endpoint, timeout_ms=REQUEST_TIMEOUT_MS, retries=1
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
                layout.root, timeout_ms=REQUEST_TIMEOUT_MS, retries=1
            )
        self.place = QUEUE_OF[config.role]
        self.batch = BATCH_OF[config.role]
        self.concurrency = config.concurrency or CONCURRENCY_DEFAULT[config.role]
        self.idle_ms_max = IDLE_MS_MAX_OF[config.role]
        self.counters: Counter[str] = Counter()
        self.stopping = asyncio.Event()
        self._fetcher: Fetcher | None = None
        self._timings: IO[str] | None = None
        self._store: PageStore | None = None
        self._fault = os.environ.get(FAULT_ENV, "")
        self._store_delay_s = int(os.environ.get(SLOW_STORE_ENV, "0") or 0) / 1000
        self._handler: Handler = {
            "fetch": self._fetch,
            "parse": self._parse,
            "store": self._store_pages,
        }[config.role]

    # -- the handlers ---------------------------------------------------------------------

    async def _fetch(self, entries: Sequence[tuple[int, tuple[Any, ...]]]) -> list[tuple[str, Any]]:
        assert self._fetcher is not None
        results: list[tuple[str, Any]] = []
        for _time_ms, job in entries:
            outcome = await self._fetcher.fetch(job)
            self.counters["late" if outcome.timing is None else "sent"] += 1
            if outcome.timing is not None and self._timings is not None:
                self._timings.write(json.dumps(outcome.timing.to_json()) + "\n")
                self._timings.flush()
            results.append(("fetched", outcome.fetched))
        return results

    async def _parse(self, entries: Sequence[tuple[int, tuple[Any, ...]]]) -> list[tuple[str, Any]]:
        results: list[tuple[str, Any]] = []
        for _time_ms, page in entries:
            results += parse_results(page)
            self.counters["parsed"] += 1
        return results

    async def _store_pages(
        self, entries: Sequence[tuple[int, tuple[Any, ...]]]
    ) -> list[tuple[str, Any]]:
        assert self._store is not None
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
        lanes = [
            ShardLane(self._connect, k)
            for k in range(self.shards)
            for _ in range(LANES_PER_SHARD[role])
        ]
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
        pollers = [asyncio.create_task(self._poll(lane, slots, working)) for lane in lanes]
        try:
            await self.stopping.wait()
        finally:
            for poller in pollers:
                poller.cancel()
            await asyncio.gather(*pollers, return_exceptions=True)
            if working:
                await asyncio.wait(working, timeout=STOP_GRACE_S)
            for task in working:
                task.cancel()
            for lane in lanes:
                await lane.close()
            if self._fetcher is not None:
                await self._fetcher.aclose()
            if self._timings is not None:
                self._timings.close()
            if self._store is not None:
                self._store.close()
            log.info("%s worker stopped: %s", role, dict(sorted(self.counters.items())))

    async def _poll(
        self, lane: ShardLane, slots: asyncio.Semaphore, working: set[asyncio.Task[None]]
    ) -> None:
        idle_ms = IDLE_MS_MIN
        while not self.stopping.is_set():
            await slots.acquire()
            leased: Leased | None = None
            try:
                leased = await lane.lease(
                    self.place, max_tokens=self.batch, lease_ms=self.config.lease_ms
                )
            except CpnError as exc:
                self.counters["lease_errors"] += 1
                log.info("shard %d: no lease (%s)", lane.shard_id, exc)
                idle_ms = self.idle_ms_max
            if leased is None or not leased.entries:
                slots.release()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), idle_ms / 1000)
                idle_ms = min(idle_ms * 2, self.idle_ms_max)
                continue
            idle_ms = IDLE_MS_MIN
            self.counters["leased"] += len(leased.entries)
            task = asyncio.create_task(self._work(lane, leased, slots))
            working.add(task)
            task.add_done_callback(working.discard)

    async def _work(self, lane: ShardLane, leased: Leased, slots: asyncio.Semaphore) -> None:
        try:
            results = await self._handler(leased.entries)
            await self._complete(lane, leased, results)
        except CpnError as exc:
            # Not completed: the lease expires and its tokens are leased again.
            self.counters["work_errors"] += 1
            log.warning("shard %d lease %s: %s", lane.shard_id, leased.lease_id, exc)
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
    started = time.monotonic()
    asyncio.run(Worker(config).run())
    log.info("ran %.1f s", time.monotonic() - started)
