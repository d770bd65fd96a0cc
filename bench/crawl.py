"""Benchmark: the crawler net on a real cluster against a hand-written crawler (issue 6).

``python -m bench.crawl [--quick]`` crawls the mock web (``cluster/mock_web/web.py``: 20 hosts
x 40 pages, or 10 x 20 with ``--quick``; 10 ms latency; 10 % of the HTML pages answer 503
twice before succeeding; seed 1) twice in one invocation, each time against a fresh mock
web process (its failure counters start anew):

1. **the net**: ``cluster.crawler.crawl.Crawl`` (what ``cpn crawl`` runs) starts a cluster of
   ``nets.scraper:net`` (2 shards) and its fetch and store workers (its fetch workers
   parse the pages; ``--parse-workers N`` adds parse workers), and crawls
   from every host's root;
2. **the baseline**: ``bench/crawl_handwritten.py``, the same policy written by hand as
   one asyncio process, with the same fetch, parse and store code.

Both get the same policy: a 100 ms delay between request starts at a host (or the
host's ``Crawl-delay`` when larger), concurrency 1 per host, ``backoff_base_ms`` 100 (a
retry waits 100 ms, then 200 ms, ...) and otherwise ``CrawlPolicy``'s defaults: a late
allowance of 5 ms and a safety margin of 5 ms added to every gap, 4 attempts.

Measured for each, from the outside:

* **wall time over the politeness lower bound**. The bound is
  ``CrawlExpectation.politeness_lower_bound_ms``: the largest over hosts of (the
  requests the host must receive, robots.txt and the retries a perfect crawler needs
  included, minus one) x its delay, plus one latency. Wall time runs from the first
  request the mock web received to the last record written to the output file (its
  modification time) or the last answer, whichever is later (as ``cpn demo`` measures);
  start-up (from the crawl's start to the first request) is printed apart. Target 1.15 (issue 17).
* **violations**: two requests starting at one host closer than its delay, in the mock
  web's own log (``cluster.mock_web.log.politeness_violations``); must be 0. Requests
  in progress at once per host (must not exceed the concurrency) are printed too.
* **duplicates** (records whose URL the output file already holds) and **pages** stored
  against the pages a perfect crawl stores (``SiteModel.expected_crawl``).
* **decisions per second**: the net's firings summed over the shards' counters (read
  just before the crawl stops), over the wall time; for the baseline, its own count of
  decisions (admissions, starts, verdicts, pipeline steps).
* **CPU seconds per 1,000 pages**: for the net, the CPU time of every process the crawl
  started (shards, router, workers; sampled with psutil just before they are stopped)
  plus this process's own (the crawl's driver); for the baseline, this process's. The
  mock web runs in a process of its own and is never counted.
* **lines of coordination logic**: ``net_lines`` counts the lines of
  ``nets/scraper.py`` (colour sets, its pure inscriptions and the net) but for what the
  hand-written crawler imports from it (the policy, the robots.txt readers: code both
  share),
  ``handwritten_lines`` those of ``bench/crawl_handwritten.py`` (all of it is
  scheduling and coordination: its effects are imported); both by :func:`logic_lines`,
  which counts a line when it holds code: blank lines, comments and docstrings do not
  count.

``--sweep [--quick]`` runs ``cpn crawl`` and Scrapy side by side over mock webs of many
shapes instead (``bench/crawl_sweep.py``, which says what it measures and prints).

Timings move with the machine's load (2 shared cores): the load average is printed with
the wall time. The last line is one JSON object with the keys of :data:`JSON_KEYS`, the
figures of the net's run (of the baseline's with ``--skip-cluster``, as a line before
says).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tokenize
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psutil

from bench.crawl_handwritten import HandwrittenCrawler
from cluster.crawler.report import file_pages
from cluster.mock_web.log import RequestRecord, max_concurrency, politeness_violations
from cluster.mock_web.site import CrawlExpectation, PageRef, SiteConfig, SiteModel
from cluster.mock_web.web import HOSTS_FILE, REQUESTS_FILE
from nets.errors import CpnError
from nets.scraper import CrawlPolicy
from router.shell.datadir import read_endpoint

ROOT: Final = Path(__file__).resolve().parent.parent
NET_FILE: Final = ROOT / "nets" / "scraper.py"
HANDWRITTEN_FILE: Final = ROOT / "bench" / "crawl_handwritten.py"
JSON_KEYS: Final = (
    "pages",
    "wall_over_bound",
    "violations",
    "duplicates",
    "decisions_per_s",
    "cpu_s_per_1k_pages",
    "net_lines",
    "handwritten_lines",
    "startup_s",  # added by issue 17 (keys are added, never renamed)
)
SEED: Final = 1
LATENCY_MS: Final = 10
DELAY_MS: Final = 100
FAILING_FRACTION: Final = 0.1
FAILURES_BEFORE_SUCCESS: Final = 2
BACKOFF_BASE_MS: Final = 100
WALL_OVER_BOUND_MAX: Final = 1.15  # issue 17's target
MOCKWEB_START_S_MAX: Final = 30.0
MOCKWEB_STOP_S_MAX: Final = 15.0
CRAWL_TIMEOUT_S: Final = 600.0
CPU_SAMPLE_S: Final = 0.5
DEFAULT_POLICY: Final = CrawlPolicy()


# -- lines of code --------------------------------------------------------------------------


def logic_lines(source: str, *, without: frozenset[str] = frozenset()) -> int:
    """The lines of ``source`` that hold code: not blank, not only a comment, and not
    part of a docstring (a module's, class's or function's first string statement).

    A statement spread over several lines counts each line it spans. The top-level
    definitions named in ``without`` do not count (code both crawlers share).
    """
    tree = ast.parse(source)
    docstrings: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name in without:
            top = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            docstrings.update(range(top, (node.end_lineno or node.lineno) + 1))
    for walked in ast.walk(tree):
        if isinstance(walked, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = walked.body[0] if walked.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                docstrings.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    code: set[int] = set()
    skipped = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT}
    skipped |= {tokenize.DEDENT, tokenize.ENDMARKER}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skipped:
            code.update(range(token.start[0], token.end[0] + 1))
    return len(code - docstrings)


def shared_names(handwritten_source: str) -> frozenset[str]:
    """What the hand-written crawler imports from the net's module (the policy, the
    robots.txt readers): code both use, so neither count holds it."""
    names: set[str] = set()
    for node in ast.parse(handwritten_source).body:
        if isinstance(node, ast.ImportFrom) and node.module == "nets.scraper":
            names.update(alias.name for alias in node.names)
    return frozenset(names)


# -- the mock web, as its own process --------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    hosts: int
    pages: int
    seed: int = SEED
    latency_ms: int = LATENCY_MS
    delay_ms: int = DELAY_MS

    def site(self) -> SiteModel:
        return SiteModel(
            SiteConfig(
                hosts=self.hosts,
                pages_per_host=self.pages,
                seed=self.seed,
                failing_fraction=FAILING_FRACTION,
                failures_before_success=FAILURES_BEFORE_SUCCESS,
            )
        )


@dataclass(frozen=True)
class ServedWeb:
    pid: int
    seeds: tuple[str, ...]
    netlocs: tuple[str, ...]
    log_path: Path

    def url(self, ref: PageRef) -> str:
        return f"http://{self.netlocs[ref.host]}{ref.path}"

    def requests(self) -> list[RequestRecord]:
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [RequestRecord(**json.loads(line)) for line in lines]


@contextmanager
def served_web(workload: Workload, directory: Path) -> Iterator[ServedWeb]:
    """A fresh mock web in its own process (so that its CPU is never counted)."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "cluster.mock_web.web", "--hosts", str(workload.hosts)),
            *("--pages", str(workload.pages), "--seed", str(workload.seed)),
            *("--latency-ms", str(workload.latency_ms), "--out", str(directory)),
            *("--failing-fraction", str(FAILING_FRACTION)),
            *("--failures", str(FAILURES_BEFORE_SUCCESS)),
        ],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + MOCKWEB_START_S_MAX
        while not (directory / HOSTS_FILE).exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise CpnError(f"the mock web did not start: {_stderr(process)}")
            time.sleep(0.02)  # another process writes the file: no event to wait on
        seeds = tuple((directory / HOSTS_FILE).read_text(encoding="utf-8").split())
        netlocs = tuple(seed.removeprefix("http://").rstrip("/") for seed in seeds)
        yield ServedWeb(process.pid, seeds, netlocs, directory / REQUESTS_FILE)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=MOCKWEB_STOP_S_MAX)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def _stderr(process: subprocess.Popen[bytes]) -> str:
    if process.poll() is None:
        return "still starting"
    return process.stderr.read().decode(errors="replace")[-2000:] if process.stderr else ""


