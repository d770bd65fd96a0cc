"""The mock web's site model and request-log helpers, without sockets.

The model is checked against itself (determinism, declared links, robots rules, the
failure schedule) and against a small reference crawler written here that knows nothing of
the model's internals: it drives ``SiteModel.response`` request by request, parses the
HTML and robots.txt with the standard library, and must end with exactly the pages and
per-host request counts ``expected_crawl`` predicts.
"""

from __future__ import annotations

import urllib.robotparser
from collections import deque
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest

from cluster.mock_web.log import (
    STATUS_RESET,
    RequestRecord,
    max_concurrency,
    min_start_gap_ns,
    politeness_violations,
)
from cluster.mock_web.site import (
    ROBOTS_PATH,
    STREAM_CHUNK_BYTES,
    CrawlExpectation,
    MockWebError,
    PageKind,
    PageRef,
    ResponseKind,
    SiteConfig,
    SiteModel,
    oversized_chunks,
    render_html,
)

NETLOCS = tuple(f"127.0.1.{h + 1}:8{h:03d}" for h in range(8))


def _config(seed: int, **overrides: object) -> SiteConfig:
    options: dict[str, object] = {
        "hosts": 6,
        "pages_per_host": 25,
        "seed": seed,
        "failing_fraction": 0.3,
        "private_page_fraction": 0.2,
        "reset_host": True,
        "oversized_body_bytes": 1_000_000,
    }
    options.update(overrides)
    return SiteConfig(**options)  # type: ignore[arg-type]


def _all_pages(model: SiteModel):
    return [page for host in range(model.hosts) for page in model.pages(host)]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_title = tag == "title"
        self.hrefs += [value for name, value in attrs if tag == "a" and name == "href" and value]

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False


def _parse(body: bytes) -> _Links:
    parser = _Links()
    parser.feed(body.decode())
    return parser


def test_the_model_is_a_function_of_its_seed(seed: int) -> None:
    first, again = SiteModel(_config(seed)), SiteModel(_config(seed))
    other = SiteModel(_config(seed + 1))
    assert _all_pages(first) == _all_pages(again)
    assert [first.robots_txt(h) for h in range(6)] == [again.robots_txt(h) for h in range(6)]
    assert _all_pages(first) != _all_pages(other)


def test_every_host_has_its_pages_with_the_root_first(seed: int) -> None:
    model = SiteModel(_config(seed))
    for host in range(model.hosts):
        pages = model.pages(host)
        assert len(pages) == 25
        assert pages[0].ref == PageRef(host, "/") and pages[0].kind is PageKind.HTML
        assert sum(page.kind is PageKind.NOT_FOUND for page in pages) == 1
        assert len({page.ref for page in pages}) == 25
    oversized = [page for page in _all_pages(model) if page.kind is PageKind.OVERSIZED]
    assert [page.ref.host for page in oversized] == [0]


def test_links_stay_within_the_declared_hosts_and_externals(seed: int) -> None:
    model = SiteModel(_config(seed))
    for page in _all_pages(model):
        for link in page.links:
            assert model.page(link.target) is not None, (page.ref, link)
        assert set(page.external_links) <= set(model.config.external_urls)
        if page.kind not in {PageKind.HTML, PageKind.PRIVATE}:
            assert page.links == () and page.external_links == ()
            continue
        base = f"http://{NETLOCS[page.ref.host]}{page.ref.path}"
        for href in _parse(render_html(page, NETLOCS[:6])).hrefs:
            parts = urlsplit(urljoin(base, href))
            if href in model.config.external_urls:
                assert parts.hostname is not None and parts.hostname.endswith(".invalid")
                continue
            host = NETLOCS.index(parts.netloc)
            assert model.page(PageRef(host, parts.path)) is not None, href


def test_depth_is_the_shortest_same_host_link_path_from_the_root(seed: int) -> None:
    model = SiteModel(_config(seed))
    for host in range(model.hosts):
        pages = {page.ref: page for page in model.pages(host)}
        depth = {PageRef(host, "/"): 0}
        queue = deque([PageRef(host, "/")])
        while queue:
            ref = queue.popleft()
            for link in pages[ref].links:
                if link.target.host == host and link.target not in depth:
                    depth[link.target] = depth[ref] + 1
                    queue.append(link.target)
        assert {ref: page.depth for ref, page in pages.items()} == depth


