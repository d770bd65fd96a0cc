"""The crawler's pure parts: canonical URLs, link extraction, net-parameter parsing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cluster.crawler.crawl import SMALL_CRAWL_REQUESTS_PER_S_MAX, CrawlOptions, auto_processes
from cluster.crawler.fetch import retry_at_ms
from cluster.crawler.parse import LINKS_PER_PAGE_MAX, fetched_results, parse_page, parse_results
from cluster.crawler.urls import InvalidUrl, canonical_url, domain_of, resolve_link, robots_url
from cluster.layout import ClusterConfig, net_param_args, parse_net_param
from nets.errors import CpnError, LoadError
from nets.loader import load_net
from nets.scraper import PAGE, Fetched, verdict


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("HTTP://Example.COM", "http://example.com/"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("https://example.com:80/a", "https://example.com:80/a"),
        ("http://127.0.1.7:8080/p/1.html#s2", "http://127.0.1.7:8080/p/1.html"),
        ("http://a.example/x/../y/./z/?q=1&r=2", "http://a.example/y/z/?q=1&r=2"),
        ("http://a.example/Case/Path?Q=A", "http://a.example/Case/Path?Q=A"),
        ("http://user:secret@a.example/", "http://a.example/"),
        ("  http://a.example/  ", "http://a.example/"),
        ("http://[::1]:80/", "http://[::1]/"),
    ],
)
def test_canonical_urls(url: str, canonical: str) -> None:
    assert canonical_url(url) == canonical
    assert canonical_url(canonical) == canonical  # idempotent


@pytest.mark.parametrize(
    "url",
    ["ftp://a.example/", "mailto:a@b.example", "http:///path", "a.example/x", "http://a:99999/",
     "http://a.example/with space", "", "http://" + "a" * 3000 + ".example/"],
)  # fmt: skip
def test_uncrawlable_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidUrl):
        canonical_url(url)


def test_domain_and_robots_url() -> None:
    url = canonical_url("HTTP://127.0.1.3:4000/p/2.html")
    assert domain_of(url) == "127.0.1.3:4000"
    assert robots_url(url) == "http://127.0.1.3:4000/robots.txt"
    assert domain_of(canonical_url("https://A.example:443/")) == "a.example"


def test_links_resolve_against_the_page_or_its_base() -> None:
    base = "http://h.example:81/docs/page.html"
    assert resolve_link(base, "other.html#top") == "http://h.example:81/docs/other.html"
    assert resolve_link(base, "../up.html") == "http://h.example:81/up.html"
    assert resolve_link(base, "//o.example:80/") == "http://o.example/"
    for href in ("#frag", "mailto:x@y.example", "javascript:void(0)", "  ", "http://[bad"):
        assert resolve_link(base, href) is None


def test_parse_page_finds_title_and_distinct_links_in_order() -> None:
    body = """<!DOCTYPE html><html><head><title>  Two
      words </title><base href="/sub/"></head><body>
      <a href="b.html#x">b</a><A HREF="a.html">a</A><a href="b.html">again</a>
      <area href="http://O.example:80/"><a>no href</a><a href="mailto:a@b.example">m</a>
      <title>not the title</title><p>unclosed <a href="c.html">c"""
    found = parse_page(body, "http://h.example/p/q.html")
    assert found.title == "Two words"
    assert found.links == (
        "http://h.example/sub/b.html",
        "http://h.example/sub/a.html",
        "http://o.example/",
        "http://h.example/sub/c.html",
    )
    assert found.links_found == 4


def test_parse_page_tolerates_garbage_and_bounds_links() -> None:
    assert parse_page("<<<>>><a href=", "http://h.example/").links == ()
    many = "".join(f'<a href="/p/{i}.html">' for i in range(LINKS_PER_PAGE_MAX + 10))
    found = parse_page(many, "http://h.example/")
    assert len(found.links) == LINKS_PER_PAGE_MAX
    assert found.links_found == LINKS_PER_PAGE_MAX + 10


def test_parse_results_complete_a_page_token() -> None:
    body = '<title>T</title><a href="/a">a</a><a href="http://o.example/">'
    page = ("h.example", "http://h.example/", 2, 0, "direct000", 200, "http://h.example/",
            "text/html", 0, body)  # fmt: skip
    assert parse_results(page) == [
        ("parse_done", ("h.example", "http://h.example/", "T", 2)),
        ("links", ("h.example", "http://h.example/a", 3)),
        ("links", ("o.example", "http://o.example/", 3)),
    ]


def test_fetched_results_parse_an_html_page_in_the_fetch_worker() -> None:
    body = '<title>T</title><a href="/a">a</a><a href="http://o.example/">'
    fetched = ("h.example", "http://h.example/", "page", 0, 200, "", "http://h.example/",
               "text/html", body, 10, 20, "direct000", 0)  # fmt: skip
    assert fetched_results(fetched, 2) == [
        ("fetched", (*fetched[:8], "", *fetched[9:], "T", 2)),
        ("links", ("h.example", "http://h.example/a", 3)),
        ("links", ("o.example", "http://o.example/", 3)),
    ]


def test_fetched_results_leave_other_results_to_the_net() -> None:
    at = "http://h.example/robots.txt"
    robots = ("h.example", at, "robots", 0, 200, "", at, "text/plain", "User-agent: *", 10, 20,
              "d", 0)  # fmt: skip
    failed = ("h.example", "http://h.example/", "page", 1, 503, "", "http://h.example/",
              "text/html", "", 10, 20, "d", 0)  # fmt: skip
    for fetched in (robots, failed):
        assert fetched_results(fetched, 0) == [("fetched", (*fetched, "", -1))]


def test_a_page_parsed_by_its_fetch_worker_skips_the_parse_stage() -> None:
    parsed = Fetched("h", "http://h/", PAGE, 0, 200, "", "http://h/", "text/html", "", 1, 2, "d",
                     0, "T", 3)  # fmt: skip
    assert verdict(parsed, 4) == "page_parsed"
    assert verdict(parsed._replace(links_count=-1), 4) == "page"


def test_net_params_parse_as_json_else_strings() -> None:
    assert parse_net_param("delay_ms=250") == ("delay_ms", 250)
    assert parse_net_param('proxies=["http://127.0.0.1:3128"]') == (
        "proxies",
        ["http://127.0.0.1:3128"],
    )
    assert parse_net_param("scope=any") == ("scope", "any")
    assert parse_net_param("user_agent=a=b") == ("user_agent", "a=b")
    for bad in ("novalue", "=1", "not an id=1"):
        with pytest.raises(CpnError, match="KEY=VALUE"):
            parse_net_param(bad)
    params = {"b": [1, "x"], "a": "two words"}
    args = net_param_args(params)
    assert args == ("--net-param", 'a="two words"', "--net-param", 'b=[1, "x"]')
    assert dict(parse_net_param(text) for text in args[1::2]) == params


def test_cluster_config_records_params(tmp_path) -> None:
    from cluster.layout import ClusterLayout

    layout = ClusterLayout(tmp_path)
    config = ClusterConfig("nets.scraper:net", 2, 0, "process", {"delay_ms": 5, "proxies": []})
    layout.cluster_file.write_text(config.to_json())
    assert ClusterConfig.read(layout) == config
    layout.cluster_file.write_text('{"net": "n:m", "shards": 1, "seed": 0, "durability": "fsync"}')
    assert ClusterConfig.read(layout) == ClusterConfig("n:m", 1)  # older records: no params


def test_load_net_passes_params_and_names_unknown_ones() -> None:
    net = load_net("nets.scraper:net", params={"delay_ms": 123, "raw_html_max": 3})
    assert net.place("raw_html").capacity == 3
    with pytest.raises(CpnError, match="unknown parameter 'bogus'"):
        load_net("nets.scraper:net", params={"bogus": 1})
    with pytest.raises(LoadError, match="has no parameter 'bogus'"):
        load_net("nets.scraper_sim:net", params={"bogus": 1})
    with pytest.raises(LoadError, match="--seed"):
        load_net("nets.scraper:net", params={"seed": 1})


def test_the_cli_spells_the_worker_roles_as_the_worker_does() -> None:
    from cluster.commands.workers import WORKER_ROLES
    from cluster.crawler.workers import ROLES

    assert WORKER_ROLES == ROLES


@pytest.mark.parametrize(
    ("value", "expected_ms"),
    [
        (None, 0),
        ("3", 1_700_000_003_000),
        (" 0 ", 1_700_000_000_000),
        ("Tue, 14 Nov 2023 22:13:30 GMT", 1_700_000_010_000),  # 10 s after the answer
        ("Tue, 14 Nov 2023 22:13:10 GMT", 0),  # in the past: no wait
        ("Tue, 14 Nov 2023 22:13:30", 0),  # no zone: not an HTTP date
        ("-5", 0),
        ("soon", 0),
        ("9" * 40, 1_700_000_000_000 + 86_400 * 366 * 1_000),  # cut, fits msgpack
    ],
)
def test_retry_after_becomes_a_wall_clock_time(value: str | None, expected_ms: int) -> None:
    assert retry_at_ms(value, 1_700_000_000_000) == expected_ms


def test_a_small_crawl_runs_one_shard_and_one_fetch_worker_unless_told() -> None:
    def seeds(domains: int) -> list[tuple[str, str]]:
        return [(f"h{d}.example", f"http://h{d}.example/{p}") for d in range(domains) for p in "ab"]

    # At a 250 ms delay, 250 domains allow 1,000 requests a second: still small.
    options = CrawlOptions(seeds=(), out=Path("out.jsonl"), delay_ms=250)
    rate_domains = SMALL_CRAWL_REQUESTS_PER_S_MAX * options.delay_ms // 1_000
    small, wide = seeds(rate_domains), seeds(rate_domains + 1)
    assert auto_processes(replace(options, delay_ms=1_000), wide) == (1, 1)
    assert auto_processes(replace(options, delay_ms=20), seeds(21)) == (2, 2)
    # The delay the net gets: --net-param delay_ms overrides --delay.
    assert auto_processes(replace(options, net_params={"delay_ms": 20}), seeds(21)) == (2, 2)
    assert auto_processes(options, small) == (1, 1)
    assert auto_processes(options, wide) == (2, 2)
    assert auto_processes(replace(options, shards=3), small) == (3, 1)
    assert auto_processes(replace(options, fetch_workers=4), wide) == (2, 4)
    assert auto_processes(replace(options, scope="any"), small) == (2, 2)
    allow = replace(options, scope="allow-list", allow=("a.example", "b.example"))
    assert auto_processes(allow, wide) == (1, 1)