# -- measuring -------------------------------------------------------------------------------


class ChildCpu:
    """CPU seconds of this process's descendants (except ``excluded``), by sampling.

    A process's CPU time only grows, so the largest sample per pid is its total up to
    the last sample; take one just before the processes are stopped.
    """

    def __init__(
        self, *, excluded: set[int], known: Callable[[], Mapping[int, str]] | None = None
    ) -> None:
        """``known``: the kinds of the pids known by other means than a command line
        (a forked child shows its parent's: cluster/forked.py), asked at every sample."""
        self._excluded = excluded
        self._known = known
        self._seconds: dict[int, float] = {}
        self._kinds: dict[int, str] = {}

    def sample(self) -> None:
        if self._known is not None:
            self._kinds.update(self._known())
        for child in psutil.Process().children(recursive=True):
            if child.pid in self._excluded:
                continue
            try:
                times = child.cpu_times()
                if child.pid not in self._kinds:
                    self._kinds[child.pid] = process_kind(child.cmdline())
            except psutil.Error:
                continue  # it just exited: its last sample stands
            used = times.user + times.system
            self._seconds[child.pid] = max(used, self._seconds.get(child.pid, 0.0))

    def total_s(self) -> float:
        return sum(self._seconds.values())

    def by_kind(self) -> dict[str, float]:
        """CPU seconds per kind of process (shard, router, fetch worker, ...)."""
        kinds: dict[str, float] = {}
        for pid, seconds in self._seconds.items():
            kind = self._kinds.get(pid, "other")
            kinds[kind] = kinds.get(kind, 0.0) + seconds
        return dict(sorted(kinds.items(), key=lambda item: -item[1]))


