"""The reference schedule of a mock-web crawl (cluster/mock_web/schedule.py): tiny webs
computed by hand, its rules checked on every request of the sweep's webs, and never
below the online lower bound there."""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest

from bench.crawl_sweep import (
    BACKOFF_BASE_MS,
    CANDIDATES,
    CAP,
    MAX_ATTEMPTS,
    QUICK_CANDIDATES,
    SweepPoint,
    eligible,
    point_online_bound_ms,
)
from cluster.mock_web.schedule import (
    CrawlPlan,
    QueueOrder,
    Schedule,
    UrlPlan,
    crawl_plan,
    schedule,
)
from cluster.mock_web.site import ROBOTS_PATH, PageRef

ROOT = PageRef(0, "/")


def ref(path: str, host: int = 0) -> PageRef:
    return PageRef(host, path)


def one_host(urls: dict[str, UrlPlan], gap_ms: int = 100) -> CrawlPlan:
    return CrawlPlan(seeds=(ROOT,), urls={ref(p): u for p, u in urls.items()}, gap_ms=(gap_ms,))


def starts(result: Schedule) -> list[tuple[str, int, int]]:
    return [(r.path, r.attempt, r.start_ms) for r in result.requests]


def run(plan: CrawlPlan, order: QueueOrder, **kw: int | bool) -> Schedule:
    options: dict[str, int | bool] = {"latency_ms": 10, "cap": 16} | kw
    return schedule(plan, order=order, **options)  # type: ignore[arg-type]


def test_robots_first_then_each_url_once_it_is_linked_a_gap_apart() -> None:
    # robots.txt 0-10, the root at 100 (its gap after robots.txt) shows /a and /b at 110.
    plan = one_host({"/": UrlPlan(1, links=(ref("/a"), ref("/b"), ROOT)), "/a": UrlPlan(1),
                     "/b": UrlPlan(1)})  # fmt: skip
    result = run(plan, QueueOrder.FIFO)
    assert starts(result) == [(ROBOTS_PATH, 0, 0), ("/", 0, 100), ("/a", 0, 200), ("/b", 0, 300)]
    assert result.span_ms == 310


# The root shows /a, /b, /c, /d at 110; /a always fails (3 attempts, Retry-After 250 ms).
# /a: 200, answered 210, its retry released at 460; /b 300, /c 400. At 500 the host may
# start again with /d (fresh) and /a's retry (due) both ready.
CHAIN = {
    "/": UrlPlan(1, links=(ref("/a"), ref("/b"), ref("/c"), ref("/d"))),
    "/a": UrlPlan(3, retry_after_ms=250),
    "/b": UrlPlan(1),
    "/c": UrlPlan(1),
    "/d": UrlPlan(1),
}


def test_retry_first_keeps_a_known_chain_tight() -> None:
    result = run(one_host(CHAIN), QueueOrder.RETRY_FIRST)
    # /a#1 at 500 (answered 510, released 760), /d at 600, /a#2 at its release.
    assert starts(result)[-3:] == [("/a", 1, 500), ("/d", 0, 600), ("/a", 2, 760)]
    assert result.span_ms == 770


@pytest.mark.parametrize("order", [QueueOrder.FRESH_FIRST, QueueOrder.FIFO])
def test_fresh_first_and_fifo_try_the_page_found_before_the_retry_was_due(
    order: QueueOrder,
) -> None:
    result = run(one_host(CHAIN), order)
    # /d at 500, /a#1 at 600 (answered 610, released 860), /a#2 at 860.
    assert starts(result)[-3:] == [("/d", 0, 500), ("/a", 1, 600), ("/a", 2, 860)]
    assert result.span_ms == 870


