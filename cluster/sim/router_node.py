"""The router in the simulated world: the production :class:`~router.control.ControlPlane`
on a simulated store, driven by the world's frames and timers.

Theory of operation: :class:`RouterActor` does what the router daemon's loop does
(router/shell/daemon.py), without its socket, LMDB file or clock. Each input is first
a tick (the daemon ticks on every turn), then the request; for each
:class:`~router.control.Outcome` the durable write goes to :class:`RouterMemoryStore`
first, then the fault points of the move states reached (where a real router would
SIGKILL itself under ``CPN_FAULT_POINTS``, the actor may die: the write stands, the
reply is lost), and only then the reply leaves. The router holds no tokens, so it adds
nothing to the token ledger. Its endpoint is pinned: a restarted router listens where
the shards already look for it, as the supervisor restarts it on the same port.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from typing import Final

from cluster.sim.ledger import LedgerEvent
from cluster.sim.ledger import Recovered as LedgerRecovered
from cluster.sim.network import Delivered
from cluster.sim.world import CrashPoint, Directory, Send, Step
from nets.model import Net
from router.control import ControlPlane, Outcome, Recovered, RouterWrite, places_of
from router.table import PartitionTable

HEARTBEAT_TIMEOUT_MS: Final = 3_000
ROUTER_NODE: Final = "router"


class RouterMemoryStore:
    """The router's durable state as the simulator keeps it (the last write, whole)."""

    def __init__(self, shard_count: int) -> None:
        self.shard_count = shard_count
        self.written: RouterWrite | None = None
        self.incarnation = 0
        self.writes = 0

    def open(self) -> Recovered:
        """A new incarnation's start: what the store holds (the daemon's ``_start``)."""
        self.incarnation += 1
        if self.written is None:
            table = PartitionTable.initial(self.shard_count)
            return Recovered(table, ("",) * self.shard_count, None, self.incarnation)
        written = self.written
        endpoints = written.endpoints
        span = written.table.shard_count
        endpoints = (*endpoints, *("",) * (span - len(endpoints)))
        return Recovered(written.table, endpoints, written.control, self.incarnation)

    def write(self, write: RouterWrite) -> None:
        self.written = write
        self.writes += 1


class RouterActor:
    """The router node (see the module docstring).

    Args:
        net: the cluster's net (the router knows its places' partitioning).
        store: the router's durable state, kept across crashes.
        rng: draws whether it dies at a fault point, and for how long.
        fault_rate: the chance of dying at a move state's fault point it reaches: each
            point at most once a run, and never from ``faults_end_ms`` on.
    """

    def __init__(
        self,
        net: Net,
        store: RouterMemoryStore,
        *,
        rng: random.Random,
        fault_rate: float = 0.0,
        down_ms_max: int = 2_000,
        faults_end_ms: int = 0,
    ) -> None:
        self.net_name = net.name
        self.places = places_of(net)
        self.store = store
        self._rng = rng
        self._fault_rate = fault_rate
        self._down_ms_max = down_ms_max
        self._faults_end_ms = faults_end_ms
        self._now_ms = 0
        self.plane: ControlPlane | None = None
        self.fault_points_hit: Counter[str] = Counter()

    def start(self, now_ms: int, endpoint: str, directory: Directory) -> Step:
        del endpoint, directory  # the shards learn the (pinned) endpoint from the world
        self._now_ms = now_ms
        self.plane = ControlPlane(
            self.net_name,
            self.places,
            self.store.open(),
            heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS,
        )
        # Up again, holding no tokens: the ledger marks the node up, even if it dies at
        # a fault point of its first tick.
        up = (LedgerRecovered(ROUTER_NODE, ()),)
        try:
            started = self._carry_out(self.plane.tick(now_ms), reply_to="")
        except CrashPoint as crash:
            raise CrashPoint(crash.point, crash.down_ms, up) from crash
        return Step(started.committed, up, started.sends)

    def receive(self, now_ms: int, frame: Delivered) -> Step:
        self._now_ms = now_ms
        plane = self._plane()
        ticked = self._carry_out(plane.tick(now_ms), reply_to="")
        outcome = plane.receive(now_ms, [frame.payload], peer=frame.reply_to.encode())
        answered = self._carry_out(outcome, reply_to=frame.reply_to)
        return Step(ticked.committed or answered.committed, (), ticked.sends + answered.sends)

    def wake(self, now_ms: int) -> Step:
        self._now_ms = now_ms
        return self._carry_out(self._plane().tick(now_ms), reply_to="")

    def next_deadline_ms(self) -> int | None:
        return None if self.plane is None else self.plane.next_deadline_ms()

    def crash(self) -> None:
        self.plane = None

    def present(self) -> Iterable[LedgerEvent]:
        return ()

    def _plane(self) -> ControlPlane:
        assert self.plane is not None, "the router is down"
        return self.plane

    def _carry_out(self, outcome: Outcome, *, reply_to: str) -> Step:
        # Write, then fault points, then the reply: the daemon's order.
        if outcome.write is not None:
            self.store.write(outcome.write)
        for state in outcome.reached:
            point = f"router-{state}"
            if not self._fault_rate or self._now_ms >= self._faults_end_ms:
                break
            if point in self.fault_points_hit or self._rng.random() >= self._fault_rate:
                continue
            self.fault_points_hit[point] += 1
            raise CrashPoint(point, self._rng.randint(10, self._down_ms_max))
        sends = (Send(reply_to, outcome.frame),) if reply_to and outcome.frame else ()
        return Step(outcome.write is not None, (), sends)
