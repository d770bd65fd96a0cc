"""Benchmark: the CPU cost per HTTP fetch of ``cluster.crawler.fetch.Fetcher``.

``python -m bench.fetch_cpu [--quick] [--profile] [--late-ms N] [--client C]`` starts the
mock web in its own process (``bench.crawl.served_web``: 20 hosts x 40 pages, or 10 x 20
with ``--quick``; 10 ms latency; 10 % of the HTML pages answer 503 twice; seed 1), so that
its CPU is never counted, then fetches in this process, through one
:class:`~cluster.crawler.fetch.Fetcher` (made, prepared and warmed up as a fetch worker
does), every host's robots.txt and then each of its page paths once, in order: one fetch
at a time per host, every host at once. As a polite crawler plans it, each fetch of a host
starts ``DELAY_MS`` after the previous answer at that host, and no sooner than
``READY_MS`` after it is handed to the fetcher (a worker leases a fetch that far ahead).

Measured in this process, from the first fetch handed over to the last result:

* **CPU ms per fetch**: ``time.process_time`` (user + system, every thread) over the
  fetches. The driver (a task per host, the job tuples) is counted too: it is a small
  part, and a fetch worker has one as well.
* the wall time, the user/system split, and the **event loop wakeups per fetch** (the
  loop's ``select`` calls, counted by its selector);
* the results by error (``late``: a fetch the machine made late, never sent; a 503 is an
  answer, not an error) and by status; how long after its start time each request was
  sent; the connections that carried a request (distinct client ports in the mock web's
  log: a connection closed before its first request is not seen).

``--profile`` runs the same fetches under cProfile (CPU time) and prints where the time
goes, by package and by function; the CPU figure is then inflated by the profiler and
only the shares mean something, and the late allowance is widened to
``PROFILE_LATE_MS`` (a late fetch is never sent: a slowed-down run would otherwise
measure another workload). ``--client httpx`` measures the same fetcher on its former
HTTP client (``bench/fetch_httpx.py``) instead of aiohttp, for a side-by-side figure.
``--late-ms`` sets the allowance for a plain run too: the default is the crawl policy's
5 ms, under which a loaded machine makes some fetches late and so changes the work
measured; a wider one compares two versions more steadily.

Timings move with the machine's load (2 shared cores): run it a few times. The last line
is one JSON object with the keys of :data:`JSON_KEYS`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import selectors
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.crawl import ServedWeb, Workload, served_web
from bench.fetch_httpx import HttpxFetcher
from cluster.crawler.fetch import ROBOTS_KIND, Fetcher, FetchSettings, wall_ms
from nets.errors import CpnError
from nets.scraper import CrawlPolicy

JSON_KEYS: Final = ("fetches", "cpu_ms_per_fetch", "errors", "client")
CLIENTS: Final = ("aiohttp", "httpx")
DELAY_MS: Final = 100  # from an answer at a host to the start of its next fetch
READY_MS: Final = 50  # a fetch is handed to the fetcher at least this long before its start
LATE_MS: Final = CrawlPolicy().late_ms
PROFILE_LATE_MS: Final = 1_000
RUN_S_MAX: Final = 60.0  # the fetches of one run, all hosts together
RUN_S_MAX_QUICK: Final = 12.0  # --quick must end within 20 s, the mock web's start included
PROFILE_ROWS: Final = 25
# Where a function's own time goes, by the file it is defined in (first match wins).
PACKAGES: Final = (
    ("aiohttp/yarl/multidict", "/aiohttp/"),
    ("aiohttp/yarl/multidict", "/yarl/"),
    ("aiohttp/yarl/multidict", "/multidict/"),
    ("aiohttp/yarl/multidict", "/aiohappyeyeballs/"),
    ("aiohttp/yarl/multidict", "/propcache/"),
    ("httpx", "/httpx/"),
    ("httpcore", "/httpcore/"),
    ("h11", "/h11/"),
    ("anyio/sniffio", "/anyio/"),
    ("anyio/sniffio", "/sniffio/"),
    ("cluster.crawler.fetch", "/cluster/crawler/fetch.py"),
    ("asyncio", "/asyncio/"),
    ("selectors/socket/ssl", "/selectors.py"),
    ("selectors/socket/ssl", "/socket.py"),
    ("selectors/socket/ssl", "/ssl.py"),
    ("urllib/ipaddress/codecs", "/urllib/"),
    ("urllib/ipaddress/codecs", "/ipaddress.py"),
    ("urllib/ipaddress/codecs", "/encodings/"),
    ("urllib/ipaddress/codecs", "/codecs.py"),
    ("bench", "/bench/"),
)


class CountingSelector(selectors.DefaultSelector):
    """The platform's selector, counting its ``select`` calls (the loop's wakeups)."""

    def __init__(self) -> None:
        super().__init__()
        self.selects = 0

    def select(self, timeout: float | None = None) -> list[Any]:
        self.selects += 1
        return super().select(timeout)


@dataclass
class Tally:
    """What the fetches returned, counted as they return."""

    errors: Counter[str] = field(default_factory=Counter)  # "" for none
    statuses: Counter[int] = field(default_factory=Counter)
    lags_ms: Counter[int] = field(default_factory=Counter)  # sent - start, per request sent

    @property
    def fetches(self) -> int:
        return sum(self.errors.values())


@dataclass(frozen=True)
class FetchRun:
    tally: Tally
    cpu_s: float
    user_s: float
    system_s: float
    wall_s: float
    wakeups: int

    @property
    def fetches(self) -> int:
        return self.tally.fetches

    @property
    def cpu_ms_per_fetch(self) -> float:
        return self.cpu_s * 1000 / max(self.fetches, 1)


def host_jobs(workload: Workload, web: ServedWeb) -> list[list[tuple[str, str]]]:
    """Per host, the (url, kind) of its fetches in order: robots.txt, then every page."""
    site = workload.site()
    jobs = []
    for host in range(site.hosts):
        urls = [(f"http://{web.netlocs[host]}/robots.txt", ROBOTS_KIND)]
        urls += [(web.url(page.ref), "page") for page in site.pages(host)]
        jobs.append(urls)
    return jobs


async def host_lane(
    fetcher: Fetcher, urls: Sequence[tuple[str, str]], tally: Tally, late_ms: int
) -> None:
    """One host's fetches, one at a time, each ``DELAY_MS`` after the previous answer."""
    domain = urls[0][0].removeprefix("http://").split("/")[0]
    answered_ms = 0
    for url, kind in urls:
        start_at_ms = max(wall_ms() + READY_MS, answered_ms + DELAY_MS)
        job = (domain, url, kind, 0, 0, "direct", "", start_at_ms, late_ms)
        outcome = await fetcher.fetch(job)
        fetched = outcome.fetched
        if outcome.timing is not None:
            tally.lags_ms[outcome.timing.sent_ms - start_at_ms] += 1
        tally.errors[fetched[5]] += 1
        tally.statuses[fetched[4]] += 1
        answered_ms = fetched[10] or wall_ms()


