"""A toy world on the simulated network: two counters that must reach each other.

The harness's own test bench and a template for the whole-cluster runner: it has the
same parts (a schedule, the network, a nemesis that injects the plan's faults, a heal
phase, a trace) around two trivial nodes instead of the router and shard cores.

Theory of operation: nodes ``a`` and ``b`` each count from 1 to :data:`COUNT`, one number
per tick, and send the other every number not yet acknowledged, as one frame
``("count", first, last)`` (go-back-N). The receiver keeps the highest number it has
seen without a gap (its hwm) and answers ``("ack", hwm)`` to the frame's reply endpoint.
Each node's counter, hwm and acknowledged mark are durable (they survive a crash); the
peer's endpoint is not: a node learns it from the directory (the network's
:meth:`~cluster.sim.network.Network.endpoint`, standing for the router) when it starts,
and again after :data:`LOOKUP_AFTER` resends without progress, which is how it finds a
peer that restarted on a new endpoint.

Faults come from a :class:`~cluster.sim.faults.FaultPlan`: the per-frame ones through
the link model, and ``partition``, ``one_way_partition``, ``swizzle_clog`` and
``crash_shard`` (a crash of either node) as episodes the nemesis starts every
:data:`~cluster.sim.faults.NEMESIS_TICK_MS`. At :data:`HEAL_AT_FRACTION` of the run the
faults stop (partitions heal, the links calm down, no more crashes) and the rest of the
run must bring both counters home: :attr:`ToyResult.converged`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from cluster.sim.faults import NEMESIS_TICK_MS, FaultCounts, FaultPlan, choose
from cluster.sim.nemesis import Crash, Nemesis, PartitionEnds
from cluster.sim.network import Delivered, InFlight, LinkChange, LinkModel, Network
from cluster.sim.rng import derived_random
from cluster.sim.schedule import PRIORITY_FAULT, Schedule
from cluster.sim.trace import Trace
from nets.codec import pack, unpack

NODES: Final = ("a", "b")
COUNT: Final = 100
TICK_MS: Final = 50
RESEND_MS: Final = 200
LOOKUP_AFTER: Final = 3
UNTIL_MS_DEFAULT: Final = 20_000
HEAL_AT_FRACTION: Final = 0.5
EPISODE_FAULTS: Final = (
    "partition",
    "one_way_partition",
    "swizzle_clog",
    "crash_shard",
    "crash_between_commit_and_send",
)
PER_FRAME_FAULTS: Final = ("drop", "duplicate", "reorder", "delay")


@dataclass(frozen=True, slots=True)
class Tick:
    node: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class NemesisTick:
    pass


@dataclass(frozen=True, slots=True)
class Restart:
    node: str


@dataclass(frozen=True, slots=True)
class HealAll:
    pass


@dataclass(slots=True)
class _Node:
    name: str
    peer: str
    incarnation: int = 0
    next_n: int = 0  # durable: numbers produced so far
    acked: int = 0  # durable: the peer has everything up to here
    hwm: int = 0  # durable: received from the peer without a gap
    peer_endpoint: str | None = None  # volatile: the address book
    resend_at_ms: int = 0
    stalls: int = 0


@dataclass(slots=True)
class ToyResult:
    seed: int
    plan: FaultPlan
    trace: Trace
    faults: FaultCounts
    converged: bool
    hwms: dict[str, int] = field(default_factory=dict)


class ToyWorld:
    """One run of the toy world; :meth:`run` plays it to the end."""

    def __init__(self, seed: int, plan: FaultPlan, *, until_ms: int) -> None:
        self.seed = seed
        self.plan = plan
        self.until_ms = until_ms
        self.heal_at_ms = int(until_ms * HEAL_AT_FRACTION)
        self.schedule: Schedule[Any] = Schedule()
        self.network = Network(
            self.schedule, derived_random(seed, "network"), model=plan.link_model()
        )
        self.trace = Trace()
        self.faults = FaultCounts()
        self.nemesis = Nemesis(
            plan, derived_random(seed, "nemesis"), self.network, self.schedule, self.faults
        )
        self.healed = False
        self.nodes = {
            name: _Node(name, peer) for name, peer in zip(NODES, NODES[::-1], strict=True)
        }

    def run(self) -> ToyResult:
        for name in NODES:
            self._start(name)
        self.schedule.at(NEMESIS_TICK_MS, NemesisTick(), priority=PRIORITY_FAULT)
        self.schedule.at(self.heal_at_ms, HealAll(), priority=PRIORITY_FAULT)
        for taken in self.schedule.run_until(self.until_ms):
            self._dispatch(taken.time_ms, taken.event)
        stats = self.network.statistics()
        lost = dict(stats.lost)
        for name, count in zip(
            PER_FRAME_FAULTS,
            (lost.get("dropped", 0), stats.duplicated, stats.reordered, stats.delayed),
            strict=True,
        ):
            if count:
                self.faults.record(name, count)
        self.trace.record(self.schedule.now_ms, "world", "end", self.faults.by_kind())
        a, b = self.nodes["a"], self.nodes["b"]
        converged = a.hwm == b.hwm == COUNT and a.acked == b.acked == COUNT
        hwms = {name: node.hwm for name, node in self.nodes.items()}
        return ToyResult(self.seed, self.plan, self.trace, self.faults, converged, hwms)

    # -- events --------------------------------------------------------------------------

    def _dispatch(self, now_ms: int, event: object) -> None:
        if isinstance(event, InFlight):
            delivered = self.network.arrive(event)
            if delivered is None:
                # Lost (a partition, a stale endpoint) or held (a clogged link).
                self.trace.record(now_ms, event.dst, "undelivered", event.frame_id, event.copy)
            else:
                self._receive(now_ms, delivered)
        elif isinstance(event, Tick):
            self._tick(now_ms, event)
        elif isinstance(event, LinkChange):
            self.network.apply(event)
            kind = "clog" if event.clogged else "unclog"
            self.trace.record(now_ms, "net", kind, event.src, event.dst)
        elif isinstance(event, NemesisTick):
            self._nemesis(now_ms)
        elif isinstance(event, Restart):
            self._start(event.node)
        elif isinstance(event, PartitionEnds):
            self.nemesis.partition_ends(event)
            self.trace.record(now_ms, "net", "partition_ends", event.links)
        else:
            assert isinstance(event, HealAll), f"unknown event {event!r}"
            self.healed = True
            self.network.heal()
            self.network.set_model(LinkModel())
            self.trace.record(now_ms, "net", "heal_all")

    def _start(self, name: str) -> None:
        node = self.nodes[name]
        endpoint = self.network.start(name)
        node.incarnation = self.network.incarnation(name)
        node.peer_endpoint = self.network.endpoint(node.peer)
        node.stalls = 0
        node.resend_at_ms = 0
        self.trace.record(self.schedule.now_ms, name, "start", endpoint, node.peer_endpoint)
        self.schedule.after(TICK_MS, Tick(name, node.incarnation))

    def _tick(self, now_ms: int, tick: Tick) -> None:
        node = self.nodes[tick.node]
        if tick.incarnation != node.incarnation or not self.network.is_up(node.name):
            return  # a timer of an incarnation that crashed
        self.schedule.after(TICK_MS, tick)
        fresh = node.next_n < COUNT
        if fresh:
            node.next_n += 1
        if node.acked >= node.next_n or not (fresh or now_ms >= node.resend_at_ms):
            return
        if not fresh:
            node.stalls += 1
            if node.stalls >= LOOKUP_AFTER:  # ask the directory where the peer is now
                node.peer_endpoint = self.network.endpoint(node.peer) or node.peer_endpoint
                node.stalls = 0
                self.trace.record(now_ms, node.name, "lookup", node.peer_endpoint)
        node.resend_at_ms = now_ms + RESEND_MS
        if node.peer_endpoint is None:
            return
        payload = pack(("count", node.acked + 1, node.next_n))
        frame_id = self.network.send(node.name, node.peer_endpoint, payload)
        self.trace.record(now_ms, node.name, "send", frame_id, node.peer_endpoint, unpack(payload))

    def _receive(self, now_ms: int, frame: Delivered) -> None:
        node = self.nodes[frame.dst]
        message = unpack(frame.payload)
        self.trace.record(now_ms, node.name, "recv", frame.frame_id, message)
        if message[0] == "count":
            _, first, last = message
            if first <= node.hwm + 1 <= last:
                node.hwm = last
            reply = self.network.send(node.name, frame.reply_to, pack(("ack", node.hwm)))
            self.trace.record(now_ms, node.name, "send", reply, frame.reply_to, ("ack", node.hwm))
        elif message[1] > node.acked:
            node.acked = min(message[1], node.next_n)
            node.stalls = 0

    def _nemesis(self, now_ms: int) -> None:
        if self.healed:
            return
        self.schedule.after(NEMESIS_TICK_MS, NemesisTick(), priority=PRIORITY_FAULT)
        up = [name for name in NODES if self.network.is_up(name)]
        blocked, clogged = self.network.blocked(), self.network.clogged()
        for action in self.nemesis.tick(shards=up):
            # The toy has no commits: a crash after the next commit is a crash now.
            assert isinstance(action, Crash), f"the toy world cannot carry out {action}"
            self.network.stop(action.node)
            self.nodes[action.node].peer_endpoint = None
            self.schedule.after(action.down_ms, Restart(action.node), priority=PRIORITY_FAULT)
            self.trace.record(now_ms, action.node, "crash", action.down_ms)
        if self.network.blocked() != blocked:
            self.trace.record(now_ms, "net", "blocked", self.network.blocked())
        if self.network.clogged() != clogged:
            self.trace.record(now_ms, "net", "clogged", self.network.clogged())


def simulate(
    seed: int, *, plan: FaultPlan | None = None, until_ms: int = UNTIL_MS_DEFAULT
) -> ToyResult:
    """Run the toy world for ``seed`` (faults: ``plan``, else chosen for the seed)."""
    if plan is None:
        plan = choose(seed, allowed=(*PER_FRAME_FAULTS, *EPISODE_FAULTS))
    return ToyWorld(seed, plan, until_ms=until_ms).run()


def run(seed: int) -> Trace:
    """The runner entry point (``cluster.sim.toy:run``): the trace of ``seed``."""
    return simulate(seed).trace