def process_kind(argv: Sequence[str]) -> str:
    """``shard``, ``router``, ``supervisor``, ``fetch worker``, ... from a command line."""
    for command in ("shard", "router"):
        if command in argv:
            return command
    if "up" in argv:
        return "supervisor"
    if "--role" in argv and argv.index("--role") + 1 < len(argv):
        return f"{argv[argv.index('--role') + 1]} worker"
    return "other"


@dataclass(frozen=True)
class RunResult:
    name: str
    pages: int
    expected: int
    missing: int
    unexpected: int
    duplicates: int
    requests: int
    violations: int
    max_concurrency: int
    wall_ms: int
    startup_ms: int
    bound_ms: int
    decisions: int
    cpu_s: float

    @property
    def wall_over_bound(self) -> float:
        return self.wall_ms / self.bound_ms

    @property
    def decisions_per_s(self) -> float:
        return self.decisions / max(self.wall_ms / 1000, 1e-3)

    @property
    def cpu_s_per_1k_pages(self) -> float:
        return self.cpu_s / max(self.pages, 1) * 1000


def measure(
    name: str,
    workload: Workload,
    expectation: CrawlExpectation,
    web: ServedWeb,
    out: Path,
    *,
    started_wall_ms: int,
    decisions: int,
    cpu_s: float,
) -> RunResult:
    """The figures of one finished crawl, from the mock web's log and the output file."""
    records = web.requests()
    if not records:
        raise CpnError(f"{name}: the mock web received no request")
    stored, duplicates = file_pages(out)
    expected = {web.url(ref) for ref in expectation.stored}
    site = workload.site()
    gaps = {h: max(workload.delay_ms, site.crawl_delay_ms(h) or 0) for h in range(site.hosts)}
    first_ms = min(r.start_wall_ms for r in records)
    last_answer_ms = max(r.start_wall_ms + (r.end_ns - r.start_ns) // 1_000_000 for r in records)
    last_record_ms = out.stat().st_mtime_ns // 1_000_000 if out.exists() else first_ms
    return RunResult(
        name=name,
        pages=len(stored),
        expected=len(expected),
        missing=len(expected - stored),
        unexpected=len(stored - expected),
        duplicates=duplicates,
        requests=len(records),
        violations=len(politeness_violations(records, gaps)),
        max_concurrency=max(max_concurrency(records).values()),
        wall_ms=max(last_record_ms, last_answer_ms) - first_ms,
        startup_ms=first_ms - started_wall_ms,
        bound_ms=expectation.politeness_lower_bound_ms(
            delay_ms=workload.delay_ms, latency_ms=workload.latency_ms
        ),
        decisions=decisions,
        cpu_s=cpu_s,
    )


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


# -- the two crawlers ------------------------------------------------------------------------


def policy_params(args: argparse.Namespace) -> dict[str, Any]:
    """The policy both crawlers get (``CrawlPolicy`` fields; the rest are its defaults)."""
    return {
        "delay_ms": args.delay_ms,
        "backoff_base_ms": args.backoff_base_ms,
        "late_ms": args.late_ms,
        "margin_ms": args.margin_ms,
    }


def run_handwritten(
    workload: Workload, expectation: CrawlExpectation, params: dict[str, Any], root: Path
) -> RunResult:
    out = root / "handwritten-pages.jsonl"
    with served_web(workload, root / "web-handwritten") as web:
        crawler = HandwrittenCrawler(CrawlPolicy(**params), out)
        started_wall_ms = _wall_ms()
        cpu_before = time.process_time()
        statistics = asyncio.run(asyncio.wait_for(crawler.crawl(web.seeds), CRAWL_TIMEOUT_S))
        cpu_s = time.process_time() - cpu_before
    return measure(
        "hand-written",
        workload,
        expectation,
        web,
        out,
        started_wall_ms=started_wall_ms,
        decisions=statistics.decisions,
        cpu_s=cpu_s,
    )


def run_cluster(
    workload: Workload,
    expectation: CrawlExpectation,
    params: dict[str, Any],
    root: Path,
    args: argparse.Namespace,
) -> RunResult:
    from cluster.client import ClusterClient
    from cluster.crawler.crawl import Crawl, CrawlOptions

    class MeasuredCrawl(Crawl):
        """``Crawl`` that also reads every firing counter and the processes' CPU time
        at the end, while the shards and workers still run."""

        firings = 0
        cpu: ChildCpu | None = None

        def _collect(self, client: ClusterClient) -> None:
            super()._collect(client)
            firings: Counter[str] = Counter()
            for stats in client.statistics().values():
                firings.update(stats.get("firings", {}))
            self.firings = sum(firings.values())
            assert self.cpu is not None
            self.cpu.sample()

        def known_pids(self) -> dict[int, str]:
            """The workers', the router's and the shards' pids, by kind."""
            roles = {w.role for w in self.workers}
            known = {pid: f"{role} worker" for role in roles for pid in self.worker_pids(role)}
            if self.layout is not None:
                dirs = [("router", self.layout.router_dir)]
                dirs += [("shard", self.layout.shard_dir(k)) for k in range(args.shards)]
                for kind, data_dir in dirs:
                    published = read_endpoint(data_dir)
                    if published is not None:
                        known[published[1]] = kind
            return known

    out = root / "cluster-pages.jsonl"
    with served_web(workload, root / "web-cluster") as web:
        options = CrawlOptions(
            seeds=web.seeds,
            out=out,
            shards=args.shards,
            fetch_workers=args.fetch_workers,
            parse_workers=args.parse_workers,
            store_workers=args.store_workers,
            delay_ms=params["delay_ms"],
            data_dir=root / "crawl",
            net_params={k: v for k, v in params.items() if k != "delay_ms"},
            timeout_ms=int(CRAWL_TIMEOUT_S * 1000),
            progress=False,
        )
        crawl = MeasuredCrawl(options, stderr=sys.stderr)
        crawl.cpu = ChildCpu(excluded={web.pid}, known=crawl.known_pids)
        started_wall_ms = _wall_ms()
        cpu_before = time.process_time()
        sampling = _every(CPU_SAMPLE_S, crawl.cpu.sample)
        try:
            report = crawl.run()
        finally:
            sampling()
        cpu_s = crawl.cpu.total_s() + time.process_time() - cpu_before
        kinds = ", ".join(f"{kind} {s:.1f} s" for kind, s in crawl.cpu.by_kind().items())
        print(f"net (cluster): CPU by process: {kinds}", file=sys.stderr)
    if not report.complete:
        raise CpnError("the cluster crawl did not finish (timed out)")
    return measure(
        "net (cluster)",
        workload,
        expectation,
        web,
        out,
        started_wall_ms=started_wall_ms,
        decisions=crawl.firings,
        cpu_s=cpu_s,
    )


def _every(period_s: float, action: Callable[[], None]) -> Callable[[], None]:
    """Run ``action`` every ``period_s`` in a thread; returns the function that stops it."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period_s):
            action()

    thread = threading.Thread(target=loop, name="bench-cpu-sampler", daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join()

    return stopper


# -- main --------------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def describe(result: RunResult) -> Iterator[str]:
    r = result
    yield (
        f"{r.name}: wall {r.wall_ms / 1000:.2f} s over bound {r.bound_ms / 1000:.2f} s = "
        f"{r.wall_over_bound:.2f} (target {WALL_OVER_BOUND_MAX}: "
        f"{_verdict(r.wall_over_bound <= WALL_OVER_BOUND_MAX)}); start-up "
        f"{r.startup_ms / 1000:.2f} s"
    )
    yield (
        f"  violations {r.violations} (0: {_verdict(r.violations == 0)}), most at once per "
        f"host {r.max_concurrency}, duplicates {r.duplicates} (0: "
        f"{_verdict(r.duplicates == 0)}); {r.requests:,} requests"
    )
    yield (
        f"  pages stored {r.pages:,} of {r.expected:,} expected (missing {r.missing}, "
        f"unexpected {r.unexpected}: {_verdict(r.missing == r.unexpected == 0)})"
    )
    yield (
        f"  {r.decisions:,} decisions = {r.decisions_per_s:,.0f}/s; CPU {r.cpu_s:.2f} s = "
        f"{r.cpu_s_per_1k_pages:.2f} s per 1,000 pages"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 hosts x 20 pages")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--fetch-workers", type=int, default=2)
    parser.add_argument("--parse-workers", type=int, default=0)
    parser.add_argument("--store-workers", type=int, default=1)
    parser.add_argument("--delay-ms", type=int, default=DELAY_MS)
    parser.add_argument("--backoff-base-ms", type=int, default=BACKOFF_BASE_MS)
    parser.add_argument("--late-ms", type=int, default=DEFAULT_POLICY.late_ms)
    parser.add_argument("--margin-ms", type=int, default=DEFAULT_POLICY.margin_ms)
    parser.add_argument(
        "--skip-cluster", action="store_true", help="run the hand-written baseline only"
    )
    parser.add_argument(
        "--sweep", action="store_true",
        help="cpn crawl and Scrapy side by side over many mock webs (bench/crawl_sweep.py)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.sweep:
        from bench.crawl_sweep import scrapy_missing, sweep

        problem = scrapy_missing()
        if problem is not None:
            print(f"bench.crawl: error: {problem}", file=sys.stderr)
            return 2
        return sweep(quick=args.quick, wall_over_bound_max=WALL_OVER_BOUND_MAX)
    hosts, pages = (10, 20) if args.quick else (20, 40)
    workload = Workload(hosts, pages, delay_ms=args.delay_ms)
    params = policy_params(args)
    expectation = workload.site().expected_crawl(attempts_max=DEFAULT_POLICY.max_attempts)
    handwritten_source = HANDWRITTEN_FILE.read_text(encoding="utf-8")
    net_lines = logic_lines(
        NET_FILE.read_text(encoding="utf-8"), without=shared_names(handwritten_source)
    )
    handwritten_lines = logic_lines(handwritten_source)
    print(
        f"mock web: {hosts} hosts x {pages} pages, seed {workload.seed}, latency "
        f"{workload.latency_ms} ms, {FAILING_FRACTION:.0%} of pages failing "
        f"{FAILURES_BEFORE_SUCCESS}x with 503; policy {params}"
    )
    root = Path(tempfile.mkdtemp(prefix="cpn-bench-crawl-"))
    started = time.perf_counter()
    try:
        results = []
        if not args.skip_cluster:
            results.append(run_cluster(workload, expectation, params, root, args))
        results.append(run_handwritten(workload, expectation, params, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for result in results:
        for line in describe(result):
            print(line)
    print(
        f"coordination logic: net {net_lines} lines (nets/scraper.py) vs hand-written "
        f"{handwritten_lines} lines (bench/crawl_handwritten.py)"
    )
    print(
        f"wall time {time.perf_counter() - started:.1f} s, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    main_result = results[0]
    if args.skip_cluster:
        print("--skip-cluster: the JSON figures below are the hand-written crawler's")
    print(json.dumps(summary(main_result, net_lines, handwritten_lines)))
    return 0


def summary(result: RunResult, net_lines: int, handwritten_lines: int) -> dict[str, Any]:
    """The benchmark's last line: exactly the keys of :data:`JSON_KEYS`."""
    figures = {
        "pages": result.pages,
        "wall_over_bound": round(result.wall_over_bound, 3),
        "violations": result.violations,
        "duplicates": result.duplicates,
        "decisions_per_s": round(result.decisions_per_s),
        "cpu_s_per_1k_pages": round(result.cpu_s_per_1k_pages, 3),
        "net_lines": net_lines,
        "handwritten_lines": handwritten_lines,
        "startup_s": round(result.startup_ms / 1000, 3),
    }
    assert tuple(figures) == JSON_KEYS
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
