"""`cpn chaos`: SIGKILL a running cluster's processes on a seeded schedule.

Two parts:

* :func:`plan` (pure): the schedule, a function of the seed, the run's duration, the
  interval between kills and the possible victims only, so that ``--seed`` replays a
  run's choices exactly. Kill ``k`` (``k = 1, 2, ...``) is planned at ``k * interval``
  and never after the duration; its victim is a seeded choice among the targets.
* :class:`ChaosRun` (SHELL): carries the plan out against the cluster in a data
  directory. Before each kill it waits for the planned moment *and* for the previous
  victim to be back (a new pid published its endpoint, bounded by ``BACK_TIMEOUT_S``),
  so that every kill hits a cluster that had recovered from the last one (docs/architecture.md,
  "Tests"). A victim's pid comes from its endpoint file and is killed only after checking
  that it is this cluster's process: a ``cpn shard``/``cpn router`` on that data
  directory whose parent is the cluster's supervisor. The supervisor itself is never a
  target: it is what restarts the victims. Meanwhile the shards' and the router's
  epochs are sampled, so that the check can tell whether one ever went backwards.

:meth:`ChaosRun.check` (``cpn chaos --check``) waits until the cluster drains (every
shard answers at the router's epoch with an empty outbox) and runs the invariants of
:mod:`cluster.invariants` that need no expectation of the workload: each slot has
exactly one owner at the router's epoch, no epoch went backwards, every outbox
drained, no handoff lane failed.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import zmq

from cluster.client import ShardClient
from cluster.invariants import InvariantReport, ShardSnapshot, check
from cluster.layout import ClusterConfig, ClusterLayout, serves_directory, supervisor_pid
from cluster.pids import parent_pid, pid_running
from nets.errors import CpnError
from router.shell.datadir import read_endpoint
from router.table import PartitionTable
from router.wire import ClusterState, ClusterStatus, GetTable, Message, Statistics, Stats, Table

TARGETS: Final = ("shards", "router", "all")
ROUTER: Final = "router"
KILLS_MAX: Final = 100_000
BACK_TIMEOUT_S: Final = 30.0  # a victim not back by then: the run stops with an error
DRAIN_TIMEOUT_S: Final = 60.0
REQUEST_TIMEOUT_MS: Final = 500
SAMPLE_S: Final = 0.25  # how often epochs are sampled between kills
POLL_S: Final = 0.02

R = TypeVar("R", bound=Message)


# -- the schedule (pure) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedKill:
    """Kill ``victim`` (``"router"`` or ``"shard K"``) ``at_ms`` after the run starts."""

    at_ms: int
    victim: str


def victims(target: str, shard_count: int) -> tuple[str, ...]:
    """The processes ``--target`` names: ``"router"`` and/or ``"shard 0"``...

    Raises:
        CpnError: an unknown target or a cluster without shards.
    """
    if target not in TARGETS:
        raise CpnError(f"unknown chaos target {target!r}; choose one of {', '.join(TARGETS)}")
    if shard_count < 1:
        raise CpnError(f"a cluster has at least one shard, not {shard_count}")
    shards = tuple(f"shard {k}" for k in range(shard_count))
    return {"shards": shards, "router": (ROUTER,), "all": (ROUTER, *shards)}[target]


def plan(
    *, seed: int, duration_ms: int, interval_ms: int, targets: Sequence[str]
) -> tuple[PlannedKill, ...]:
    """The kills of a run, in order: one every ``interval_ms`` up to ``duration_ms``.

    Raises:
        CpnError: a non-positive interval, an interval longer than the duration (no
            kill would fit), more than ``KILLS_MAX`` kills, or no target.
    """
    if interval_ms <= 0:
        raise CpnError(f"--kill-every must be more than 0 (got {interval_ms} ms)")
    if duration_ms < interval_ms:
        raise CpnError(
            f"--duration ({duration_ms} ms) is shorter than --kill-every ({interval_ms} ms): "
            "no kill fits; give a longer duration or a shorter interval"
        )
    if duration_ms // interval_ms > KILLS_MAX:
        raise CpnError(
            f"--duration {duration_ms} ms with --kill-every {interval_ms} ms plans "
            f"{duration_ms // interval_ms} kills, more than {KILLS_MAX}; kill less often"
        )
    if not targets:
        raise CpnError("no process to kill (an empty target list)")
    chooser = random.Random(seed)  # a seeded instance: the plan depends on nothing else
    return tuple(
        PlannedKill(k * interval_ms, chooser.choice(targets))
        for k in range(1, duration_ms // interval_ms + 1)
    )


# -- carrying it out (SHELL) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KillRecord:
    """One kill done: when (s since the run started), whom, and how long until it was back."""

    at_s: float
    victim: str
    pid: int
    back_s: float
    new_pid: int

    def __str__(self) -> str:
        return (
            f"{self.at_s:7.2f} s  SIGKILL {self.victim} (pid {self.pid}); back after "
            f"{self.back_s:.2f} s as pid {self.new_pid}"
        )


@dataclass(frozen=True, slots=True)
class ChaosSummary:
    """What a run did: its kills, how many were planned, and how long it took."""

    kills: tuple[KillRecord, ...]
    planned: int
    elapsed_s: float

    def __str__(self) -> str:
        skipped = self.planned - len(self.kills)
        late = f"; {skipped} planned kills skipped (the run fell behind)" if skipped else ""
        if not self.kills:
            return f"no kill in {self.elapsed_s:.1f} s{late}"
        per_victim = Counter(kill.victim for kill in self.kills)
        backs = [kill.back_s for kill in self.kills]
        return (
            f"{len(self.kills)} kills in {self.elapsed_s:.1f} s ("
            + ", ".join(f"{victim} {n}" for victim, n in sorted(per_victim.items()))
            + f"); back after {statistics.median(backs):.2f} s median, {max(backs):.2f} s max"
            + late
        )


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What ``--check`` found: the invariants' report, and how the drain went."""

    report: InvariantReport
    drained: bool
    waited_s: float
    epoch: int  # the router's
    silent: tuple[int, ...]  # shards that did not answer

    @property
    def ok(self) -> bool:
        return self.drained and self.report.ok

    def __str__(self) -> str:
        drain = (
            f"drained after {self.waited_s:.1f} s"
            if self.drained
            else f"NOT drained after {self.waited_s:.1f} s"
        )
        silent = (
            f"; shards {', '.join(map(str, self.silent))} did not answer" if self.silent else ""
        )
        return f"check at epoch {self.epoch}: {drain}{silent}\n{self.report}"


