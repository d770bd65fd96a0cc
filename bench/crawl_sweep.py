"""``python -m bench.crawl --sweep [--quick]``: ``cpn crawl`` and Scrapy side by side on
mock webs of many shapes (issue 17).

At each point of the sweep (:data:`POINTS`, or :data:`QUICK_POINTS`) a fresh mock web
process serves the site twice in turn, once for each crawler (its failure counters start
anew), and each crawler runs as its own process from the command line a user would type:
``python -m cluster.cli crawl SEEDS ...`` and ``python -m bench.crawl_scrapy ...``
(:mod:`bench.crawl_scrapy`), then the same with ``--polite`` (the fair peer: Crawl-delay,
the answer anchor and ``Retry-After`` kept; its three keys follow the first nine in the
JSON line, before ``worst_span_over_schedule``: :data:`SWEEP_JSON_KEYS`).
Everything is measured from the outside:

* **span**: from the first request the mock web received to the later of the last
  answer and the output file's last write; over the point's **bound**, the larger of the
  retry-inclusive politeness bound
  (:meth:`cluster.mock_web.site.CrawlExpectation.politeness_lower_bound_ms`, the
  ``Retry-After`` waits and the backoff counted) and the bound the global cap sets
  (every request a perfect crawl sends x the service time, the mock web's latency, over
  the cap), :func:`point_bound_ms`;
* **launch to exit** (wall) and **start-up** (launch to the first request at the mock
  web), from this process's clock;
* at the mock web: **violations** (two starts at a host closer than its delay or
  Crawl-delay), **duplicates** (a URL asked again after a 2xx answer), the most requests
  **in flight** at once, over all hosts (against the cap) and per host (against 1);
  ``over_cap`` is the larger excess;
* **missing**: pages a perfect crawl stores that the output file lacks (a page that
  always fails counts as failed, not missing);
* **CPU**: of the crawler's process and every process it started (psutil, sampled until
  they exit; the mock web runs apart and is never counted), per 1,000 pages stored.

Points are chosen (:func:`eligible`) so that the politeness rate (hosts / delay) stays at
or under :data:`RATE_MAX_PER_S` and the bound under :data:`BOUND_S_MAX`. Every point has
failing pages (503 twice, then 200) and pages that always answer 503 with
``Retry-After``. The last line is one JSON object with the keys of
:data:`SWEEP_JSON_KEYS`: the worst span over bound, our launch-to-exit over Scrapy's at
that point, violations, duplicates and missing pages summed over the points, the largest
excess over a cap, the largest start-up, our CPU over Scrapy's at the worst point, and
the worst span over the *online* bound (:func:`point_online_bound_ms`: as the bound, but
a URL is asked no sooner than a page linking to it was answered,
:mod:`cluster.mock_web.bounds`), and last the worst span over the reference schedule
(:func:`point_schedule_ms`: an ideal, non-clairvoyant crawl taking a host's requests in
the net's order, :mod:`cluster.mock_web.schedule`; a reference, not a bound). Under each
run its CPU is split by process (the driver,
the supervisor, the router, each shard and worker: :func:`_role`).
``CPN_SWEEP_CRAWLER_ROOT=DIR`` runs the ``cpn crawl`` of another checkout (to measure
before and after a change back to back). Scrapy comes from the optional ``bench`` extra
(``pip install -e '.[bench]'``); without it ``--sweep`` stops with a one-line error.
Both crawlers run from byte-compiled copies of their checkouts, made once before the
first point (:mod:`bench.installed`: with ``PYTHONDONTWRITEBYTECODE`` and an editable
install, ours would otherwise compile its modules at every launch, which a user's
``pip install .`` does once, as pip did Scrapy's).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.crawl_cpu import RUN_TIMEOUT_S, tree_cpu_s
from bench.installed import InstalledCopies, install_checkouts
from cluster.mock_web.bounds import online_lower_bound_ms
from cluster.mock_web.log import RequestRecord, max_concurrency, politeness_violations
from cluster.mock_web.schedule import QueueOrder, crawl_plan, schedule
from cluster.mock_web.site import CrawlExpectation, SiteConfig, SiteModel
from nets.errors import CpnError

ROOT: Final = Path(__file__).resolve().parent.parent
# The checkout whose `cpn crawl` runs (another one's, to measure before and after a change
# back to back); the mock web and Scrapy always come from this one.
CRAWLER_ROOT: Final = Path(os.environ.get("CPN_SWEEP_CRAWLER_ROOT", str(ROOT))).resolve()
SWEEP_JSON_KEYS: Final = (
    "worst_span_over_bound",
    "worst_wall_over_scrapy",
    "violations",
    "duplicates",
    "missing",
    "over_cap",
    "startup_s",
    "cpu_over_scrapy",
    "worst_span_over_online_bound",
    # Against the polite Scrapy (bench/crawl_scrapy.py --polite), after the keys above.
    "worst_wall_over_polite_scrapy",
    "cpu_over_polite_scrapy",
    "polite_scrapy_violations",
    "worst_span_over_schedule",
)
# Which released request of a host the net starts first: ``scrape`` takes the target
# due longest (nets/scraper.py), a retry being due at the end of its wait.
OUR_QUEUE_ORDER: Final = QueueOrder.FIFO
RATE_MAX_PER_S: Final = 800.0  # hosts / delay: requests per second politeness allows
BOUND_S_MAX: Final = 30.0
CAP: Final = 16  # direct_slots for the net, CONCURRENT_REQUESTS for Scrapy
MAX_ATTEMPTS: Final = 4
BACKOFF_BASE_MS: Final = 100
SEED: Final = 1
FAILING_FRACTION: Final = 0.1
RETRY_AFTER_S: Final = 1
WEB_START_S_MAX: Final = 30.0
WEB_STOP_S_MAX: Final = 15.0


@dataclass(frozen=True)
class SweepPoint:
    """One mock web: its shape and the delay both crawlers keep."""

    hosts: int
    pages: int
    delay_ms: int
    latency_ms: int = 10
    retry_after_fraction: float = 0.02

    @property
    def rate_per_s(self) -> float:
        """Requests per second politeness allows over all hosts."""
        return self.hosts * 1000 / self.delay_ms

    def site(self) -> SiteModel:
        return SiteModel(
            SiteConfig(
                hosts=self.hosts,
                pages_per_host=self.pages,
                seed=SEED,
                failing_fraction=FAILING_FRACTION,
                retry_after_fraction=self.retry_after_fraction,
                retry_after_s=RETRY_AFTER_S,
            )
        )

    def label(self) -> str:
        return f"{self.hosts} hosts x {self.pages} pages, delay {self.delay_ms} ms"


# Delays 20 ms .. 1 s, 5 .. 200 hosts, 10 .. 100 pages a host; the issue's own web (40 x
# 25, 50 ms) among them. Candidates that break a limit are dropped by `eligible`.
CANDIDATES: Final = (
    SweepPoint(40, 25, 50),
    SweepPoint(5, 100, 100),
    SweepPoint(10, 50, 20),
    SweepPoint(200, 10, 250),
    SweepPoint(20, 20, 1_000),
    SweepPoint(100, 10, 125),
    SweepPoint(100, 10, 20),  # 5,000 requests/s: too fast for one machine's loopback
)
# Small webs; a larger share of Retry-After pages so that each has some.
QUICK_CANDIDATES: Final = (
    SweepPoint(10, 10, 20, retry_after_fraction=0.05),
    SweepPoint(40, 10, 50, retry_after_fraction=0.05),
    SweepPoint(5, 20, 100, retry_after_fraction=0.05),
)


def point_bound_ms(point: SweepPoint, expectation: CrawlExpectation, *, cap: int = CAP) -> int:
    """The fastest any crawl of ``point`` keeping its limits can end: the larger of the
    retry-inclusive politeness bound and requests x service time / cap (the service
    time is the mock web's latency: an answer leaves the server that long after its
    request arrived)."""
    politeness = expectation.politeness_lower_bound_ms(
        delay_ms=point.delay_ms, latency_ms=point.latency_ms, backoff_base_ms=BACKOFF_BASE_MS
    )
    requests = sum(expectation.requests_per_host)
    return max(politeness, -(-requests * point.latency_ms // cap))


def point_online_bound_ms(
    point: SweepPoint, site: SiteModel, expectation: CrawlExpectation, *, cap: int = CAP
) -> int:
    """As :func:`point_bound_ms`, with the online bound
    (:func:`cluster.mock_web.bounds.online_lower_bound_ms`: a URL is asked no sooner than
    a page linking to it was answered) in place of the retry-inclusive one."""
    online = online_lower_bound_ms(
        site,
        expectation,
        delay_ms=point.delay_ms,
        latency_ms=point.latency_ms,
        backoff_base_ms=BACKOFF_BASE_MS,
    )
    requests = sum(expectation.requests_per_host)
    return max(online, -(-requests * point.latency_ms // cap))


def point_schedule_ms(
    point: SweepPoint,
    site: SiteModel,
    expectation: CrawlExpectation,
    *,
    order: QueueOrder = OUR_QUEUE_ORDER,
    cap: int = CAP,
) -> int:
    """The span of the ideal crawler of :mod:`cluster.mock_web.schedule` at ``point``
    (no overhead, not clairvoyant, ``order`` at a host): a reference, not a bound."""
    plan = crawl_plan(site, expectation, delay_ms=point.delay_ms)
    return schedule(
        plan, latency_ms=point.latency_ms, backoff_base_ms=BACKOFF_BASE_MS, cap=cap, order=order
    ).span_ms


def eligible(points: Iterable[SweepPoint]) -> tuple[SweepPoint, ...]:
    """The points whose politeness rate and bound stay within the sweep's limits."""
    chosen = []
    for point in points:
        if point.rate_per_s > RATE_MAX_PER_S:
            continue
        expectation = point.site().expected_crawl(attempts_max=MAX_ATTEMPTS)
        if point_bound_ms(point, expectation) > BOUND_S_MAX * 1000:
            continue
        chosen.append(point)
    return tuple(chosen)


