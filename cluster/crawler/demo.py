"""``cpn demo``: the crawler on an embedded mock web, checked from the server's side (SHELL).

Starts the mock web in a child process (:mod:`cluster.mock_web.child` serving
:mod:`cluster.mock_web.web`: dozens of loopback hosts with robots.txt,
latency, a seeded failure schedule, a host that resets connections, a 50 MB page, and
non-HTML files), crawls it with :class:`cluster.crawler.crawl.Crawl` from every host's root, and
adds to the crawl's report what only the server can measure: politeness violations in
the mock web's own request log (two request starts at one host closer than its delay;
must be 0), the most requests one host served at once, the pages a perfect crawl
stores against those stored, and the crawl's wall time against the politeness lower
bound (:meth:`cluster.mock_web.site.CrawlExpectation.politeness_lower_bound_ms`).

Wall time here runs from the first request the mock web received to the last record
written to the output file (its modification time) or the last answer, whichever is
later (a crawl whose last requests are retries that end in failures ends with them);
start-up is reported separately.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cluster.crawler.crawl import Crawl, CrawlOptions
from cluster.crawler.report import CrawlReport, file_pages
from cluster.mock_web.child import read_requests, serve_in_child
from cluster.mock_web.log import max_concurrency, politeness_violations
from cluster.mock_web.site import SiteConfig, SiteModel
from cluster.mock_web.web import REQUESTS_FILE

MAX_ATTEMPTS: int = 4  # the crawler net's default (nets/scraper.py CrawlPolicy)
BACKOFF_BASE_MS: int = 100


@dataclass(frozen=True)
class DemoOptions:
    hosts: int = 30
    pages: int = 15
    seed: int = 1
    latency_ms: int = 10
    delay_ms: int = 100
    failing_fraction: float = 0.1
    retry_after_fraction: float = 0.0  # pages that always answer 503 with Retry-After
    retry_after_s: int = 1
    oversized_bytes: int = 50 * 1024 * 1024
    reset_host: bool = True
    shards: int = 2
    fetch_workers: int = 2
    parse_workers: int = 0  # the fetch workers parse every page (one is started if not)
    store_workers: int = 1
    out: Path | None = None
    data_dir: Path | None = None
    timeout_ms: int = 300_000
    net_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoResult:
    report: CrawlReport
    expected_pages: int
    missing: int
    unexpected: int
    violations: int
    max_concurrency: int
    requests: int
    wall_ms: int
    bound_ms: int

    def lines(self) -> Iterator[str]:
        yield from self.report.lines()
        yield "  the mock web's own measurement:"
        yield (
            f"    requests served:        {self.requests:,}; politeness violations: "
            f"{self.violations} (must be 0); most at once per host: {self.max_concurrency}"
        )
        yield (
            f"    pages a perfect crawl stores: {self.expected_pages:,}; missing: "
            f"{self.missing}, unexpected: {self.unexpected}"
        )
        ratio = self.wall_ms / self.bound_ms if self.bound_ms else 0.0
        yield (
            f"    wall time {self.wall_ms / 1000:.2f} s (first request to last record) vs "
            f"politeness lower bound {self.bound_ms / 1000:.2f} s: {ratio:.2f}x"
        )


def run_demo(options: DemoOptions, *, stderr: TextIO | None = None) -> DemoResult:
    """Serve the mock web, crawl it, measure; everything started is stopped again."""
    config = SiteConfig(
        hosts=options.hosts,
        pages_per_host=options.pages,
        seed=options.seed,
        failing_fraction=options.failing_fraction,
        retry_after_fraction=options.retry_after_fraction,
        retry_after_s=options.retry_after_s,
        reset_host=options.reset_host,
        oversized_body_bytes=options.oversized_bytes,
    )
    site = SiteModel(config)
    with tempfile.TemporaryDirectory(prefix="cpn-demo-") as scratch:
        out = options.out or Path(scratch) / "pages.jsonl"
        # The mock web runs in a child process (its threads here would keep the crawl
        # from forking its cluster and workers: seconds of start-up); its request log is
        # read once it has stopped, and the site model is rebuilt here from its config.
        web_dir = Path(scratch) / "web"
        with serve_in_child(config, latency_ms=options.latency_ms, out=web_dir) as web:
            crawl = Crawl(
                CrawlOptions(
                    seeds=web.seeds(),
                    out=out,
                    shards=options.shards,
                    fetch_workers=options.fetch_workers,
                    parse_workers=options.parse_workers,
                    store_workers=options.store_workers,
                    delay_ms=options.delay_ms,
                    data_dir=options.data_dir,
                    net_params={"backoff_base_ms": BACKOFF_BASE_MS, **options.net_params},
                    timeout_ms=options.timeout_ms,
                    fetch_timeout_ms=5_000,
                ),
                stderr=stderr,
            )
            report = crawl.run()
        records = read_requests(web_dir / REQUESTS_FILE)
        attempts = int(options.net_params.get("max_attempts", MAX_ATTEMPTS))
        expectation = site.expected_crawl(attempts_max=attempts)
        expected = web.expected_urls(expectation)
        stored, _duplicates = file_pages(out)
        gaps = {
            host: max(options.delay_ms, site.crawl_delay_ms(host) or 0)
            for host in range(site.hosts)
        }
        violations = politeness_violations(records, gaps)
        first_ms = min((r.start_wall_ms for r in records), default=0)
        last_record_ms = int(out.stat().st_mtime_ns // 1_000_000) if out.exists() else first_ms
        last_answer_ms = max(
            (r.start_wall_ms + (r.end_ns - r.start_ns) // 1_000_000 for r in records), default=0
        )
        last_ms = max(last_record_ms, last_answer_ms)
        bound = expectation.politeness_lower_bound_ms(
            delay_ms=options.delay_ms,
            latency_ms=options.latency_ms,
            backoff_base_ms=int(options.net_params.get("backoff_base_ms", BACKOFF_BASE_MS)),
        )
    return DemoResult(
        report=report,
        expected_pages=len(expected),
        missing=len(expected - stored),
        unexpected=len(stored - expected),
        violations=len(violations),
        max_concurrency=max(max_concurrency(records).values(), default=0),
        requests=len(records),
        wall_ms=max(0, last_ms - first_ms),
        bound_ms=bound,
    )