def test_robots_txt_means_what_the_model_says(seed: int) -> None:
    model = SiteModel(_config(seed, private_host_fraction=0.5, crawl_delay_host_fraction=0.5))
    for host in range(model.hosts):
        parser = urllib.robotparser.RobotFileParser()
        parser.parse(model.robots_txt(host).splitlines())
        for page in model.pages(host):
            allowed = model.is_allowed(page.ref)
            assert parser.can_fetch("MyCrawler", page.ref.path) is allowed, page.ref
            assert allowed is not page.ref.path.startswith("/private/"), page.ref
            assert not parser.can_fetch("BadBot", page.ref.path)
        delays_ms = [
            round(float(line.split(":", 1)[1]) * 1000)
            for line in model.robots_txt(host).splitlines()
            if line.startswith("Crawl-delay:")
        ]
        delay_ms = model.crawl_delay_ms(host)
        assert delays_ms == ([] if delay_ms is None else [delay_ms])


def test_the_failure_schedule_answers_as_declared(seed: int) -> None:
    model = SiteModel(_config(seed))
    reset = model.reset_host
    assert reset == 5
    for page in _all_pages(model):
        answers = [model.response(page.ref, k, NETLOCS[:6]) for k in range(1, 5)]
        statuses = [answer.status for answer in answers]
        if page.ref.host == reset:
            assert {answer.kind for answer in answers} == {ResponseKind.RESET}
            assert statuses == [STATUS_RESET] * 4
        elif page.kind is PageKind.NOT_FOUND:
            assert statuses == [404] * 4
        elif page.failures:
            assert page.kind is PageKind.HTML and page.failures == 2
            assert statuses == [503, 503, 200, 200]
            assert answers[2].body == render_html(page, NETLOCS[:6])
        else:
            assert statuses == [200] * 4
            assert len(set(answers)) == 1
    failing = [p for p in _all_pages(model) if p.failures and p.ref.host != reset]
    html_pages = [p for p in _all_pages(model) if p.kind is PageKind.HTML]
    assert 0 < len(failing) < len(html_pages)
    robots = model.response(PageRef(reset, ROBOTS_PATH), 1, NETLOCS[:6])
    assert robots.status == 200 and robots.body.startswith(b"# robots.txt")
    assert model.response(PageRef(0, "/nowhere"), 1, NETLOCS[:6]).status == 404


def test_content_types_follow_the_page_kind(seed: int) -> None:
    model = SiteModel(_config(seed, failing_fraction=0.0, reset_host=False))
    expected = {
        PageKind.HTML: "text/html; charset=utf-8",
        PageKind.PRIVATE: "text/html; charset=utf-8",
        PageKind.BINARY: "application/octet-stream",
        PageKind.IMAGE: "image/png",
        PageKind.OVERSIZED: "text/html; charset=utf-8",
        PageKind.NOT_FOUND: "text/plain; charset=utf-8",
    }
    for page in _all_pages(model):
        answer = model.response(page.ref, 1, NETLOCS[:6])
        assert answer.content_type == expected[page.kind], page.ref
        streamed = answer.kind is ResponseKind.STREAM
        assert streamed is (page.kind is PageKind.OVERSIZED)
        assert not streamed or (answer.body == b"" and answer.body_bytes == 1_000_000)
    kinds = {page.kind for page in _all_pages(model)}
    assert {PageKind.BINARY, PageKind.IMAGE} & kinds


def test_the_oversized_body_is_generated_in_bounded_chunks() -> None:
    chunks = list(oversized_chunks(3 * STREAM_CHUNK_BYTES + 5))
    assert sum(len(chunk) for chunk in chunks) == 3 * STREAM_CHUNK_BYTES + 5
    assert max(len(chunk) for chunk in chunks) <= STREAM_CHUNK_BYTES
    assert chunks[0].startswith(b"<!DOCTYPE html>")
    assert list(oversized_chunks(0)) == []


