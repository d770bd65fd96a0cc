"""The run loop of a simulated world: actors on one schedule, the network and the nemesis.

The whole-cluster runner and the toy world share this loop; they differ only in their
:class:`Actor` adapters (the router core and the shard cores, or the toy's counters).

Theory of operation:

* **Actors** are the nodes' behaviour. The world calls :meth:`Actor.start` when a node's
  incarnation comes up on its fresh endpoint (recovering from what it committed),
  :meth:`Actor.receive` for each frame delivered to it, :meth:`Actor.wake` when its
  deadline (:meth:`Actor.next_deadline_ms`) comes, and :meth:`Actor.crash` when it
  dies (it keeps its committed state and loses the rest). Each call returns a
  :class:`Step`: whether it committed a batch, the ledger events of that batch, and the
  frames to send *after* the commit.
* **Commit, then send.** The world records the step's ledger events, then sends its
  frames. A ``crash_between_commit_and_send`` armed for the node strikes at its next
  step that committed: the ledger events stand, the frames are dropped, the node dies.
* **Timers.** After every step the world asks the actor for its next deadline and keeps
  one wake-up per node on the schedule (an older one is ignored by its generation), so
  an actor never polls.
* **Time per node.** An actor sees its own clock: the virtual time plus its skew
  (``clock_skew`` moves it), never going backwards.
* **Faults.** The :class:`~cluster.sim.nemesis.Nemesis` ticks every
  :data:`~cluster.sim.faults.NEMESIS_TICK_MS` until the heal phase; the world carries out
  its crashes (a restart follows after the drawn down time, on a new endpoint) and
  skews, and hands a scaling to the runner's ``scale`` callback (ignored without one).
  At ``heal_at_ms`` the faults stop: partitions are lifted, the links become calm, no
  more crashes; the rest of the run must drain.
* **Checks.** ``check_step`` (the per-step invariants) runs after every event; at the
  end the actors report their final markings and the ledger checks the history.
* **Fault points.** An actor that raises :class:`CrashPoint` dies in the middle of its
  step: what it committed before is recorded, nothing is sent, and the node restarts
  later.
* **Bounded.** At most ``steps_max`` events: a run that takes more is stuck (a livelock
  of timers) and raises :class:`SimulationStuck`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from cluster.sim.faults import NEMESIS_TICK_MS, FaultCounts, FaultPlan
from cluster.sim.ledger import Crashed, LedgerEvent, LedgerReport, check
from cluster.sim.nemesis import Crash, Nemesis, PartitionEnds, Scale, Skew
from cluster.sim.network import Delivered, InFlight, LinkChange, LinkModel, Network
from cluster.sim.rng import derived_random
from cluster.sim.schedule import PRIORITY_FAULT, PRIORITY_TIMER, Schedule
from cluster.sim.trace import Trace
from nets.errors import CpnError

STEPS_MAX_DEFAULT: Final = 10_000_000

Directory = Callable[[str], str | None]  # node -> where it listens now (None: down)


class CrashPoint(Exception):
    """Raised by an actor at a named fault point: the node dies in the middle of its step.

    Its frames were not sent, and the world crashes the node (it restarts after
    ``down_ms``). What the step had already committed stands: ``committed`` holds its
    ledger events (a real fault point may come after a commit, as ``shard-sealed``
    does: the batch is on disk, the report that would say so is not sent). An actor
    raises it from the core's fault-point callback, where the real process would
    SIGKILL itself (``CPN_FAULT_POINTS``).
    """

    def __init__(self, point: str, down_ms: int, committed: tuple[LedgerEvent, ...] = ()) -> None:
        super().__init__(point)
        self.point = point
        self.down_ms = down_ms
        self.committed = committed


class SimulationStuck(CpnError):
    """A run took more than its bound of events (a livelock of timers, a resend storm)."""


@dataclass(frozen=True, slots=True)
class Send:
    """A frame an actor sends to ``endpoint`` (a node's endpoint, or a ``reply_to``)."""

    endpoint: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Step:
    """What one call of an actor did: a committed batch's ledger events, then sends."""

    committed: bool = False
    ledger: tuple[LedgerEvent, ...] = ()
    sends: tuple[Send, ...] = ()


NOTHING: Final = Step()


class Actor(Protocol):
    """One node's behaviour, as the world drives it (see the theory of operation)."""

    def start(self, now_ms: int, endpoint: str, directory: Directory) -> Step: ...

    def receive(self, now_ms: int, frame: Delivered) -> Step: ...

    def wake(self, now_ms: int) -> Step: ...

    def next_deadline_ms(self) -> int | None: ...

    def crash(self) -> None: ...

    def present(self) -> Iterable[LedgerEvent]:
        """The final marking, as :class:`~cluster.sim.ledger.Present` events."""
        ...


@dataclass(frozen=True, slots=True)
class Wake:
    node: str
    generation: int


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
class WorldResult:
    seed: int
    plan: FaultPlan
    trace: Trace
    faults: FaultCounts
    ledger: LedgerReport
    events: int
    virtual_ms: int
    history: list[LedgerEvent] = field(default_factory=list)


@dataclass(slots=True)
class _Clock:
    skew_ms: int = 0
    last_ms: int = 0
    wake_generation: int = 0
    wake_at_ms: int | None = None  # the global time of the wake-up scheduled


class World:
    """One simulated run.

    Args:
        seed: the run's seed (the network's and the nemesis's generators derive from it).
        plan: the run's faults.
        actors: the nodes, by name; they start in this order.
        shards, routers: which nodes the nemesis may crash as shards and as routers
            (other nodes, clients, are only partitioned).
        until_ms: the run's virtual length; ``heal_at_ms``: when the faults stop.
        check_step: called after every event with the world (raise to fail).
        scale: carries out a :class:`~cluster.sim.nemesis.Scale` and says whether it did
            (another scale may be going on); None: ignored.
        describe: turns a frame's bytes into the trace's view of it (default: bytes).
        drained: the ledger requires every outbox and shipment resolved at the end.
        links: the links' latencies (the plan adds its per-frame faults until the heal
            phase, which keeps the latencies and drops the faults).
        pinned: nodes that restart on the endpoint they had (the router, whose port the
            supervisor keeps); the others come back on a fresh one.
        faults: where the run counts the faults it injects (the runner's own actors,
            simulated workers, count theirs there too); a new one by default.
    """

    def __init__(
        self,
        seed: int,
        plan: FaultPlan,
        actors: Mapping[str, Actor],
        *,
        shards: Sequence[str],
        routers: Sequence[str] = (),
        until_ms: int,
        heal_at_ms: int,
        check_step: Callable[[World], None] | None = None,
        scale: Callable[[World, int], bool] | None = None,
        describe: Callable[[bytes], object] | None = None,
        drained: bool = True,
        links: LinkModel | None = None,
        pinned: Sequence[str] = (),
        steps_max: int = STEPS_MAX_DEFAULT,
        faults: FaultCounts | None = None,
    ) -> None:
        assert 0 <= heal_at_ms <= until_ms
        self.seed = seed
        self.plan = plan
        self.actors = dict(actors)
        self.shards = list(shards)
        self.routers = list(routers)
        self.until_ms = until_ms
        self.heal_at_ms = heal_at_ms
        self.schedule: Schedule[Any] = Schedule()
        base = links or LinkModel()
        self.network = Network(
            self.schedule, derived_random(seed, "network"), model=plan.link_model(base)
        )
        self.faults = faults if faults is not None else FaultCounts()
        self.nemesis = Nemesis(
            plan,
            derived_random(seed, "nemesis"),
            self.network,
            self.schedule,
            self.faults,
            ticks=max(0, (heal_at_ms - 1) // NEMESIS_TICK_MS),
        )
        self.trace = Trace()
        self.history: list[LedgerEvent] = []
        self.healed = False
        self.retired: set[str] = set()
        self._check_step = check_step
        self._scale = scale
        self._describe = describe or (lambda payload: payload)
        self._drained = drained
        self._calm = LinkModel(
            latency_ms_min=base.latency_ms_min, latency_ms_max=base.latency_ms_max
        )
        self._steps_max = steps_max
        self._clocks = {name: _Clock() for name in self.actors}
        self._crash_after_commit: dict[str, int] = {}  # node -> down_ms
        self._pinned = frozenset(pinned)

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> WorldResult:
        """Play the run to ``until_ms`` and check the ledger.

        Raises:
            SimulationStuck: more than ``steps_max`` events.
        """
        for name in self.actors:
            self._start(name)
        self.schedule.at(NEMESIS_TICK_MS, NemesisTick(), priority=PRIORITY_FAULT)
        self.schedule.at(self.heal_at_ms, HealAll(), priority=PRIORITY_FAULT)
        events = 0
        for taken in self.schedule.run_until(self.until_ms):
            events += 1
            if events > self._steps_max:
                raise SimulationStuck(
                    f"seed {self.seed}: more than {self._steps_max} events by "
                    f"t={taken.time_ms}ms (last: {type(taken.event).__name__})"
                )
            self._dispatch(taken.time_ms, taken.event)
            if self._check_step is not None:
                self._check_step(self)
        self._count_frame_faults()
        for name, actor in self.actors.items():
            if self.network.is_up(name):
                self.history.extend(actor.present())
            elif name not in self.retired:
                # Down at the end: the ledger counts its committed marking.
                self.trace.record(self.schedule.now_ms, name, "down_at_end")
        self.trace.record(self.schedule.now_ms, "world", "end", self.faults.by_kind())
        report = check(self.history, drained=self._drained)
        return WorldResult(
            self.seed,
            self.plan,
            self.trace,
            self.faults,
            report,
            events,
            self.schedule.now_ms,
            self.history,
        )

    def add_actor(self, name: str, actor: Actor, *, shard: bool = True) -> None:
        """A node joins while the run goes on (a scale-out): it starts at once."""
        assert name not in self.actors, f"{name} is in the world already"
        self.actors[name] = actor
        self._clocks[name] = _Clock()
        if shard:
            self.shards.append(name)
        self._start(name)

    def retire(self, name: str) -> None:
        """A node leaves for good (a scale-in that completed): stopped, never restarted.

        Its final marking is no longer reported; whatever it still held counts as lost.
        """
        if self.network.is_up(name):
            self.network.stop(name)
            self.actors[name].crash()  # a process that stops closes its store
        self._clocks[name].wake_generation += 1
        self.schedule.cancel_if(lambda event: isinstance(event, Restart) and event.node == name)
        if name in self.shards:
            self.shards.remove(name)
        if name in self.routers:
            self.routers.remove(name)
        self.retired.add(name)
        self.trace.record(self.schedule.now_ms, name, "retire")

    def rejoin(self, name: str, *, shard: bool = True) -> None:
        """A retired node is started again, from what it committed (a late scale-out
        the router acted on after the node was let go: the supervisor starts it again)."""
        assert name in self.retired, f"{name} is not retired"
        self.retired.discard(name)
        (self.shards if shard else self.routers).append(name)
        self.trace.record(self.schedule.now_ms, name, "rejoin")
        self._start(name)

    def local_now(self, name: str) -> int:
        """``name``'s clock: virtual time plus its skew, never going backwards."""
        clock = self._clocks[name]
        clock.last_ms = max(clock.last_ms, self.schedule.now_ms + clock.skew_ms)
        return clock.last_ms

    # -- events ------------------------------------------------------------------------------

    def _dispatch(self, now_ms: int, event: object) -> None:
        if isinstance(event, InFlight):
            frame = self.network.arrive(event)
            if frame is None:
                # Lost (a partition, a stale endpoint) or held (a clogged link).
                self.trace.record(now_ms, event.dst, "undelivered", event.frame_id, event.copy)
                return
            self.trace.record(
                now_ms, frame.dst, "recv", frame.frame_id, frame.src, self._describe(frame.payload)
            )
            actor = self.actors[frame.dst]
            self._call(frame.dst, lambda: actor.receive(self.local_now(frame.dst), frame))
        elif isinstance(event, Wake):
            clock = self._clocks[event.node]
            if event.generation != clock.wake_generation or not self.network.is_up(event.node):
                return  # superseded, or the node died since
            clock.wake_at_ms = None
            actor = self.actors[event.node]
            self._call(event.node, lambda: actor.wake(self.local_now(event.node)))
        elif isinstance(event, LinkChange):
            self.network.apply(event)
            kind = "clog" if event.clogged else "unclog"
            self.trace.record(now_ms, "net", kind, event.src, event.dst)
        elif isinstance(event, PartitionEnds):
            self.nemesis.partition_ends(event)
            self.trace.record(now_ms, "net", "partition_ends", event.links)
        elif isinstance(event, NemesisTick):
            self._nemesis(now_ms)
        elif isinstance(event, Restart):
            self._start(event.node)
        else:
            assert isinstance(event, HealAll), f"unknown event {event!r}"
            self.healed = True
            self.network.heal()
            self.network.set_model(self._calm)
            self._crash_after_commit.clear()
            self.trace.record(now_ms, "net", "heal_all")

    def _start(self, name: str) -> None:
        endpoint = self.network.start(name, same_endpoint=name in self._pinned)
        self.trace.record(self.schedule.now_ms, name, "start", endpoint)
        actor = self.actors[name]
        self._call(name, lambda: actor.start(self.local_now(name), endpoint, self.network.endpoint))

    def _call(self, name: str, call: Callable[[], Step]) -> None:
        """Run one actor call and carry out its step, or its death at a fault point."""
        try:
            step = call()
        except CrashPoint as crash:
            self.history.extend(crash.committed)
            self.trace.record(self.schedule.now_ms, name, "fault_point", crash.point)
            self._crash(name, crash.down_ms)
            return
        self._step(name, step)

    def _step(self, name: str, step: Step) -> None:
        self.history.extend(step.ledger)
        now_ms = self.schedule.now_ms
        if step.committed and name in self._crash_after_commit:
            down_ms = self._crash_after_commit.pop(name)
            self.trace.record(now_ms, name, "crash_after_commit", len(step.sends))
            self._crash(name, down_ms)
            return
        for send in step.sends:
            frame_id = self.network.send(name, send.endpoint, send.payload)
            self.trace.record(
                now_ms, name, "send", frame_id, send.endpoint, self._describe(send.payload)
            )
        self._rearm(name)

    def _rearm(self, name: str) -> None:
        clock = self._clocks[name]
        deadline = self.actors[name].next_deadline_ms()
        if deadline is None:
            clock.wake_generation += 1  # any wake-up scheduled is void
            clock.wake_at_ms = None
            return
        at_ms = max(self.schedule.now_ms, deadline - clock.skew_ms)
        if clock.wake_at_ms == at_ms:
            return
        clock.wake_generation += 1
        clock.wake_at_ms = at_ms
        self.schedule.at(at_ms, Wake(name, clock.wake_generation), priority=PRIORITY_TIMER)

    def _crash(self, name: str, down_ms: int) -> None:
        self.network.stop(name)
        self.actors[name].crash()
        self.history.append(Crashed(name))
        clock = self._clocks[name]
        clock.wake_generation += 1
        clock.wake_at_ms = None
        self._crash_after_commit.pop(name, None)
        self.trace.record(self.schedule.now_ms, name, "crash", down_ms)
        self.schedule.after(down_ms, Restart(name), priority=PRIORITY_FAULT)

    def _nemesis(self, now_ms: int) -> None:
        if self.healed:
            return
        self.schedule.after(NEMESIS_TICK_MS, NemesisTick(), priority=PRIORITY_FAULT)
        up_shards = [n for n in self.shards if self.network.is_up(n)]
        up_routers = [n for n in self.routers if self.network.is_up(n)]
        blocked, clogged = self.network.blocked(), self.network.clogged()
        for action in self.nemesis.tick(shards=up_shards, routers=up_routers):
            if isinstance(action, Crash):
                if action.after_commit:
                    self._crash_after_commit[action.node] = action.down_ms
                    self.trace.record(now_ms, action.node, "crash_armed", action.down_ms)
                else:
                    self._crash(action.node, action.down_ms)
            elif isinstance(action, Skew):
                self._clocks[action.node].skew_ms += action.skew_ms
                self.trace.record(now_ms, action.node, "skew", action.skew_ms)
            else:
                assert isinstance(action, Scale)
                if self._scale is not None and self._scale(self, action.delta):
                    self.trace.record(now_ms, "world", "scale", action.delta)
                    self.nemesis.carried_out(action)
        if self.network.blocked() != blocked:
            self.trace.record(now_ms, "net", "blocked", self.network.blocked())
        if self.network.clogged() != clogged:
            self.trace.record(now_ms, "net", "clogged", self.network.clogged())

    def _count_frame_faults(self) -> None:
        stats = self.network.statistics()
        lost = dict(stats.lost)
        counted = {
            "drop": lost.get("dropped", 0),
            "duplicate": stats.duplicated,
            "reorder": stats.reordered,
            "delay": stats.delayed,
        }
        for name, count in counted.items():
            if count:
                self.faults.record(name, count)
