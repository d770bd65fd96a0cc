"""The online lower bound of a mock-web crawl (cluster/mock_web/bounds.py): never above
what a crawler that learns URLs from the pages it fetches can do, never below the
retry-inclusive bound."""

from __future__ import annotations

import pytest

from cluster.mock_web.bounds import online_lower_bound_ms
from cluster.mock_web.site import CrawlExpectation, PageKind, PageRef, SiteConfig, SiteModel

ROBOTS = "/robots.txt"


def greedy_crawl_span_ms(
    site: SiteModel,
    expectation: CrawlExpectation,
    *,
    delay_ms: int,
    latency_ms: int,
    backoff_base_ms: int,
) -> int:
    """The span of one feasible crawl: at each step the request that can start earliest
    (robots.txt first at a host, a URL once a page linking to it was answered, starts
    at a host a delay apart, retries after their waits); its first request at 0."""
    gap = [max(delay_ms, d or 0) for d in expectation.crawl_delay_ms]
    free_ms = [0] * site.hosts
    robots_answered: list[int | None] = [None] * site.hosts
    pending: list[list[tuple[int, str, int]]] = [[(0, ROBOTS, 0)] for _ in range(site.hosts)]
    known = {PageRef(h, "/") for h in range(site.hosts)}
    for h in range(site.hosts):
        pending[h].append((0, "/", 0))
    last_ms = 0

    def start_of(h: int, item: tuple[int, str, int]) -> int | None:
        ready, path, _n = item
        if path != ROBOTS:
            if robots_answered[h] is None:
                return None
            ready = max(ready, robots_answered[h] or 0)
        return max(ready, free_ms[h])

    while any(pending):
        options = [
            (at, h, i)
            for h in range(site.hosts)
            for i, item in enumerate(pending[h])
            if (at := start_of(h, item)) is not None
        ]
        at, h, i = min(options)
        _ready, path, n = pending[h].pop(i)
        free_ms[h] = at + gap[h]
        answered = at + latency_ms
        last_ms = max(last_ms, answered)
        if path == ROBOTS:
            robots_answered[h] = answered
            continue
        ref = PageRef(h, path)
        attempts, retry_after_ms = expectation.retried.get(ref, (1, 0))
        if n + 1 < attempts:
            wait = max(gap[h], latency_ms + max(backoff_base_ms << n, retry_after_ms))
            pending[h].append((at + wait, path, n + 1))
            continue
        page = site.page(ref)
        if ref in expectation.stored and page is not None and page.kind is PageKind.HTML:
            for link in page.links:
                # A URL robots.txt disallows is never asked.
                if link.target not in known and link.target in expectation.final_status:
                    known.add(link.target)
                    pending[link.target.host].append((answered, link.target.path, 0))
    return last_ms


def site_of(seed: int, **overrides: object) -> SiteModel:
    config = {"hosts": 4, "pages_per_host": 12, "seed": seed, "retry_after_fraction": 0.1}
    return SiteModel(SiteConfig(**(config | overrides)))  # type: ignore[arg-type]


@pytest.mark.parametrize("delay_ms", [20, 100])
def test_the_online_bound_lies_between_the_retry_inclusive_bound_and_a_real_crawl(
    seed: int, delay_ms: int
) -> None:
    for offset in range(4):
        site = site_of(seed + offset)
        expectation = site.expected_crawl(attempts_max=3)
        online = online_lower_bound_ms(
            site, expectation, delay_ms=delay_ms, latency_ms=10, backoff_base_ms=100
        )
        retry_inclusive = expectation.politeness_lower_bound_ms(
            delay_ms=delay_ms, latency_ms=10, backoff_base_ms=100
        )
        feasible = greedy_crawl_span_ms(
            site, expectation, delay_ms=delay_ms, latency_ms=10, backoff_base_ms=100
        )
        assert retry_inclusive <= online <= feasible, seed + offset


def test_a_deep_page_waits_for_the_pages_above_it() -> None:
    # One host, no failures: each level of links costs at least a latency more than the
    # level above, so a deep site's bound is above (requests - 1) x delay + latency once
    # the delay is short next to the latency.
    site = SiteModel(
        SiteConfig(hosts=1, pages_per_host=30, seed=3, links_per_page=1, cross_links_per_page=0,
                   failing_fraction=0.0, private_host_fraction=0.0, non_html_fraction=0.0,
                   not_found_per_host=0, crawl_delay_host_fraction=0.0)
    )  # fmt: skip
    expectation = site.expected_crawl(attempts_max=1)
    deepest = max(page.depth for page in site.pages(0))
    assert deepest >= 3
    online = online_lower_bound_ms(site, expectation, delay_ms=1, latency_ms=50)
    # robots.txt answered, then the root, then one answer per level below it.
    assert online >= 50 + (deepest + 1) * 50
    assert online > expectation.politeness_lower_bound_ms(delay_ms=1, latency_ms=50)
