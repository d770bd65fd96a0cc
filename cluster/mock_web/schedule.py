"""A reference schedule of a crawl of the mock web (issue 17): what an ideal crawler does.

Not a lower bound. :mod:`cluster.mock_web.bounds` gives lower bounds, and they let every
failing URL's chain of attempts start as soon as the URL is known, as if the crawler knew
beforehand which pages will fail. No crawler knows that: it learns it by trying. The
schedule here is a *crawl*, one that a real crawler could run, with no overhead at all and
a stated rule for what goes first, so our crawler's span over it says how much of the
distance to the bound is our overhead and how much is the price of not knowing.

Theory of operation
-------------------
:func:`crawl_plan` turns a site and its :class:`~cluster.mock_web.site.CrawlExpectation`
into a :class:`CrawlPlan` (every URL asked, how many attempts it takes, the links its last
attempt's answer shows, each host's gap); :func:`schedule` simulates, in integer
milliseconds, a crawler that

* knows the seeds at 0 and a URL only once a page linking to it has been answered (the
  successful attempt of a stored HTML page shows its links); a URL is asked once
  (its attempts aside), a URL robots.txt disallows never;
* asks a host's robots.txt first, as soon as it knows the host's first URL, and none of
  the host's pages before that answer;
* starts a host's requests at least the host's gap apart (the larger of the delay and
  its ``Crawl-delay``), one at a time (the next start no sooner than the previous
  answer), and with ``anchored`` no sooner than the gap + 1 ms after the previous answer
  (the net's answer anchor, docs/scraper.md "Politeness");
* gets every answer one latency after its start;
* releases a failed attempt n's retry (n from 0) at its answer plus the larger of the
  backoff ``backoff_base_ms`` x 2**n and the answer's ``Retry-After``, the rule of
  ``retry_delay_ms`` in nets/scraper.py and of the expectation's retried URLs;
* has at most ``cap`` requests in flight (start to answer) over all hosts;
* wastes no time: whenever a host may start and has a released request, and the cap has
  room, the request starts then. Which one, among the host's released requests, is the
  :class:`QueueOrder`: ``fresh-first`` (never-tried URLs, in the order they were found,
  before due retries), ``retry-first`` (due retries, oldest release first, before fresh
  URLs) or ``fifo`` (all by release time; a fresh URL's release is its discovery).

The simulation is a SimPy-style event loop over a heap keyed by (time, kind, sequence):
answers before wake-ups at one time, so that a request may start in the same millisecond
as the answer that freed its host or the cap, or that made its URL known; the sequence
makes the order total. Where the cap is short, hosts are served in the order their
wake-ups were queued. :func:`schedule` returns the span (first start to last answer) and
every request's start.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from cluster.mock_web.site import ROBOTS_PATH, CrawlExpectation, PageKind, PageRef, SiteModel

# Bounds every loop: a plan's requests, each of them at most a few events of its own,
# and each answer one wake for every host the cap held back (at most all of them).
EVENTS_PER_REQUEST_MAX: Final = 8


class QueueOrder(enum.Enum):
    """Which of a host's released requests starts when the host may start one."""

    FRESH_FIRST = "fresh-first"
    RETRY_FIRST = "retry-first"
    FIFO = "fifo"


@dataclass(frozen=True)
class UrlPlan:
    """One URL as the crawl meets it: ``attempts`` (0: disallowed, never asked), the
    ``Retry-After`` its failed answers ask (ms), and the links its last attempt shows."""

    attempts: int
    retry_after_ms: int = 0
    links: tuple[PageRef, ...] = ()


@dataclass(frozen=True)
class CrawlPlan:
    """Everything the schedule needs: the seeds, every URL the crawl can meet, and each
    host's gap between starts in ms (``gap_ms[host]``)."""

    seeds: tuple[PageRef, ...]
    urls: Mapping[PageRef, UrlPlan] = field(repr=False)
    gap_ms: tuple[int, ...]

    def requests(self) -> int:
        """Requests the crawl sends: every attempt, and robots.txt of each host met."""
        hosts = {ref.host for ref in self.urls}
        return sum(url.attempts for url in self.urls.values()) + len(hosts)


