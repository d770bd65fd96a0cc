"""The simulated network: opaque frames between named nodes, with the faults of a real one.

Theory of operation:

* **Nodes and endpoints.** A node is a name (``"router"``, ``"shard-0"``,
  ``"client-1"``). Each incarnation of a node that :meth:`Network.start` brings up binds
  a *fresh* endpoint (``tcp://shard-0.sim:40003``: the node and its incarnation), and
  :meth:`Network.stop` (a crash) unbinds it. Senders address endpoints, not nodes: a
  frame sent to an endpoint nobody binds any more is lost, and one in flight to an
  incarnation that crashed is lost on arrival, never handed to the next incarnation.
  That is what a ZeroMQ DEALER does when the process behind a TCP endpoint is replaced
  by one on another port: the sender's address book must learn the new endpoint (from
  the router's table, a heartbeat), or its frames go nowhere. A restart on the *same*
  port (``start(node, same_endpoint=True)``, what the supervisor tries first) keeps the
  endpoint: frames sent after the restart reach the new incarnation, frames in flight
  to the old one are still lost.
  :meth:`Network.endpoint` is the directory the simulated router and supervisor read.
* **Frames** are bytes (what ``router/wire.py`` encodes); the network never looks
  inside. A delivery carries the sender's node and its endpoint at send time (where a
  reply goes, like a ZeroMQ ROUTER's identity).
* **Links** are directed ``(src, dst)`` pairs. Every frame sent draws, in this fixed
  order, from the network's generator: drop?, duplicate?, latency, reorder?, reorder
  extra, delay?, delay extra, the duplicate's latency; eight draws whatever the
  outcome, so one decision never shifts the draws of the next frame. By default a link
  is FIFO (a TCP connection: a frame never arrives before one sent earlier to the same
  endpoint); a *delayed* frame holds up the frames behind it (a stalled connection), a
  *reordered* one is overtaken (it does not move the link's FIFO floor).
* **Partitions** (symmetric, or one-way) block directed links: a frame that arrives on
  a blocked link is lost, also one sent before the partition began. **Clogs** (the
  swizzle-clog of FoundationDB's simulator) hold frames instead: a frame arriving on a
  clogged link waits, and the link's held frames are delivered in order once it is
  unclogged. :meth:`Network.swizzle` plans a swizzle: clog a random set of links one
  by one, then unclog them in a random order.
* **Bounds.** At most :data:`IN_FLIGHT_MAX` frames travel at once and
  :data:`HELD_PER_LINK_MAX` wait on a clogged link; beyond, frames are dropped (a
  ZeroMQ send at the high-water mark with ``DONTWAIT``) and counted.

The network puts :class:`InFlight` events on the run's :class:`~cluster.sim.schedule.
Schedule`; the run loop hands each back to :meth:`Network.arrive`, which returns the
:class:`Delivered` frame for the destination node, or None when the frame is lost or
held. Nothing here reads a clock or iterates an unsorted set.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cluster.sim.schedule import PRIORITY_FAULT, PRIORITY_FRAME, Schedule
from nets.errors import CpnError

IN_FLIGHT_MAX: Final = 100_000
HELD_PER_LINK_MAX: Final = 10_000
# Endpoints look like the real ones (``tcp://HOST:PORT``, which the router checks): the
# host names the node, the port its incarnation.
SCHEME: Final = "tcp://"
HOST_SUFFIX: Final = ".sim"
PORT_BASE: Final = 40_000

Link = tuple[str, str]  # (source node, destination node)


class NetworkError(CpnError):
    """A node or endpoint the simulated network does not know, used as if it did."""


@dataclass(frozen=True, slots=True)
class LinkModel:
    """How frames travel: latency, and the per-frame fault probabilities.

    ``*_rate`` are probabilities per frame. ``delay`` holds the frame (and those behind
    it on its link) up to ``delay_ms_max`` more; ``reorder`` holds it up to
    ``reorder_ms_max`` more and lets later frames overtake it.
    """

    latency_ms_min: int = 1
    latency_ms_max: int = 5
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0
    reorder_ms_max: int = 200
    delay_rate: float = 0.0
    delay_ms_max: int = 2_000

    def __post_init__(self) -> None:
        if not 0 <= self.latency_ms_min <= self.latency_ms_max:
            raise NetworkError(
                f"latency bounds {self.latency_ms_min}..{self.latency_ms_max} ms: "
                "expected 0 <= min <= max"
            )
        for name in ("drop_rate", "duplicate_rate", "reorder_rate", "delay_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise NetworkError(f"{name} {rate}: a probability per frame is within 0..1")
        if self.reorder_ms_max < 1 or self.delay_ms_max < 1:
            raise NetworkError("reorder_ms_max and delay_ms_max must be at least 1 ms")


@dataclass(frozen=True, slots=True)
class InFlight:
    """A frame on its way (a schedule event); ``copy`` 1 is a duplicate's second copy."""

    frame_id: int
    copy: int
    src: str
    src_endpoint: str
    dst: str
    dst_endpoint: str
    dst_incarnation: int  # the incarnation bound to dst_endpoint when it was sent
    payload: bytes


