"""Which received runs a batch stores as they arrived (shard.recorder.consumed_runs_to_delta),
and how a logged run folds back into a marking delta (shard.shell.store_log.fold_run).

A run none of whose tokens the batch consumed is logged as its bytes; a run the batch
consumed from joins the marking delta, where the consumed tokens cancel out.
"""

from collections import Counter
from typing import Any, NamedTuple

import msgpack
import pytest

from nets import Place
from shard.batch import ArrivedRun, MarkingDelta
from shard.recorder import consumed_runs_to_delta
from shard.shell.store_log import Delta, LogRecordError, fold_run


class Item(NamedTuple):
    key: str


def _run(*entries: tuple[str, int, Item]) -> ArrivedRun:
    return ArrivedRun(1, 0, 10, 0, b"as it arrived", Counter(p for p, _t, _k in entries), entries)


def test_a_run_the_batch_consumed_from_joins_the_delta_and_cancels() -> None:
    eaten, kept = ("work", 5, Item("a")), ("work", 5, Item("b"))
    untouched = _run(("work", 6, Item("c")))
    marking: MarkingDelta = Counter({eaten: -1, ("done", 7, Item("a")): 1})
    stored = consumed_runs_to_delta(marking, [_run(eaten, kept), untouched])
    assert stored == [untouched]
    assert +marking == Counter({kept: 1, ("done", 7, Item("a")): 1})
    assert marking[eaten] == 0  # cancelled: the store writes nothing for it


def test_runs_nothing_consumed_from_are_all_stored_as_they_arrived() -> None:
    runs = [_run(("work", 1, Item("a"))), _run(("work", 2, Item("b")))]
    marking: MarkingDelta = Counter({("work", 9, Item("z")): -1})
    assert consumed_runs_to_delta(marking, runs) == runs
    assert marking == Counter({("work", 9, Item("z")): -1})


_PLACES = {"work": Place("work", Item, key="key"), "done": Place("done", Item, key="key")}


def _slow_fold(skip: int, entries: list[Any]) -> Delta:
    """The fold entry by entry, as the reference for fold_run's one-place path."""
    delta: Delta = {}
    for name, time, fields in entries[skip:]:
        delta.setdefault(name, Counter())[(time, Item(*fields))] += 1
    return delta


@pytest.mark.parametrize("skip", [0, 1, 3])
@pytest.mark.parametrize("mixed", [False, True])
def test_a_logged_run_folds_to_its_entries_from_skip_on(skip: int, mixed: bool) -> None:
    entries = [("work", t % 2, (f"k{t % 3}",)) for t in range(6)]
    if mixed:  # several places: the per-entry path
        entries[4] = ("done", 1, ("k1",))
    delta: Delta = {"work": Counter({(0, Item("k0")): 1})}  # folds add to what is there
    fold_run(skip, msgpack.packb(entries), delta, _PLACES)
    expected = _slow_fold(skip, entries)
    expected["work"][(0, Item("k0"))] += 1
    assert delta == expected
    assert all(type(token) is Item for changes in delta.values() for _t, token in changes)


@pytest.mark.parametrize(
    "entries",
    [[("work", 1, ("a",)), ("work", 2)], [("gone", 1, ("a",))], [7], [("work", 1, ("a",), 9)]],
)
def test_a_corrupt_logged_run_raises_one_error(entries: list[Any]) -> None:
    with pytest.raises(LogRecordError):
        fold_run(0, msgpack.packb(entries), {}, _PLACES)
