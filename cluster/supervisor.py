"""The local supervisor: `cpn up` runs a router and N shards and keeps them running (SHELL).

A cluster lives in one data directory ``DIR`` (see :class:`cluster.layout.ClusterLayout`
and docs/cluster.md): ``cluster.json`` (the net, the shard count, the seed and the
durability, recorded at the first ``cpn up``), ``supervisor.pid``, ``supervisor.log``,
``router/`` and ``shard-K/`` (each child's data directory, with its own log).

Theory of operation: ``cpn up`` starts ``cpn up --foreground`` detached and waits for
it (:mod:`cluster.launch`). The foreground supervisor (:class:`Supervisor`)
holds ``supervisor.lock``, starts the router and waits for its endpoint, then starts
the shards with ``--router`` set to it, and from then on checks its children every
``TICK_S``:

* a child that exits unexpectedly is restarted after a bounded, growing backoff, on
  the port it had (its last published endpoint as ``--bind``), so clients' cached
  tables and the shards' router address stay right; if that bind fails, the next
  start takes any free port;
* a child that fails on its very first start (before publishing an endpoint) is a
  configuration error (a data directory of another net, a port in use): the supervisor
  stops everything and exits with that error, which ``cpn up`` reports;
* if the router comes back on another endpoint, the shards are restarted with it;
* every ``STATUS_POLL_S`` it asks the router for :class:`~router.wire.ClusterState`
  (a bounded request; no answer just means no verdict this time). A shard whose
  process runs but whose progress counters (which include its loop count) have not
  changed for longer than the stuck timeout, and which the router no longer reports
  as progressing, is stuck (e.g. SIGSTOPped): it is SIGKILLed by pid (a stopped
  process cannot handle SIGTERM) and restarted like any dead child. A shard is judged
  only after the router has heard from *this* process (never while it starts), and
  only over time during which the current router answered (a restarted router has
  heard from nobody yet).

SIGTERM (what ``cpn down`` sends) or SIGINT stops the children (SIGTERM, then SIGKILL
after ``STOP_TIMEOUT_S``) and then the supervisor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import logging
import os
import select
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cluster.client import ShardClient
from cluster.forked import fork_is_safe
from cluster.layout import ClusterConfig, ClusterLayout, net_param_args
from cluster.processes import (
    STOP_TIMEOUT_S,
    ShardProcess,
    Standby,
    fork_standbys,
    start_router,
    start_shard,
    stop_all,
    wait_ready,
)
from cluster.supervisor_metrics import ChildReading, SupervisorMetrics, SupervisorSample
from nets.errors import CpnError
from router.shell.datadir import unpublish
from router.shell.logsetup import configure_logging
from router.shell.metrics import METRICS_DEFAULT, MetricsServer, metrics_address, serve_metrics
from router.wire import ClusterState, ClusterStatus

TICK_S: Final = 0.1
BACKOFF_S_MIN: Final = 0.2
BACKOFF_S_MAX: Final = 10.0
HEALTHY_AFTER_S: Final = 30.0  # a child up this long starts its backoff afresh
SERVED_S: Final = 1.0  # a child that served this long and died is restarted at once
STATUS_POLL_S: Final = 0.5  # how often the supervisor asks the router about the shards
STATUS_POLL_TIMEOUT_MS: Final = 300  # the supervisor's loop waits at most this for it
STUCK_TIMEOUT_S_DEFAULT: Final = 5.0
LOOPBACK_ANY_PORT: Final = "tcp://127.0.0.1:0"

log = logging.getLogger("cpn.supervisor")


@dataclass
class Child:
    """One supervised process: how to start it, its current handle, its restarts."""

    name: str
    start: Callable[[str], ShardProcess]  # bind -> a started (not yet ready) process
    handle: ShardProcess | None = None
    endpoint: str = ""  # the last endpoint it published
    bind_published: bool = True  # the last start could bind its published endpoint
    starts: int = 0
    failures: int = 0  # consecutive unexpected exits
    started_at_s: float = 0.0
    next_start_s: float = 0.0
    stopping: bool = False  # we asked it to stop (to restart it at once)
    # Stuck detection (shards only): the last (incarnation, progress counters) the
    # router reported, and when this process was last known to make progress
    # (None: the router has not heard from this process yet).
    seen: tuple[object, ...] | None = None
    progress_at_s: float | None = None
    retired: bool = False  # scaled in: stopped for good once the router let it go

    def launch(self, fallback_bind: str) -> None:
        bind = self.endpoint if self.endpoint and self.bind_published else fallback_bind
        self.handle = self.start(bind)
        self.starts += 1
        self.started_at_s = time.monotonic()
        self.stopping = False
        self.seen = None
        self.progress_at_s = None
        log.info("%s started (pid %d, bind %s)", self.name, self.handle.pid, bind)


def no_progress_s(
    shard: Child, view: Mapping[str, Any], *, now_s: float, judged_since_s: float
) -> float | None:
    """How long ``shard`` has made no progress, by the router's ``view`` of it.

    Records in ``shard`` a heartbeat whose (incarnation, progress counters) changed as
    progress at the time the router heard it. Returns None when the shard is not to be
    judged: the router has not heard from this process since it started (it is still
    starting), or still reports it as progressing. Otherwise the time since its last
    progress, counted from ``judged_since_s`` at the earliest (since when the current
    router answers: a restarted router has heard from nobody yet).
    """
    ago_ms = int(view["last_seen_ms_ago"])
    seen = (view["incarnation"], tuple(sorted(view["progress"].items())))
    if ago_ms >= 0 and seen != shard.seen:
        shard.seen = seen
        heard_s = now_s - ago_ms / 1000
        # A heartbeat from before this process started is its predecessor's.
        if heard_s >= shard.started_at_s:
            shard.progress_at_s = max(shard.progress_at_s or heard_s, heard_s)
    if shard.progress_at_s is None or view["progressing"]:
        return None
    return now_s - max(shard.progress_at_s, judged_since_s)


class Supervisor:
    """Runs and restarts a cluster's router and shards (see the module docstring)."""

    def __init__(
        self,
        layout: ClusterLayout,
        config: ClusterConfig,
        *,
        bind: str = LOOPBACK_ANY_PORT,
        env: dict[str, str] | None = None,
        stuck_timeout_s: float = STUCK_TIMEOUT_S_DEFAULT,
        log_json: bool = False,
        spares_after_s: float = 0.0,
        shard_binds: tuple[str, ...] = (),
        metrics: str = METRICS_DEFAULT,
        fork_first: bool = False,
    ) -> None:
        self.layout = layout
        # Fork the children's first interpreters from this one (`cpn crawl`'s cluster:
        # see _fork_standbys) instead of starting one per child.
        self.fork_first = fork_first
        # The spares for restarts warm up this long after every child first serves (a
        # crawl's short-lived cluster need not pay 0.4 s of CPU for each).
        self.spares_after_s = spares_after_s
        self._serving_since_s: float | None = None
        self.config = config
        self.bind = bind
        self.env = env
        self.stuck_timeout_s = stuck_timeout_s  # 0: never judge a shard stuck
        # `cpn up --log-json`: every child logs JSON lines too.
        self.log_args: tuple[str, ...] = ("--log-json",) if log_json else ()
        self.shard_binds = shard_binds  # a cluster file's shard endpoints, if any
        # /metrics (cluster/supervisor_metrics.py): HOST:PORT or "off"; checked here, so
        # a bad address fails `cpn up` before any child starts.
        self._metrics_at = metrics_address(metrics, allow_remote=False)
        self._metrics = SupervisorMetrics()
        self.stuck_kills = 0
        self.stopping = False
        self._status_client: ShardClient | None = None
        self._status_next_s = 0.0
        self._scale_next_s = 0.0
        self._status_router_pid = 0
        # Since when the current router answers (None: it does not, or just restarted).
        self._router_answers_since_s: float | None = None
        # A spare interpreter per shard and for the router, warm for its next restart
        # (cluster/standby.py).
        self._standbys: dict[int, Standby] = {}
        self._router_standby: Standby | None = None
        # A signal (SIGCHLD: a child died) writes to this pipe and wakes the loop's wait.
        self._wake_read = self._wake_write = -1
        self._sigchld_before: Any = signal.SIG_DFL
        self.router = Child("router", self._start_router)
        self.shards = [
            Child(f"shard {k}", functools.partial(self._start_shard, k))
            for k in range(config.shards)
        ]

    def _net_spec(self) -> tuple[str, int, Mapping[str, Any]]:
        """The net every child loads: path, seed, parameters (a standby builds it)."""
        return (self.config.net, self.config.seed, self.config.params)

    def _start_router(self, bind: str) -> ShardProcess:
        extra = (
            "--seed",
            str(self.config.seed),
            *net_param_args(self.config.params),
            *self.log_args,
        )
        spare, self._router_standby = self._router_standby, None
        return start_router(
            self.config.net,
            self.layout.router_dir,
            shards=self.config.first_shards,
            bind=bind,
            extra_args=extra,
            env=self.env,
            wait=False,
            standby=spare,
        )

    def _start_shard(self, shard_id: int, bind: str) -> ShardProcess:
        extra = (
            "--shard-id",
            str(shard_id),
            "--shards",
            str(self.config.first_shards),
            "--router",
            self.router.endpoint,
            "--seed",
            str(self.config.seed),
            *net_param_args(self.config.params),
            *self.log_args,
        )
        if bind == LOOPBACK_ANY_PORT and shard_id < len(self.shard_binds):
            bind = self.shard_binds[shard_id]  # a first start binds where the file says
        spare = self._standbys.pop(shard_id, None)
        return start_shard(
            self.config.net,
            self.layout.shard_dir(shard_id),
            bind=bind,
            durability=self.config.durability,
            extra_args=extra,
            env=self.env,
            wait=False,
            standby=spare,
        )

    def _warm_standbys(self) -> None:
        """Start a standby (with the net built) for the router and every shard that has
        none, ready for its next start."""
        if self._router_standby is None:
            self._router_standby = Standby(
                "router", self.layout.router_dir, self.env, net=self._net_spec()
            )
        for shard_id, shard in enumerate(self.shards):
            if shard_id not in self._standbys and not shard.retired:
                data_dir = self.layout.shard_dir(shard_id)
                self._standbys[shard_id] = Standby(
                    "shard", data_dir, self.env, net=self._net_spec()
                )

    def _fork_standbys(self) -> None:
        """Fork the standbys of the router's and every shard's first start from this
        process: they share its imports, so no child pays for an interpreter and its
        imports (0.3 to 0.6 s of CPU each, on the cores everything starts on). Only
        before this process has a thread, a ZeroMQ context or an LMDB environment, and
        only for first starts: a forked child shows this process's command line, and a
        restart runs as its own interpreter (a spare, or a new one) whose command line
        names its role and data directory, as tools that check a pid expect."""
        if not fork_is_safe():
            return
        wanted = [("router", self.layout.router_dir)]
        wanted += [("shard", self.layout.shard_dir(k)) for k in range(len(self.shards))]
        standbys = fork_standbys(wanted, self.env, net=self._net_spec())
        self._router_standby = standbys[0]
        self._standbys = dict(enumerate(standbys[1:]))

    def _all_serving(self) -> bool:
        children = [self.router, *(s for s in self.shards if not s.retired)]
        return all(c.handle is not None and c.handle.endpoint for c in children)

    def run(self) -> None:
        """Supervise until SIGTERM or SIGINT; then stop every child.

        Raises:
            CpnError: another supervisor runs on the directory, or a child failed on its
                first start (its error is quoted).
        """
        if self.fork_first:
            self._fork_standbys()  # first: before a lock, a thread or a socket exists
        try:
            lock_fd = _lock_supervisor(self.layout)
        except CpnError:
            self._close_standbys()
            raise
        self.layout.supervisor_pid_file.write_text(f"{os.getpid()}\n")

        def stop(_signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self._wake_on_signals()
        served = self._serve_metrics()
        log.info(
            "supervising net %r with %d shards in %s (pid %d)",
            self.config.net,
            self.config.shards,
            self.layout.root,
            os.getpid(),
        )
        try:
            # Every child's interpreter starts at once, as a standby, so that the shards
            # import and build the net while the router comes up; each becomes its child
            # when told its command line (the shards' holds the router's address).
            self._warm_standbys()
            self.router.launch(self.bind)
            assert self.router.handle is not None
            self.router.endpoint = wait_ready(self.router.handle)
            for shard in self.shards:
                shard.launch(LOOPBACK_ANY_PORT)
            while not self.stopping:
                # The spares for the next restarts warm up only once every child serves:
                # started with the children, they would take the two cores from them.
                if self._all_serving():
                    if self._serving_since_s is None:
                        self._serving_since_s = time.monotonic()
                    if time.monotonic() - self._serving_since_s >= self.spares_after_s:
                        self._warm_standbys()
                self._check(self.router, self.bind)
                for shard in self.shards:
                    self._check(shard, LOOPBACK_ANY_PORT)
                if time.monotonic() >= self._scale_next_s:
                    self._scale_next_s = time.monotonic() + STATUS_POLL_S
                    self._rescale()
                if self.stuck_timeout_s > 0 and time.monotonic() >= self._status_next_s:
                    self._status_next_s = time.monotonic() + STATUS_POLL_S
                    self._kill_stuck_shards()
                self._metrics.sample = self._sample()
                self._wait_tick()
        except CpnError as exc:
            log.error("giving up: %s", exc)
            raise
        finally:
            if self._status_client is not None:
                self._status_client.close()
            self._close_standbys()
            self._stop_waking()
            if served is not None:
                served.stop()
                unpublish(self.layout.supervisor_metrics_file)
            children = [c.handle for c in (*self.shards, self.router) if c.handle is not None]
            stop_all(children, timeout_s=STOP_TIMEOUT_S)
            with contextlib.suppress(FileNotFoundError):
                self.layout.supervisor_pid_file.unlink()
            os.close(lock_fd)
            log.info("supervisor stopped")

    def _close_standbys(self) -> None:
        for standby in self._standbys.values():
            standby.close()
        if self._router_standby is not None:
            self._router_standby.close()

    def _serve_metrics(self) -> MetricsServer | None:
        """Serve the supervisor's metrics (None when off); their URL is published in
        the cluster directory's ``supervisor.metrics``."""
        if self._metrics_at is None:
            return None
        return serve_metrics(
            self._metrics_at, self._metrics.collect, url_file=self.layout.supervisor_metrics_file
        )

    def _sample(self) -> SupervisorSample:
        return SupervisorSample(
            tuple(
                ChildReading(
                    child.name,
                    child.starts,
                    child.handle is not None and child.handle.alive(),
                )
                for child in (self.router, *self.shards)
                if not child.retired
            ),
            self.stuck_kills,
        )

    def _wake_on_signals(self) -> None:
        """Let a signal end the loop's wait at once: SIGCHLD when a child dies (its
        restart then begins within milliseconds, not up to a tick later), SIGTERM.
        Only in the main thread (``run`` sets its signal handlers there too)."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd)
        # A handler (doing nothing) must be set for SIGCHLD to reach the wakeup fd.
        self._sigchld_before = signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
        self._wake_read, self._wake_write = read_fd, write_fd

    def _stop_waking(self) -> None:
        if self._wake_read < 0:
            return
        signal.signal(signal.SIGCHLD, self._sigchld_before)
        signal.set_wakeup_fd(-1)
        os.close(self._wake_read)
        os.close(self._wake_write)
        self._wake_read = self._wake_write = -1

    def _wait_tick(self) -> None:
        """Wait ``TICK_S``, or less if a signal arrives (see :meth:`_wake_on_signals`)."""
        if self._wake_read < 0:
            time.sleep(TICK_S)
            return
        ready, _, _ = select.select([self._wake_read], [], [], TICK_S)
        if ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_read, 512):
                    pass

    def _check(self, child: Child, fallback_bind: str) -> None:
        now = time.monotonic()
        handle = child.handle
        if child.retired and (handle is None or not handle.alive()):
            child.handle = None
            return
        if handle is None:
            if now >= child.next_start_s and (child is self.router or self.router.endpoint):
                child.launch(fallback_bind)
            return
        if handle.alive():
            if handle.endpoint or handle.poll_ready():
                self._published(child, handle.endpoint)
            if now - child.started_at_s > HEALTHY_AFTER_S:
                child.failures = 0
            return
        code = handle.process.returncode
        # It may have published its endpoint after our last look and died since (a kill
        # right after it came back): it served, and its port is the one to start on.
        if handle.endpoint or handle.poll_ready():
            self._published(child, handle.endpoint)
        published = bool(handle.endpoint)
        child.handle = None
        if child.stopping:
            log.info("%s (pid %d) stopped for a restart", child.name, handle.pid)
            return
        if not published and child.starts == 1:
            raise CpnError(f"{child.name} failed to start: {handle.last_error()}")
        if published and now - child.started_at_s >= SERVED_S:
            # It served for a while: a kill or a one-off crash, not a crash loop. Its
            # slots are out of service until it is back, so it comes back at once.
            child.failures = 0
        child.failures += 1
        child.bind_published = published
        backoff_s = (
            0.0
            if published and child.failures == 1
            else min(BACKOFF_S_MAX, BACKOFF_S_MIN * 2 ** (child.failures - 1))
        )
        child.next_start_s = now + backoff_s
        log.warning(
            "%s (pid %d) exited with code %s%s; restarting in %.1f s",
            child.name,
            handle.pid,
            code,
            "" if published else f" before serving ({handle.last_error()})",
            backoff_s,
        )
        if backoff_s == 0.0:
            self._check(child, fallback_bind)  # now, not a tick later: its slots wait

    def _rescale(self) -> None:
        """Follow `cpn scale` (docs/cluster.md): start the shards cluster.json adds, and
        stop for good those the router retired (they own nothing and owe nothing)."""
        try:
            recorded = ClusterConfig.read(self.layout)
        except CpnError as exc:
            log.warning("cannot read the shard count: %s", exc)
            return
        if recorded is not None and recorded.shards != self.config.shards:
            log.info("scaling from %d to %d shards", self.config.shards, recorded.shards)
            self.config = dataclasses.replace(
                self.config, shards=recorded.shards, initial_shards=recorded.first_shards
            )
        state = self._router_status()
        # Shards still leaving (a scale-in the cluster was restarted in the middle of)
        # run until the router lets them go.
        span = max(self.config.shards, len(state.shards) if state is not None else 0)
        while len(self.shards) < span:
            shard_id = len(self.shards)
            self.shards.append(
                Child(f"shard {shard_id}", functools.partial(self._start_shard, shard_id))
            )
        for child in self.shards[: self.config.shards]:
            child.retired = False  # scaled out again before it was let go
        if len(self.shards) == self.config.shards or state is None:
            return
        for shard_id in range(self.config.shards, len(self.shards)):
            child = self.shards[shard_id]
            view = state.shards[shard_id] if shard_id < len(state.shards) else {"retired": True}
            if view.get("retired") and not child.retired:
                child.retired = True
                log.info("%s is retired: stopping it", child.name)
                if child.handle is not None and child.handle.alive():
                    child.handle.process.send_signal(signal.SIGTERM)
        while len(self.shards) > self.config.shards and self.shards[-1].retired:
            if self.shards[-1].handle is not None and self.shards[-1].handle.alive():
                break
            self.shards.pop()

    def _router_status(self) -> ClusterState | None:
        """The router's view of the shards, or None if it does not answer in time."""
        router = self.router.handle
        if router is None or not router.alive() or not router.endpoint:
            self._router_answers_since_s = None
            return None
        if self._status_client is None:
            self._status_client = ShardClient(
                router.endpoint, timeout_ms=STATUS_POLL_TIMEOUT_MS, retries=0, role="router"
            )
        elif self._status_client.endpoint != router.endpoint:
            self._status_client.reconnect(router.endpoint)
        if self._status_router_pid != router.pid:
            # A new router process has heard from no shard yet: start judging afresh.
            self._status_router_pid = router.pid
            self._router_answers_since_s = None
        try:
            state = self._status_client.request(ClusterStatus(), ClusterState)
        except CpnError as exc:
            log.debug("no cluster status from the router: %s", exc)
            self._router_answers_since_s = None
            return None
        if self._router_answers_since_s is None:
            self._router_answers_since_s = time.monotonic()
        return state

    def _kill_stuck_shards(self) -> None:
        """SIGKILL every shard that runs but has made no progress for too long."""
        state = self._router_status()
        if state is None or self._router_answers_since_s is None:
            return
        now = time.monotonic()
        for shard, view in zip(self.shards, state.shards, strict=False):
            handle = shard.handle
            if handle is None or not handle.alive() or shard.stopping:
                continue
            counted_s = no_progress_s(
                shard, view, now_s=now, judged_since_s=self._router_answers_since_s
            )
            if counted_s is not None and counted_s > self.stuck_timeout_s:
                assert shard.progress_at_s is not None  # judged: it has made progress once
                log.warning(
                    "%s (pid %d) made no progress for %.1f s: killed, restarting",
                    shard.name,
                    handle.pid,
                    now - shard.progress_at_s,
                )
                self.stuck_kills += 1
                with contextlib.suppress(ProcessLookupError):
                    os.kill(handle.pid, signal.SIGKILL)  # it is ours: handle.pid is our child

    def _published(self, child: Child, endpoint: str) -> None:
        if endpoint == child.endpoint:
            return
        moved = bool(child.endpoint)
        child.endpoint = endpoint
        log.info("%s serves on %s", child.name, endpoint)
        if child is self.router and moved:
            # The shards were started with the old address: restart them with the new.
            log.warning("the router moved to %s: restarting the shards", endpoint)
            for shard in self.shards:
                if shard.handle is not None and shard.handle.alive():
                    shard.stopping = True
                    shard.handle.process.send_signal(signal.SIGTERM)


def _lock_supervisor(layout: ClusterLayout) -> int:
    fd = os.open(layout.supervisor_lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CpnError(
            f"the cluster in {layout.root} is already running (another supervisor holds "
            f"{layout.supervisor_lock}); stop it with `cpn down --data {layout.root}`"
        ) from None
    return fd


def supervise(
    layout: ClusterLayout,
    config: ClusterConfig,
    *,
    bind: str,
    stuck_timeout_s: float = STUCK_TIMEOUT_S_DEFAULT,
    shard_binds: tuple[str, ...] = (),
    log_json: bool = False,
    spares_after_s: float = 0.0,
    fork_first: bool = False,
) -> None:
    """``cpn up --foreground``: log to ``supervisor.log`` and run the supervisor
    (``fork_first``: see :meth:`Supervisor._fork_standbys`)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    # Every line: the supervisor's restarts and kills are its story, and tests read it.
    configure_logging(layout.supervisor_log, json_lines=log_json, summarise=False)
    supervisor = Supervisor(
        layout,
        config,
        bind=bind,
        stuck_timeout_s=stuck_timeout_s,
        log_json=log_json,
        spares_after_s=spares_after_s,
        shard_binds=shard_binds,
        fork_first=fork_first,
    )
    supervisor.run()