async def fetch_all(
    jobs: list[list[tuple[str, str]]],
    selector: CountingSelector,
    *,
    late_ms: int,
    run_s_max: float,
    profile: cProfile.Profile | None,
    client: str,
) -> FetchRun:
    """Every host's fetches, all hosts at once, through one prepared, warmed-up fetcher."""
    policy = CrawlPolicy()
    settings = FetchSettings(user_agent=policy.user_agent, body_max_bytes=policy.body_max_bytes)
    fetcher = Fetcher(settings) if client == "aiohttp" else HttpxFetcher(settings)
    fetcher.prepare([])
    await fetcher.warm_up()
    tally = Tally()
    try:
        times_before, wall_before = os.times(), time.perf_counter()
        cpu_before, selects_before = time.process_time(), selector.selects
        if profile is not None:
            profile.enable()
        async with asyncio.timeout(run_s_max), asyncio.TaskGroup() as group:
            for urls in jobs:
                group.create_task(host_lane(fetcher, urls, tally, late_ms))
        if profile is not None:
            profile.disable()
        cpu_s = time.process_time() - cpu_before
        wall_s = time.perf_counter() - wall_before
        wakeups = selector.selects - selects_before
        times_after = os.times()
    finally:
        await fetcher.aclose()
    return FetchRun(
        tally=tally,
        cpu_s=cpu_s,
        user_s=times_after.user - times_before.user,
        system_s=times_after.system - times_before.system,
        wall_s=wall_s,
        wakeups=wakeups,
    )


def run_fetches(
    jobs: list[list[tuple[str, str]]],
    *,
    late_ms: int,
    run_s_max: float,
    profile: cProfile.Profile | None,
    client: str,
) -> FetchRun:
    selector = CountingSelector()
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selector)) as runner:
        return runner.run(
            fetch_all(
                jobs,
                selector,
                late_ms=late_ms,
                run_s_max=run_s_max,
                profile=profile,
                client=client,
            )
        )


def package_of(filename: str) -> str:
    for name, marker in PACKAGES:
        if marker in filename:
            return name
    return "builtins" if filename == "~" else "other"


