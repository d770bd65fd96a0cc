"""``cpn crawl``: run a whole crawl on a cluster of the crawler net, and report (SHELL).

:class:`Crawl` does, in order:

1. reads the seeds (URLs, or files of URLs one a line) and the proxy file, and turns
   what it cannot use into counted *bad input* (never a stop);
2. starts a cluster of ``nets.scraper:net`` with the crawl's net parameters (its
   supervisor, ``cpn up --foreground`` in ``DATA/cluster``), or joins a running one
   (``--cluster DIR``);
3. starts the workers (``cpn worker`` processes: fetch and store, parse only if asked
   or once a page waits in ``parse_queue``) while the cluster comes up, and restarts
   any that dies; one shard and one fetch worker for a small crawl unless told
   (:func:`auto_processes`);
4. once the cluster serves and every worker leases, puts the scope and the seeds into the
   net (each on its domain's shard);
5. shows a progress line while it watches the cluster, and decides the crawl is done
   when every place that holds work in progress (:data:`nets.scraper.WORK_PLACES`) is
   empty on every shard and no handoff is in flight, twice in a row;
6. stops the workers (and the cluster it started) and builds the report
   (:mod:`cluster.crawler.report`).
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from cluster.client import ClusterClient
from cluster.crawler.report import CrawlReport, domain_gaps, file_pages, read_timings, tally
from cluster.crawler.urls import InvalidUrl, canonical_url, domain_of
from cluster.forked import ForkedProcess, fork_is_safe
from cluster.launch import record_config, settle_config, spawn_supervisor, wait_up
from cluster.layout import ClusterConfig, ClusterLayout
from cluster.processes import ShardProcess, stop_all
from cluster.worker_processes import WorkerProcess, await_leasing, restart_exited, running_pids
from nets.errors import CpnError
from nets.loader import load_net

NET: Final = "nets.scraper:net"
POLL_S: Final = 0.2
PROGRESS_EVERY_S: Final = 2.0  # without a terminal, a progress line this often
DONE_POLLS: Final = 2  # consecutive idle polls that end the crawl
CONFIRM_S: Final = 0.02  # the wait before the look that confirms an idle one
SEEDS_MAX: Final = 1_000_000
PROXIES_MAX: Final = 10_000
STATS_TIMEOUT_MS: Final = 2_000
READY_TIMEOUT_S: Final = 120.0
READY_POLL_S: Final = 0.01  # the router's status, while the cluster comes up
STOP_S: Final = 60.0
# The crawl's cluster warms its spares for restarts only after this: three interpreters,
# about 1 s of CPU, which a crawl shorter than this never pays (a shard that dies before
# restarts as a new interpreter, some 0.5 s slower).
SPARES_AFTER_MS: Final = 60_000
# `auto` (0) shards and fetch workers: one of each for a crawl whose politeness allows
# at most this many requests a second (its domains, those of its seeds that the scope
# same-domains keeps it to, over the delay), two otherwise. One shard and one fetch
# worker each spend about 1 ms of CPU a request, so below this they do not fill a core,
# and a second of each costs more CPU than it gives: a process each, and the pool tokens
# and links handed between the shards (docs/scraper.md, "How many processes").
SMALL_CRAWL_REQUESTS_PER_S_MAX: Final = 1_000
WIDE_CRAWL_PROCESSES: Final = 2
WORKERS_READY_S: Final = 60.0
# Places that hold work in progress (kept in step with nets/scraper.py WORK_PLACES,
# which is used when it can be imported).
WORK_PLACES_DEFAULT: Final = (
    "links", "candidates", "targets", "fetch_queue", "fetch_queue__held", "fetching",
    "fetched", "raw_html", "parse_queue", "parse_queue__held", "parsing", "parse_done",
    "parsed", "validated", "store_queue", "store_queue__held", "storing", "store_done",
)  # fmt: skip


@dataclass(frozen=True)
class CrawlOptions:
    """What ``cpn crawl`` was asked to do (see its ``--help``)."""

    seeds: tuple[str, ...]
    out: Path
    shards: int = 0  # 0: auto (auto_processes)
    fetch_workers: int = 0  # 0: auto (auto_processes)
    parse_workers: int = 0  # 0: one, started when a page waits in parse_queue
    store_workers: int = 1
    delay_ms: int = 1_000
    proxies_file: Path | None = None
    max_pages: int | None = None  # per domain
    max_depth: int | None = None
    scope: str = "same-domains"
    allow: tuple[str, ...] = ()
    cluster_dir: Path | None = None  # join this running cluster
    data_dir: Path | None = None
    net_params: dict[str, Any] = field(default_factory=dict)
    timeout_ms: int = 3_600_000
    durability: str = "process"
    fetch_timeout_ms: int = 10_000
    lease_ms: int = 30_000
    progress: bool = True
    worker_env: dict[str, str] = field(default_factory=dict)


class Crawl:
    """One crawl, from seeds to report (see the module docstring)."""

    def __init__(self, options: CrawlOptions, *, stderr: TextIO | None = None) -> None:
        self.options = options
        self.stderr = stderr if stderr is not None else sys.stderr
        self.report = CrawlReport()
        self._own_dir: Path | None = None
        self.workers: list[WorkerProcess] = []
        self.timing_files: list[Path] = []  # the fetch workers' request timings
        self.layout: ClusterLayout | None = None
        self.started_cluster = False
        # The supervisor this crawl started, and where its log starts.
        self._supervisor: tuple[subprocess.Popen[bytes] | ForkedProcess, int] | None = None
        self.first_put_s = 0.0
        self.done_s = 0.0
        self.stop_requested = False  # set (e.g. from on_poll) to end the crawl early
        self._exec_s = 0.0  # when this process started, on the monotonic clock
        self._phases_s: dict[str, float] = {}
        self._phases_cpu_s: dict[str, float] = {}  # this process's CPU at each phase's end
        self._shards, self._fetch_workers = options.shards, options.fetch_workers

    # -- input ----------------------------------------------------------------------------

    def read_seeds(self) -> list[tuple[str, str]]:
        """(domain, canonical url) of every usable seed; the rest is bad input."""
        found: dict[str, str] = {}
        for arg in self.options.seeds:
            for text in self._seed_texts(arg):
                try:
                    url = canonical_url(text)
                except InvalidUrl as exc:
                    self.report.bad_inputs.append(f"seed: {exc}")
                    continue
                found.setdefault(url, domain_of(url))
                if len(found) >= SEEDS_MAX:
                    self.report.bad_inputs.append(f"seeds: more than {SEEDS_MAX:,}, rest ignored")
                    return [(d, u) for u, d in found.items()]
        return [(d, u) for u, d in found.items()]

    def _seed_texts(self, arg: str) -> list[str]:
        if "://" in arg:
            return [arg]
        path = Path(arg)
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self.report.bad_inputs.append(
                f"seed {arg!r}: not a URL, and not a readable file ({reason})"
            )
            return []
        return [s for line in lines if (s := line.strip()) and not s.startswith("#")]

    def read_proxies(self) -> list[str]:
        """The proxy URLs of the proxy file (none: direct connections)."""
        path = self.options.proxies_file
        if path is None:
            return []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            self.report.bad_inputs.append(
                f"proxy file {path}: unreadable ({exc}); crawling without proxies"
            )
            return []
        proxies: list[str] = []
        for number, line in enumerate(lines, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                url = canonical_url(text if "://" in text else f"http://{text}")
            except InvalidUrl as exc:
                self.report.bad_inputs.append(f"proxy file {path}:{number}: {exc}")
                continue
            if url not in proxies:
                proxies.append(url.rstrip("/"))
            if len(proxies) >= PROXIES_MAX:
                break
        if not proxies:
            self.report.bad_inputs.append(
                f"proxy file {path}: no usable proxy; crawling without proxies"
            )
        return proxies

    def net_params(self) -> dict[str, Any]:
        o = self.options
        params: dict[str, Any] = {"delay_ms": o.delay_ms, "scope": o.scope}
        proxies = self.read_proxies()
        if proxies:
            params["proxies"] = proxies
        if o.max_pages is not None:
            params["max_pages_per_domain"] = o.max_pages
        if o.max_depth is not None:
            params["max_depth"] = o.max_depth
        params.update(o.net_params)
        return params

    # -- the cluster ----------------------------------------------------------------------

    def _crawl_dir(self) -> Path:
        if self.options.data_dir is not None:
            self.options.data_dir.mkdir(parents=True, exist_ok=True)
            return self.options.data_dir.resolve()
        if self._own_dir is None:
            self._own_dir = Path(tempfile.mkdtemp(prefix="cpn-crawl-"))
        return self._own_dir

    def _start_or_join(self, params: dict[str, Any]) -> ClusterLayout:
        o = self.options
        if o.cluster_dir is not None:
            layout = ClusterLayout(o.cluster_dir.resolve())
            recorded = ClusterConfig.read(layout)
            if recorded is None:
                raise CpnError(f"no cluster in {layout.root} to join (no cluster.json)")
            if recorded.net != NET:
                raise CpnError(
                    f"the cluster in {layout.root} runs net {recorded.net!r}, not the "
                    f"crawler's {NET}"
                )
            ClusterClient.for_data_dir(layout.root).close()  # fails in one line if down
            if recorded.params != params:
                self.report.bad_inputs.append(
                    "joined a running cluster: its own net parameters apply "
                    f"({recorded.params}), not this command's"
                )
            return layout
        layout = ClusterLayout(self._crawl_dir() / "cluster")
        config = settle_config(
            layout, net=NET, shards=self._shards, seed=None, durability=o.durability,
            params=params,
        )  # fmt: skip
        load_net(config.net, seed=config.seed, params=config.params)  # one-line errors here
        # The supervisor (`cpn up --foreground`) is started here, not through `cpn up`
        # (one interpreter less before the first request), forked from this process
        # when that is safe (no interpreter at all: it shares these imports), and it
        # forks the router's and the shards' first starts in turn; the workers start
        # while it comes up (:meth:`run`). This process stops it by its handle.
        record_config(layout, config)
        fork = fork_is_safe()
        if fork:
            _freeze_imports()
        self._supervisor = spawn_supervisor(
            layout,
            config,
            extra_args=("--spares-after", f"{SPARES_AFTER_MS}ms", "--fork-children"),
            fork=fork,
        )
        self.started_cluster = True
        return layout

    def _await_cluster(self) -> None:
        """Wait until the cluster this crawl started serves on every shard."""
        if self._supervisor is None or self.layout is None:
            return
        process, log_start = self._supervisor
        config = ClusterConfig.read(self.layout)
        assert config is not None  # recorded before the supervisor started
        try:
            wait_up(
                self.layout, config, process, log_start, timeout_s=READY_TIMEOUT_S,
                poll_s=READY_POLL_S,
            )  # fmt: skip
        except CpnError as exc:
            raise CpnError(f"the crawl's cluster did not start: {exc}") from None

    def _stop(self, *, interrupted: bool) -> None:
        """Stop the workers and the cluster this crawl started: the supervisor stops its
        children itself (SIGTERM, then SIGKILL after a grace).

        A finished crawl stops them all at once: its workers hold no lease. An
        interrupted one (Ctrl-C, SIGTERM, an error) stops its workers first, while the
        shards still answer: a worker drains on SIGTERM, completing its running fetches
        and handing back the rest, and with the shards already gone it would retry
        its completions for its whole drain time (10 s) before giving up.
        """
        handles = [w.handle for w in self.workers if w.handle is not None]
        if interrupted:
            stop_all(handles, timeout_s=STOP_S)
            handles = []
        if self._supervisor is not None:
            process = self._supervisor[0]
            root = self.layout.root if self.layout is not None else Path()
            handles.append(ShardProcess(root, process, role="supervisor"))
        stop_all(handles, timeout_s=STOP_S)

    # -- workers --------------------------------------------------------------------------

    def _plan_workers(self, layout: ClusterLayout) -> None:
        o = self.options
        plan = [("fetch", self._fetch_workers), ("parse", o.parse_workers)]
        for role, count in [*plan, ("store", o.store_workers)]:
            for index in range(count):
                self.workers.append(self._worker(layout, role, index))

    def _worker(self, layout: ClusterLayout, role: str, index: int) -> WorkerProcess:
        """Worker ``index`` of ``role`` (not started); a fetch worker's timing log is noted."""
        o = self.options
        logs = self._crawl_dir() / "workers"
        logs.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable, "-m", "cluster.cli", "worker", "--role", role,
            "--data", str(layout.root), "--lease", f"{o.lease_ms}ms",
        ]  # fmt: skip
        if role == "fetch":
            timings = logs / f"fetch-{index}.timings.jsonl"
            args += ["--timings", str(timings), "--timeout", f"{o.fetch_timeout_ms}ms"]
            self.timing_files.append(timings)
        if role == "store":
            args += ["--out", str(o.out.resolve())]
            if o.durability == "process":
                args += ["--no-fsync"]
        ready = logs / f"{role}-{index}.ready"
        ready.unlink(missing_ok=True)
        args += ["--ready-file", str(ready)]
        log_path = logs / f"{role}-{index}.log"
        return WorkerProcess(role, index, args, log_path, dict(o.worker_env), ready)

    def _parse_on_demand(self, tokens: dict[str, int]) -> None:
        """Start a parse worker the first time a page waits in ``parse_queue`` (with
        ``parse_workers`` 0): this crawl's fetch workers parse every page they fetch, so
        only a fetch worker of another kind (in a joined cluster) leaves pages there."""
        waiting = tokens.get("parse_queue", 0) + tokens.get("parse_queue__held", 0)
        if waiting == 0 or self.layout is None or any(w.role == "parse" for w in self.workers):
            return
        worker = self._worker(self.layout, "parse", 0)
        self.workers.append(worker)
        worker.start()  # a new interpreter: this process has a client (ZeroMQ) open now
        self._say(f"{waiting} pages wait to be parsed: started a parse worker")

    def _check_workers(self) -> None:
        restart_exited(self.workers, self._say)

    def _await_workers(self) -> None:
        if not await_leasing(self.workers, self._say, timeout_s=WORKERS_READY_S):
            self._say(f"workers not all ready after {WORKERS_READY_S:.0f} s; seeding anyway")

    def worker_pids(self, role: str | None = None) -> list[int]:
        return running_pids(self.workers, role)

    # -- running --------------------------------------------------------------------------

    def run(self, *, on_poll: Callable[[Crawl, dict[str, int]], None] | None = None) -> CrawlReport:
        """Crawl to the end (or the timeout) and return the report.

        ``on_poll`` is called after every look at the cluster with the summed token
        counts (tests use it to kill processes mid-crawl).

        Raises:
            CpnError: the cluster cannot be started or joined, or no seed is usable.
        """
        started = time.monotonic()
        self._exec_s = started - _since_exec_s()
        self._mark("run")
        o = self.options
        seeds = self.read_seeds()
        params = self.net_params()
        if not seeds:
            raise CpnError(
                "no usable seed URL: " + ("; ".join(self.report.bad_inputs) or "none given")
            )
        self._shards, self._fetch_workers = auto_processes(self.options, seeds)
        self.report.extra["processes"] = {"shards": self._shards, "fetch": self._fetch_workers}
        interrupted = True  # until the crawl has run to its end
        try:
            self.layout = self._start_or_join(params)
            self._mark("cluster_started")
            o.out.parent.mkdir(parents=True, exist_ok=True)
            o.out.touch()
            self._plan_workers(self.layout)
            # Forked, the workers skip their imports (about 0.3 s of CPU each, on the
            # cores the cluster starts on): safe here, before any client is opened, when
            # this process runs one thread (`cpn crawl`; not a benchmark's sampler) and
            # started the cluster (joining one opened a client: ZeroMQ's own threads).
            fork = self._supervisor is not None and fork_is_safe()
            if fork:
                _import_worker_modules()
                _freeze_imports()
            for worker in self.workers:
                worker.start(fork=fork)
            self._mark("workers_started")
            self._await_cluster()
            self._mark("cluster_serving")
            self._await_workers()
            self._mark("workers_leasing")
            with ClusterClient.for_data_dir(
                self.layout.root, timeout_ms=STATS_TIMEOUT_MS, retries=2
            ) as client:
                self._seed(client, seeds, params)
                self.first_put_s = time.monotonic()
                self.report.startup_s = self.first_put_s - started
                self._mark("seeded")
                self._watch(client, on_poll)
                self._mark("done")
                self._collect(client)
                self._mark("collected")
            interrupted = False
        finally:
            self._stop(interrupted=interrupted)
            self._mark("stopped")
            self.report.wall_s = (self.done_s or time.monotonic()) - self.first_put_s
            self._collect_files()  # the timing logs may live in a temporary directory
            if self._own_dir is not None:
                shutil.rmtree(self._own_dir, ignore_errors=True)
            self._mark("reported")
            self.report.extra["phases_s"] = dict(self._phases_s)
            self.report.extra["phases_cpu_s"] = dict(self._phases_cpu_s)
        return self.report

    def _mark(self, phase: str) -> None:
        """Note when ``phase`` ended, in seconds since this process was started (the
        report's ``phases_s``: where start-up and shut-down go, docs/scraper.md)."""
        self._phases_s[phase] = round(time.monotonic() - self._exec_s, 3)
        self._phases_cpu_s[phase] = round(time.process_time(), 3)

    def _seed(
        self, client: ClusterClient, seeds: Sequence[tuple[str, str]], params: dict[str, Any]
    ) -> None:
        scope = params.get("scope", "same-domains")
        if scope == "same-domains":
            domains = sorted({d for d, _ in seeds})
            client.put("scope", [(d,) for d in domains])
        elif scope == "allow-list":
            allowed = []
            for text in self.options.allow:
                try:
                    allowed.append(
                        domain_of(canonical_url(text if "://" in text else f"http://{text}"))
                    )
                except InvalidUrl as exc:
                    self.report.bad_inputs.append(f"--allow {text!r}: {exc}")
            client.put("scope", [(d,) for d in sorted(set(allowed))])
        client.put("links", [(d, u, 0) for d, u in seeds])

    def _watch(
        self, client: ClusterClient, on_poll: Callable[[Crawl, dict[str, int]], None] | None
    ) -> None:
        work_places = _work_places()
        idle_polls = 0
        last_line_s = 0.0
        deadline = self.first_put_s + self.options.timeout_ms / 1000
        tty = self.options.progress and self.stderr.isatty()
        while time.monotonic() < deadline and not self.stop_requested:
            self._check_workers()
            looked = self._look(client)
            if looked is not None:
                tokens, outbox, firings = looked
                busy = sum(tokens.get(p, 0) for p in work_places) + outbox
                idle_polls = idle_polls + 1 if busy == 0 else 0
                if self.options.parse_workers == 0:
                    self._parse_on_demand(tokens)
                if on_poll is not None:
                    on_poll(self, tokens)
                now = time.monotonic()
                if self.options.progress and (tty or now - last_line_s >= PROGRESS_EVERY_S):
                    last_line_s = now
                    self._progress(tokens, firings, busy, end="\r" if tty else "\n")
                if idle_polls >= DONE_POLLS:
                    self.done_s = time.monotonic()
                    self.report.complete = True
                    if tty:
                        self.stderr.write("\n")
                    return
            # An idle look is checked by another soon after (not a whole poll later):
            # the crawl ends that much sooner after its last page.
            time.sleep(POLL_S if idle_polls == 0 else CONFIRM_S)
        if not self.stop_requested:
            self._say(f"timed out after {self.options.timeout_ms / 1000:g} s; stopping the crawl")

    def _look(self, client: ClusterClient) -> tuple[dict[str, int], int, Counter[str]] | None:
        """Tokens per place and in flight, summed over shards; None if one did not answer."""
        tokens: Counter[str] = Counter()
        firings: Counter[str] = Counter()
        outbox = 0
        try:
            shards = client.table().shard_count
            for shard_id in range(shards):
                stats = client.statistics([shard_id])[shard_id]
                tokens.update(stats.get("tokens", {}))
                firings.update(stats.get("firings", {}))
                outbox += int(stats.get("outbox_tokens", 0))
        except CpnError:
            return None
        return dict(tokens), outbox, firings

    def _progress(self, tokens: dict[str, int], firings: Counter[str], busy: int, end: str) -> None:
        elapsed = max(time.monotonic() - self.first_put_s, 1e-3)
        stored = tokens.get("stored", 0)
        queued = sum(tokens.get(p, 0) for p in ("targets", "fetch_queue", "fetch_queue__held"))
        failed = firings.get("fetch_give_up", 0) + firings.get("fetch_failed", 0)
        line = (
            f"crawl: {stored:,} pages stored, {queued:,} queued, {busy:,} in progress, "
            f"{failed:,} failed, {tokens.get('skipped', 0):,} skipped, "
            f"{stored / elapsed:,.1f} pages/s, {elapsed:,.0f} s"
        )
        self.stderr.write(line + end)
        self.stderr.flush()

    def _collect(self, client: ClusterClient) -> None:
        """The report's figures from the net's marking (before the cluster stops)."""
        r = self.report
        try:
            failures = [f for _k, _t, f in client.tokens("fail_log")]
            skipped = [s for _k, _t, s in client.tokens("skipped")]
            robots = {str(t[0]): int(t[2]) for _k, _t, t in client.tokens("robots")}
            r.stored_in_net = client.counts().get("stored", 0)
            firings: Counter[str] = Counter()
            for stats in client.statistics().values():
                firings.update(stats.get("firings", {}))
        except CpnError as exc:
            self._say(f"could not read the final marking: {exc}")
            return
        r.failures = tally((f for f in failures if f[4]), 3)
        retried = [f for f in failures if not f[4]]
        r.retries = len(retried)
        r.retries_by_reason = tally(retried, 3)
        r.robots_skips = sum(1 for s in skipped if s[2] == "robots")
        r.skips = tally((s for s in skipped if s[2] != "robots"), 2)
        r.late_refusals = firings.get("fetch_late", 0)
        r.extra["firings"] = dict(sorted(firings.items()))  # where the shards' work goes
        r.extra["crawl_delay_ms"] = robots

    def _collect_files(self) -> None:
        r = self.report
        _urls, r.duplicates = file_pages(self.options.out)
        r.pages = len(_urls)
        timings = read_timings(self.timing_files)
        r.requests_sent = len(timings)
        delays: dict[str, int] = r.extra.get("crawl_delay_ms", {})
        required = {d: max(self.options.delay_ms, ms) for d, ms in delays.items()}
        r.gaps = domain_gaps(timings, required, self.options.delay_ms)
        r.extra["timings"] = len(timings)

    def _say(self, text: str) -> None:
        self.stderr.write(f"crawl: {text}\n")
        self.stderr.flush()


