"""A toy world on the simulated network: two counters that must reach each other.

The harness's own test bench and a template for the whole-cluster runner: the same
:class:`~cluster.sim.world.World` loop (schedule, network, nemesis, heal phase, trace,
ledger) drives two trivial actors instead of the router and shard cores.

Theory of operation: nodes ``a`` and ``b`` each count from 1 to :data:`COUNT`, one number
per tick, and send the other every number not yet acknowledged, as one frame
``("count", first, last)`` (go-back-N). The receiver keeps the highest number it has
applied without a gap (its hwm) and answers ``("ack", hwm)`` to the frame's reply
endpoint. Each node's counter, hwm and acknowledged mark are durable (they survive a
crash); the peer's endpoint is not: a node learns it from the directory (standing for
the router) when it starts, and again after :data:`LOOKUP_AFTER` resends without
progress, which is how it finds a peer that restarted on a new endpoint.

For the ledger, number ``n`` of node ``a`` is the token ``("a", n)`` of place
``numbers``: produced at ``a`` and exported on lane 0 as seq ``n`` in one committed
step, applied by ``b`` when its hwm passes ``n``, acknowledged when ``a`` learns it;
``b``'s final marking holds the numbers it applied. A receiver that applied a number
twice, or a sender that forgot one, breaks the ledger.

Faults come from the seed's plan (per-frame faults, partitions, swizzle-clog and both
kinds of crash); at :data:`HEAL_AT_FRACTION` of the run they stop, and the rest of the
run must bring both counters home (:attr:`ToyResult.converged`) with a balanced ledger.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from cluster.sim.faults import FaultCounts, FaultPlan, choose
from cluster.sim.ledger import (
    Acked,
    Applied,
    Exported,
    LedgerEvent,
    LedgerReport,
    Present,
    Produced,
    Recovered,
)
from cluster.sim.network import Delivered
from cluster.sim.trace import Trace
from cluster.sim.world import NOTHING, Directory, Send, Step, World
from nets.codec import pack, unpack

NODES: Final = ("a", "b")
COUNT: Final = 100
TICK_MS: Final = 50
RESEND_MS: Final = 200
LOOKUP_AFTER: Final = 3
UNTIL_MS_DEFAULT: Final = 20_000
HEAL_AT_FRACTION: Final = 0.5
PLACE: Final = "numbers"
LANE: Final = 0
FAULTS_ALLOWED: Final = (
    "drop",
    "duplicate",
    "reorder",
    "delay",
    "partition",
    "one_way_partition",
    "swizzle_clog",
    "crash_shard",
    "crash_between_commit_and_send",
)


class Counter:
    """One counting node (an :class:`~cluster.sim.world.Actor`)."""

    def __init__(self, name: str, peer: str) -> None:
        self.name = name
        self.peer = peer
        # Durable: survives a crash.
        self.next_n = 0  # numbers produced so far
        self.acked = 0  # the peer applied everything up to here
        self.hwm = 0  # applied from the peer without a gap
        # Volatile.
        self.endpoint = ""
        self.directory: Directory = lambda _node: None
        self.peer_endpoint: str | None = None
        self.tick_at_ms = 0
        self.resend_at_ms = 0
        self.stalls = 0

    def start(self, now_ms: int, endpoint: str, directory: Directory) -> Step:
        self.endpoint = endpoint
        self.directory = directory
        self.peer_endpoint = directory(self.peer)
        self.tick_at_ms = now_ms + TICK_MS
        self.resend_at_ms = 0
        self.stalls = 0
        marking = tuple((PLACE, (self.peer, n), 1) for n in range(1, self.hwm + 1))
        return Step(ledger=(Recovered(self.name, marking),))

    def crash(self) -> None:
        self.peer_endpoint = None

    def next_deadline_ms(self) -> int:
        return self.tick_at_ms

    def wake(self, now_ms: int) -> Step:
        self.tick_at_ms = now_ms + TICK_MS
        ledger: tuple[LedgerEvent, ...] = ()
        fresh = self.next_n < COUNT
        if fresh:
            self.next_n += 1
            token = (self.name, self.next_n)
            ledger = (
                Produced(self.name, PLACE, token, "count"),
                Exported(self.name, LANE, self.next_n, PLACE, token),
            )
        committed = bool(ledger)
        if self.acked >= self.next_n or not (fresh or now_ms >= self.resend_at_ms):
            return Step(committed, ledger)
        if not fresh:
            self.stalls += 1
            if self.stalls >= LOOKUP_AFTER:  # ask the directory where the peer is now
                self.peer_endpoint = self.directory(self.peer) or self.peer_endpoint
                self.stalls = 0
        self.resend_at_ms = now_ms + RESEND_MS
        if self.peer_endpoint is None:
            return Step(committed, ledger)
        frame = Send(self.peer_endpoint, pack(("count", self.acked + 1, self.next_n)))
        return Step(committed, ledger, (frame,))

    def receive(self, now_ms: int, frame: Delivered) -> Step:
        del now_ms  # the answer to a frame does not depend on the time
        message = unpack(frame.payload)
        if message[0] == "count":
            _, first, last = message
            applied: list[LedgerEvent] = []
            if first <= self.hwm + 1 <= last:
                applied = [
                    Applied(self.name, self.peer, LANE, seq, PLACE, (self.peer, seq))
                    for seq in range(self.hwm + 1, last + 1)
                ]
                self.hwm = last
            ack = Send(frame.reply_to, pack(("ack", self.hwm)))
            return Step(bool(applied), tuple(applied), (ack,))
        hwm = message[1]
        if hwm <= self.acked:
            return NOTHING
        self.acked = min(hwm, self.next_n)
        self.stalls = 0
        return Step(True, (Acked(self.name, LANE, self.acked),))

    def present(self) -> Iterable[LedgerEvent]:
        return [Present(self.name, PLACE, (self.peer, n), 1) for n in range(1, self.hwm + 1)]


@dataclass(slots=True)
class ToyResult:
    seed: int
    plan: FaultPlan
    trace: Trace
    faults: FaultCounts
    ledger: LedgerReport
    converged: bool
    hwms: dict[str, int] = field(default_factory=dict)


def simulate(
    seed: int, *, plan: FaultPlan | None = None, until_ms: int = UNTIL_MS_DEFAULT
) -> ToyResult:
    """Run the toy world for ``seed`` (faults: ``plan``, else chosen for the seed)."""
    if plan is None:
        plan = choose(seed, allowed=FAULTS_ALLOWED)
    counters = {name: Counter(name, peer) for name, peer in zip(NODES, NODES[::-1], strict=True)}
    world = World(
        seed,
        plan,
        counters,
        shards=NODES,
        until_ms=until_ms,
        heal_at_ms=int(until_ms * HEAL_AT_FRACTION),
        describe=unpack,
    )
    result = world.run()
    a, b = counters["a"], counters["b"]
    converged = a.hwm == b.hwm == COUNT and a.acked == b.acked == COUNT
    hwms = {name: counter.hwm for name, counter in counters.items()}
    return ToyResult(seed, plan, result.trace, result.faults, result.ledger, converged, hwms)


def run(seed: int) -> Trace:
    """The runner entry point (``cluster.sim.toy:run``): the trace of ``seed``."""
    return simulate(seed).trace