def test_fresh_first_starts_an_unknown_chain_sooner() -> None:
    # /a and /c always fail (3 attempts, Retry-After 150 ms); nothing tells which before
    # their first try. /a at 200 (released 360), /b at 300; at 400 /c or /a's retry.
    plan = one_host({"/": UrlPlan(1, links=(ref("/a"), ref("/b"), ref("/c"))),
                     "/a": UrlPlan(3, retry_after_ms=150), "/b": UrlPlan(1),
                     "/c": UrlPlan(3, retry_after_ms=150)})  # fmt: skip
    retry_first = run(plan, QueueOrder.RETRY_FIRST)
    # /a#1 400, /c 500, /a#2 600, /c#1 700 (released 660), /c#2 860 (released 710 + 150).
    assert starts(retry_first)[-4:] == [("/c", 0, 500), ("/a", 2, 600), ("/c", 1, 700),
                                        ("/c", 2, 860)]  # fmt: skip
    assert retry_first.span_ms == 870
    fresh_first = run(plan, QueueOrder.FRESH_FIRST)
    # /c 400, /a#1 500, /c#1 600 (released 560), /a#2 700 (660), /c#2 800 (760).
    assert starts(fresh_first)[-5:] == [("/c", 0, 400), ("/a", 1, 500), ("/c", 1, 600),
                                        ("/a", 2, 700), ("/c", 2, 800)]  # fmt: skip
    assert fresh_first.span_ms == 810


def test_fifo_takes_a_retry_before_a_page_found_after_it_was_due() -> None:
    # /a fails once (Retry-After 50 ms: released at 260) and then shows /c; /b shows /d.
    # At 300: /b (found at 110) before the retry (260); at 400 the retry (260) before /d
    # (found at 310); at 500 /d (310) before /c (found at 410).
    plan = one_host({"/": UrlPlan(1, links=(ref("/a"), ref("/b"))),
                     "/a": UrlPlan(2, retry_after_ms=50, links=(ref("/c"),)),
                     "/b": UrlPlan(1, links=(ref("/d"),)), "/c": UrlPlan(1),
                     "/d": UrlPlan(1)})  # fmt: skip
    assert starts(run(plan, QueueOrder.FIFO))[2:] == [
        ("/a", 0, 200), ("/b", 0, 300), ("/a", 1, 400), ("/d", 0, 500), ("/c", 0, 600)
    ]  # fmt: skip
    assert starts(run(plan, QueueOrder.FRESH_FIRST))[3:] == [
        ("/b", 0, 300), ("/d", 0, 400), ("/a", 1, 500), ("/c", 0, 600)
    ]  # fmt: skip


def test_the_backoff_applies_when_longer_than_the_retry_after() -> None:
    plan = one_host({"/": UrlPlan(3)}, gap_ms=20)
    # Retry n waits max(backoff 100 x 2**n, 0) after attempt n's answer.
    result = run(plan, QueueOrder.FIFO, backoff_base_ms=100)
    assert starts(result) == [(ROBOTS_PATH, 0, 0), ("/", 0, 20), ("/", 1, 130), ("/", 2, 340)]


def test_the_cap_holds_the_other_hosts_back() -> None:
    plan = CrawlPlan(seeds=(ROOT, ref("/", 1)), urls={ROOT: UrlPlan(1), ref("/", 1): UrlPlan(1)},
                     gap_ms=(100, 100))  # fmt: skip
    assert run(plan, QueueOrder.FIFO).span_ms == 110  # both robots.txt at 0, roots at 100
    capped = run(plan, QueueOrder.FIFO, cap=1)
    # One in flight: host 1's robots.txt once host 0's is answered, its root at 110.
    assert [(r.host, r.path, r.start_ms) for r in capped.requests] == [
        (0, ROBOTS_PATH, 0), (1, ROBOTS_PATH, 10), (0, "/", 100), (1, "/", 110)
    ]  # fmt: skip
    assert capped.span_ms == 120


def test_a_cap_of_one_over_many_hosts_wakes_every_held_host_and_still_ends() -> None:
    # Each answer wakes every host the cap held back: events grow with the hosts, not
    # only with the requests (a bound of 8 events a request stopped this at 648).
    hosts = 40
    seeds = tuple(ref("/", h) for h in range(hosts))
    plan = CrawlPlan(seeds=seeds, urls={s: UrlPlan(1) for s in seeds}, gap_ms=(100,) * hosts)
    capped = run(plan, QueueOrder.FIFO, cap=1)
    assert len(capped.requests) == 2 * hosts  # a robots.txt and a root each
    assert capped.span_ms == 2 * hosts * 10  # one at a time, one latency each