def auto_processes(options: CrawlOptions, seeds: Sequence[tuple[str, str]]) -> tuple[int, int]:
    """(shards, fetch workers) of a crawl: the options', or for each left at 0 (auto)
    one when its domains (the scope ``same-domains`` and its seeds' domains, or
    ``allow-list`` and its domains) allow at most ``SMALL_CRAWL_REQUESTS_PER_S_MAX``
    requests a second at its delay (``--net-param delay_ms`` if given, as the net gets
    it; a delay of 0 allows any rate, so one domain only), else
    ``WIDE_CRAWL_PROCESSES``; with the scope ``any``, whose domains are not known in
    advance, ``WIDE_CRAWL_PROCESSES``."""
    domains: int | None = None  # the scope any: not known in advance
    if options.scope == "same-domains":
        domains = len({domain for domain, _url in seeds})
    elif options.scope == "allow-list":
        domains = len(set(options.allow))
    delay_ms = options.net_params.get("delay_ms", options.delay_ms)
    delay_ms = delay_ms if isinstance(delay_ms, int) else options.delay_ms
    small = (
        domains is not None and domains * 1_000 / max(delay_ms, 1) <= SMALL_CRAWL_REQUESTS_PER_S_MAX
    )
    auto = 1 if small else WIDE_CRAWL_PROCESSES
    return options.shards or auto, options.fetch_workers or auto


