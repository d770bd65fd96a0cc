"""Engine.fire_batch: the steps fire() would fire, recorded in runs, bounded and stoppable."""

from typing import NamedTuple

import pytest

from nets import Engine, Net, Place, Step, Transition, variables
from nets.binding import InscriptionError


class Slot(NamedTuple):
    n: int


s, n = variables("s n")


def _net(count: int, *, divisor_at: int | None = None) -> Net:
    """``count`` slots moved one by one; with ``divisor_at``, the move of the slot of
    that number raises."""
    slots = Place("slots", Slot, initial=[Slot(i) for i in range(count)])
    out = Place("out", Slot)

    def checked(n: int) -> Slot:
        return Slot(10 // (n - divisor_at)) if divisor_at is not None else Slot(n)

    move = Transition("move", consume=[slots(s, n=n)], produce=[out.produce(checked)])
    return Net("batch", places=[slots, out], transitions=[move])


def _tie_net() -> Net:
    slots = Place("slots", Slot, initial=[Slot(i) for i in range(40)])
    transitions = [Transition(name, consume=[slots(s)]) for name in ("a", "b", "c")]
    return Net("tie", places=[slots], transitions=transitions)


def _one_by_one(engine: Engine, now: int) -> list[Step]:
    steps = []
    while (step := engine.fire(now)) is not None:
        steps.append(step)
    return steps


@pytest.mark.parametrize("tie_break", ["ordered", "random"])
def test_fire_batch_fires_what_fire_fires_in_runs_and_hooks_see_each(tie_break: str) -> None:
    net = _tie_net()
    expected = _one_by_one(Engine(net, seed=3, tie_break=tie_break), 0)
    engine = Engine(net, seed=3, tie_break=tie_break)
    seen: list[Step] = []
    engine.hooks.append(seen.append)
    runs: list[list[Step]] = []
    more = engine.fire_batch(0, 1000, record=runs.append, stop=lambda: False, stop_every=16)
    assert not more
    assert [step for run in runs for step in run] == expected == seen
    assert [len(run) for run in runs] == [16, 16, 8]
    assert engine.firing_counts() == [
        sum(step.transition == name for step in expected) for name in ("a", "b", "c")
    ]
    assert (
        engine.fire_batch(0, 1000, record=runs.append, stop=lambda: False, stop_every=16) is False
    )


def test_fire_batch_stops_at_its_bound_and_when_told_asking_every_few_steps() -> None:
    engine = Engine(_net(100))
    runs: list[list[Step]] = []
    assert engine.fire_batch(0, 10, record=runs.append, stop=lambda: False, stop_every=4)
    assert [len(run) for run in runs] == [4, 4, 2]
    asked = []

    def stop() -> bool:
        asked.append(sum(engine.firing_counts()))
        return len(asked) == 3

    assert engine.fire_batch(0, 1000, record=runs.append, stop=stop, stop_every=5)
    assert asked == [15, 20, 25]  # after every 5th step of this call
    assert engine.fire_batch(0, 1000, record=runs.append, stop=lambda: False, stop_every=5) is False
    assert sum(map(len, runs)) == 100 == engine.count("out")


def test_fire_batch_records_the_steps_before_a_firing_that_raised() -> None:
    engine = Engine(_net(10, divisor_at=7))  # slots fire in value order: 0..6, then 7 raises
    runs: list[list[Step]] = []
    with pytest.raises(InscriptionError, match="ZeroDivisionError"):
        engine.fire_batch(0, 1000, record=runs.append, stop=lambda: False, stop_every=4)
    assert [len(run) for run in runs] == [4, 3]
    assert [step.consumed[0][2] for run in runs for step in run] == [Slot(i) for i in range(7)]
    assert engine.firing_counts() == [7]
