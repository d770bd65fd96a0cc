"""Timed-relative exploration: time steps, declared time fields, and the engine's runs."""

from typing import Annotated, NamedTuple

import pytest

from nets import Engine, Net, Place, Transition, variables
from nets.errors import CpnError
from nets.explore import explore
from nets.explore_timed import TIME_MS, relative_stepper, time_fields
from nets.scraper_sim import verified_net
from tests.verify_nets import broken_crawler


class Clock(NamedTuple):
    name: str
    next_ms: Annotated[int, TIME_MS]


class Plain(NamedTuple):
    name: str
    next_ms: int


def _ticking(colour: type) -> Net:
    c = variables("c")[0]
    clock = Place("clock", colour, initial=[colour("c", 0)])
    tick = Transition(
        "tick",
        consume=[clock(c)],
        produce=[clock.produce(lambda c: c._replace(next_ms=c.next_ms + 100), delay=100)],
    )
    return Net("ticking", places=[clock], transitions=[tick])


def test_time_fields_are_declared_by_annotation() -> None:
    assert time_fields(Clock) == (1,)
    assert time_fields(Plain) == ()


def test_shifting_declared_time_fields_makes_a_clock_finite() -> None:
    space = explore(_ticking(Clock), time="relative", keep_edges=True)
    assert (space.state_count, space.edge_count, space.partial) == (2, 2, False)
    assert space.semantics == "timed-relative"
    assert [label.transition for label in space.graph.labels] == ["tick", "time"]
    # Undeclared, the field counts up forever: the exploration is cut off.
    assert explore(_ticking(Plain), time="relative", max_states=50).partial
    # Untimed, delays are ignored and the field still counts up.
    assert explore(_ticking(Clock), max_states=50).partial


def _relative(engine: Engine, net: Net, read: set[str]) -> tuple[tuple[object, ...], ...]:
    marking = engine.marking()
    return tuple(
        tuple(
            sorted(
                (max(0, time - engine.now) if p.name in read else 0, token)
                for time, token in marking[p.name]
            )
        )
        for p in net.places
    )


def test_the_engine_run_of_the_decision_model_is_a_path_of_the_relative_graph() -> None:
    net = verified_net(domains=2, pages=2)
    stepper = relative_stepper(net, priorities=True)
    read = {pat.place.name for t in net.transitions for pat in (*t.consume, *t.read, *t.inhibit)}
    engine = Engine(net)
    now, jumps, steps = 0, 0, 0
    for _ in range(500):
        before = _relative(engine, net, read)
        successors = list(stepper.successors(before))
        step = engine.fire(now)
        if step is None:
            deadline = engine.next_deadline()
            if deadline is None:
                assert not successors
                break
            engine.advance(deadline)
            assert (
                "time",
                {"delta_ms": deadline - now},
                _relative(engine, net, read),
            ) in successors
            now, jumps = deadline, jumps + 1
            continue
        steps += 1
        after = _relative(engine, net, read)
        assert (step.transition, dict(step.binding), after) in successors
    assert steps > 10 and jumps > 5
    space = explore(net, time="relative", priorities=True)
    assert space.dead_markings == 1 and not space.partial


def test_work_queues_are_refused_in_relative_time() -> None:
    with pytest.raises(CpnError, match="does not model leases"):
        explore(broken_crawler(), time="relative")
    with pytest.raises(CpnError, match="untimed or relative"):
        explore(_ticking(Clock), time="absolute")
