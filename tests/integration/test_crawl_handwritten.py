"""The hand-written baseline crawler (bench/crawl_handwritten.py) crawls the mock web right.

Only what does not depend on timing is checked: the pages stored (exactly those a perfect
polite crawl stores, once each), robots.txt first and obeyed, retries, and proxies used.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.crawl_handwritten import HandwrittenCrawler
from cluster.mock_web.proxy import MockProxies
from cluster.mock_web.site import PageRef, SiteConfig, SiteModel
from cluster.mock_web.web import MockWeb
from nets.scraper import CrawlPolicy

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0


def _crawl(crawler: HandwrittenCrawler, seeds: tuple[str, ...]) -> None:
    asyncio.run(asyncio.wait_for(crawler.crawl(seeds), TIMEOUT_S))


@pytest.mark.parametrize("proxies", [0, 2])
def test_it_stores_every_reachable_page_once_and_obeys_robots(
    seed: int, tmp_path: Path, proxies: int
) -> None:
    site = SiteModel(SiteConfig(hosts=3, pages_per_host=8, seed=seed, failing_fraction=0.3))
    expectation = site.expected_crawl(attempts_max=4)
    out = tmp_path / "pages.jsonl"
    with MockWeb(site, latency_ms=1) as web, MockProxies(max(proxies, 1)) as running:
        urls = running.urls[:proxies]
        policy = CrawlPolicy(delay_ms=20, backoff_base_ms=20, proxies=urls, proxy_interval_ms=5)
        crawler = HandwrittenCrawler(policy, out)
        _crawl(crawler, web.seeds())
        # The web and each proxy record a request after its answer is written, so the
        # crawl can end a moment before they have counted its last one: wait for them.
        total = sum(expectation.requests_per_host)
        assert web.wait_requests(total, timeout_s=TIMEOUT_S)
        assert running.wait_requests(total if proxies else 0, timeout_s=TIMEOUT_S)
        records = web.requests()
        proxied = running.statistics().requests
        expected = web.expected_urls(expectation)
    stored = [json.loads(line)["url"] for line in out.read_text().splitlines()]
    assert sorted(stored) == sorted(expected)
    statistics = crawler.statistics()
    assert statistics.stored == len(expected)
    # Every 503 was retried (the failures, 2, are fewer than the attempts, 4).
    pages = [site.page(ref) for ref in expectation.final_status]
    assert statistics.retries == sum(page.failures for page in pages if page is not None)
    assert statistics.skipped.get("robots", 0) == len(expectation.skipped_by_robots)
    for host in range(site.hosts):
        paths = [r.path for r in records if r.host == host]
        assert paths[0] == "/robots.txt" and paths.count("/robots.txt") == 1
        assert all(site.is_allowed(PageRef(host, path)) for path in paths)
    assert len(records) == total
    assert proxied == (total if proxies else 0)
