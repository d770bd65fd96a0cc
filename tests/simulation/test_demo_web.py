"""The demo's web as effect models (cluster/sim/demo_web.py): the simulated crawl does
what a perfect polite crawl of the same mock web does (cluster/mock_web/site.py)."""

from __future__ import annotations

import pytest

from cluster.sim.cluster_run import SimConfig
from cluster.sim.demo_web import DemoFetchEffects, DemoWeb, crawl_ms, net
from cluster.sim.whatif import measure
from nets.errors import NetDefinitionError
from nets.scraper import PAGE, Fetch, Fetched

pytestmark = pytest.mark.simulation

SMALL = {"hosts": 6, "pages": 8}


def test_the_simulated_crawl_fetches_and_stores_what_a_perfect_crawl_does() -> None:
    web = DemoWeb.of(SMALL["hosts"], SMALL["pages"])
    expected = web.site.expected_crawl(attempts_max=4)
    config = SimConfig("cluster.sim.demo_web:net", params=SMALL, shards=2, until_ms=20_000)
    figures = measure(1, config)
    assert figures.ok, figures.failure
    fired = {t.name: t.firings for t in figures.transitions}
    assert fired["store_finished"] == len(expected.stored)
    # Every request of the perfect crawl, robots.txt and retries included, and no other.
    assert fired["scrape"] == sum(expected.requests_per_host)
    assert fired["disallowed"] == len(expected.skipped_by_robots)
    assert dict(figures.workers) == {"fetch_queue": 32, "parse_queue": 1, "store_queue": 1}
    crawl = crawl_ms(figures)
    assert crawl is not None
    # Never faster than politeness allows, with the demo's 100 ms delay.
    assert crawl >= expected.politeness_lower_bound_ms(delay_ms=100, latency_ms=0)


def test_a_fetch_is_answered_as_the_mock_web_answers_its_attempt() -> None:
    web = DemoWeb.of(SMALL["hosts"], SMALL["pages"])
    failing = next(
        page for h in range(web.site.hosts) for page in web.site.pages(h) if page.failures
    )
    url = f"http://{web.netlocs[failing.ref.host]}{failing.ref.path}"
    model = DemoFetchEffects(web, latencies_ms=(10, 10, 30))
    for attempt, status in ((0, 503), (1, 503), (2, 200)):
        fetch = Fetch(web.netlocs[failing.ref.host], url, PAGE, 1, attempt, "direct000", "",
                      1_000, 5)  # fmt: skip
        outcomes = model.outcomes(fetch, 0)
        assert [o.latency_ms for o in outcomes] == [10, 30]
        assert [o.weight for o in outcomes] == pytest.approx([2 / 3, 1 / 3])
        assert {o.start_ms for o in outcomes} == {1_000}
        result = Fetched(*outcomes[0].results[0][1])
        assert (result.status, result.answered_ms) == (status, 1_010)
        assert (result.body != "") == (status == 200)


def test_bad_parameters_are_one_line_errors() -> None:
    with pytest.raises(NetDefinitionError, match="unknown parameter 'bogus'"):
        net(bogus=1)
    with pytest.raises(NetDefinitionError, match="hosts must be an integer"):
        net(hosts="3")
    with pytest.raises(NetDefinitionError, match=r"failing must be in 0\.\.1"):
        net(failing=2.0)