def _since_exec_s() -> float:
    """How long ago this process started (its exec), from /proc; 0.0 where unknown."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0.0
    return max(0.0, uptime_s - int(fields[19]) / os.sysconf("SC_CLK_TCK"))


def _import_worker_modules() -> None:
    """What every worker imports, imported once here for the workers forked from this
    process (the trio probe skipped as `cpn worker` skips it)."""
    sys.modules.setdefault("trio", None)  # type: ignore[arg-type]
    import cluster.crawler.fetch  # noqa: PLC0415
    import cluster.crawler.workers  # noqa: F401, PLC0415


def _freeze_imports() -> None:
    """Move every object this process holds now (its imported modules, most of them)
    out of the cyclic collector's reach, before forking children that share them.

    They live as long as the process, so collecting them only costs: a full collection
    walks all of them, in this process (the one at its exit took 0.10-0.12 s of CPU,
    0.02 s frozen) and in every forked child, whose walk also copies the pages it
    touches (``gc.freeze``'s documented use before a fork). A shard freezes what it
    recovers itself (shard/shell/runtime.py).
    """
    gc.freeze()


def _work_places() -> tuple[str, ...]:
    try:
        from nets.scraper import WORK_PLACES  # noqa: PLC0415 (the net may be absent)
    except ImportError:
        return WORK_PLACES_DEFAULT
    return tuple(WORK_PLACES)
