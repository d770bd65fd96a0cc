"""``cpn demo jobs``: the job runner on a real cluster against the mock API (SHELL).

:class:`JobsDemo` does, in order:

1. starts the mock API (:mod:`cluster.jobs.mockapi`) on 127.0.0.1, seeded so that some
   jobs fail their first calls (retries) and a few fail every call (dead jobs), with
   its call log in the demo's directory;
2. starts a cluster of ``nets.jobs:net`` (``cpn up``, fsync durability) with the
   demo's rate, window and cap as net parameters;
3. starts the workers (``cpn worker run cluster.jobs.worker:run_job`` processes, told
   the API's URL by ``CPN_JOBS_API_URL``), waits until each is leasing, and restarts
   any that dies;
4. puts the jobs (:func:`cluster.jobs.report.plan_jobs`) into ``submitted``;
5. shows a progress line while it watches the cluster, and decides the run is over
   when every place that holds a job in progress (:data:`nets.jobs.WORK_PLACES`) is
   empty on every shard and no handoff is in flight, twice in a row (or at the
   timeout);
6. reads ``done`` and ``dead`` from every shard, stops the workers and the cluster,
   and measures the API's log: the report (:class:`cluster.jobs.report.JobsReport`).

Everything it started is stopped by pid, also when it fails.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from cluster.client import ClusterClient
from cluster.jobs.mockapi import CONNECTIONS_MAX, MockApi, MockApiConfig
from cluster.jobs.report import JobsReport, customers_at_limit, job_outcomes, plan_jobs
from cluster.jobs.worker import API_URL_ENV
from cluster.launch import down as stop_cluster
from cluster.layout import ClusterLayout, net_param_args
from cluster.processes import ERROR_PREFIX, run_cpn, stop_all
from cluster.worker_processes import WorkerProcess, await_leasing, restart_exited, running_pids
from nets.errors import CpnError
from nets.jobs import WORK_PLACES, Job

NET: Final = "nets.jobs:net"
WORKER: Final = "cluster.jobs.worker:run_job"
POLL_S: Final = 0.2
PROGRESS_EVERY_S: Final = 2.0  # without a terminal, a progress line this often
DONE_POLLS: Final = 2  # consecutive idle polls that end the run
WORKERS_READY_S: Final = 60.0
CLUSTER_READY_S: Final = 120.0
PUT_TIMEOUT_MS: Final = 10_000  # a put of 10,000 jobs to one shard fits in this
LOOK_TIMEOUT_MS: Final = 1_000
CLIENT_RETRIES: Final = 3  # a repeated request is answered from the shard's client table
WAITING_PLACES: Final = ("submitted", "ready")


@dataclass(frozen=True)
class JobsDemoOptions:
    """What ``cpn demo jobs`` was asked to do (see its ``--help``)."""

    customers: int = 2_000
    jobs: int = 3  # jobs per customer: 1 to this many, drawn from the seed
    # Calls per customer in any window_ms: with 1 to 3 jobs a customer, a limit of 5
    # would hardly ever be reached, and the run would not test it.
    rate: int = 2
    window_ms: int = 1_000
    concurrency: int = 64  # calls in progress at once, cluster-wide
    # A worker refuses to call later than this after the start time. The net's default,
    # 200 ms, is shorter than a Python worker on a shared core takes to send a burst of
    # starts decided at once (a few ms of CPU each); refused calls are planned again and
    # make more work, so on a busy machine refusals fed on themselves (4,000 for 5,000
    # calls, and twice the wall time).
    late_ms: int = 500
    workers: int = 2
    seed: int = 1
    latency_ms: int = 5  # the mock API's answer time
    flaky_rate: float = 0.1  # jobs whose first two calls fail
    broken_rate: float = 0.01  # jobs whose every call fails: they end dead
    shards: int = 2
    timeout_ms: int = 120_000
    lease_ms: int = 0  # 0: the worker's own (cluster.jobs.worker.LEASE_MS)
    data_dir: Path | None = None
    progress: bool = True
    net_params: dict[str, Any] = field(default_factory=dict)  # other JobsPolicy fields

    def params(self) -> dict[str, Any]:
        """The net's parameters (``cpn up --net-param``)."""
        return {
            "rate": self.rate,
            "window_ms": self.window_ms,
            "concurrency": self.concurrency,
            "late_ms": self.late_ms,
            **self.net_params,
        }