def _reference_crawl(model: SiteModel, attempts_max: int, seeds: list[int]):
    """A polite crawler over ``SiteModel.response``: robots first, retries 503 and resets."""
    netlocs = NETLOCS[: model.hosts]
    counters: dict[PageRef, int] = {}
    requests = [0] * model.hosts
    robots: dict[int, urllib.robotparser.RobotFileParser] = {}
    stored: set[str] = set()

    def get(ref: PageRef):
        counters[ref] = counters.get(ref, 0) + 1
        requests[ref.host] += 1
        return model.response(ref, counters[ref], netlocs)

    seen = {f"http://{netlocs[h]}/" for h in seeds}
    queue = deque(sorted(seen))
    while queue:
        url = queue.popleft()
        parts = urlsplit(url)
        host = netlocs.index(parts.netloc)
        if host not in robots:
            robots[host] = urllib.robotparser.RobotFileParser()
            robots[host].parse(get(PageRef(host, ROBOTS_PATH)).body.decode().splitlines())
        if not robots[host].can_fetch("MyCrawler", url):
            continue
        for _ in range(attempts_max):
            answer = get(PageRef(host, parts.path))
            if answer.status not in {503, STATUS_RESET}:
                break
        if answer.status != 200 or answer.kind is not ResponseKind.BODY:
            continue
        if not answer.content_type.startswith("text/html"):
            continue
        stored.add(url)
        for href in _parse(answer.body).hrefs:
            target = urljoin(url, href).split("#")[0]
            if urlsplit(target).netloc in netlocs and target not in seen:
                seen.add(target)
                queue.append(target)
    return stored, tuple(requests)


@pytest.mark.parametrize("attempts_max", [1, 2, 3, 5])
def test_expected_crawl_agrees_with_a_reference_crawler(seed: int, attempts_max: int) -> None:
    model = SiteModel(_config(seed))
    for seeds in ([0, 1, 2, 3, 4, 5], [1]):
        expectation = model.expected_crawl(attempts_max=attempts_max, seeds=seeds)
        stored, requests = _reference_crawl(model, attempts_max, seeds)
        netlocs = NETLOCS[: model.hosts]
        assert stored == {f"http://{netlocs[r.host]}{r.path}" for r in expectation.stored}
        assert requests == expectation.requests_per_host


def test_expected_crawl_is_consistent_with_the_model(seed: int) -> None:
    model = SiteModel(_config(seed))
    expectation = model.expected_crawl(attempts_max=3)
    assert expectation.stored
    for ref in expectation.stored:
        page = model.page(ref)
        assert page is not None and page.kind is PageKind.HTML
        assert model.is_allowed(ref) and ref.host != model.reset_host
        assert expectation.final_status[ref] == 200
    for ref in expectation.skipped_by_robots:
        assert not model.is_allowed(ref) and ref not in expectation.final_status
    # Every page stored but a root was linked from a stored page.
    linked = {link.target for ref in expectation.stored for link in model.page(ref).links}  # type: ignore[union-attr]
    assert {ref for ref in expectation.stored if ref.path != "/"} <= linked
    assert all(status == STATUS_RESET for ref, status in expectation.final_status.items()
               if ref.host == model.reset_host)  # fmt: skip
    # With fewer attempts than failures, failing pages end in 503 and are not stored.
    short = model.expected_crawl(attempts_max=2)
    assert short.stored < expectation.stored
    assert 503 in short.final_status.values() and 503 not in expectation.final_status.values()


def test_the_politeness_lower_bound_follows_the_issue_definition() -> None:
    expectation = CrawlExpectation(
        attempts_max=3,
        stored=frozenset(),
        final_status={},
        skipped_by_robots=frozenset(),
        requests_per_host=(10, 4, 1),
        crawl_delay_ms=(None, 500, 2_000),
    )
    # max(9 x 100, 3 x 500, 0 x 2000) + 10
    assert expectation.politeness_lower_bound_ms(delay_ms=100, latency_ms=10) == 1_510