def profile_report(profile: cProfile.Profile) -> list[str]:
    """The profile's own time by package, then its top functions by own and by
    cumulative time."""
    stats = pstats.Stats(profile)
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total_s = sum(entry[2] for entry in entries.values()) or 1e-9
    by_package: Counter[str] = Counter()
    for (filename, _line, _name), entry in entries.items():
        by_package[package_of(filename)] += entry[2]
    lines = ["own time by package (cProfile; shares only, the profiler inflates the total):"]
    lines += [f"  {name:24} {s / total_s:6.1%}" for name, s in by_package.most_common()]
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats(order).print_stats(PROFILE_ROWS)
        rows = [line for line in text.getvalue().splitlines() if line.strip()]
        lines.append(f"top functions by {order} (of {total_s:.2f} s):")
        lines += rows[-PROFILE_ROWS - 1 :]
    return lines


def lag_figures(lags_ms: Counter[int]) -> str:
    """The median, 99th percentile and maximum of the send lags."""
    ordered = sorted(lags_ms.elements())
    if not ordered:
        return "none sent"
    p50, p99 = (ordered[min(len(ordered) - 1, len(ordered) * q // 100)] for q in (50, 99))
    return f"median {p50}, p99 {p99}, max {ordered[-1]}"


def describe(run: FetchRun, connections: int) -> list[str]:
    tally = run.tally
    errors = ", ".join(f"{name or 'none'} {n}" for name, n in sorted(tally.errors.items()))
    statuses = ", ".join(f"{status} {n}" for status, n in sorted(tally.statuses.items()))
    return [
        f"{run.fetches} fetches in {run.wall_s:.2f} s ({run.fetches / run.wall_s:.0f}/s)",
        f"CPU {run.cpu_s * 1000:.0f} ms = {run.cpu_ms_per_fetch:.3f} ms per fetch (user "
        f"{run.user_s * 1000:.0f} ms, system {run.system_s * 1000:.0f} ms); "
        f"{run.wakeups / max(run.fetches, 1):.1f} event loop wakeups per fetch",
        f"results by error: {errors}; by status: {statuses}",
        f"sent after the start time, ms: {lag_figures(tally.lags_ms)}",
        f"connections that carried a request: {connections} (the mock web's log)",
    ]


def summary(run: FetchRun, client: str) -> dict[str, Any]:
    """The benchmark's last line: exactly the keys of :data:`JSON_KEYS`."""
    figures = {
        "fetches": run.fetches,
        "cpu_ms_per_fetch": round(run.cpu_ms_per_fetch, 3),
        "errors": run.fetches - run.tally.errors[""],
        "client": client,
    }
    assert tuple(figures) == JSON_KEYS
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 hosts x 20 pages")
    parser.add_argument("--profile", action="store_true", help="under cProfile: where it goes")
    parser.add_argument(
        "--late-ms",
        type=int,
        default=None,
        help=f"the late allowance (default {LATE_MS}; {PROFILE_LATE_MS} with --profile)",
    )
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default=CLIENTS[0],
        help="the fetcher's HTTP client (default aiohttp, the crawler's; httpx, its former)",
    )
    args = parser.parse_args(argv)
    late_ms = args.late_ms
    if late_ms is None:
        late_ms = PROFILE_LATE_MS if args.profile else LATE_MS
    hosts, pages = (10, 20) if args.quick else (20, 40)
    workload = Workload(hosts, pages)
    print(
        f"mock web: {hosts} hosts x {pages} pages, seed {workload.seed}, latency "
        f"{workload.latency_ms} ms; {DELAY_MS} ms from an answer to the host's next start, "
        f"ready {READY_MS} ms, late allowance {late_ms} ms; client {args.client}"
    )
    # CPU time, not wall time: a wait in epoll costs nothing.
    profile = cProfile.Profile(time.process_time) if args.profile else None
    with (
        tempfile.TemporaryDirectory(prefix="cpn-bench-fetch-") as directory,
        served_web(workload, Path(directory)) as web,
    ):
        jobs = host_jobs(workload, web)
        run = run_fetches(
            jobs,
            late_ms=late_ms,
            run_s_max=RUN_S_MAX_QUICK if args.quick else RUN_S_MAX,
            profile=profile,
            client=args.client,
        )
        connections = len({record.client for record in web.requests()})
    planned = sum(len(urls) for urls in jobs)
    if run.fetches != planned:
        raise CpnError(f"{run.fetches} fetches done, {planned} planned")
    for line in describe(run, connections):
        print(line)
    if profile is not None:
        print("--profile: the CPU figures include the profiler's own cost")
        for line in profile_report(profile):
            print(line)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(json.dumps(summary(run, args.client)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
