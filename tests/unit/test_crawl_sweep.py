"""The sweep's pure parts (bench/crawl_sweep.py): which points run, the bound at a point,
the excess over a cap, duplicates at the server and the last line's keys. No process is
started and Scrapy is not needed."""

from __future__ import annotations

import dataclasses

from bench.crawl_sweep import (
    BOUND_S_MAX,
    CANDIDATES,
    CAP,
    MAX_ATTEMPTS,
    OUR_QUEUE_ORDER,
    QUICK_CANDIDATES,
    RATE_MAX_PER_S,
    SWEEP_JSON_KEYS,
    CrawlerRun,
    SweepPoint,
    eligible,
    over_cap,
    point_bound_ms,
    server_duplicates,
    summary,
)
from cluster.mock_web.log import RequestRecord
from cluster.mock_web.schedule import QueueOrder
from nets.scraper import crawler_net

MS = 1_000_000


def record(host: int, path: str, start_ms: int, end_ms: int, status: int = 200) -> RequestRecord:
    return RequestRecord(
        host=host, netloc=f"127.0.1.{host + 1}:80", method="GET", path=path,
        start_ns=start_ms * MS, end_ns=end_ms * MS, start_wall_ms=start_ms, status=status,
        client="127.0.0.1:1", bytes_sent=0,
        attempt=1,
    )  # fmt: skip


def test_points_span_the_issues_ranges_within_its_limits() -> None:
    points = eligible(CANDIDATES)
    assert SweepPoint(100, 10, 20) in CANDIDATES and SweepPoint(100, 10, 20) not in points
    assert SweepPoint(40, 25, 50) in points, "the issue's own web"
    assert all(p.rate_per_s <= RATE_MAX_PER_S for p in points)
    assert {min(p.delay_ms for p in points), max(p.delay_ms for p in points)} == {20, 1_000}
    assert {min(p.hosts for p in points), max(p.hosts for p in points)} == {5, 200}
    assert {min(p.pages for p in points), max(p.pages for p in points)} == {10, 100}
    assert len(eligible(QUICK_CANDIDATES)) >= 3
    for point in points:
        assert point.retry_after_fraction > 0
        expectation = point.site().expected_crawl(attempts_max=MAX_ATTEMPTS)
        assert point_bound_ms(point, expectation) <= BOUND_S_MAX * 1000
        assert expectation.retried, f"{point.label()}: no failing or Retry-After page"