def over_cap(records: Sequence[RequestRecord], *, cap: int) -> int:
    """The largest excess of requests in flight at once over a cap: ``cap`` over all
    hosts, 1 at each host (0: never above either)."""
    if not records:
        return 0
    everywhere = max(_peak_in_flight(records) - cap, 0)
    per_host = max(max(max_concurrency(records).values()) - 1, 0)
    return max(everywhere, per_host)


def _peak_in_flight(records: Sequence[RequestRecord]) -> int:
    # At equal times an end (-1) sorts before a start (+1): half-open intervals.
    events = sorted([(r.start_ns, 1) for r in records] + [(r.end_ns, -1) for r in records])
    return max(itertools.accumulate(step for _, step in events))


def server_duplicates(records: Sequence[RequestRecord]) -> int:
    """Requests for a URL after the mock web had answered it with a 2xx."""
    answered: set[tuple[int, str]] = set()
    duplicates = 0
    for record in sorted(records, key=lambda r: r.start_ns):
        key = (record.host, record.path)
        if key in answered:
            duplicates += 1
        if 200 <= record.status < 300:
            answered.add(key)
    return duplicates


# -- running -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CrawlerRun:
    """One crawler at one point, as measured from outside."""

    name: str
    wall_s: float
    startup_s: float
    span_ms: int
    bound_ms: int
    violations: int
    duplicates: int
    missing: int
    over_cap: int
    pages: int
    requests: int
    cpu_s: float
    finished: bool = True  # False: stopped after RUN_TIMEOUT_S; its figures so far
    # Ours only: when each phase of start-up and shut-down ended, in seconds since the
    # crawl's exec (its report's ``phases_s``, cluster/crawler/crawl.py).
    phases_s: tuple[tuple[str, float], ...] = ()
    # CPU seconds by process role (:func:`_role`), the largest first.
    cpu_by_role: tuple[tuple[str, float], ...] = ()
    online_bound_ms: int = 0  # point_online_bound_ms; 0: not computed
    schedule_ms: int = 0  # point_schedule_ms for OUR_QUEUE_ORDER; 0: not computed

    @property
    def span_over_online_bound(self) -> float:
        return self.span_ms / (self.online_bound_ms or self.bound_ms)

    @property
    def span_over_schedule(self) -> float:
        return self.span_ms / (self.schedule_ms or self.bound_ms)

    @property
    def span_over_bound(self) -> float:
        return self.span_ms / self.bound_ms

    @property
    def cpu_s_per_1k_pages(self) -> float:
        return self.cpu_s / max(self.pages, 1) * 1000


