"""The online lower bound of a crawl of the mock web (issue 17).

:meth:`cluster.mock_web.site.CrawlExpectation.politeness_lower_bound_ms` starts every
retried URL's chain of attempts right after its host's robots.txt, as if the crawler
knew every URL at the start. A real crawler learns a URL only from the answer of a page
that links to it (a seed it knows at once). :func:`online_lower_bound_ms` keeps that
rule and is still a lower bound for *any* crawler that keeps the politeness delay, asks
robots.txt first and retries as the expectation says:

1. **Earliest discovery** (a shortest path over the link graph): a seed is known at 0;
   a URL is known no sooner than the earliest answer of a stored page that links to
   it. A host's robots.txt cannot be asked before the host's first URL is known, and
   no page of the host before that robots.txt has been answered (one latency later, at
   least the host's delay after its start).
2. **Each attempt's release**: a URL's first attempt no sooner than both; attempt n + 1
   no sooner than attempt n's start plus the larger of the delay and the latency plus
   the wait its answer asks (the larger of the backoff ``backoff_base_ms`` x 2**n and
   the ``Retry-After``). A page's successful attempt is answered one latency after its
   release, at the earliest: that is when its links become known (step 1).
3. **One host at a time**: a host's requests (robots.txt, every attempt) start at least
   its delay (or its Crawl-delay) apart. With a release time for each and equal gaps,
   starting them in the order of their release times ends earliest (the single-machine
   schedule with release dates and equal lengths), so its last start plus one latency
   bounds the host's last answer.

The bound is the largest over hosts. Every release is an earliest time computed without
any other host's or request's interference, so each is no later than in a real crawl.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from cluster.mock_web.site import CrawlExpectation, PageKind, PageRef, SiteModel


def online_lower_bound_ms(
    site: SiteModel,
    expectation: CrawlExpectation,
    *,
    delay_ms: int,
    latency_ms: int,
    backoff_base_ms: int = 0,
    seeds: Iterable[int] | None = None,
) -> int:
    """The fastest a crawl of ``site`` from the roots of ``seeds`` (all hosts when None)
    that learns URLs only from fetched pages can end (see the module docstring):
    milliseconds from its first request to its last answer. ``expectation`` is
    ``site.expected_crawl(...)`` for the same seeds (which URLs are asked, how often)."""

    def gap_ms(host: int) -> int:
        return max(delay_ms, expectation.crawl_delay_ms[host] or 0)

    known: dict[PageRef, int] = {}  # URL -> earliest discovery
    robots_ms: dict[int, int] = {}  # host -> earliest start of its robots.txt
    releases: dict[int, list[int]] = {host: [] for host in range(site.hosts)}
    roots = [PageRef(h, "/") for h in (range(site.hosts) if seeds is None else seeds)]
    frontier = [(0, ref) for ref in roots]
    heapq.heapify(frontier)
    while frontier:
        found_ms, ref = heapq.heappop(frontier)
        if ref in known:
            continue
        known[ref] = found_ms
        host = ref.host
        if host not in robots_ms:  # the host's first known URL: its robots.txt goes first
            robots_ms[host] = found_ms
            releases[host].append(found_ms)
        if ref not in expectation.final_status:
            continue  # disallowed by robots.txt: never asked
        attempts, retry_after_ms = expectation.retried.get(ref, (1, 0))
        release_ms = max(found_ms, robots_ms[host] + max(gap_ms(host), latency_ms))
        for n in range(attempts):
            releases[host].append(release_ms)
            if n + 1 < attempts:
                wait_ms = latency_ms + max(backoff_base_ms << n, retry_after_ms)
                release_ms += max(gap_ms(host), wait_ms)
        page = site.page(ref)
        if ref in expectation.stored and page is not None and page.kind is PageKind.HTML:
            answered_ms = release_ms + latency_ms  # the successful attempt: its links
            for link in page.links:
                if link.target not in known:
                    heapq.heappush(frontier, (answered_ms, link.target))
    bound_ms = 0
    for host, starts in releases.items():
        assert len(starts) == expectation.requests_per_host[host], host
        last_ms = None
        for release_ms in sorted(starts):
            last_ms = release_ms if last_ms is None else max(release_ms, last_ms + gap_ms(host))
        if last_ms is not None:
            bound_ms = max(bound_ms, last_ms + latency_ms)
    return bound_ms