def test_the_bound_is_the_larger_of_politeness_and_the_cap() -> None:
    point = SweepPoint(200, 10, 250)
    expectation = point.site().expected_crawl(attempts_max=MAX_ATTEMPTS)
    politeness = expectation.politeness_lower_bound_ms(
        delay_ms=point.delay_ms, latency_ms=point.latency_ms, backoff_base_ms=100
    )
    requests = sum(expectation.requests_per_host)
    assert point_bound_ms(point, expectation) == max(politeness, -(-requests * 10 // CAP))
    assert point_bound_ms(point, expectation, cap=1) == max(politeness, requests * 10)


def test_over_cap_counts_the_larger_excess_over_the_global_and_the_host_cap() -> None:
    apart = [record(h, "/", 0, 10) for h in range(3)]
    assert over_cap(apart, cap=3) == 0
    assert over_cap(apart, cap=1) == 2
    same_host = [record(0, "/", 0, 10), record(0, "/a", 5, 15)]
    assert over_cap(same_host, cap=16) == 1
    back_to_back = [record(0, "/", 0, 10), record(0, "/a", 10, 20)]  # half-open intervals
    assert over_cap(back_to_back, cap=1) == 0
    assert over_cap([], cap=1) == 0


def test_a_url_asked_again_after_a_2xx_is_a_duplicate_a_retry_is_not() -> None:
    retried = [record(0, "/", 0, 10, 503), record(0, "/", 100, 110, 200)]
    assert server_duplicates(retried) == 0
    assert server_duplicates([*retried, record(0, "/", 200, 210)]) == 1


def run(name: str, span_ms: int, wall_s: float, cpu_s: float, **kw: int) -> CrawlerRun:
    figures = {"violations": 0, "duplicates": 0, "missing": 0, "over_cap": 0} | kw
    return CrawlerRun(
        name=name, wall_s=wall_s, startup_s=wall_s / 10, span_ms=span_ms, bound_ms=1_000,
        pages=100, requests=120, cpu_s=cpu_s, **figures,
    )  # fmt: skip


def test_the_last_line_takes_the_ratios_at_the_worst_point() -> None:
    pairs = [
        (run("ours", 1_100, 3.0, 1.0), run("scrapy", 1_500, 4.0, 2.0, violations=9)),
        (run("ours", 1_400, 5.0, 3.0, over_cap=1), run("scrapy", 900, 4.0, 2.0)),
    ]
    figures = summary(pairs)
    assert tuple(figures) == SWEEP_JSON_KEYS
    assert figures["worst_span_over_bound"] == 1.4
    assert figures["worst_span_over_online_bound"] == 1.4, "no online bound: the bound"
    assert figures["worst_span_over_schedule"] == 1.4, "no schedule: the bound"
    assert figures["worst_wall_over_scrapy"] == 1.25
    assert figures["cpu_over_scrapy"] == 1.5
    assert figures["violations"] == 0, "ours only"
    assert figures["over_cap"] == 1
    assert figures["startup_s"] == 0.5


def test_the_polite_scrapys_keys_come_last_at_our_worst_point() -> None:
    pairs = [
        (run("ours", 1_100, 3.0, 1.0), run("scrapy", 500, 2.0, 2.0, violations=9)),
        (run("ours", 1_400, 5.0, 3.0), run("scrapy", 600, 2.5, 2.0, violations=30)),
    ]
    polite = [
        run("scrapy-polite", 1_200, 6.0, 2.0),
        run("scrapy-polite", 1_300, 4.0, 2.4, violations=2),
    ]
    figures = summary(pairs, polite=polite)
    assert tuple(figures) == SWEEP_JSON_KEYS
    # After the keys before them (another key may be added at the end beside them).
    at = SWEEP_JSON_KEYS.index("worst_wall_over_polite_scrapy")
    assert at > SWEEP_JSON_KEYS.index("worst_span_over_online_bound")
    assert SWEEP_JSON_KEYS[at : at + 3] == (
        "worst_wall_over_polite_scrapy", "cpu_over_polite_scrapy", "polite_scrapy_violations",
    )  # fmt: skip
    assert figures["worst_wall_over_polite_scrapy"] == 1.25, "at point 2, ours 5.0 / 4.0"
    assert figures["cpu_over_polite_scrapy"] == 1.25
    assert figures["polite_scrapy_violations"] == 2, "summed over the points"
    assert figures["worst_wall_over_scrapy"] == 2.0, "the impolite Scrapy's key unchanged"
    assert figures["violations"] == 0, "ours only"
    without = summary(pairs)
    assert tuple(without) == SWEEP_JSON_KEYS
    assert without["polite_scrapy_violations"] is None, "not run: null, not 0"


def test_the_worst_span_over_the_schedule_is_the_last_key_and_a_max_over_points() -> None:
    pairs = [
        (dataclasses.replace(run("ours", 1_100, 3.0, 1.0), schedule_ms=1_000),
         run("scrapy", 1_500, 4.0, 2.0)),
        (dataclasses.replace(run("ours", 1_400, 5.0, 3.0), schedule_ms=1_300),
         run("scrapy", 900, 4.0, 2.0)),
    ]  # fmt: skip
    figures = summary(pairs)
    assert list(figures)[-1] == SWEEP_JSON_KEYS[-1] == "worst_span_over_schedule"
    assert figures["worst_span_over_schedule"] == 1.1, "the point with less span over bound"


def test_the_schedule_the_sweep_compares_with_is_the_order_the_net_takes() -> None:
    # One scraping transition: the engine takes the target due longest (fifo). A second
    # one of higher priority for retries (or for fresh pages) is another order.
    scraping = [t for t in crawler_net().transitions if t.name.startswith("scrape")]
    assert [t.name for t in scraping] == ["scrape"]
    assert OUR_QUEUE_ORDER is QueueOrder.FIFO
