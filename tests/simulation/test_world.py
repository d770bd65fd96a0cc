"""The world's run loop: commit then send, crashes after a commit, timers, skew, bounds.

The toy world (cluster/sim/toy.py) runs on this loop; a mutation of its receiver shows
that the ledger catches a token applied twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from cluster.sim import toy
from cluster.sim.faults import FaultPlan, parse_faults
from cluster.sim.ledger import LedgerEvent, Present, Produced, Recovered
from cluster.sim.network import Delivered
from cluster.sim.toy import simulate
from cluster.sim.world import NOTHING, CrashPoint, Directory, SimulationStuck, Step, World

pytestmark = pytest.mark.simulation


class Clocked:
    """An actor that wakes every ``period_ms`` and remembers the times it saw."""

    def __init__(self, period_ms: int = 10) -> None:
        self.period_ms = period_ms
        self.seen: list[int] = []
        self.deadline_ms = 0
        self.wakes = 0
        self.crashes = 0

    def start(self, now_ms: int, endpoint: str, directory: Directory) -> Step:
        self.seen.append(now_ms)
        self.deadline_ms = now_ms + self.period_ms
        return NOTHING

    def receive(self, now_ms: int, frame: Delivered) -> Step:
        return NOTHING

    def wake(self, now_ms: int) -> Step:
        self.seen.append(now_ms)
        self.wakes += 1
        self.deadline_ms = now_ms + self.period_ms
        return NOTHING

    def next_deadline_ms(self) -> int | None:
        return self.deadline_ms

    def crash(self) -> None:
        self.crashes += 1

    def present(self) -> Iterable[LedgerEvent]:
        return ()


def _world(actors: dict[str, Clocked], plan: FaultPlan, **options: Any) -> World:
    return World(
        1, plan, actors, shards=sorted(actors), until_ms=1_000, heal_at_ms=1_000, **options
    )


def test_an_actor_is_woken_once_per_deadline() -> None:
    actor = Clocked(period_ms=10)
    _world({"shard-0": actor}, FaultPlan()).run()
    assert actor.wakes == 100
    assert actor.seen == list(range(0, 1_001, 10))


def test_a_skewed_clock_never_goes_backwards() -> None:
    actors = {f"shard-{i}": Clocked(period_ms=7) for i in range(3)}
    result = _world(actors, parse_faults("clock_skew=20")).run()
    assert result.faults.by_kind()["clock_skew"] >= 5
    assert any(" skew " in line for line in result.trace.lines())
    for actor in actors.values():
        assert actor.seen == sorted(actor.seen)


def test_scaling_goes_to_the_runner() -> None:
    deltas: list[int] = []

    def scale(_world: World, delta: int) -> bool:
        deltas.append(delta)
        return True

    _world({"shard-0": Clocked()}, parse_faults("scale_out=10,scale_in=10"), scale=scale).run()
    assert set(deltas) == {1, -1}


def test_a_livelock_of_timers_is_stuck() -> None:
    actor = Clocked(period_ms=0)  # always due: never lets time pass
    with pytest.raises(SimulationStuck, match=r"seed 1: more than 500 events by t=0ms"):
        _world({"shard-0": actor}, FaultPlan(), steps_max=500).run()


def test_a_crash_between_commit_and_send_drops_the_sends_and_the_toy_still_converges() -> None:
    result = simulate(2, plan=parse_faults("crash_between_commit_and_send=3,drop=0.05"))
    assert result.faults.by_kind()["crash_between_commit_and_send"] > 5
    assert any(" crash_after_commit " in line for line in result.trace.lines())
    assert result.converged
    assert result.ledger.ok, str(result.ledger)


def test_the_toy_world_converges_with_a_balanced_ledger_over_many_seeds() -> None:
    kinds: set[str] = set()
    for seed in range(40):
        result = simulate(seed)
        assert result.converged, f"seed {seed}: {result.hwms} with {result.plan.describe()}"
        assert result.ledger.ok, f"seed {seed}: {result.ledger}"
        assert len(result.plan.rates) >= 3
        kinds |= set(result.faults.by_kind())
    assert set(toy.FAULTS_ALLOWED) <= kinds


def test_the_ledger_catches_a_receiver_that_applies_a_resend_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The mutation: the receiver forgets its hwm check, so a go-back resend is applied
    # again (what a slot moved without its dedup state does).
    original = toy.Counter.receive

    def forgetful(self: toy.Counter, now_ms: int, frame: Delivered) -> Step:
        kept = self.hwm
        if frame.payload[1:2] and toy.unpack(frame.payload)[0] == "count":
            self.hwm = toy.unpack(frame.payload)[1] - 1
        step = original(self, now_ms, frame)
        self.hwm = max(self.hwm, kept)
        return step

    monkeypatch.setattr(toy.Counter, "receive", forgetful)
    results = [simulate(seed, plan=parse_faults("drop=0.2,duplicate=0.2")) for seed in range(3)]
    rules = {v.rule for r in results for v in r.ledger.violations}
    assert "applied_twice" in rules
    failure = next(v for r in results for v in r.ledger.violations if v.rule == "applied_twice")
    assert failure.place == "numbers"
    assert any("Applied(" in line for line in failure.history)


def test_a_scale_out_adds_a_shard_and_a_scale_in_retires_one_for_good() -> None:
    added: list[str] = []

    def scale(world: World, delta: int) -> bool:
        if delta > 0:
            name = f"shard-{len(world.actors)}"
            world.add_actor(name, Clocked())
            added.append(name)
            return True
        if len(world.shards) > 1:
            world.retire(world.shards[-1])
            return True
        return False

    result = _world(
        {"shard-0": Clocked()}, parse_faults("scale_out=10,scale_in=5,crash_shard=5"), scale=scale
    )
    world_result = result.run()
    assert added
    assert result.retired
    for name in sorted(result.retired):
        assert not result.network.is_up(name)
        assert name not in result.shards
    assert any(" retire" in line for line in world_result.trace.lines())
    for name in added:
        assert result.actors[name].seen  # type: ignore[attr-defined]


def test_a_pinned_node_comes_back_on_its_endpoint_the_others_on_a_fresh_one() -> None:
    actors = {"router": Clocked(), "shard-0": Clocked()}
    world = World(
        1,
        parse_faults("crash_shard=5,crash_router=5"),
        actors,
        shards=["shard-0"],
        routers=["router"],
        until_ms=10_000,
        heal_at_ms=8_000,
        pinned=["router"],
    )
    result = world.run()
    starts = [line.split()[1:4:2] for line in result.trace.lines() if " start " in line]
    router_endpoints = {endpoint for node, endpoint in starts if node == "router"}
    shard_endpoints = {endpoint for node, endpoint in starts if node == "shard-0"}
    assert world.network.incarnation("router") > 1
    assert router_endpoints == {'"tcp://router.sim:40001"'}
    assert len(shard_endpoints) == world.network.incarnation("shard-0") > 1


class Faulty(Clocked):
    """Commits one token per wake; dies at a fault point on the third wake of each life."""

    def __init__(self) -> None:
        super().__init__(period_ms=10)
        self.committed: list[int] = []  # durable
        self.wakes_here = 0

    def start(self, now_ms: int, endpoint: str, directory: Directory) -> Step:
        self.wakes_here = 0
        super().start(now_ms, endpoint, directory)
        marking = tuple(("ticks", (t,), 1) for t in self.committed)
        return Step(ledger=(Recovered("shard-0", marking),))

    def wake(self, now_ms: int) -> Step:
        self.wakes_here += 1
        if self.wakes_here == 3:
            raise CrashPoint("shard-sealed", down_ms=25)
        super().wake(now_ms)
        self.committed.append(now_ms)
        return Step(True, (Produced("shard-0", "ticks", (now_ms,), "tick"),))

    def present(self) -> Iterable[LedgerEvent]:
        return [Present("shard-0", "ticks", (t,), 1) for t in self.committed]


def test_a_fault_point_kills_the_node_mid_step_and_nothing_of_the_step_counts() -> None:
    actor = Faulty()
    world = _world({"shard-0": actor}, FaultPlan())
    result = world.run()
    faults_ms = [int(line.split()[0]) for line in result.trace.lines() if "fault_point" in line]
    assert len(faults_ms) > 10
    assert world.network.incarnation("shard-0") == len(faults_ms) + 1
    produced = [e.value[0] for e in result.history if isinstance(e, Produced)]
    assert produced == actor.committed
    assert not set(produced) & set(faults_ms)  # the dying step left nothing behind
    assert result.ledger.ok, str(result.ledger)


def test_a_retired_node_stops_as_a_process_does_and_may_rejoin_from_its_store() -> None:
    actors = {"shard-0": Clocked(), "shard-1": Clocked()}
    world = _world(actors, FaultPlan())
    world.run()
    world.retire("shard-1")
    assert actors["shard-1"].crashes == 1  # its store is closed, as a stopped process's
    assert not world.network.is_up("shard-1") and "shard-1" not in world.shards
    world.rejoin("shard-1")
    assert world.network.is_up("shard-1") and "shard-1" in world.shards
    assert "shard-1" not in world.retired
    assert any(" rejoin" in line for line in world.trace.lines())