def test_anchored_waits_the_gap_after_the_answer() -> None:
    plan = one_host({"/": UrlPlan(1, links=(ref("/a"),)), "/a": UrlPlan(1)})
    # The next start one gap + 1 ms after the previous answer: 111, then 222.
    assert starts(run(plan, QueueOrder.FIFO, anchored=True))[1:] == [("/", 0, 111), ("/a", 0, 222)]


def test_a_disallowed_url_is_never_asked_but_its_host_asks_robots_txt() -> None:
    private = ref("/private/1", host=1)
    plan = CrawlPlan(seeds=(ROOT,), urls={ROOT: UrlPlan(1, links=(private,)),
                                          private: UrlPlan(0)}, gap_ms=(100, 100))  # fmt: skip
    result = run(plan, QueueOrder.FIFO)
    assert [(r.host, r.path, r.start_ms) for r in result.requests] == [
        (0, ROBOTS_PATH, 0), (0, "/", 100), (1, ROBOTS_PATH, 110)
    ]  # fmt: skip
    assert plan.requests() == 3


def check_rules(plan: CrawlPlan, result: Schedule, *, latency_ms: int, cap: int) -> None:
    """Every rule of the module docstring, on every request of ``result``."""
    by_host: dict[int, list[int]] = defaultdict(list)
    attempts: dict[PageRef, list[int]] = defaultdict(list)
    robots_answer: dict[int, int] = {}
    for r in result.requests:
        by_host[r.host].append(r.start_ms)
        if r.path == ROBOTS_PATH:
            robots_answer[r.host] = r.start_ms + latency_ms
            continue
        assert r.start_ms >= robots_answer[r.host], r
        attempts[PageRef(r.host, r.path)].append(r.start_ms)
    for host, host_starts in by_host.items():
        spacing = max(plan.gap_ms[host], latency_ms)
        assert all(b - a >= spacing for a, b in itertools.pairwise(host_starts)), host
    for url, url_starts in attempts.items():
        wanted = plan.urls[url]
        assert len(url_starts) == wanted.attempts, url
        for n, (a, b) in enumerate(itertools.pairwise(url_starts)):
            wait = max(BACKOFF_BASE_MS << n, wanted.retry_after_ms)
            assert b >= a + latency_ms + wait, (url, n)
    events = sorted([(r.start_ms, 1) for r in result.requests] +
                    [(r.start_ms + latency_ms, -1) for r in result.requests])  # fmt: skip
    in_flight = 0
    for _at, step in events:
        in_flight += step
        assert in_flight <= cap


SWEEP_POINTS = (*eligible(QUICK_CANDIDATES), *eligible(CANDIDATES))


@pytest.mark.parametrize("point", SWEEP_POINTS, ids=lambda p: p.label())
def test_on_the_sweeps_webs_it_keeps_its_rules_and_never_beats_the_online_bound(
    point: SweepPoint,
) -> None:
    site = point.site()
    expectation = site.expected_crawl(attempts_max=MAX_ATTEMPTS)
    plan = crawl_plan(site, expectation, delay_ms=point.delay_ms)
    assert plan.requests() == sum(expectation.requests_per_host)
    # The larger of the online bound and the cap's (bench/crawl_sweep.py).
    bound = point_online_bound_ms(point, site, expectation)
    for order in QueueOrder:
        result = schedule(plan, latency_ms=point.latency_ms, backoff_base_ms=BACKOFF_BASE_MS,
                          cap=CAP, order=order)  # fmt: skip
        check_rules(plan, result, latency_ms=point.latency_ms, cap=CAP)
        assert result.span_ms >= bound, (order, result.span_ms, bound)
