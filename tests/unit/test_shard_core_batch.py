"""How ShardCore.fire records a batch's firings: the marking delta and the counts."""

from __future__ import annotations

from typing import NamedTuple

from nets import Net, Place, Transition, variables
from nets.firing import PlacedEntry
from shard.batch import Recovered
from shard.core import ShardCore
from shard.shard_setup import ShardSetup

T0_MS = 1_000_000


class Job(NamedTuple):
    n: int


class NoSlots:
    def slot_entries(self, slot: int) -> list[PlacedEntry]:
        raise AssertionError(f"slot {slot} read from a store that does not exist")


class Checks:
    """A budget that is never exhausted and counts how often it was asked."""

    def __init__(self) -> None:
        self.asked = 0

    def exhausted(self) -> bool:
        self.asked += 1
        return False


j = variables("j")[0]


def _core() -> ShardCore:
    # jobs -> middle -> done: every middle token is produced and consumed in the batch.
    jobs = Place("jobs", Job, initial=[Job(i) for i in range(40)])
    middle = Place("middle", Job)
    done = Place("done", Job)
    start = Transition("start", consume=[jobs(j)], produce=[middle.produce(j)])
    finish = Transition("finish", consume=[middle(j)], produce=[done.produce(j)], priority=1)
    net = Net("chain", places=[jobs, middle, done], transitions=[start, finish])
    core = ShardCore(
        ShardSetup.of(net, shard_id=0, shard_count=1),
        Recovered(marking={}, clock_ms=0, clients={}, initialised=False),
        incarnation=1,
        now_ms=T0_MS,
        slots=NoSlots(),
    )
    core.take_batch()  # the initial marking: the store's initialisation
    core.committed(T0_MS)
    return core


def test_a_batch_stores_removals_and_additions_but_nothing_that_passed_through() -> None:
    core = _core()
    budget = Checks()
    assert core.fire(T0_MS, budget) == 80
    assert not core.more_enabled
    assert budget.asked == 80 // 16
    batch = core.take_batch()
    assert dict(batch.firings) == {"start": 40, "finish": 40}
    assert all(n for n in batch.marking.values())  # no entry left at 0
    assert sorted(batch.marking.items()) == sorted(
        [(("jobs", T0_MS, Job(i)), -1) for i in range(40)]
        + [(("done", T0_MS, Job(i)), 1) for i in range(40)]
    )
    core.committed(T0_MS)
    assert core.recorder.committed_firings() == {"finish": 40, "start": 40}
    assert core.fire(T0_MS, budget) == 0 and not core.more_enabled