@dataclass(frozen=True, slots=True)
class Delivered:
    """A frame handed to its destination node; replies go to ``reply_to``."""

    frame_id: int
    src: str
    reply_to: str
    dst: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class LinkChange:
    """A schedule event: clog (``clogged`` True) or unclog the link ``(src, dst)``."""

    src: str
    dst: str
    clogged: bool


@dataclass(frozen=True, slots=True)
class NetworkStatistics:
    sent: int
    delivered: int
    duplicated: int
    reordered: int
    delayed: int
    held: int  # frames that waited on a clogged link
    lost: tuple[tuple[str, int], ...]  # (reason, frames), sorted by reason


@dataclass(slots=True)
class _Binding:
    node: str
    incarnation: int


@dataclass(slots=True)
class _Counters:
    sent: int = 0
    delivered: int = 0
    duplicated: int = 0
    reordered: int = 0
    delayed: int = 0
    held: int = 0
    lost: Counter[str] = field(default_factory=Counter)


def endpoint_name(node: str, incarnation: int) -> str:
    """The fresh endpoint incarnation ``incarnation`` of ``node`` binds (its "port")."""
    return f"{SCHEME}{node}{HOST_SUFFIX}:{PORT_BASE + incarnation}"


class Network:
    """The links between the nodes of one simulated run.

    Args:
        schedule: the run's schedule; arrivals are put on it at :data:`PRIORITY_FRAME`.
        rng: the network's own generator (``derived_random(seed, "network")``).
        model: the link model of every link without its own (:meth:`set_link_model`).
    """

    def __init__(
        self, schedule: Schedule[Any], rng: random.Random, *, model: LinkModel | None = None
    ) -> None:
        self._schedule = schedule
        self._rng = rng
        self._model = model or LinkModel()
        self._link_models: dict[Link, LinkModel] = {}
        self._incarnations: dict[str, int] = {}  # node -> its latest incarnation
        self._bound: dict[str, _Binding] = {}  # endpoint -> who binds it now
        self._endpoints: dict[str, str] = {}  # node -> the endpoint it bound last
        self._fifo_floor_ms: dict[tuple[str, str], int] = {}  # (src, dst endpoint) -> ms
        self._blocked: Counter[Link] = Counter()  # link -> partitions that block it
        self._clogged: set[Link] = set()
        self._held: dict[Link, deque[InFlight]] = {}
        self._in_flight = 0
        self._frame_ids = 0
        self._counters = _Counters()

    # -- nodes ------------------------------------------------------------------------------

    def start(self, node: str, *, same_endpoint: bool = False) -> str:
        """Bring up the next incarnation of ``node``; return the endpoint it binds.

        A fresh endpoint by default (another port). ``same_endpoint``: the endpoint of
        the previous incarnation again (a restart on the same port, as the supervisor
        tries first); frames in flight to the previous incarnation are still lost, and
        frames sent while the node was down were lost (a simplification: ZeroMQ would
        queue them and deliver them after reconnecting).
        """
        assert node, "a node needs a name"
        assert "/" not in node, f"node name {node!r} holds a '/'"
        assert not self.is_up(node), f"{node} is up already"
        incarnation = self._incarnations.get(node, 0) + 1
        self._incarnations[node] = incarnation
        previous = self._endpoints.get(node)
        endpoint = previous if same_endpoint and previous else endpoint_name(node, incarnation)
        self._endpoints[node] = endpoint
        self._bound[endpoint] = _Binding(node, incarnation)
        return endpoint

    def stop(self, node: str) -> None:
        """``node`` crashed or stopped: its endpoint is unbound, frames to it are lost."""
        endpoint = self.endpoint(node)
        if endpoint is None:
            raise NetworkError(f"cannot stop {node!r}: it is not up")
        del self._bound[endpoint]

    def is_up(self, node: str) -> bool:
        return self.endpoint(node) is not None

    def endpoint(self, node: str) -> str | None:
        """Where ``node`` listens now (None while it is down): the directory's answer."""
        endpoint = self._endpoints.get(node)
        return endpoint if endpoint is not None and endpoint in self._bound else None

    def incarnation(self, node: str) -> int:
        """The latest incarnation of ``node`` (0: never started)."""
        return self._incarnations.get(node, 0)

    # -- links ------------------------------------------------------------------------------

    def set_link_model(self, src: str, dst: str, model: LinkModel) -> None:
        """Give the link ``src -> dst`` its own model (a slow or lossy link)."""
        self._link_models[(src, dst)] = model

    def set_model(self, model: LinkModel) -> None:
        """Change the model of every link without its own (the heal phase sets a calm one)."""
        self._model = model

    def partition(self, side_a: Iterable[str], side_b: Iterable[str]) -> tuple[Link, ...]:
        """Block every link between the two sides, both ways; return the links blocked.

        Partitions may overlap: a link blocked twice stays blocked until both are lifted
        (:meth:`unblock` with what each call returned) or everything heals.
        """
        a, b = sorted(set(side_a)), sorted(set(side_b))
        links = [(src, dst) for src in a for dst in b]
        return self._block([*links, *((dst, src) for src, dst in links)])

    def one_way_partition(
        self, sources: Iterable[str], destinations: Iterable[str]
    ) -> tuple[Link, ...]:
        """Block the links from ``sources`` to ``destinations`` only; return them."""
        srcs, dsts = sorted(set(sources)), sorted(set(destinations))
        return self._block([(src, dst) for src in srcs for dst in dsts])

    def unblock(self, links: Iterable[Link]) -> None:
        """Lift one partition: the links one :meth:`partition` call returned."""
        for link in links:
            if self._blocked[link] > 0:
                self._blocked[link] -= 1

    def heal(self) -> None:
        """Lift every partition (clogs are lifted by their own unclog)."""
        self._blocked.clear()

    def blocked(self) -> tuple[Link, ...]:
        return tuple(sorted(link for link, count in self._blocked.items() if count > 0))

    def _block(self, links: list[Link]) -> tuple[Link, ...]:
        for link in links:
            assert link[0] != link[1], f"a node cannot be cut from itself: {link}"
            self._blocked[link] += 1
        return tuple(links)

    def clogged(self) -> tuple[Link, ...]:
        return tuple(sorted(self._clogged))

    def apply(self, change: LinkChange) -> None:
        """Carry out a scheduled :class:`LinkChange`."""
        link = (change.src, change.dst)
        if change.clogged:
            self._clogged.add(link)
            return
        self._clogged.discard(link)
        held = self._held.pop(link, deque())
        now_ms = self._schedule.now_ms
        for frame in held:  # in their arrival order; the schedule's sequence keeps it
            self._put(now_ms + self._model_of(link).latency_ms_min, frame)

    def swizzle(
        self, rng: random.Random, nodes: Sequence[str], *, step_ms: int, hold_ms: int
    ) -> list[tuple[int, LinkChange]]:
        """Plan and schedule a swizzle-clog among ``nodes``; return what was scheduled.

        A random non-empty set of the directed links between ``nodes`` is clogged one
        by one, ``step_ms`` apart; ``hold_ms`` after the last clog they are unclogged,
        one by one, ``step_ms`` apart, in another random order. Draws come from
        ``rng`` (the fault schedule's generator), not from the network's.
        """
        assert step_ms >= 0
        assert hold_ms >= 0
        links = [(s, d) for s in sorted(set(nodes)) for d in sorted(set(nodes)) if s != d]
        if not links:
            return []
        chosen = rng.sample(links, rng.randint(1, len(links)))
        restore = list(chosen)
        rng.shuffle(restore)
        now_ms = self._schedule.now_ms
        planned = [
            (now_ms + i * step_ms, LinkChange(s, d, True)) for i, (s, d) in enumerate(chosen)
        ]
        last_ms = planned[-1][0] + hold_ms
        planned += [
            (last_ms + (i + 1) * step_ms, LinkChange(s, d, False))
            for i, (s, d) in enumerate(restore)
        ]
        for time_ms, change in planned:
            self._schedule.at(time_ms, change, priority=PRIORITY_FAULT)
        return planned

    # -- frames ------------------------------------------------------------------------------

    def send(self, src: str, dst_endpoint: str, payload: bytes) -> int:
        """Send ``payload`` from ``src`` to ``dst_endpoint``; return the frame's id.

        The frame's fate is drawn now (see the module's theory of operation); whether
        it is delivered is settled on arrival. Never raises for a lost frame: a
        network does not tell the sender.
        """
        src_endpoint = self.endpoint(src)
        assert src_endpoint is not None, f"{src} sends while it is down"
        self._frame_ids += 1
        frame_id = self._frame_ids
        self._counters.sent += 1
        binding = self._bound.get(dst_endpoint)
        dst = binding.node if binding is not None else _node_of(dst_endpoint)
        model = self._model_of((src, dst))
        rng = self._rng
        dropped = rng.random() < model.drop_rate
        duplicated = rng.random() < model.duplicate_rate
        latency_ms = rng.randint(model.latency_ms_min, model.latency_ms_max)
        reordered = rng.random() < model.reorder_rate
        reorder_ms = rng.randint(1, model.reorder_ms_max)
        delayed = rng.random() < model.delay_rate
        delay_ms = rng.randint(1, model.delay_ms_max)
        copy_latency_ms = rng.randint(model.latency_ms_min, model.latency_ms_max)
        if binding is None:
            self._counters.lost["no_listener"] += 1
            return frame_id
        if dropped:
            self._counters.lost["dropped"] += 1
            return frame_id
        frame = InFlight(
            frame_id, 0, src, src_endpoint, dst, dst_endpoint, binding.incarnation, payload
        )
        now_ms = self._schedule.now_ms
        key = (src, dst_endpoint)
        floor_ms = self._fifo_floor_ms.get(key, 0)
        arrival_ms = now_ms + latency_ms
        if delayed:
            self._counters.delayed += 1
            arrival_ms += delay_ms
        if reordered:
            self._counters.reordered += 1
            self._put(arrival_ms + reorder_ms, frame)
        else:
            arrival_ms = max(arrival_ms, floor_ms)
            self._fifo_floor_ms[key] = arrival_ms
            self._put(arrival_ms, frame)
        if duplicated:
            self._counters.duplicated += 1
            copy = InFlight(
                frame_id, 1, src, src_endpoint, dst, dst_endpoint, binding.incarnation, payload
            )
            self._put(max(now_ms + copy_latency_ms, self._fifo_floor_ms.get(key, 0)), copy)
        return frame_id

    def arrive(self, frame: InFlight) -> Delivered | None:
        """A frame's arrival came up in the schedule: deliver it, or lose or hold it."""
        self._in_flight -= 1
        assert self._in_flight >= 0
        link = (frame.src, frame.dst)
        binding = self._bound.get(frame.dst_endpoint)
        if binding is None or binding.incarnation != frame.dst_incarnation:
            self._counters.lost["stale_endpoint"] += 1
            return None
        if self._blocked[link] > 0:
            self._counters.lost["partitioned"] += 1
            return None
        if link in self._clogged:
            held = self._held.setdefault(link, deque())
            if len(held) >= HELD_PER_LINK_MAX:
                self._counters.lost["clog_overflow"] += 1
                return None
            held.append(frame)
            self._counters.held += 1
            return None
        self._counters.delivered += 1
        return Delivered(frame.frame_id, frame.src, frame.src_endpoint, frame.dst, frame.payload)

    def in_flight(self) -> int:
        """Frames scheduled to arrive (held frames not counted)."""
        return self._in_flight

    def held(self) -> int:
        return sum(len(frames) for frames in self._held.values())

    def statistics(self) -> NetworkStatistics:
        c = self._counters
        return NetworkStatistics(
            sent=c.sent,
            delivered=c.delivered,
            duplicated=c.duplicated,
            reordered=c.reordered,
            delayed=c.delayed,
            held=c.held,
            lost=tuple(sorted(c.lost.items())),
        )

    # -- inside ------------------------------------------------------------------------------

    def _model_of(self, link: Link) -> LinkModel:
        return self._link_models.get(link, self._model)

    def _put(self, time_ms: int, frame: InFlight) -> None:
        if self._in_flight >= IN_FLIGHT_MAX:
            self._counters.lost["overflow"] += 1
            return
        self._in_flight += 1
        self._schedule.at(time_ms, frame, priority=PRIORITY_FRAME)


def _node_of(endpoint: str) -> str:
    """The node named in an endpoint (for a frame to an endpoint nobody binds)."""
    host = endpoint[len(SCHEME) :].rsplit(":", 1)[0]
    if not endpoint.startswith(SCHEME) or not host.endswith(HOST_SUFFIX):
        raise NetworkError(
            f"{endpoint!r} is not a simulated endpoint ({SCHEME}NODE{HOST_SUFFIX}:PORT)"
        )
    return host.removesuffix(HOST_SUFFIX)
