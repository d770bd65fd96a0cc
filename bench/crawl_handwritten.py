"""The crawler's policy written by hand: one asyncio process, dicts, heaps and queues.

This is the baseline ``bench/crawl.py`` measures the crawler net (``nets/scraper.py``)
against: the same policy (``CrawlPolicy``, the same knobs) coded directly, as a competent
engineer would without a net, crawling the same mock web for real. It does its effects
with the very code the cluster's workers use, so that only the coordination differs:
``cluster.crawler.fetch.Fetcher`` (httpx: the wait for the start time, the late rule,
timeouts, size limit, proxies), ``cluster.crawler.parse.parse_page`` (``html.parser``),
``cluster.crawler.store.PageStore`` (the page file, once per URL), the canonical URLs of
``cluster.crawler.urls`` and the robots.txt readers of ``nets.scraper``.

The policy, rule by rule as the net's docstring states it:

* **Admission.** A link is admitted once per canonical URL (``_seen``); then, in the
  net's order: deeper than ``max_depth`` -> skipped "depth"; outside the scope ->
  "scope"; a new domain gets its state and a robots.txt target first, and its links wait
  for the rules; no budget left -> "budget"; disallowed by robots.txt -> "robots"; else
  a target (priority = depth) and one page less of budget.
* **Scheduling.** A target starts when its domain has a free slot (``concurrency``), its
  clock is due and a proxy is (both ``lead_ms`` early), and fewer than ``fetching_max``
  fetches are in flight. Targets go robots first, then shallowest, then by URL. The start
  is ``max(now + lead, domain clock, proxy clock)``; the domain's clock moves to ``start
  + gap`` (``gap`` = max(delay, Crawl-delay) + late allowance + safety margin), the
  proxy's to ``start + interval + late + margin`` (directly: no interval). The fetcher
  refuses to send later than ``start + late_ms`` ("late": back to the targets, no
  attempt counted), so no two starts at a host come closer than the delay.
* **Results.** robots.txt: 200 -> its rules (and the clock re-timed for its
  Crawl-delay), transient failure -> retry, then "disallow all"; other answers -> allow
  all. Pages: 2xx HTML -> the pipeline; 2xx other or too large -> skipped; transient
  (timeout, connection, proxy, reset, 5xx, 408, 429) -> retry after ``backoff_base_ms *
  2**attempt`` until ``max_attempts``, then a final failure; any other status -> final.
* **Pipeline** raw_html -> parse -> parsed -> validate -> validated -> store: bounded
  queues and a fixed number of workers per stage, so a slow stage blocks the one before
  it, and a fetch holds its domain slot until its page fits into ``raw_html``.
* **The end.** Every admitted item (a waiting link, a target, a page in the pipeline) is
  counted open until its story ends; the crawl ends when none is.

Its size is the figure ``handwritten_lines`` of ``bench/crawl.py``: every line of this
file that is not blank, a comment or a docstring (see ``bench.crawl.logic_lines``);
since all effects are imported, those lines are its scheduling and coordination logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

from cluster.crawler.fetch import Fetcher, FetchSettings, wall_ms
from cluster.crawler.parse import parse_page
from cluster.crawler.store import PageStore, page_record
from cluster.crawler.urls import canonical_url, domain_of, robots_url
from nets.scraper import ROBOTS_REDIRECTS_MAX, CrawlPolicy, crawl_delay_ms, robots_allows

ROBOTS, PAGE = "robots", "page"
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
TRANSIENT_ERRORS = frozenset({"timeout", "connect", "reset", "proxy"})
DISALLOW_ALL = "User-agent: *\nDisallow: /\n"

# Store tasks: the net's storing_max when this baseline was written. The net's capacity
# grew to 64 so that a store worker's lease can be full; here each task is one PageStore
# with its own descriptor and copy of the stored ids, so the baseline keeps its 16.
STORE_TASKS: Final = 16


class Target(NamedTuple):
    """Ordered as the net orders its targets: robots (-1) first, then depth, then URL."""

    priority: int
    url: str
    kind: str
    depth: int
    attempt: int


@dataclass
class DomainState:
    name: str
    gap_ms: int
    free: int  # request slots left
    budget: int  # pages it may still admit
    next_start_ms: int = 0
    delay_ms: int = 0  # max(delay, Crawl-delay)
    after_ms: int = 0  # no start before: one delay after the last answer
    robots: str | None = None  # None until robots.txt is known
    waiting: list[tuple[str, int]] = field(default_factory=list)  # (url, depth) for robots
    targets: list[Target] = field(default_factory=list)  # heap
    cooling: list[tuple[int, Target]] = field(default_factory=list)  # heap of retries


@dataclass
class Proxy:
    next_start_ms: int
    name: str
    url: str
    interval_ms: int

    def __lt__(self, other: Proxy) -> bool:
        return (self.next_start_ms, self.name) < (other.next_start_ms, other.name)


@dataclass(frozen=True)
class CrawlStatistics:
    stored: int
    skipped: dict[str, int]
    failures: int  # final ones
    retries: int
    late: int
    decisions: int  # admissions, starts, verdicts and pipeline steps


class HandwrittenCrawler:
    """Crawls from ``seeds`` into the JSON Lines file ``out`` under ``policy``."""

    def __init__(
        self,
        policy: CrawlPolicy,
        out: Path,
        *,
        allow: Sequence[str] = (),
        fetch_settings: FetchSettings | None = None,
    ) -> None:
        self.policy = policy
        self._out = out
        self._allow = {domain.lower() for domain in allow}
        self._settings = fetch_settings or FetchSettings(
            user_agent=policy.user_agent, body_max_bytes=policy.body_max_bytes
        )
        p = policy
        self._proxies = [Proxy(0, f"proxy{i:03d}", url, p.proxy_interval_ms) for i, url in
                         enumerate(p.proxies)] or [Proxy(0, "direct", "", 0)]  # fmt: skip
        self._domains: dict[str, DomainState] = {}
        self._seen: set[str] = set()
        self._in_flight = 0
        self._open = 0
        self._raw_html: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(p.raw_html_max)
        self._parsed: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(p.parsed_max)
        self._validated: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(p.validated_max)
        self._wakeup = asyncio.Event()
        self._done = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._skipped: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        self._error: BaseException | None = None

    def statistics(self) -> CrawlStatistics:
        c = self._counts
        return CrawlStatistics(c["stored"], dict(sorted(self._skipped.items())), c["failures"],
                               c["retries"], c["late"], c["decisions"])  # fmt: skip

    async def crawl(self, seeds: Sequence[str]) -> CrawlStatistics:
        """Crawl until every admitted URL is stored, skipped or failed; the statistics."""
        p = self.policy
        roots = [canonical_url(seed) for seed in seeds]
        if p.scope == "same-domains":
            self._allow |= {domain_of(url) for url in roots}
        for url in roots:
            self._admit(url, 0)
        fetcher = Fetcher(self._settings)
        # Without fsync, as the store workers of a cluster with durability "process".
        stores = [PageStore(self._out, durable=False) for _ in range(STORE_TASKS)]
        workers = [self._parse_worker() for _ in range(p.parsing_max)]
        workers += [self._validate_worker(), *(self._store_worker(s) for s in stores)]
        background = [self._spawn(w) for w in workers]
        try:
            await self._dispatch(fetcher)
            if self._error is not None:
                raise self._error
        finally:
            for task in background + list(self._tasks):
                task.cancel()
            await asyncio.gather(*background, *self._tasks, return_exceptions=True)
            await fetcher.aclose()
            for store in stores:
                store.close()
        return self.statistics()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task whose failure ends the crawl (rather than leaving it waiting forever)."""
        task = asyncio.create_task(work)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()
            self._done.set()
            self._wakeup.set()

    # -- admission ------------------------------------------------------------------------

    def _begin(self) -> None:
        self._open += 1

    def _end(self) -> None:
        self._open -= 1
        assert self._open >= 0
        if self._open == 0:
            self._done.set()
            self._wakeup.set()

    def _skip(self, reason: str) -> None:
        self._skipped[reason] += 1
        self._end()

    def _admit(self, url: str, depth: int) -> None:
        self._counts["decisions"] += 1
        if url in self._seen:
            return
        self._seen.add(url)
        self._begin()
        domain = domain_of(url)
        p = self.policy
        if depth > p.max_depth:
            self._skip("depth")
        elif p.scope != "any" and domain not in self._allow:
            self._skip("scope")
        else:
            state = self._domains.get(domain)
            if state is None:
                state = DomainState(domain, p.gap_ms(), p.concurrency, p.max_pages_per_domain)
                state.delay_ms = p.delay_ms
                self._domains[domain] = state
                self._begin()
                heapq.heappush(state.targets, Target(-1, robots_url(url), ROBOTS, 0, 0))
            state.waiting.append((url, depth))
            self._release_waiting(state)

    def _release_waiting(self, state: DomainState) -> None:
        """Decide the links that wait for their domain's budget or robots.txt."""
        keep = []
        for url, depth in state.waiting:
            if state.budget <= 0:
                self._skip("budget")
            elif state.robots is None:
                keep.append((url, depth))
            elif not robots_allows(state.robots, url, self.policy.user_agent):
                self._skip("robots")
            else:
                state.budget -= 1
                heapq.heappush(state.targets, Target(depth, url, PAGE, depth, 0))
        state.waiting = keep
        self._wakeup.set()

    # -- scheduling -----------------------------------------------------------------------

    async def _dispatch(self, fetcher: Fetcher) -> None:
        while not self._done.is_set():
            wake_ms = self._start_due(fetcher, wall_ms())
            self._wakeup.clear()
            timeout_s = None if wake_ms is None else max(0, wake_ms - wall_ms()) / 1000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout_s)

    def _start_due(self, fetcher: Fetcher, now: int) -> int | None:
        """Start every fetch that may start now; returns when to look again (None: on
        an event only)."""
        lead = self.policy.lead_ms
        wake: list[int] = []
        for state in sorted(self._domains.values(), key=lambda s: (s.next_start_ms, s.name)):
            while state.cooling and state.cooling[0][0] <= now:
                heapq.heappush(state.targets, heapq.heappop(state.cooling)[1])
            if state.cooling:
                wake.append(state.cooling[0][0])
            while state.targets and state.free and self._in_flight < self.policy.fetching_max:
                due_ms = (
                    max(state.next_start_ms, self._proxies[0].next_start_ms, state.after_ms) - lead
                )
                if due_ms > now:
                    wake.append(due_ms)
                    break
                self._start(fetcher, state, now)
        return min(wake, default=None)

    def _start(self, fetcher: Fetcher, state: DomainState, now: int) -> None:
        p = self.policy
        target = heapq.heappop(state.targets)
        proxy = self._proxies[0]
        start_ms = max(now + p.ready_ms, state.next_start_ms, proxy.next_start_ms, state.after_ms)
        state.next_start_ms = start_ms + state.gap_ms
        if proxy.interval_ms:
            proxy.next_start_ms = start_ms + proxy.interval_ms + p.late_ms + p.margin_ms
        heapq.heapreplace(self._proxies, proxy)
        state.free -= 1
        self._in_flight += 1
        self._counts["decisions"] += 1
        job = (state.name, target.url, target.kind, target.depth, target.attempt, proxy.name,
               proxy.url, start_ms, p.late_ms)  # fmt: skip
        self._tasks.add(self._spawn(self._fetch(fetcher, state, target, job)))

    async def _fetch(
        self, fetcher: Fetcher, state: DomainState, target: Target, job: tuple[Any, ...]
    ) -> None:
        try:
            outcome = await fetcher.fetch(job)
            await self._on_result(state, target, outcome.fetched)
        finally:
            state.free += 1
            self._in_flight -= 1
            self._wakeup.set()

    # -- results --------------------------------------------------------------------------

    async def _on_result(self, state: DomainState, target: Target, r: tuple[Any, ...]) -> None:
        (_, url, kind, attempt, status, error, final_url, content_type, body, started_ms,
         answered_ms, proxy, retry_at_ms) = r  # fmt: skip
        p = self.policy
        self._counts["decisions"] += 1
        if answered_ms:
            state.after_ms = max(state.after_ms, answered_ms + state.delay_ms + 1)
        # Retry-After, capped as the net caps it: a 429 holds the host, a 503 the URL.
        if retry_at_ms:
            retry_at_ms = min(retry_at_ms, answered_ms + p.retry_after_max_ms)
            if status == 429 and not error:
                state.after_ms = max(state.after_ms, retry_at_ms)
        if error == "late":
            self._counts["late"] += 1
            heapq.heappush(state.targets, target)
            return
        ok = not error and 200 <= status < 300
        transient = error in TRANSIENT_ERRORS if error else status >= 500 or status in {408, 429}
        redirect = not error and 300 <= status < 400 and final_url not in ("", url)
        same_host = redirect and domain_of(final_url) == state.name
        if kind == ROBOTS and same_host and target.depth < ROBOTS_REDIRECTS_MAX:
            # Up to five redirects on the host (RFC 9309); the rules found are its own.
            heapq.heappush(state.targets, Target(-1, final_url, ROBOTS, target.depth + 1, 0))
        elif transient and attempt + 1 < p.max_attempts:
            self._counts["retries"] += 1
            ready_ms = max(wall_ms() + (p.backoff_base_ms << attempt), retry_at_ms)
            retry = target._replace(attempt=attempt + 1)
            heapq.heappush(state.cooling, (ready_ms, retry))
        elif kind == ROBOTS:
            state.robots = body if ok else DISALLOW_ALL if transient else ""
            state.delay_ms = max(p.delay_ms, crawl_delay_ms(state.robots, p.user_agent))
            state.gap_ms = p.gap_ms(state.delay_ms)
            state.next_start_ms = max(state.next_start_ms, started_ms + state.gap_ms)
            self._release_waiting(state)
            self._end()
        elif redirect:
            self._admit(final_url, target.depth)
            self._skip("redirect")
        elif ok and content_type in HTML_TYPES:
            page = (state.name, url, target.depth, attempt, proxy, status, final_url,
                    content_type, started_ms, body)  # fmt: skip
            await self._raw_html.put(page)
        elif ok or error == "too_large":
            self._skip("too_large" if error else "not_html")
        else:
            self._counts["failures"] += 1
            self._end()

    # -- pipeline -------------------------------------------------------------------------

    async def _parse_worker(self) -> None:
        while True:
            page = await self._raw_html.get()
            found = parse_page(page[9], page[6] or page[1])
            for link in found.links:
                self._admit(link, page[2] + 1)
            self._counts["decisions"] += 1
            await self._parsed.put((*page[:9], found.title, found.links_found))

    async def _validate_worker(self) -> None:
        while True:
            parsed = await self._parsed.get()
            self._counts["decisions"] += 1
            if 200 <= parsed[5] < 300 and parsed[7] in HTML_TYPES and parsed[6]:
                await self._validated.put(parsed)
            else:
                self._skip("invalid")

    async def _store_worker(self, store: PageStore) -> None:
        while True:
            parsed = await self._validated.get()
            store.write([page_record(parsed)])
            self._counts["decisions"] += 1
            self._counts["stored"] += 1
            self._end()


def crawl(
    policy: CrawlPolicy, seeds: Sequence[str], out: Path, *, allow: Sequence[str] = ()
) -> CrawlStatistics:
    """Run a whole hand-written crawl in a fresh event loop."""
    return asyncio.run(HandwrittenCrawler(policy, out, allow=allow).crawl(seeds))
