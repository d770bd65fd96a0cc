"""The crawler end to end: real cluster, real workers, real HTTP against the mock web.

Each test starts a small mock web on loopback, a cluster of the crawler net and its
workers (cluster/crawler/crawl.py), crawls, stops everything it started, and checks the result
from the output file and from the mock web's (and proxies') own request logs.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cluster.crawler.crawl import Crawl, CrawlOptions
from cluster.crawler.report import CrawlReport, file_pages
from cluster.mock_web.log import (
    RequestRecord,
    max_concurrency,
    max_concurrency_by,
    politeness_violations,
)
from cluster.mock_web.proxy import MockProxies, interval_violations
from cluster.mock_web.site import SiteConfig, SiteModel
from cluster.mock_web.web import MockWeb
from cluster.pids import process_args

pytestmark = pytest.mark.integration

DELAY_MS = 60
ATTEMPTS = 3
BACKOFF_MS = 100
TIMEOUT_MS = 120_000
LOG_WAIT_S = 10.0  # for a server to log the answers the crawl has already read


def crawl(
    tmp_path: Path,
    seeds: tuple[str, ...],
    *,
    on_poll: Callable[[Crawl, dict[str, int]], None] | None = None,
    **options: Any,
) -> tuple[Crawl, CrawlReport]:
    params = {"max_attempts": ATTEMPTS, "backoff_base_ms": BACKOFF_MS}
    params.update(options.pop("net_params", {}))
    run = Crawl(
        CrawlOptions(
            seeds=seeds,
            out=options.pop("out", tmp_path / "pages.jsonl"),
            shards=options.pop("shards", 2),
            fetch_workers=options.pop("fetch_workers", 1),
            delay_ms=DELAY_MS,
            data_dir=tmp_path / "crawl",
            net_params=params,
            timeout_ms=TIMEOUT_MS,
            fetch_timeout_ms=2_000,
            lease_ms=options.pop("lease_ms", 4_000),
            progress=False,
            **options,
        )
    )
    return run, run.run(on_poll=on_poll)


def gaps_ms(site: SiteModel) -> dict[int, int]:
    return {h: max(DELAY_MS, site.crawl_delay_ms(h) or 0) for h in range(site.hosts)}


def test_a_crawl_stores_every_reachable_page_once_politely(tmp_path: Path) -> None:
    site = SiteModel(
        SiteConfig(
            hosts=4,
            pages_per_host=10,
            seed=7,
            failing_fraction=0.25,
            crawl_delay_host_fraction=0.5,
            crawl_delay_ms=120,
            reset_host=True,
            oversized_body_bytes=3 * 1024 * 1024,
        )
    )
    expected = site.expected_crawl(attempts_max=ATTEMPTS)
    with MockWeb(site, latency_ms=5) as web:
        _run, report = crawl(tmp_path, web.seeds())
        log = web.requests()
        must_store = web.expected_urls(expected)
    stored, duplicates = file_pages(tmp_path / "pages.jsonl")
    assert report.complete
    assert duplicates == 0
    assert stored == must_store
    assert report.pages == len(must_store) == report.stored_in_net
    # robots.txt first and obeyed: no disallowed path was ever requested.
    by_host: dict[int, list[RequestRecord]] = defaultdict(list)
    for record in log:
        by_host[record.host].append(record)
    for host, records in by_host.items():
        assert records[0].path == "/robots.txt", (host, records[0])
        assert sum(r.path == "/robots.txt" for r in records) == 1
        assert all(not r.path.startswith(site.disallowed_prefixes(host)) for r in records)
    assert report.robots_skips == len(expected.skipped_by_robots)
    # Concurrency 1 and the delay (or Crawl-delay) between starts, at the server.
    assert set(max_concurrency(log).values()) == {1}
    assert politeness_violations(log, gaps_ms(site)) == ()
    # Retries: a failing page is asked again after growing waits, at most ATTEMPTS times.
    starts: dict[tuple[int, str], list[int]] = defaultdict(list)
    for record in log:
        starts[record.host, record.path].append(record.start_ns)
    for (host, path), times in starts.items():
        assert len(times) <= ATTEMPTS, (host, path)
        waits = [b - a for a, b in itertools.pairwise(times)]
        for retry, wait_ns in enumerate(waits):
            # Retry n waits at least backoff * 2**n after the failed attempt started.
            assert wait_ns >= BACKOFF_MS * 2**retry * 1_000_000, (host, path, waits)
    reset = site.reset_host
    assert all(
        len(times) == ATTEMPTS for (host, path), times in starts.items()
        if host == reset and path != "/robots.txt"
    )  # fmt: skip
    # Every outcome is counted in the report.
    assert report.failures.get("reset", 0) == sum(
        1 for ref, status in expected.final_status.items() if ref.host == reset and status == 0
    )
    assert report.failures.get("http 404", 0) == sum(
        1 for status in expected.final_status.values() if status == 404
    )
    assert report.skips.get("too_large") == 1
    assert report.skips.get("not_html", 0) >= 1
    assert report.retries >= 1
    assert report.politeness_violations == 0


def test_bad_input_is_counted_and_never_stops_the_crawl(tmp_path: Path) -> None:
    site = SiteModel(SiteConfig(hosts=2, pages_per_host=5, seed=3, failing_fraction=0))
    seeds_file = tmp_path / "seeds.txt"
    with MockWeb(site, latency_ms=1) as web:
        seeds_file.write_text(f"# seeds\n{web.seeds()[0]}\nnot a url\nftp://x.example/\n")
        proxies_dir = tmp_path / "not-a-file"
        proxies_dir.mkdir()
        _run, report = crawl(
            tmp_path,
            (str(seeds_file), "http//missing-colon", str(tmp_path / "absent.txt"), web.seeds()[1]),
            proxies_file=proxies_dir,
        )
        must_store = web.expected_urls(site.expected_crawl(attempts_max=ATTEMPTS))
    assert report.complete
    assert file_pages(tmp_path / "pages.jsonl") == (set(must_store), 0)
    text = "\n".join(report.bad_inputs)
    assert len(report.bad_inputs) == 5, text
    assert "not a url" in text and "ftp" in text and "absent.txt" in text
    assert "proxy file" in text and "without proxies" in text


def test_proxies_keep_their_interval_and_an_unreachable_one_is_retried(tmp_path: Path) -> None:
    site = SiteModel(SiteConfig(hosts=3, pages_per_host=6, seed=5, failing_fraction=0))
    interval_ms = 40
    proxy_file = tmp_path / "proxies.txt"
    with MockWeb(site, latency_ms=2) as web, MockProxies(2, unreachable=1) as proxies:
        proxy_file.write_text("\n".join([*proxies.urls, *proxies.unreachable_urls]) + "\n")
        # One shard holds every proxy token, so the unreachable one is surely chosen
        # (with two, the pool may never move it to the shard that has the work).
        _run, report = crawl(
            tmp_path,
            web.seeds(),
            shards=1,
            proxies_file=proxy_file,
            net_params={"proxy_interval_ms": interval_ms, "max_attempts": 6},
        )
        expected = site.expected_crawl(attempts_max=6)
        # The web and a proxy log a request after its answer is written: wait for all.
        total = sum(expected.requests_per_host)
        assert web.wait_requests(total, timeout_s=LOG_WAIT_S), (total, len(web.requests()))
        assert proxies.wait_requests(total, timeout_s=LOG_WAIT_S), total
        proxy_log = proxies.requests()
        must_store = web.expected_urls(expected)
        log = web.requests()
    assert report.complete
    assert file_pages(tmp_path / "pages.jsonl") == (set(must_store), 0)
    assert interval_violations(proxy_log, interval_ms) == ()
    assert {r.proxy for r in proxy_log} == {"proxy-0", "proxy-1"}
    assert proxy_log
    assert len(log) == total  # the perfect crawl's requests, no more
    assert len(proxy_log) == len(log)  # every request went through a proxy
    assert report.retries_by_reason.get("proxy", 0) >= 1  # the unreachable one was tried
    records = [json.loads(line) for line in (tmp_path / "pages.jsonl").read_text().splitlines()]
    assert {r["proxy"] for r in records} <= {"proxy000", "proxy001"}


def test_direct_slots_cap_requests_in_flight_and_retry_after_is_waited_at_the_server(
    tmp_path: Path,
) -> None:
    """Ten hosts want their robots.txt at once; three direct slots let three go at a time.

    Pages that always answer 503 with ``Retry-After: 1`` are asked ATTEMPTS times, each
    attempt a second or more after the previous answer left the server, then counted as
    failed (not missing): every other page is stored.
    """
    slots = 3
    site = SiteModel(
        SiteConfig(
            hosts=10, pages_per_host=5, seed=3, failing_fraction=0.2, retry_after_fraction=0.25
        )
    )
    expected = site.expected_crawl(attempts_max=ATTEMPTS)
    refusing = {ref for ref, status in expected.final_status.items() if status == 503}
    assert refusing, "the seed must reach a Retry-After page"
    with MockWeb(site, latency_ms=5) as web:
        _run, report = crawl(tmp_path, web.seeds(), net_params={"direct_slots": slots})
        # The web logs a request after its answer is written: wait for the last one.
        assert web.wait_requests(sum(expected.requests_per_host), timeout_s=LOG_WAIT_S)
        log = web.requests()
        must_store = web.expected_urls(expected)
    assert report.complete
    assert file_pages(tmp_path / "pages.jsonl") == (must_store, 0)
    # The cap is a bound, not a promise of parallelism: on a loaded machine fewer than
    # `slots` may overlap (tests/unit/test_crawler_net.py shows the cap reached).
    assert 1 <= max_concurrency_by(log, lambda r: 0)[0] <= slots
    assert politeness_violations(log, gaps_ms(site)) == ()
    attempts: dict[tuple[int, str], list[RequestRecord]] = defaultdict(list)
    for record in log:
        attempts[record.host, record.path].append(record)
    for ref in refusing:
        tries = attempts[ref.host, ref.path]
        assert [r.status for r in tries] == [503] * ATTEMPTS, ref
        for before, after in itertools.pairwise(tries):
            assert after.start_ns - before.end_ns >= 1_000_000_000, ref
    assert report.failures.get("http 503") == len(refusing)


def test_a_slow_store_backs_up_to_parsed_at_its_capacity(tmp_path: Path) -> None:
    site = SiteModel(SiteConfig(hosts=3, pages_per_host=12, seed=2, failing_fraction=0))
    capacity = 2
    seen: list[int] = []

    # A fetch worker parses its pages: they go from `fetched` straight into `parsed`, whose
    # capacity holds them back (and the fetches behind them) while the store is slow.
    def watch(run: Crawl, tokens: dict[str, int]) -> None:
        seen.append(tokens.get("parsed", 0))
        if seen.count(capacity) >= 5:
            run.stop_requested = True

    with MockWeb(site, latency_ms=1) as web:
        _run, report = crawl(
            tmp_path,
            web.seeds(),
            shards=1,
            on_poll=watch,
            worker_env={"CPN_STORE_DELAY_MS": "400"},
            net_params={
                "parsed_max": capacity,
                "validated_max": 1,
                "storing_max": 1,
                "delay_ms": 10,
            },
        )
    assert max(seen) == capacity, seen  # never above its capacity (one shard)
    assert seen.count(capacity) >= 5, seen  # and held there while the store is slow
    assert not report.complete


def test_cpn_crawl_command_line(tmp_path: Path) -> None:
    site = SiteModel(SiteConfig(hosts=2, pages_per_host=4, seed=9, failing_fraction=0))
    seeds = tmp_path / "seeds.txt"
    out = tmp_path / "out" / "pages.jsonl"
    with MockWeb(site, latency_ms=1) as web:
        seeds.write_text("\n".join(web.seeds()) + "\n")
        done = subprocess.run(
            [sys.executable, "-m", "cluster.cli", "crawl", str(seeds), "::bad::", "--out",
             str(out), "--shards", "1", "--workers", "1", "--delay", "50ms", "--quiet",
             "--data", str(tmp_path / "data"), "--report-json", str(tmp_path / "r.json")],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        must_store = web.expected_urls(site.expected_crawl(attempts_max=4))
    assert done.returncode == 0, done.stderr
    assert "crawl complete" in done.stdout
    assert "bad input:         1" in done.stdout
    assert file_pages(out) == (set(must_store), 0)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pages"] == len(must_store) and report["politeness_violations"] == 0
    # Start-up and shut-down in order; the cluster and workers it forked all stopped.
    phases = report["extra"]["phases_s"]
    assert list(phases) == [
        "run", "cluster_started", "workers_started", "cluster_serving", "workers_leasing",
        "seeded", "done", "collected", "stopped", "reported",
    ]  # fmt: skip
    assert list(phases.values()) == sorted(phases.values())
    data = str(tmp_path / "data")
    assert not [pid for pid in _pids() if data in " ".join(process_args(pid))]
    usage = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "crawl", "http://127.0.0.1:9/", "--out", str(out),
         "--scope", "allow-list"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert usage.returncode == 2
    assert "--allow" in usage.stderr
    nothing = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "crawl", "nope", "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert nothing.returncode == 2
    assert nothing.stderr.count("\n") == 1 and "no usable seed URL" in nothing.stderr


def test_cpn_demo(tmp_path: Path) -> None:
    figures = tmp_path / "demo.json"
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "demo", "--hosts", "3", "--pages", "5",
         "--seed", "4", "--delay", "50ms", "--latency", "2ms", "--retry-after-pages", "0.3",
         "--retry-after", "1s", "--report-json", str(figures)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "always 503 with Retry-After 1 s" in done.stderr
    result = json.loads(figures.read_text())
    assert result["violations"] == 0, done.stdout
    assert result["missing"] == 0 and result["unexpected"] == 0, done.stdout
    assert result["report"]["duplicates"] == 0
    # Seed 4's one page that always answers 503 (with Retry-After) is a failure.
    assert result["report"]["failures"].get("http 503") == 1, done.stdout
    assert "politeness lower bound" in done.stdout


def test_cpn_demo_refuses_a_fractional_retry_after() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "demo", "--retry-after", "1500ms"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--retry-after: 1500 ms: Retry-After is whole seconds" in done.stderr


def test_net_params_reach_every_shard(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    cpn = [sys.executable, "-m", "cluster.cli"]
    up = subprocess.run(
        [*cpn, "up", "--net", "nets.scraper:net", "--shards", "2", "--data", str(data),
         "--durability", "process", "--net-param", "delay_ms=321", "--net-param", "scope=any"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    try:
        assert json.loads((data / "cluster.json").read_text())["params"] == {
            "delay_ms": 321,
            "scope": "any",
        }
        links = [f'["d{i}.example", "http://d{i}.example/", 0]' for i in range(8)]
        put = subprocess.run(
            [*cpn, "put", "--data", str(data), "links", *links],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert put.returncode == 0, put.stderr
        from cluster.client import ClusterClient
        from cluster.processes import wait_for

        with ClusterClient.for_data_dir(data) as client:
            clocks = wait_for(
                lambda: client.tokens("clock"), lambda found: len(found) == 8,
                what="a clock per domain", timeout_s=30,
            )  # fmt: skip
        assert {shard for shard, _t, _c in clocks} == {0, 1}
        assert {c[2] for _s, _t, c in clocks} == {321 + 5 + 5}  # delay + late + margin
    finally:
        subprocess.run([*cpn, "down", "--data", str(data)], timeout=60, check=False)
    bogus = subprocess.run(
        [*cpn, "up", "--net", "nets.scraper:net", "--shards", "1", "--data",
         str(tmp_path / "other"), "--net-param", "bogus=1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bogus.returncode == 2
    assert bogus.stderr.count("\n") == 1 and "unknown parameter 'bogus'" in bogus.stderr
    assert Counter(bogus.stderr)  # one line, no traceback


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
