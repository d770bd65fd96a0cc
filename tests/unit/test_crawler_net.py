"""The crawler net (nets/scraper.py) under virtual time, with workers simulated in-process.

The simulated workers do what the real ones do (lease, act, complete) against a small
fake web; each fetch "starts" exactly at its ``start_at_ms`` unless the test makes the
worker late. The policy is then checked from what the simulated servers saw.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest

from nets.engine import Engine
from nets.errors import NetDefinitionError
from nets.scraper import (
    DISALLOW_ALL,
    PAGE,
    ROBOTS,
    WORK_PLACES,
    CrawlPolicy,
    Fetch,
    Fetched,
    InScope,
    Link,
    ParseDone,
    StoreDone,
    crawl_delay_ms,
    crawler_net,
    net,
    robots_allows,
    verdict,
)

LATENCY_MS = 10


def tokens(engine: Engine, place: str) -> list[Any]:
    """The tokens of ``place`` (typed loosely: each place has its own colour)."""
    return [token for _time, token in engine.tokens(place)]


@dataclass
class FakeWeb:
    """Hosts ``h0..hN`` with pages ``/p/<i>``; page i links to i+1 and to the next host."""

    hosts: int = 3
    pages: int = 5
    robots: dict[str, str] = field(default_factory=dict)
    failing: dict[str, int] = field(default_factory=dict)  # url -> 503s before success
    statuses: dict[str, int] = field(default_factory=dict)  # url -> fixed status
    moved: dict[str, str] = field(default_factory=dict)  # url -> where a 301 points
    # url -> (status, Retry-After in ms, how many times it is answered so; -1: always)
    retry_after: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # (domain, url, start)
    served: Counter[str] = field(default_factory=Counter)
    wide: bool = False  # each root links to every page of its host

    def domain(self, h: int) -> str:
        return f"h{h}.test"

    def url(self, h: int, i: int) -> str:
        return f"http://{self.domain(h)}/p/{i}"

    def links(self, url: str) -> list[str]:
        host, i = url.split("/")[2], int(url.rsplit("/", 1)[1])
        h = int(host[1:].split(".")[0])
        found = [self.url((h + 1) % self.hosts, 0), f"http://{host}/private/{i}"]
        if i + 1 < self.pages:
            found.append(self.url(h, i + 1))
        if self.wide and i == 0:
            found += [self.url(h, j) for j in range(2, self.pages)]
        return found

    def answer(self, fetch: Fetch, started: int) -> Fetched:
        self.requests.append((fetch.domain, fetch.url, started))
        self.served[fetch.url] += 1
        n = self.served[fetch.url]
        if fetch.kind == ROBOTS:
            text = self.robots.get(fetch.domain, "User-agent: *\nDisallow: /private/\n")
            moved = fetch.url in self.moved
            return Fetched(
                fetch.domain,
                fetch.url,
                fetch.kind,
                fetch.attempt,
                301 if moved else 200,
                "",
                self.moved.get(fetch.url, fetch.url),
                "text/plain",
                "" if moved else text,
                started,
                started + LATENCY_MS,
                fetch.proxy,
            )
        status, after_ms, times = self.retry_after.get(fetch.url, (0, 0, 0))
        if times < 0 or n <= times:
            answered = started + LATENCY_MS
            return Fetched(fetch.domain, fetch.url, fetch.kind, fetch.attempt, status, "",
                           fetch.url, "text/plain", "", started, answered, fetch.proxy,
                           answered + after_ms)  # fmt: skip
        status = self.statuses.get(fetch.url, 503 if n <= self.failing.get(fetch.url, 0) else 200)
        if fetch.url in self.moved:
            status = 301
        return Fetched(
            fetch.domain,
            fetch.url,
            fetch.kind,
            fetch.attempt,
            status,
            "",
            self.moved.get(fetch.url, fetch.url),
            "text/html",
            "<html></html>" if status == 200 else "",
            started,
            started + LATENCY_MS,
            fetch.proxy,
        )


@dataclass
class Crawl:
    engine: Engine
    web: FakeWeb
    stored: list[str]
    late: set[str]
    leads_ms: list[int]  # for each fetch: its start minus when it was leased
    refused_at: dict[str, int]  # url -> when its late refusal was reported


def crawl(
    policy: CrawlPolicy,
    web: FakeWeb,
    *,
    seeds: int = 1,
    late_once: frozenset[str] = frozenset(),
    late_by_ms: int = 0,
    until_ms: int = 600_000,
) -> Crawl:
    """Run the net with simulated fetch, parse and store workers until no work is left.

    ``late_by_ms``: fetch workers send up to that late (seeded draws, within each
    fetch's late limit), as busy workers do.
    """
    engine = Engine(crawler_net(policy), initial_marking=True)
    lateness = random.Random(7)
    for h in range(seeds):
        engine.add("links", Link(web.domain(h), web.url(h, 0), 0))
    for h in range(web.hosts):
        engine.add("scope", InScope(web.domain(h)))
    stored: list[str] = []
    late: set[str] = set()
    leads_ms: list[int] = []
    refused_at: dict[str, int] = {}
    now = 0
    for _ in range(200_000):
        while engine.fire(now) is not None:
            pass
        worked = False
        for place in ("fetch_queue", "parse_queue", "store_queue"):
            entries: list[tuple[int, Any]] = engine.available(place, 1_000)
            for time_ms, token in entries:
                engine.remove(place, token, time=time_ms)
                worked = True
                if place == "fetch_queue":
                    leads_ms.append(token.start_at_ms - now)
                    started = token.start_at_ms + lateness.randint(
                        0, min(late_by_ms, token.late_ms)
                    )
                    if token.url in late_once and token.url not in late:
                        late.add(token.url)
                        refused_at[token.url] = max(now, token.start_at_ms)
                        result = Fetched(
                            token.domain,
                            token.url,
                            token.kind,
                            token.attempt,
                            0,
                            "late",
                            "",
                            "",
                            "",
                            now,
                            0,
                            token.proxy,
                        )
                        engine.add("fetched", result, time=max(now, started))
                        continue
                    engine.add("fetched", web.answer(token, started), time=started + LATENCY_MS)
                elif place == "parse_queue":
                    page: Any = token
                    engine.add("parse_done", ParseDone(page.domain, page.url, "t", 2), time=now)
                    for link in web.links(page.url):
                        domain = link.split("/")[2]
                        engine.add("links", Link(domain, link, page.depth + 1), time=now)
                else:
                    record: Any = token
                    stored.append(record.url)
                    engine.add("store_done", StoreDone(record.domain, record.url), time=now)
        if worked:
            continue
        deadline = engine.next_deadline()
        if deadline is None or deadline > until_ms:
            break
        now = max(now, deadline)
    left = {p: engine.tokens(p) for p in WORK_PLACES if p in engine.marking() and engine.count(p)}
    assert not left, left
    return Crawl(engine, web, stored, late, leads_ms, refused_at)


def gaps_by_domain(requests: list[tuple[str, str, int]]) -> dict[str, list[int]]:
    starts: dict[str, list[int]] = defaultdict(list)
    for domain, _url, start in requests:
        starts[domain].append(start)
    return {
        d: [b - a for a, b in zip(sorted(s), sorted(s)[1:], strict=False)]
        for d, s in starts.items()
    }


def test_every_reachable_page_is_stored_once_and_robots_first() -> None:
    web = FakeWeb()
    result = crawl(CrawlPolicy(delay_ms=100), web)
    expected = {web.url(h, i) for h in range(web.hosts) for i in range(web.pages)}
    assert sorted(result.stored) == sorted(expected)
    first: dict[str, str] = {}
    for domain, url, _start in web.requests:
        first.setdefault(domain, url)
    assert all(url.endswith("/robots.txt") for url in first.values())
    assert not any("/private/" in url for _d, url, _s in web.requests)
    skipped = Counter(t.reason for t in tokens(result.engine, "skipped"))
    assert skipped["robots"] == len(expected)  # every page links to one private page


def test_starts_at_a_domain_are_at_least_the_delay_apart() -> None:
    web = FakeWeb(pages=8)
    policy = CrawlPolicy(delay_ms=100)
    crawl(policy, web)
    for domain, gaps in gaps_by_domain(web.requests).items():
        # One delay after the previous *answer* (the server may log a start that late).
        assert min(gaps) >= policy.delay_ms + LATENCY_MS, domain
        # ... and not much more: the scheduler keeps the domain busy while work waits.
        assert sorted(gaps)[len(gaps) // 2] <= policy.gap_ms() + LATENCY_MS, (domain, gaps)


@pytest.mark.parametrize(
    ("policy", "late_limit_ms"),
    [
        (CrawlPolicy(delay_ms=100), CrawlPolicy().late_anchored_ms),
        (CrawlPolicy(delay_ms=100, concurrency=2), CrawlPolicy().late_ms),
        (
            CrawlPolicy(delay_ms=100, proxies=("http://127.0.0.1:1",), proxy_interval_ms=30),
            CrawlPolicy().late_ms,
        ),
    ],
    ids=["anchored", "concurrent", "proxy-interval"],
)
def test_late_sends_keep_the_gap_within_each_fetchs_late_limit(
    policy: CrawlPolicy, late_limit_ms: int
) -> None:
    """A fetch's late limit is wide (``late_anchored_ms``) only where the answer anchor
    alone keeps the gap: one request in flight per domain and no proxy interval. Workers
    sending as late as their limits allow never bring two starts closer than the delay."""
    web = FakeWeb(pages=8)
    crawl(policy, web, late_by_ms=400)
    for domain, gaps in gaps_by_domain(web.requests).items():
        assert min(gaps) >= policy.delay_ms, (domain, gaps)
    fetch = next(iter(_fetches(policy)))
    assert fetch.late_ms == late_limit_ms


def _fetches(policy: CrawlPolicy) -> list[Any]:
    """The first fetches the net decides for one seeded domain."""
    engine = Engine(crawler_net(policy), initial_marking=True)
    engine.add("links", Link("h0.test", "http://h0.test/p/0", 0))
    engine.add("scope", InScope("h0.test"))
    while engine.fire(0) is not None:
        pass
    return tokens(engine, "fetch_queue")


def test_crawl_delay_from_robots_widens_the_gap() -> None:
    web = FakeWeb(pages=4, robots={"h0.test": "User-agent: *\nCrawl-delay: 0.3\n"})
    crawl(CrawlPolicy(delay_ms=100), web, seeds=1)
    assert min(gaps_by_domain(web.requests)["h0.test"]) >= 300


def test_failures_retry_with_growing_backoff_and_stop_at_the_maximum() -> None:
    web = FakeWeb(hosts=1, pages=3)
    web.failing[web.url(0, 1)] = 2
    web.statuses[web.url(0, 2)] = 503  # never recovers
    policy = CrawlPolicy(delay_ms=100, max_attempts=3, backoff_base_ms=400)
    result = crawl(policy, web)
    assert web.served[web.url(0, 1)] == 3
    assert web.served[web.url(0, 2)] == 3
    assert web.url(0, 1) in result.stored and web.url(0, 2) not in result.stored
    starts = [s for _d, url, s in web.requests if url == web.url(0, 2)]
    waits = [b - a for a, b in itertools.pairwise(starts)]
    assert waits[0] >= 400 + LATENCY_MS and waits[1] >= 800 + LATENCY_MS
    failures = sorted((f.url, f.attempt, f.final) for f in tokens(result.engine, "fail_log"))
    assert (web.url(0, 2), 2, True) in failures
    assert [f for f in failures if f[0] == web.url(0, 1)] == [
        (web.url(0, 1), 0, False),
        (web.url(0, 1), 1, False),
    ]


def test_direct_slots_cap_every_request_robots_txt_included() -> None:
    """Six new domains at once want six robots.txt: two direct slots let two go at a time."""
    web = FakeWeb(hosts=6, pages=3)
    crawl(CrawlPolicy(delay_ms=100, direct_slots=2), web, seeds=6)
    events = sorted(
        [(start, 1) for _d, _u, start in web.requests]
        + [(start + LATENCY_MS, -1) for _d, _u, start in web.requests]
    )
    in_flight = list(itertools.accumulate(step for _t, step in events))
    assert max(in_flight) == 2
    assert len(web.requests) == 6 * (1 + 3)


def test_a_robots_txt_result_gives_its_direct_slot_back_at_once() -> None:
    """Its Crawl-delay re-times the domain's clock once the clock is due (``hold_clock``),
    but the result frees its direct slot at once: six new domains' robots.txt go out
    two at a time, back to back, not one pair per delay (they once did)."""
    delay_ms = 1_000
    web = FakeWeb(hosts=6, pages=2, robots={"h0.test": "User-agent: *\nCrawl-delay: 2\n"})
    crawl(CrawlPolicy(delay_ms=delay_ms, direct_slots=2), web, seeds=6)
    robots = sorted(start for _d, url, start in web.requests if url.endswith("/robots.txt"))
    assert len(robots) == 6
    assert robots[-1] - robots[0] < delay_ms // 4, robots
    # The Crawl-delay still holds: h0's first page waits 2 s after its robots.txt.
    h0 = sorted(start for domain, _u, start in web.requests if domain == "h0.test")
    assert h0[1] - h0[0] >= 2_000


@pytest.mark.parametrize(("after_ms", "wait_ms"), [(2_000, 2_000), (3_600_000, 1_500)])
def test_a_503_retry_after_delays_that_url_and_is_capped(after_ms: int, wait_ms: int) -> None:
    web = FakeWeb(hosts=1, pages=3)
    url = web.url(0, 2)
    web.retry_after[url] = (503, after_ms, -1)
    max_ms = 1_500 if after_ms > 2_000 else 60_000
    policy = CrawlPolicy(delay_ms=100, max_attempts=3, backoff_base_ms=100)
    result = crawl(dataclasses.replace(policy, retry_after_max_ms=max_ms), web)
    starts = [s for _d, u, s in web.requests if u == url]
    assert len(starts) == 3
    # Retry-After counts from the answer, LATENCY_MS after the start.
    waits = [b - a for a, b in itertools.pairwise(starts)]
    assert all(wait_ms + LATENCY_MS <= w <= wait_ms + LATENCY_MS + 100 for w in waits), waits
    finals = {f.url for f in tokens(result.engine, "fail_log") if f.final}
    assert finals == {url}
    # Only the URL waits: the domain's other pages went on meanwhile.
    others = [s for _d, u, s in web.requests if u == web.url(0, 1)]
    assert others and others[0] < starts[1]


@pytest.mark.parametrize("attempts", [1, 2])
def test_a_429_retry_after_holds_the_whole_host(attempts: int) -> None:
    """Whether the URL is retried or given up, the host's other pages wait too."""
    web = FakeWeb(hosts=1, pages=5, wide=True)
    web.retry_after[web.url(0, 1)] = (429, 1_000, -1)
    policy = CrawlPolicy(delay_ms=100, max_attempts=attempts, backoff_base_ms=100, concurrency=2)
    result = crawl(policy, web)
    throttled = [s for _d, u, s in web.requests if u == web.url(0, 1)]
    assert len(throttled) == attempts
    for first in throttled:
        after = [s for _d, _u, s in web.requests if s > first]
        # The answer came LATENCY_MS after the start; Retry-After counts from there. With
        # two requests in flight, one decided before the 429 arrived may start meanwhile.
        assert sum(s < first + LATENCY_MS + 1_000 for s in after) <= 1, (first, after)
    assert sorted(result.stored) == [web.url(0, i) for i in (0, 2, 3, 4)]


def test_a_4xx_is_final_after_one_request() -> None:
    web = FakeWeb(hosts=1, pages=2)
    web.statuses[web.url(0, 1)] = 404
    result = crawl(CrawlPolicy(delay_ms=100), web)
    assert web.served[web.url(0, 1)] == 1
    assert [(f.reason, f.final) for f in tokens(result.engine, "fail_log")] == [("http 404", True)]


def test_a_late_worker_refusal_reschedules_without_an_attempt() -> None:
    web = FakeWeb(hosts=1, pages=3)
    result = crawl(CrawlPolicy(delay_ms=100), web, late_once=frozenset({web.url(0, 1)}))
    assert result.late == {web.url(0, 1)}
    assert web.url(0, 1) in result.stored
    assert not list(result.engine.tokens("fail_log"))
    # The refusal may stand for a request whose answer was lost: the next start at the
    # domain waits one delay after it.
    refused = result.refused_at[web.url(0, 1)]
    later = [start for _d, _u, start in web.requests if start > refused]
    assert later and min(later) >= refused + 100


def test_fetches_are_decided_at_most_lead_ms_ahead_even_with_a_long_crawl_delay() -> None:
    """The answer anchor puts a start a whole (Crawl-)delay after the previous answer;
    the slot comes back due lead_ms before that start, so a fetch is never leased much
    earlier (its lease would have to outlast the delay)."""
    web = FakeWeb(hosts=1, pages=4, robots={"h0.test": "User-agent: *\nCrawl-delay: 3\n"})
    policy = CrawlPolicy(delay_ms=100, lead_ms=200)
    result = crawl(policy, web)
    assert min(gaps_by_domain(web.requests)["h0.test"]) >= 3_000
    # +1: the anchor's extra millisecond can fall after a clock that was due lead_ms early.
    assert max(result.leads_ms) <= policy.lead_ms + 1


def test_unreachable_robots_disallows_the_domain() -> None:
    web = FakeWeb(hosts=1, pages=2)

    def robots_down(fetch: Fetch, started: int) -> Fetched:
        web.requests.append((fetch.domain, fetch.url, started))
        return Fetched(
            fetch.domain,
            fetch.url,
            fetch.kind,
            fetch.attempt,
            0,
            "connect",
            "",
            "",
            "",
            started,
            started + LATENCY_MS,
            fetch.proxy,
        )

    web.answer = robots_down  # type: ignore[method-assign]
    result = crawl(CrawlPolicy(delay_ms=100, max_attempts=2, backoff_base_ms=100), web)
    assert result.stored == []
    assert [t.text for t in tokens(result.engine, "robots")] == [DISALLOW_ALL]


def test_depth_budget_and_scope_limits() -> None:
    web = FakeWeb(hosts=2, pages=6)
    result = crawl(CrawlPolicy(delay_ms=50, max_depth=2, max_pages_per_domain=2), web)
    reasons = Counter(t.reason for t in tokens(result.engine, "skipped"))
    assert reasons["budget"] > 0
    per_domain = Counter(url.split("/")[2] for url in result.stored)
    assert max(per_domain.values()) <= 2
    scoped = FakeWeb(hosts=2, pages=2)
    engine = crawl(CrawlPolicy(delay_ms=50), scoped, seeds=1).engine
    assert {t.name for t in tokens(engine, "known")} == {"h0.test", "h1.test"}


def test_proxy_interval_is_kept_per_proxy() -> None:
    web = FakeWeb(hosts=4, pages=4)
    policy = CrawlPolicy(delay_ms=50, proxies=("http://127.0.0.1:1",), proxy_interval_ms=80)
    crawl(policy, web, seeds=4)
    starts = sorted(s for _d, _u, s in web.requests)
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 80


def test_verdicts_cover_the_outcomes() -> None:
    def result(
        kind: str = PAGE,
        status: int = 200,
        error: str = "",
        ctype: str = "text/html",
        attempt: int = 0,
    ) -> Fetched:
        return Fetched("d", "u", kind, attempt, status, error, "u", ctype, "", 0, 0, "p")

    assert verdict(result(), 3) == "page"
    assert verdict(result(ctype="image/png"), 3) == "skip"
    assert verdict(result(status=0, error="too_large"), 3) == "skip"
    assert verdict(result(status=503), 3) == "retry"
    assert verdict(result(status=503, attempt=2), 3) == "give_up"
    assert verdict(result(status=0, error="reset"), 3) == "retry"
    assert verdict(result(status=404), 3) == "final"
    assert verdict(result(status=0, error="late"), 3) == "late"
    assert verdict(result(ROBOTS), 3) == "robots"
    assert verdict(result(ROBOTS, status=404), 3) == "robots_none"
    assert verdict(result(ROBOTS, status=500, attempt=2), 3) == "robots_unreachable"


def test_robots_helpers() -> None:
    text = (
        "User-agent: BadBot\nDisallow: /\nCrawl-delay: 9\n\n"
        "User-agent: *\nDisallow: /private/\nCrawl-delay: 0.25\n"
    )
    assert crawl_delay_ms(text, "cpn-cluster") == 250
    assert crawl_delay_ms(text, "BadBot/1.0") == 9_000
    assert crawl_delay_ms("", "x") == 0
    assert robots_allows(text, "http://h/p/1", "cpn-cluster")
    assert not robots_allows(text, "http://h/private/1", "cpn-cluster")
    assert robots_allows("", "http://h/private/1", "cpn-cluster")


def test_policy_and_parameters_are_checked() -> None:
    with pytest.raises(NetDefinitionError, match="scope must be one of"):
        CrawlPolicy(scope="everywhere")
    with pytest.raises(NetDefinitionError, match="unknown parameter 'delay'"):
        net(delay=5)
    proxy: Any = net(delay_ms=5, proxies=["http://127.0.0.1:9"]).place("proxies").initial[0]
    assert proxy.url == "http://127.0.0.1:9"
    assert dataclasses.replace(CrawlPolicy(), delay_ms=7).gap_ms(20) == 30


def test_robots_txt_redirects_are_followed_on_its_host_up_to_five_times() -> None:
    """RFC 9309: the rules come from where robots.txt redirects, up to five redirects,
    then robots.txt is unavailable (allow all); a redirect to another host is not
    followed (that host's requests are spaced by its own clock): no robots.txt."""
    web = FakeWeb(hosts=3, pages=4)
    web.robots["h0.test"] = "User-agent: *\nDisallow: /p/2\n"
    web.moved["http://h0.test/robots.txt"] = "http://h0.test/rules.txt"
    chain = [f"http://h1.test/robots.txt{'?' * n}" for n in range(7)]
    web.moved.update(itertools.pairwise(chain))  # h1: six redirects, then...
    web.robots["h1.test"] = "User-agent: *\nDisallow: /\n"  # ...its rules are never read
    web.moved["http://h2.test/robots.txt"] = "http://h0.test/rules.txt"
    web.robots["h2.test"] = "User-agent: *\nDisallow: /\n"  # never read either
    crawl(CrawlPolicy(delay_ms=50), web, seeds=3)
    of = defaultdict(list)
    for domain, url, _start in web.requests:
        of[domain].append(url)
    assert of["h0.test"][:2] == ["http://h0.test/robots.txt", "http://h0.test/rules.txt"]
    assert "http://h0.test/p/2" not in of["h0.test"]  # the rules found through the redirect
    assert of["h1.test"][:6] == chain[:6]
    assert "http://h1.test/p/3" in of["h1.test"]  # six redirects: unavailable, allow all
    assert of["h2.test"][0] == "http://h2.test/robots.txt"
    assert "http://h0.test/rules.txt" not in of["h2.test"]  # not followed to another host
    assert "http://h2.test/p/3" in of["h2.test"]


def test_a_redirect_becomes_a_discovered_link() -> None:
    web = FakeWeb(hosts=1, pages=2)
    web.moved[web.url(0, 1)] = "http://h0.test/elsewhere/1"
    result = crawl(CrawlPolicy(delay_ms=100), web)
    assert web.served["http://h0.test/elsewhere/1"] == 1
    assert "http://h0.test/elsewhere/1" in result.stored
    assert web.url(0, 1) not in result.stored
    reasons = {t.url: t.reason for t in tokens(result.engine, "skipped")}
    assert reasons[web.url(0, 1)] == "redirect"


def test_without_proxies_fetches_are_decided_at_most_direct_lead_ms_ahead() -> None:
    """A decided fetch holds a direct slot (the cluster-wide cap) until its answer: it is
    decided only direct_lead_ms before its start, not lead_ms, so the cap is not spent on
    waiting out the domain's delay."""
    web = FakeWeb(hosts=2, pages=5, wide=True)
    policy = CrawlPolicy(delay_ms=300, lead_ms=200, direct_lead_ms=40, direct_slots=1)
    result = crawl(policy, web)
    assert max(result.leads_ms) <= policy.direct_lead_ms + 1
    assert min(min(g) for g in gaps_by_domain(web.requests).values()) >= 300
    assert sorted(result.stored) == sorted(web.url(h, i) for h in range(2) for i in range(5))


def test_without_proxies_a_late_refusal_still_widens_the_lease_time_where_it_is_refused() -> None:
    """With two requests in flight per domain a late send is refused (late_ms), so the
    lease time must grow after a refusal, past direct_lead_ms; with one it is capped."""
    web = FakeWeb(hosts=1, pages=4)
    late = frozenset({web.url(0, 1)})
    policy = CrawlPolicy(delay_ms=100, direct_lead_ms=10)
    wide = crawl(dataclasses.replace(policy, concurrency=2), web, late_once=late)
    assert max(wide.leads_ms) > policy.direct_lead_ms
    narrow = crawl(policy, FakeWeb(hosts=1, pages=4), late_once=late)
    assert max(narrow.leads_ms) <= policy.direct_lead_ms + 1


def test_a_due_retry_waits_behind_the_pages_found_before_it_was_due() -> None:
    """The target due longest goes first: a retry is due when its backoff ends, after
    every page the root showed, so it goes last (preferring retries makes a crawl longer:
    cluster/mock_web/schedule.py, docs/scraper.md "The reference schedule")."""
    web = FakeWeb(hosts=1, pages=8, wide=True)
    failing = web.url(0, 1)
    web.failing[failing] = 1
    result = crawl(CrawlPolicy(delay_ms=100, backoff_base_ms=100), web)
    urls = [u for _d, u, _s in web.requests]
    first, retry = (i for i, u in enumerate(urls) if u == failing)
    assert first == 2, urls  # robots.txt, the root, then the pages in the order found
    assert retry == len(urls) - 1, urls
    assert failing in result.stored