def test_retry_after_pages_always_refuse_and_count_in_the_bound(seed: int) -> None:
    model = SiteModel(_config(seed, retry_after_fraction=0.3, retry_after_s=2, reset_host=False))
    refusing = [p for p in _all_pages(model) if p.retry_after_s]
    assert refusing and all(p.ref.path != "/" and p.kind is PageKind.HTML for p in refusing)
    assert not any(p.failures for p in refusing)
    for page in refusing:
        answers = [model.response(page.ref, k, NETLOCS[:6]) for k in range(1, 6)]
        assert {a.status for a in answers} == {503}
        assert {a.headers for a in answers} == {(("Retry-After", "2"),)}
    expectation = model.expected_crawl(attempts_max=3)
    reached = [p.ref for p in refusing if p.ref in expectation.final_status]
    assert reached, "some refusing page is linked from a stored page"
    for ref in reached:
        assert expectation.final_status[ref] == 503 and ref not in expectation.stored
        assert expectation.retried[ref] == (3, 2_000)
    # Robots.txt, the first attempt, then two waits of at least the Retry-After and the
    # latency each: 100 + 2 x (10 + 2000) + the last answer's 10.
    assert expectation.politeness_lower_bound_ms(delay_ms=100, latency_ms=10) >= 4_130
    # Without the fraction the seed draws the same site as before.
    assert SiteModel(_config(seed)).pages(0) == SiteModel(
        _config(seed, retry_after_fraction=0.0, retry_after_s=5)
    ).pages(0)


def test_the_retry_inclusive_bound_counts_backoff_and_retry_after() -> None:
    ref = PageRef(0, "/p/1.html")
    expectation = CrawlExpectation(
        attempts_max=4,
        stored=frozenset(),
        final_status={},
        skipped_by_robots=frozenset(),
        requests_per_host=(6,),
        crawl_delay_ms=(None,),
        retried={ref: (4, 0)},
    )
    # Politeness alone: 5 x 100 + 10; the retries: 100 + (10 + max(100, 200, 400)) ... + 10.
    assert expectation.politeness_lower_bound_ms(delay_ms=100, latency_ms=10) == 510
    bound = expectation.politeness_lower_bound_ms(delay_ms=100, latency_ms=10, backoff_base_ms=200)
    assert bound == 100 + (10 + 200) + (10 + 400) + (10 + 800) + 10


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("hosts", 0),
        ("pages_per_host", 0),
        ("failing_fraction", 1.5),
        ("not_found_per_host", 25),
        ("external_urls", ("http://example.com/",)),
    ],
)
def test_bad_options_are_named(option: str, value: object) -> None:
    with pytest.raises(MockWebError, match=option if option != "external_urls" else "invalid"):
        _config(1, **{option: value})


def test_unknown_hosts_and_attempts_are_refused() -> None:
    model = SiteModel(_config(1))
    with pytest.raises(MockWebError, match="host 6"):
        model.pages(6)
    with pytest.raises(MockWebError, match="attempts_max=0"):
        model.expected_crawl(attempts_max=0)


# -- the request log's politeness helpers, on synthetic logs ----------------------------


def _record(host: int, start_ms: int, end_ms: int) -> RequestRecord:
    return RequestRecord(
        host=host,
        netloc=NETLOCS[host],
        method="GET",
        path="/",
        start_ns=start_ms * 1_000_000,
        end_ns=end_ms * 1_000_000,
        start_wall_ms=start_ms,
        status=200,
        client="127.0.0.1:1",
        attempt=1,
        bytes_sent=0,
    )


def test_gaps_are_measured_between_starts_per_host_in_any_order() -> None:
    log = [_record(0, 250, 260), _record(1, 0, 5), _record(0, 0, 90), _record(0, 100, 400)]
    assert min_start_gap_ns(log) == {0: 100_000_000}  # host 1 has a single request
    assert min_start_gap_ns(reversed(log)) == {0: 100_000_000}
    assert min_start_gap_ns([]) == {}


def test_concurrency_counts_half_open_overlaps() -> None:
    log = [
        _record(0, 0, 100),
        _record(0, 100, 200),  # starts when the first ends: no overlap
        _record(0, 150, 160),
        _record(0, 155, 158),
        _record(1, 0, 10),
    ]
    assert max_concurrency(log) == {0: 3, 1: 1}


def test_violations_name_the_pair_closer_than_the_gap() -> None:
    log = [_record(0, 0, 10), _record(0, 100, 110), _record(0, 150, 160), _record(1, 0, 1)]
    log.append(_record(1, 40, 41))
    found = politeness_violations(log, 100)
    assert [(v.host, v.first.start_ns, v.gap_ns) for v in found] == [
        (0, 100_000_000, 50_000_000),
        (1, 0, 40_000_000),
    ]
    assert politeness_violations(log, {0: 50}) == ()