@dataclass
class ChaosRun:
    """Kills processes of the cluster in ``layout`` by a plan (see the module docstring).

    Raises (from the constructor):
        CpnError: no cluster in the directory, or it is not running (no supervisor).
    """

    layout: ClusterLayout
    config: ClusterConfig = field(init=False)
    supervisor: int = field(init=False)
    epochs_seen: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        config = ClusterConfig.read(self.layout)
        if config is None:
            raise CpnError(
                f"no cluster in {self.layout.root} (no {self.layout.cluster_file.name}); start "
                f"one with `cpn up --net NET --shards N --data {self.layout.root}`"
            )
        supervisor = supervisor_pid(self.layout)
        if supervisor is None:
            raise CpnError(
                f"the cluster in {self.layout.root} is not running (no supervisor to restart "
                f"what chaos kills); start it with `cpn up --data {self.layout.root} --net "
                f"{config.net} --shards {config.shards}`"
            )
        self.config = config
        self.supervisor = supervisor
        self._context: zmq.Context[Any] = zmq.Context()
        self._clients: dict[str, ShardClient] = {}

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._context.term()

    # -- the victims ----------------------------------------------------------------------

    def data_dir(self, victim: str) -> Path:
        if victim == ROUTER:
            return self.layout.router_dir
        return self.layout.shard_dir(int(victim.removeprefix("shard ")))

    def current(self, victim: str) -> tuple[str, int] | None:
        """The ``(endpoint, pid)`` of the victim's running process, if it is ours.

        Ours: the pid published in its data directory runs ``cpn shard``/``cpn router``
        on that directory, as a child of the cluster's supervisor (a pid may have been
        reused by anything since the file was written).
        """
        data_dir = self.data_dir(victim)
        published = read_endpoint(data_dir)
        if published is None or not pid_running(published[1]):
            return None
        ours = (
            serves_directory(published[1], data_dir) and parent_pid(published[1]) == self.supervisor
        )
        return published if ours else None

    def _wait_current(self, victim: str, *, not_pid: int = 0) -> tuple[tuple[str, int], float]:
        """Wait until the victim runs as a pid other than ``not_pid``; and how long it took."""
        started = time.monotonic()
        while (found := self.current(victim)) is None or found[1] == not_pid:
            waited_s = time.monotonic() - started
            if waited_s > BACK_TIMEOUT_S:
                raise CpnError(
                    f"{victim} of the cluster in {self.layout.root} is not back after "
                    f"{BACK_TIMEOUT_S:.0f} s"
                    + (f" (killed as pid {not_pid})" if not_pid else "")
                    + f"; see `cpn logs --data {self.layout.root}`"
                )
            if supervisor_pid(self.layout) != self.supervisor:
                raise CpnError(
                    f"the supervisor of the cluster in {self.layout.root} (pid "
                    f"{self.supervisor}) is gone; nothing restarts {victim}"
                )
            time.sleep(POLL_S)
        return found, time.monotonic() - started

    # -- the run --------------------------------------------------------------------------

    def run(
        self, kills: Sequence[PlannedKill], *, on_kill: Callable[[KillRecord], None]
    ) -> ChaosSummary:
        """Carry out ``kills`` (each after the last victim is back); report each as done.

        A kill whose moment is past the last planned one (the run fell behind waiting
        for victims) is skipped: the run never outlasts its plan by more than one
        recovery.

        Raises:
            CpnError: a victim was not back within ``BACK_TIMEOUT_S``, or the supervisor
                went away.
        """
        started = time.monotonic()
        end_s = kills[-1].at_ms / 1000 if kills else 0.0
        done = []
        for kill in kills:
            while (now_s := time.monotonic() - started) < kill.at_ms / 1000:
                self.sample_epochs()
                time.sleep(min(SAMPLE_S, kill.at_ms / 1000 - now_s))
            if now_s > end_s:
                break
            (_endpoint, pid), _waited = self._wait_current(kill.victim)
            at_s = time.monotonic() - started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # verified ours by _wait_current
            (_endpoint, new_pid), back_s = self._wait_current(kill.victim, not_pid=pid)
            record = KillRecord(at_s, kill.victim, pid, back_s, new_pid)
            done.append(record)
            on_kill(record)
            self.sample_epochs()
        return ChaosSummary(tuple(done), len(kills), time.monotonic() - started)

    def _request(self, endpoint: str, message: Message, expect: type[R]) -> R | None:
        """One request with a short timeout (None: no answer or an error)."""
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = ShardClient(
                endpoint, timeout_ms=REQUEST_TIMEOUT_MS, retries=0, context=self._context
            )
        try:
            return client.request(message, expect)
        except CpnError:
            return None

    def _router_state(self) -> ClusterState | None:
        router = self.current(ROUTER)
        return None if router is None else self._request(router[0], ClusterStatus(), ClusterState)

    def shard_count(self) -> int:
        """Shards of the cluster now: as `cpn scale` last recorded, or more while some
        still leave (the router's view)."""
        recorded = ClusterConfig.read(self.layout)
        count = self.config.shards if recorded is None else recorded.shards
        state = self._router_state()
        return max(count, len(state.shards)) if state is not None else count

    def _shard_stats(self) -> dict[int, dict[str, Any]]:
        """The statistics of every shard that answers now."""
        found = {}
        for shard_id in range(self.shard_count()):
            published = self.current(f"shard {shard_id}")
            if published is not None:
                reply = self._request(published[0], Stats(), Statistics)
                if reply is not None:
                    found[shard_id] = reply.values
        return found

    def sample_epochs(self) -> None:
        """Record the router's and each live shard's epoch now (for the check)."""
        state = self._router_state()
        if state is not None:
            self.epochs_seen.setdefault(ROUTER, []).append(state.epoch)
        for shard_id, stats in self._shard_stats().items():
            self.epochs_seen.setdefault(f"shard {shard_id}", []).append(int(stats["epoch"]))

    # -- the check ------------------------------------------------------------------------

    def check(self, *, timeout_s: float = DRAIN_TIMEOUT_S) -> CheckResult:
        """Wait (bounded) until the cluster drains, then check it.

        Drained: the router answers, and every shard answers at the router's epoch with
        an empty outbox. If that does not happen within ``timeout_s``, the check runs on
        what answered last, and reports what is missing or not drained.
        """
        started = time.monotonic()
        while True:
            router = self.current(ROUTER)
            table = None if router is None else self._request(router[0], GetTable(), Table)
            stats = self._shard_stats()
            router_stats = None if router is None else self._request(router[0], Stats(), Statistics)
            moving = [] if router_stats is None else router_stats.values.get("moves_active", [])
            drained = (
                table is not None
                and router_stats is not None
                and not moving
                and all(
                    shard_id in stats
                    and stats[shard_id]["outbox_tokens"] == 0
                    and stats[shard_id]["epoch"] == table.epoch
                    for shard_id in range(table.shard_count)
                )
            )
            if drained or time.monotonic() - started > timeout_s:
                break
            time.sleep(SAMPLE_S)
        if table is None:
            raise CpnError(
                f"the router of the cluster in {self.layout.root} did not answer within "
                f"{timeout_s:.0f} s; see `cpn logs --data {self.layout.root}`"
            )
        for shard_id, shard_stats in sorted(stats.items()):
            self.epochs_seen.setdefault(f"shard {shard_id}", []).append(int(shard_stats["epoch"]))
        self.epochs_seen.setdefault(ROUTER, []).append(table.epoch)
        partition = PartitionTable(table.epoch, table.shard_count, table.owners, table.slot_epochs)
        snapshots = [
            ShardSnapshot.from_statistics(s) for k, s in stats.items() if k < table.shard_count
        ]
        return CheckResult(
            check(snapshots, partition, epochs_seen=self.epochs_seen, moves_active=moving),
            drained,
            time.monotonic() - started,
            table.epoch,
            tuple(k for k in range(table.shard_count) if k not in stats),
        )