@dataclass(frozen=True)
class ScheduledRequest:
    host: int
    path: str
    attempt: int  # 0 for the first try
    start_ms: int


@dataclass(frozen=True)
class Schedule:
    """The span, from the first start to the last answer, and every request's start in
    the order they started."""

    span_ms: int
    requests: tuple[ScheduledRequest, ...]


def crawl_plan(
    site: SiteModel,
    expectation: CrawlExpectation,
    *,
    delay_ms: int,
    seeds: Iterable[int] | None = None,
) -> CrawlPlan:
    """The plan of a crawl of ``site`` from the roots of ``seeds`` (all hosts when None)
    keeping ``delay_ms`` (or a host's longer Crawl-delay); ``expectation`` is
    ``site.expected_crawl(...)`` for the same seeds (which URLs are asked, how often)."""
    roots = tuple(PageRef(h, "/") for h in (range(site.hosts) if seeds is None else seeds))
    urls: dict[PageRef, UrlPlan] = {}
    pending = list(roots)
    while pending:
        ref = pending.pop()
        if ref in urls:
            continue
        if ref not in expectation.final_status:  # disallowed by robots.txt: never asked
            urls[ref] = UrlPlan(attempts=0)
            continue
        attempts, retry_after_ms = expectation.retried.get(ref, (1, 0))
        page = site.page(ref)
        links: tuple[PageRef, ...] = ()
        if ref in expectation.stored and page is not None and page.kind is PageKind.HTML:
            links = tuple(dict.fromkeys(link.target for link in page.links))
        urls[ref] = UrlPlan(attempts, retry_after_ms, links)
        pending += [target for target in links if target not in urls]
    gaps = tuple(max(delay_ms, d or 0) for d in expectation.crawl_delay_ms)
    return CrawlPlan(seeds=roots, urls=urls, gap_ms=gaps)


@dataclass
class _Host:
    """A host's state during the simulation (private, mutated only by :func:`schedule`)."""

    known: bool = False
    robots_answered: bool = False
    busy: bool = False
    next_start_ms: int = 0
    # Fresh URLs (discovery ms, sequence, path) in the order found; due retries as a heap
    # of (release ms, sequence, path, attempt).
    fresh: deque[tuple[int, int, str]] = field(default_factory=deque)
    retries: list[tuple[int, int, str, int]] = field(default_factory=list)


_ANSWER: Final = 0  # at one time, answers go before wake-ups
_WAKE: Final = 1


