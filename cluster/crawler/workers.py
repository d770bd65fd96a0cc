"""The crawler's workers, written on the worker SDK (SHELL).

``cpn worker --role fetch|parse|store --data CLUSTER_DIR`` runs one of them against the
cluster in ``CLUSTER_DIR`` (its net must be the crawler's, ``nets.scraper:net``); it is
``cpn worker run`` (:mod:`cluster.sdk.runner`) with the crawler's settings:

* ``fetch`` leases ``fetch_queue``, waits for the start time and GETs the URL (the late
  rule, :mod:`cluster.crawler.fetch`), parses an HTML page right away
  (:func:`cluster.crawler.parse.fetched_results`), and completes with a ``fetched``
  token and the page's ``links``; four
  long polls wait on each shard (a fetch lease carries one token, so a burst of
  fetches decided in one batch is leased at once);
* ``parse`` leases ``parse_queue`` (pages a fetch worker did not parse), extracts the
  title and the links (:mod:`cluster.crawler.parse`), and completes with ``parse_done``
  and ``links`` tokens;
* ``store`` leases ``store_queue`` 32 tokens at a time, appends each page's JSON
  record once (flock + fsync, :mod:`cluster.crawler.store`) with one fsync for the
  lease, and completes with ``store_done`` tokens (a lease of fewer pages
  ``STORE_GATHER_MS`` later, so that the next one gathers more).

Everything else (every shard, long polls, heartbeats, retries, draining on SIGTERM) is
the SDK's. **Fault points** for tests: ``CPN_FAULT=store_after_write`` SIGKILLs a store
worker right after its first write reached the file, before it completes the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cluster.crawler.fetch import Fetcher, FetchSettings, wall_ms
from cluster.crawler.metrics import CrawlCounts
from cluster.crawler.parse import fetched_results, parse_results
from cluster.crawler.store import PageStore, page_record
from cluster.sdk.context import current
from cluster.sdk.runner import RunOptions, Target, connect_to, run
from cluster.sdk.spec import Output, WorkerEnv, WorkerSpec, to
from cluster.sdk.target import target_for
from nets.errors import CpnError
from router.shell.metrics import METRICS_DEFAULT

log = logging.getLogger("cpn.worker")

ROLES: Final = ("fetch", "parse", "store")
CONCURRENCY_DEFAULT: Final = {"fetch": 32, "parse": 1, "store": 1}
# A fetch's answer (or its timeout) comes at least this long before its lease ends,
# so that its result is completed in time (see _within_lease).
LEASE_END_MARGIN_MS: Final = 1_000
# A fetch lease outlasts the fetch's deadline (twice its timeout) by at least this: the
# lead of its decision, its late limit and the margin above.
FETCH_LEASE_SLACK_MS: Final = 5_000
FETCH_DEPTH: Final = 3
FETCH_START_AT: Final = 7  # Fetch(domain, url, kind, depth, attempt, proxy, proxy_url,
FETCH_LATE: Final = 8  #       start_at_ms, late_ms): the fields the lease rule reads
STORE_BATCH: Final = 32
# Pages reach store_queue one by one as their fetches end, and a lease waits for
# nothing, so a store lease carried one page: a lease, a completion and two shard turns
# a page. After a lease of fewer than STORE_BATCH pages, written and flushed, the store
# worker holds it this long before completing it, so that the pages arriving meanwhile
# make the next lease (docs/scraper.md, "CPU per process"). Its cost: the net hears of
# the stored pages that much later (the file has them at once).
STORE_GATHER_MS: Final = 50
# Links a fetch worker remembers having delivered (then it forgets them all and starts
# again): a bound on its memory, far above a crawl's links on one worker.
DELIVERED_LINKS_MAX: Final = 1_000_000
FAULT_ENV: Final = "CPN_FAULT"
SLOW_STORE_ENV: Final = "CPN_STORE_DELAY_MS"  # tests: a deliberately slow store stage


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """One crawl worker's settings. It finds its cluster by ``data_dir`` (a local ``cpn
    up`` directory) or, on a host of its own, by ``router_endpoint`` and ``shards`` (the
    cluster file's, ``cpn worker --config``) with the net's ``params``."""

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
    metrics: str = METRICS_DEFAULT  # /metrics HOST:PORT or "off" (cluster/sdk/metrics.py)
    metrics_file: Path | None = None  # where the /metrics URL is written
    allow_remote: bool = False  # a non-loopback metrics address is allowed

    def __post_init__(self) -> None:
        assert self.role in ROLES, self.role


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


def fetch_worker(
    settings: FetchSettings,
    lease_ms: int,
    timings: Path | None,
    counts: CrawlCounts | None = None,
) -> WorkerSpec:
    """The fetch worker: one Fetcher (an aiohttp session per route) for the process;
    ``counts`` counts its fetches (cluster/crawler/metrics.py)."""
    state: dict[str, Any] = {}
    deadline_ms = int(settings.timeout_s * 2 * 1000)  # see Fetcher.fetch
    # The links of completions the shards took (committed). The net admits a URL once
    # (`seen`) and drops every later link to it, so such a link is left out of later
    # completions: most links of a page are to pages found before, and each would cost
    # the shard a firing (`drop_seen`). Only committed ones: a link of a completion
    # that was refused or lost comes again when its fetch is leased again.
    delivered: set[str] = set()

    def completed(results: tuple[tuple[str, tuple[Any, ...]], ...]) -> None:
        if len(delivered) >= DELIVERED_LINKS_MAX:
            delivered.clear()
        delivered.update(str(fields[1]) for place, fields in results if place == "links")

    @contextlib.asynccontextmanager
    async def lifespan(env: WorkerEnv) -> AsyncIterator[None]:
        fetcher = Fetcher(
            FetchSettings(
                user_agent=str(env.params.get("user_agent", settings.user_agent)),
                body_max_bytes=int(env.params.get("body_max_bytes", settings.body_max_bytes)),
                timeout_s=settings.timeout_s,
                connect_timeout_s=settings.connect_timeout_s,
            )
        )
        fetcher.prepare([str(url) for url in env.params.get("proxies") or []])
        await fetcher.warm_up()
        log_file = timings.open("a", encoding="utf-8") if timings is not None else None
        state.update(fetcher=fetcher, timings=log_file)
        try:
            yield
        finally:
            await fetcher.aclose()
            if log_file is not None:
                log_file.close()

    async def fetch(job: tuple[Any, ...]) -> list[Output]:
        leased_ms = wall_ms()  # the lease's arrival: the trace of a domain's requests
        job = _within_lease(job, current().expires_at_ms, deadline_ms)
        if counts is not None:
            counts.waited((job[FETCH_START_AT] - wall_ms()) / 1000)
        outcome = await state["fetcher"].fetch(job)
        if counts is not None:
            fetched = outcome.fetched  # Fetched(domain, url, kind, attempt, status, error, ...)
            counts.fetched(fetched[2], fetched[3], fetched[4], fetched[5])
        log_file = state["timings"]
        if outcome.timing is not None and log_file is not None:
            # When the fetch was leased and when it was to start: with the send and
            # the answer, where a request's time goes (docs/scraper.md, "Per request").
            trace = {"leased_ms": leased_ms, "start_at_ms": job[FETCH_START_AT]}
            log_file.write(json.dumps(outcome.timing.to_json() | trace) + "\n")
            log_file.flush()
        # Parsed here, on the loop: a page takes a millisecond or two, less than the hop
        # through the net and a parse worker's lease it saves its links.
        results = fetched_results(outcome.fetched, job[FETCH_DEPTH])
        return [
            to(place, fields)
            for place, fields in results
            if place != "links" or fields[1] not in delivered
        ]

    return WorkerSpec(
        fetch, "fetch_queue", concurrency=CONCURRENCY_DEFAULT["fetch"], lease_ms=lease_ms,
        polls_per_shard=4, lifespan=lifespan, name="fetch", on_completed=completed,
    )  # fmt: skip


async def _parse(page: tuple[Any, ...]) -> list[Output]:
    # Async although it never awaits: a parse takes a millisecond or two, less than a
    # hop to the thread pool and back would, and one at a time is the role's default.
    return [to(place, fields) for place, fields in parse_results(page)]


def parse_worker(lease_ms: int) -> WorkerSpec:
    """The parse worker: pure work, run on the worker's event loop."""
    return WorkerSpec(
        _parse, "parse_queue", concurrency=CONCURRENCY_DEFAULT["parse"], lease_ms=lease_ms,
        name="parse",
    )  # fmt: skip


def store_worker(out: Path, durable: bool, lease_ms: int) -> WorkerSpec:
    """The store worker: a lease of up to 32 pages written with one fsync."""
    state: dict[str, PageStore] = {}
    fault = os.environ.get(FAULT_ENV, "")
    delay_s = int(os.environ.get(SLOW_STORE_ENV, "0") or 0) / 1000

    @contextlib.asynccontextmanager
    async def lifespan(_env: WorkerEnv) -> AsyncIterator[None]:
        state["store"] = PageStore(out, durable=durable)
        try:
            yield
        finally:
            state["store"].close()

    async def store(pages: Sequence[tuple[Any, ...]]) -> list[Output]:
        if delay_s:
            await asyncio.sleep(delay_s * len(pages))
        summary = state["store"].write(page_record(parsed) for parsed in pages)
        if fault == "store_after_write" and summary.written:
            log.warning("fault point store_after_write: killing myself (pid %d)", os.getpid())
            os.kill(os.getpid(), signal.SIGKILL)
        if len(pages) < STORE_BATCH:
            await asyncio.sleep(STORE_GATHER_MS / 1000)
        return [to("store_done", (parsed[0], parsed[1])) for parsed in pages]

    return WorkerSpec(
        store, "store_queue", batch=STORE_BATCH, many=True,
        concurrency=CONCURRENCY_DEFAULT["store"], lease_ms=lease_ms, lifespan=lifespan,
        name="store",
    )  # fmt: skip


def role_worker(config: WorkerConfig, counts: CrawlCounts | None = None) -> WorkerSpec:
    """The spec of ``config.role``'s worker (a fetch worker counts into ``counts``)."""
    if config.role == "fetch":
        return fetch_worker(config.fetch, config.lease_ms, config.timings, counts)
    if config.role == "parse":
        return parse_worker(config.lease_ms)
    if config.out is None:
        raise CpnError("a store worker needs --out FILE (the JSON Lines output)")
    return store_worker(config.out, config.durable, config.lease_ms)


def run_worker(config: WorkerConfig) -> None:
    """``cpn worker --role``: run one crawl worker until SIGTERM or SIGINT.

    Raises:
        CpnError: no cluster in the directory, or the output file cannot be opened.
    """
    # httpx logs every request at INFO: thousands of lines, and CPU, for nothing new
    # (the fetch timings log has them).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    counts = CrawlCounts()
    spec = role_worker(config, counts)
    if config.data_dir is None:
        target = Target(
            connect_to(config.router_endpoint),
            config.shards,
            _crawler_net(config.params),
            dict(config.params),
        )
    else:
        target = target_for(config.data_dir, params=config.params)
    options = RunOptions(
        concurrency=config.concurrency,
        ready_file=config.ready_file,
        metrics=config.metrics,
        metrics_file=config.metrics_file,
        allow_remote=config.allow_remote,
        extra_metrics=counts.families if config.role == "fetch" else None,
    )
    run(spec, target, options)


def _crawler_net(params: Mapping[str, Any]) -> Any:
    from nets.loader import load_net  # noqa: PLC0415 - the net is built once, here

    return load_net("nets.scraper:net", params=params)