@contextmanager
def _served(point: SweepPoint, directory: Path) -> Iterator[tuple[int, list[str], Path]]:
    """A fresh mock web process: its pid, its root URLs, its request log."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "cluster.mock_web.web", "--hosts", str(point.hosts)),
            *("--pages", str(point.pages), "--seed", str(SEED)),
            *("--latency-ms", str(point.latency_ms), "--out", str(directory)),
            *("--failing-fraction", str(FAILING_FRACTION), "--failures", "2"),
            *("--retry-after-fraction", str(point.retry_after_fraction)),
            *("--retry-after-s", str(RETRY_AFTER_S)),
        ],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    hosts_file = directory / "hosts.txt"
    try:
        deadline = time.monotonic() + WEB_START_S_MAX
        while not hosts_file.exists():  # another process writes it: no event to wait on
            if process.poll() is not None or time.monotonic() > deadline:
                raise CpnError(f"the mock web for {point.label()} did not start")
            time.sleep(0.02)
        yield process.pid, hosts_file.read_text(encoding="utf-8").split(), directory
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=WEB_STOP_S_MAX)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_crawler(
    name: str,
    point: SweepPoint,
    root: Path,
    command: Sequence[str],
    out: Path,
    *,
    installed: InstalledCopies | None = None,
) -> CrawlerRun:
    """Run one crawler at ``point`` and measure it; with ``installed``, from the
    byte-compiled copy of its checkout, as a user's install runs (bench/installed.py)."""
    site = point.site()
    expectation = site.expected_crawl(attempts_max=MAX_ATTEMPTS)
    with _served(point, root / f"web-{name}") as (web_pid, seeds, web_dir):
        seeds_file = root / "seeds.txt"
        seeds_file.write_text("".join(s + "\n" for s in seeds), encoding="utf-8")
        argv = [a.replace("{seeds}", str(seeds_file)) for a in command]
        if "{seed_urls}" in argv:
            at = argv.index("{seed_urls}")
            argv[at : at + 1] = seeds
        launched_ms = time.time_ns() // 1_000_000
        log_path = root / f"{name}.log"
        code_root = CRAWLER_ROOT if name == "ours" else ROOT
        if installed is not None:
            code_root = installed.copy_of(code_root)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Without PYTHONPYCACHEPREFIX, which would make Python read bytecode
                # only from the prefix and skip the copy's (bench/installed.py).
                env={
                    **{k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"},
                    "PYTHONPATH": str(code_root),
                },
                cwd=code_root,
            )
            cpu_s, finished, cpu_by_role = tree_cpu_s(process)
        exited_ms = time.time_ns() // 1_000_000
        assert web_pid != process.pid
        records = _read_log(web_dir / "requests.jsonl")
    if (finished and process.returncode != 0) or not records:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise CpnError(f"{name} at {point.label()} failed: {' | '.join(tail) or 'no request'}")
    netlocs = [s.removeprefix("http://").rstrip("/") for s in seeds]
    expected = {f"http://{netlocs[ref.host]}{ref.path}" for ref in expectation.stored}
    stored = _stored_urls(out)
    gaps = {h: max(point.delay_ms, site.crawl_delay_ms(h) or 0) for h in range(site.hosts)}
    first_ms = min(r.start_wall_ms for r in records)
    last_answer_ms = max(r.start_wall_ms + (r.end_ns - r.start_ns) // 1_000_000 for r in records)
    last_record_ms = out.stat().st_mtime_ns // 1_000_000 if out.exists() else first_ms
    return CrawlerRun(
        name=name,
        wall_s=(exited_ms - launched_ms) / 1000,
        startup_s=(first_ms - launched_ms) / 1000,
        # Stopped: it had not ended when stopped, so its span is at least that long.
        span_ms=max(last_answer_ms, last_record_ms, 0 if finished else exited_ms) - first_ms,
        bound_ms=point_bound_ms(point, expectation),
        online_bound_ms=point_online_bound_ms(point, site, expectation),
        schedule_ms=point_schedule_ms(point, site, expectation),
        violations=len(politeness_violations(records, gaps)),
        duplicates=server_duplicates(records),
        missing=len(expected - stored),
        over_cap=over_cap(records, cap=CAP),
        pages=len(stored),
        requests=len(records),
        cpu_s=cpu_s,
        finished=finished,
        phases_s=_phases(out.with_suffix(".report.json")),
        cpu_by_role=tuple(sorted(cpu_by_role.items(), key=lambda item: -item[1])),
    )


def _phases(report_json: Path) -> tuple[tuple[str, float], ...]:
    """The phases of a ``cpn crawl --report-json`` report; () without one."""
    if not report_json.exists():
        return ()
    phases = json.loads(report_json.read_text()).get("extra", {}).get("phases_s", {})
    return tuple((str(name), float(at_s)) for name, at_s in phases.items())


def _read_log(path: Path) -> list[RequestRecord]:
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [RequestRecord(**json.loads(line)) for line in lines]


def _stored_urls(path: Path) -> set[str]:
    if not path.exists():
        return set()
    lines = path.read_text(encoding="utf-8").splitlines()
    return {str(json.loads(line).get("url", "")) for line in lines if line.strip()}


def ours(point: SweepPoint, out: Path, data: Path) -> list[str]:
    """``cpn crawl`` as a user types it, with the sweep's limits."""
    return [
        *(sys.executable, "-m", "cluster.cli", "crawl", "{seed_urls}", "--out", str(out)),
        *("--delay", f"{point.delay_ms}ms", "--quiet", "--data", str(data)),
        *("--net-param", f"direct_slots={CAP}", "--net-param", f"max_attempts={MAX_ATTEMPTS}"),
        *("--net-param", f"backoff_base_ms={BACKOFF_BASE_MS}"),
        *("--report-json", str(out.with_suffix(".report.json"))),
    ]


def scrapy_command(point: SweepPoint, out: Path, *, polite: bool = False) -> list[str]:
    """Scrapy with the issue's settings; ``polite``: also keeping Crawl-delay and
    Retry-After (``bench.crawl_scrapy --polite``)."""
    return [
        *(sys.executable, "-m", "bench.crawl_scrapy", "--seeds", "{seeds}", "--out", str(out)),
        *("--delay-ms", str(point.delay_ms), "--cap", str(CAP)),
        *("--retry-times", str(MAX_ATTEMPTS - 1)),
        *(("--polite",) if polite else ()),
    ]


def schedule_line(point: SweepPoint) -> str:
    """The point's bounds and the ideal crawler's span for each :class:`QueueOrder`
    (ours marked with *)."""
    site = point.site()
    expectation = site.expected_crawl(attempts_max=MAX_ATTEMPTS)
    spans = ", ".join(
        f"{order.value}{'*' if order is OUR_QUEUE_ORDER else ''} "
        f"{point_schedule_ms(point, site, expectation, order=order) / 1000:.2f} s"
        for order in QueueOrder
    )
    return (
        f"  bound {point_bound_ms(point, expectation) / 1000:.2f} s, online bound "
        f"{point_online_bound_ms(point, site, expectation) / 1000:.2f} s; ideal "
        f"non-clairvoyant schedule (cluster/mock_web/schedule.py): {spans}"
    )


def describe(run: CrawlerRun) -> str:
    stopped = "" if run.finished else f" STOPPED after {RUN_TIMEOUT_S:.0f} s:"
    return (
        (
            f"  {run.name:7s}{stopped} span {run.span_ms / 1000:6.2f} s / bound "
            f"{run.bound_ms / 1000:5.2f} s = {run.span_over_bound:4.2f} (online bound "
            f"{run.online_bound_ms / 1000:5.2f} s: {run.span_over_online_bound:4.2f}; "
            f"schedule {run.schedule_ms / 1000:5.2f} s: {run.span_over_schedule:4.2f}); "
            f"launch to exit {run.wall_s:5.2f} s, start-up "
            f"{run.startup_s:4.2f} s; violations {run.violations}, duplicates {run.duplicates}, "
            f"missing {run.missing}, over cap {run.over_cap}; {run.pages} pages, "
            f"{run.requests} requests; CPU {run.cpu_s:5.2f} s = {run.cpu_s_per_1k_pages:5.2f} s "
            "per 1,000 pages"
        )
        + (
            "\n          phases (s since exec): "
            + ", ".join(f"{name} {at_s:.2f}" for name, at_s in run.phases_s)
            if run.phases_s
            else ""
        )
        + (
            "\n          CPU by process (s): "
            + ", ".join(f"{role} {cpu_s:.2f}" for role, cpu_s in run.cpu_by_role)
            if run.cpu_by_role
            else ""
        )
    )


def summary(
    pairs: Sequence[tuple[CrawlerRun, CrawlerRun]], *, polite: Sequence[CrawlerRun] = ()
) -> dict[str, Any]:
    """The sweep's last line (the keys of :data:`SWEEP_JSON_KEYS`): ours, each pair being
    (ours, Scrapy's) at one point; the ratios at the point of the worst span over bound.
    ``polite`` holds the polite Scrapy's run at each point, in the same order (empty: not
    run, and its keys are null)."""
    assert not polite or len(polite) == len(pairs), (len(polite), len(pairs))
    worst_at = max(range(len(pairs)), key=lambda at: pairs[at][0].span_over_bound)
    worst_ours, worst_scrapy = pairs[worst_at]
    figures = {
        "worst_span_over_bound": round(worst_ours.span_over_bound, 3),
        "worst_wall_over_scrapy": round(worst_ours.wall_s / worst_scrapy.wall_s, 3),
        "violations": sum(o.violations for o, _ in pairs),
        "duplicates": sum(o.duplicates for o, _ in pairs),
        "missing": sum(o.missing for o, _ in pairs),
        "over_cap": max(o.over_cap for o, _ in pairs),
        "startup_s": round(max(o.startup_s for o, _ in pairs), 3),
        "cpu_over_scrapy": round(
            worst_ours.cpu_s_per_1k_pages / max(worst_scrapy.cpu_s_per_1k_pages, 1e-9), 3
        ),
        "worst_span_over_online_bound": round(max(o.span_over_online_bound for o, _ in pairs), 3),
        **_polite_figures(worst_ours, polite[worst_at] if polite else None, polite),
        "worst_span_over_schedule": round(max(o.span_over_schedule for o, _ in pairs), 3),
    }
    assert tuple(figures) == SWEEP_JSON_KEYS
    return figures


def _polite_figures(
    worst_ours: CrawlerRun, worst_polite: CrawlerRun | None, polite: Sequence[CrawlerRun]
) -> dict[str, Any]:
    """The polite Scrapy's keys of the last line: ours over it at our worst point, and
    its violations summed over the points (its acceptance: 0)."""
    if worst_polite is None:
        return dict.fromkeys(
            ("worst_wall_over_polite_scrapy", "cpu_over_polite_scrapy", "polite_scrapy_violations")
        )
    return {
        "worst_wall_over_polite_scrapy": round(worst_ours.wall_s / worst_polite.wall_s, 3),
        "cpu_over_polite_scrapy": round(
            worst_ours.cpu_s_per_1k_pages / max(worst_polite.cpu_s_per_1k_pages, 1e-9), 3
        ),
        "polite_scrapy_violations": sum(p.violations for p in polite),
    }


def scrapy_missing() -> str | None:
    """None when Scrapy can be imported; else the one-line error ``--sweep`` stops with."""
    if importlib.util.find_spec("scrapy") is None:
        return (
            "--sweep runs Scrapy beside the crawler: install the bench extra "
            "(pip install -e '.[bench]')"
        )
    return None


def sweep(*, quick: bool, wall_over_bound_max: float) -> int:
    """Run the sweep, print a block per point and the JSON line; the exit code."""
    points = eligible(QUICK_CANDIDATES if quick else CANDIDATES)
    started = time.perf_counter()
    pairs: list[tuple[CrawlerRun, CrawlerRun]] = []
    polite: list[CrawlerRun] = []
    with tempfile.TemporaryDirectory(prefix="cpn-bench-sweep-") as scratch:
        installed = install_checkouts(Path(scratch), (CRAWLER_ROOT, ROOT))  # untimed
        for index, point in enumerate(points):
            root = Path(scratch) / f"point-{index}"
            root.mkdir()
            print(
                f"point {index + 1}/{len(points)}: {point.label()}, latency "
                f"{point.latency_ms} ms, {FAILING_FRACTION:.0%} failing twice, "
                f"{point.retry_after_fraction:.0%} always 503 with Retry-After: "
                f"{RETRY_AFTER_S}; cap {CAP}; {point.rate_per_s:,.0f} requests/s allowed",
                flush=True,
            )
            print(schedule_line(point), flush=True)
            our_out, scrapy_out = root / "ours.jsonl", root / "scrapy.jsonl"
            mine = run_crawler(
                "ours", point, root, ours(point, our_out, root / "crawl"), our_out,
                installed=installed,
            )  # fmt: skip
            print(describe(mine), flush=True)
            theirs = run_crawler(
                "scrapy", point, root, scrapy_command(point, scrapy_out), scrapy_out,
                installed=installed,
            )  # fmt: skip
            print(describe(theirs), flush=True)
            pairs.append((mine, theirs))
            polite_out = root / "scrapy-polite.jsonl"
            polite.append(
                run_crawler(
                    "scrapy-polite",
                    point,
                    root,
                    scrapy_command(point, polite_out, polite=True),
                    polite_out,
                    installed=installed,
                )
            )
            print(describe(polite[-1]), flush=True)
    figures = summary(pairs, polite=polite)
    verdict = "ok" if figures["worst_span_over_bound"] <= wall_over_bound_max else "MISSED"
    print(
        f"worst span over bound {figures['worst_span_over_bound']} (target "
        f"{wall_over_bound_max}: {verdict}); sweep took {time.perf_counter() - started:.1f} s, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(json.dumps(figures))
    return 0