def schedule(
    plan: CrawlPlan,
    *,
    latency_ms: int,
    backoff_base_ms: int = 0,
    cap: int,
    order: QueueOrder,
    anchored: bool = False,
) -> Schedule:
    """Simulate the ideal crawler of the module docstring on ``plan``.

    Args:
        latency_ms: from a request's start to its answer.
        backoff_base_ms: retry n + 1 waits at least this x 2**n after attempt n's answer.
        cap: requests in flight at once over all hosts, >= 1.
        order: which released request of a host goes first.
        anchored: also start no sooner than the host's gap + 1 ms after its last answer.

    Returns:
        The span and every request's start; every URL of the plan is asked its attempts.
    """
    assert cap >= 1, cap
    assert latency_ms >= 0, latency_ms
    hosts = [_Host() for _ in plan.gap_ms]
    known: set[PageRef] = set()
    events: list[tuple[int, int, int, int, str, int]] = []  # (ms, kind, seq, host, path, n)
    sequence = 0
    in_flight = 0
    blocked: list[int] = []  # hosts that could start but for the cap, in order
    started: list[ScheduledRequest] = []
    last_answer_ms = 0

    def next_sequence() -> int:
        nonlocal sequence
        sequence += 1
        return sequence

    def push(at_ms: int, kind: int, host: int, path: str = "", attempt: int = 0) -> None:
        heapq.heappush(events, (at_ms, kind, next_sequence(), host, path, attempt))

    def discover(ref: PageRef, at_ms: int) -> None:
        if ref in known:
            return
        known.add(ref)
        host = hosts[ref.host]
        if not host.known:  # its first URL: robots.txt goes first
            host.known = True
            host.fresh.append((at_ms, -1, ROBOTS_PATH))
            push(at_ms, _WAKE, ref.host)
        if plan.urls[ref].attempts == 0:
            return
        host.fresh.append((at_ms, next_sequence(), ref.path))
        if host.robots_answered:
            push(at_ms, _WAKE, ref.host)

    def pick(host: _Host, now_ms: int) -> tuple[str, int] | None:
        """The request ``host`` starts at ``now_ms`` (path, attempt), taken off its queue."""
        if not host.robots_answered:
            if host.fresh and host.fresh[0][2] == ROBOTS_PATH:
                host.fresh.popleft()
                return ROBOTS_PATH, 0
            return None
        retry_due = bool(host.retries) and host.retries[0][0] <= now_ms
        if not host.fresh and not retry_due:
            return None
        take_retry = retry_due and (
            not host.fresh
            or order is QueueOrder.RETRY_FIRST
            or (order is QueueOrder.FIFO and host.retries[0][:2] < host.fresh[0][:2])
        )
        if take_retry:
            _, _, path, attempt = heapq.heappop(host.retries)
            return path, attempt
        return host.fresh.popleft()[2], 0

    def try_start(index: int, now_ms: int) -> None:
        nonlocal in_flight
        host = hosts[index]
        if host.busy or now_ms < host.next_start_ms:
            return
        if in_flight >= cap:
            if index not in blocked:
                blocked.append(index)
            return
        chosen = pick(host, now_ms)
        if chosen is None:
            return
        path, attempt = chosen
        host.busy = True
        host.next_start_ms = now_ms + plan.gap_ms[index]
        in_flight += 1
        started.append(ScheduledRequest(index, path, attempt, now_ms))
        push(now_ms + latency_ms, _ANSWER, index, path, attempt)

    for ref in plan.seeds:
        discover(ref, 0)
    events_max = (EVENTS_PER_REQUEST_MAX + len(plan.gap_ms)) * (plan.requests() + 1)
    for _ in range(events_max):
        if not events:
            break
        now_ms, kind, _, index, path, attempt = heapq.heappop(events)
        if kind == _WAKE:
            try_start(index, now_ms)
            continue
        host = hosts[index]
        in_flight -= 1
        host.busy = False
        last_answer_ms = max(last_answer_ms, now_ms)
        gap_ms = plan.gap_ms[index]
        if anchored:
            host.next_start_ms = max(host.next_start_ms, now_ms + gap_ms + 1)
        push(max(now_ms, host.next_start_ms), _WAKE, index)
        # The cap has room again: every host it held back tries, in the order they were
        # held back (one that still finds the cap full queues again).
        for waiting in blocked:
            push(now_ms, _WAKE, waiting)
        blocked.clear()
        if path == ROBOTS_PATH:
            host.robots_answered = True
            continue
        url = plan.urls[PageRef(index, path)]
        if attempt + 1 < url.attempts:
            release_ms = now_ms + max(backoff_base_ms << attempt, url.retry_after_ms)
            heapq.heappush(host.retries, (release_ms, next_sequence(), path, attempt + 1))
            push(release_ms, _WAKE, index)
            continue
        for target in url.links:
            discover(target, now_ms)
    assert not events, f"schedule: more than {events_max} events"
    assert all(not h.fresh and not h.retries and not h.busy for h in hosts), "requests left"
    assert len(started) == plan.requests(), (len(started), plan.requests())
    first_ms = min((r.start_ms for r in started), default=0)
    return Schedule(span_ms=last_answer_ms - first_ms, requests=tuple(started))
