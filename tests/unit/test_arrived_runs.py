"""Which received runs a batch stores as they arrived (shard.core._consumed_runs_to_delta).

A run none of whose tokens the batch consumed is logged as its bytes; a run the batch
consumed from joins the marking delta, where the consumed tokens cancel out.
"""

from collections import Counter
from typing import NamedTuple

from shard.batch import ArrivedRun, MarkingDelta
from shard.core import _consumed_runs_to_delta


class Item(NamedTuple):
    key: str


def _run(*entries: tuple[str, int, Item]) -> ArrivedRun:
    return ArrivedRun(1, 0, 10, 0, b"as it arrived", Counter(p for p, _t, _k in entries), entries)


def test_a_run_the_batch_consumed_from_joins_the_delta_and_cancels() -> None:
    eaten, kept = ("work", 5, Item("a")), ("work", 5, Item("b"))
    untouched = _run(("work", 6, Item("c")))
    marking: MarkingDelta = Counter({eaten: -1, ("done", 7, Item("a")): 1})
    stored = _consumed_runs_to_delta(marking, [_run(eaten, kept), untouched])
    assert stored == [untouched]
    assert +marking == Counter({kept: 1, ("done", 7, Item("a")): 1})
    assert marking[eaten] == 0  # cancelled: the store writes nothing for it


def test_runs_nothing_consumed_from_are_all_stored_as_they_arrived() -> None:
    runs = [_run(("work", 1, Item("a"))), _run(("work", 2, Item("b")))]
    marking: MarkingDelta = Counter({("work", 9, Item("z")): -1})
    assert _consumed_runs_to_delta(marking, runs) == runs
    assert marking == Counter({("work", 9, Item("z")): -1})
