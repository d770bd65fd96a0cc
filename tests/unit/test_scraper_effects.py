"""The crawler's effect models answer as its workers do (cluster/crawler/parse.py, the net)."""

from cluster.crawler.parse import parse_results
from nets.scraper import (
    PAGE,
    ROBOTS,
    Fetch,
    Fetched,
    FetchEffects,
    Page,
    Parsed,
    ParseEffects,
    SmallSite,
    StoreEffects,
    verdict,
)

SITE = SmallSite(domains=2, pages=3)


def test_parse_effects_complete_exactly_as_the_parse_worker() -> None:
    for d in range(SITE.domains):
        for k in range(SITE.pages):
            domain = SITE.domain(d)
            url = SITE.url(domain, k)
            page = Page(domain, url, 1, 0, "proxy000", 200, url, "text/html", 0, SITE.body(url))
            (outcome,) = ParseEffects(SITE).outcomes(page, 0)
            assert outcome.kind == "ok"
            assert [(p, tuple(t)) for p, t in outcome.results] == parse_results(page)


def test_fetch_outcomes_take_the_verdicts_the_net_expects() -> None:
    domain = SITE.domain(0)
    for kind, url, ok in (
        (ROBOTS, f"https://{domain}/robots.txt", "robots"),
        (PAGE, SITE.url(domain, 0), "page"),
    ):
        job = Fetch(domain, url, kind, 0, 0, "proxy000", "http://proxy0.example:3128", 0, 0)
        outcomes = FetchEffects(SITE).outcomes(job, 0)
        results = [outcome.results[0] for outcome in outcomes]
        assert all(place == "fetched" and type(token) is Fetched for place, token in results)
        verdicts = [verdict(token, max_attempts=2) for _, token in results]  # type: ignore[arg-type]
        assert verdicts == [ok, "retry", "retry", "retry", "retry"]
        assert [o.kind for o in outcomes] == ["ok", "fail", "fail", "fail", "fail"]


def test_store_effects_complete_with_store_done() -> None:
    parsed = Parsed(
        "d0.example", "https://d0.example/p/0", 0, 0, "p", 200, "", "text/html", 0, "t", 0
    )
    (outcome,) = StoreEffects().outcomes(parsed, 0)
    assert outcome.results == (("store_done", ("d0.example", "https://d0.example/p/0")),)