class JobsDemo:
    """One run of the job runner, from the jobs put to the report (module docstring)."""

    def __init__(self, options: JobsDemoOptions, *, stderr: TextIO | None = None) -> None:
        self.options = options
        self.stderr = stderr if stderr is not None else sys.stderr
        self.jobs: list[Job] = plan_jobs(options.customers, options.jobs, options.seed)
        self.workers: list[WorkerProcess] = []
        self.layout: ClusterLayout | None = None
        self.api: MockApi | None = None
        self.first_put_s = 0.0
        self.done_s = 0.0
        self._own_dir: Path | None = None

    # -- running --------------------------------------------------------------------------

    def run(
        self, *, on_poll: Callable[[JobsDemo, dict[str, int]], None] | None = None
    ) -> JobsReport:
        """Run every job to its end (or the timeout) and return the report.

        ``on_poll`` is called after every look at the cluster with the token counts
        summed over the shards (tests use it to kill processes mid-run).

        Raises:
            CpnError: the API, the cluster or the workers could not be started, or the
                jobs could not be put.
        """
        o = self.options
        started = time.monotonic()
        root = self._root()
        config = MockApiConfig(
            seed=o.seed, latency_ms=o.latency_ms, flaky_rate=o.flaky_rate, flaky_failures=2,
            broken_rate=o.broken_rate, rate=o.rate, window_ms=o.window_ms,
        )  # fmt: skip
        # Each worker keeps up to `concurrency` connections open (cluster.jobs.worker).
        connections = max(CONNECTIONS_MAX, o.workers * o.concurrency * 2)
        complete = False
        done: list[tuple[Any, ...]] = []
        dead: list[tuple[Any, ...]] = []
        firings: Counter[str] = Counter()
        try:
            with MockApi(config, log_path=root / "calls.jsonl", connections_max=connections) as api:
                self.api = api
                try:
                    self.layout = self._start_cluster(root / "cluster")
                    self._plan_workers(self.layout, api.url, root / "workers")
                    for worker in self.workers:
                        worker.start()
                    self._await_workers()
                    root = self.layout.root
                    with ClusterClient.for_data_dir(
                        root, timeout_ms=PUT_TIMEOUT_MS, retries=CLIENT_RETRIES
                    ) as client:
                        self.first_put_s = time.monotonic()
                        client.put("submitted", self.jobs)
                    # A look at a shard that is down (restarting) fails fast: the
                    # progress line and the watch go on with the next look.
                    with ClusterClient.for_data_dir(
                        root, timeout_ms=LOOK_TIMEOUT_MS, retries=1
                    ) as client:
                        complete = self._watch(client, on_poll)
                    with ClusterClient.for_data_dir(
                        root, timeout_ms=PUT_TIMEOUT_MS, retries=CLIENT_RETRIES
                    ) as client:
                        done, dead, firings = self._collect(client)
                finally:
                    self._stop()
                # Every worker stopped: no call can come after this.
                figures = api.figures()
                at_limit = customers_at_limit(api.requests(), rate=o.rate, window_ms=o.window_ms)
        finally:
            if self._own_dir is not None:
                shutil.rmtree(self._own_dir, ignore_errors=True)
        end_s = self.done_s or time.monotonic()
        return JobsReport(
            customers=o.customers,
            outcomes=job_outcomes(self.jobs, done, dead),
            figures=figures,
            concurrency=o.concurrency,
            complete=complete,
            late_refusals=firings.get("replan", 0),
            startup_s=self.first_put_s - started,
            wall_s=end_s - self.first_put_s,
            at_limit=at_limit,
            worker_restarts=sum(w.restarts for w in self.workers),
        )

    def _root(self) -> Path:
        if self.options.data_dir is not None:
            self.options.data_dir.mkdir(parents=True, exist_ok=True)
            return self.options.data_dir.resolve()
        self._own_dir = Path(tempfile.mkdtemp(prefix="cpn-jobs-"))
        return self._own_dir

    def _start_cluster(self, root: Path) -> ClusterLayout:
        o = self.options
        # `cpn up` in a child: it starts the supervisor detached and returns when the
        # cluster is ready (its Popen handle must not live on in this process).
        started = run_cpn(
            "up", "--net", NET, "--shards", str(o.shards), "--data", str(root),
            "--durability", "fsync", *net_param_args(o.params()), timeout_s=CLUSTER_READY_S,
        )  # fmt: skip
        layout = ClusterLayout(root)
        if started.returncode != 0:
            lines = started.stderr.strip().splitlines() or [f"exit code {started.returncode}"]
            raise CpnError(
                f"the job runner's cluster did not start: {lines[-1].removeprefix(ERROR_PREFIX)}"
            )
        return layout

    def _stop(self) -> None:
        stop_all([w.handle for w in self.workers if w.handle is not None])
        if self.layout is not None:
            with contextlib.suppress(CpnError):  # not running: nothing to stop
                stop_cluster(self.layout)

    # -- workers --------------------------------------------------------------------------

    def _plan_workers(self, layout: ClusterLayout, api_url: str, logs: Path) -> None:
        o = self.options
        logs.mkdir(parents=True, exist_ok=True)
        for index in range(o.workers):
            ready = logs / f"worker-{index}.ready"
            ready.unlink(missing_ok=True)
            # Each worker can carry the whole cap: one that dies leaves none idle.
            args = [
                sys.executable, "-m", "cluster.cli", "worker", "run", WORKER,
                "--data", str(layout.root), "--concurrency", str(o.concurrency),
                "--ready-file", str(ready),
            ]  # fmt: skip
            if o.lease_ms:
                args += ["--lease", f"{o.lease_ms}ms"]
            env = {API_URL_ENV: api_url}
            log_path = logs / f"worker-{index}.log"
            self.workers.append(WorkerProcess("job", index, args, log_path, env, ready))

    def _check_workers(self) -> None:
        """Restart (after a pause) any worker that exited."""
        restart_exited(self.workers, self._say)

    def _await_workers(self) -> None:
        if not await_leasing(self.workers, self._say, timeout_s=WORKERS_READY_S):
            raise CpnError(
                f"the job workers were not all leasing after {WORKERS_READY_S:.0f} s; see "
                f"their logs in {self.workers[0].log_path.parent}"
            )

    def worker_pids(self) -> list[int]:
        """The pids of the workers running now."""
        return running_pids(self.workers)

    # -- watching -------------------------------------------------------------------------

    def _watch(
        self,
        client: ClusterClient,
        on_poll: Callable[[JobsDemo, dict[str, int]], None] | None,
    ) -> bool:
        """Wait until no job is in progress anywhere; whether that came before the timeout."""
        idle_polls = 0
        last_line_s = 0.0
        deadline = self.first_put_s + self.options.timeout_ms / 1000
        tty = self.options.progress and self.stderr.isatty()
        while time.monotonic() < deadline:
            self._check_workers()
            looked = _look(client)
            if looked is not None:
                tokens, outbox = looked
                busy = sum(tokens.get(p, 0) for p in WORK_PLACES) + outbox
                idle_polls = idle_polls + 1 if busy == 0 else 0
                if on_poll is not None:
                    on_poll(self, tokens)
                now = time.monotonic()
                if self.options.progress and (tty or now - last_line_s >= PROGRESS_EVERY_S):
                    last_line_s = now
                    self._progress(tokens, end="\r" if tty else "\n")
                if idle_polls >= DONE_POLLS:
                    self.done_s = now
                    if tty:
                        self.stderr.write("\n")
                    return True
            time.sleep(POLL_S)
        self._say(f"timed out after {self.options.timeout_ms / 1000:g} s; stopping")
        return False

    def _progress(self, tokens: dict[str, int], end: str) -> None:
        elapsed = max(time.monotonic() - self.first_put_s, 1e-3)
        calls = self.api.statistics().calls if self.api is not None else 0
        waiting = sum(tokens.get(p, 0) for p in WAITING_PLACES)
        running = tokens.get("running", 0)  # one per started job, until its result is in
        line = (
            f"jobs: {tokens.get('done', 0):,} done, {tokens.get('dead', 0):,} dead, "
            f"{waiting:,} waiting, {running:,} running of {len(self.jobs):,}; "
            f"{calls:,} calls, {calls / elapsed:,.0f}/s, {elapsed:,.0f} s"
        )
        self.stderr.write(line + end)
        self.stderr.flush()

    def _collect(
        self, client: ClusterClient
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], Counter[str]]:
        """``done`` and ``dead`` from every shard, and the firings since each started.

        Raises:
            CpnError: a shard did not answer (the report cannot be made without it).
        """
        done = [fields for _shard, _time, fields in client.tokens("done")]
        dead = [fields for _shard, _time, fields in client.tokens("dead")]
        firings: Counter[str] = Counter()
        for stats in client.statistics().values():
            firings.update(stats.get("firings", {}))
        return done, dead, firings

    def _say(self, text: str) -> None:
        self.stderr.write(f"jobs: {text}\n")
        self.stderr.flush()


def _look(client: ClusterClient) -> tuple[dict[str, int], int] | None:
    """Tokens per place and in flight, summed over shards; None if one did not answer."""
    tokens: Counter[str] = Counter()
    outbox = 0
    try:
        for stats in client.statistics().values():
            tokens.update(stats.get("tokens", {}))
            outbox += int(stats.get("outbox_tokens", 0))
    except CpnError:
        return None
    return dict(tokens), outbox
