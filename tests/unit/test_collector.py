"""The shard's collector policy (shard/shell/collector.py): when it freezes, when it
walks the whole heap again, and that it never hides garbage of the moment it freezes."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from shard.shell.collector import FREEZE_ENTRIES_MIN, FULL_PASS_ENTRIES_MIN, Collector


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """The test process's heap is unfrozen again afterwards, whatever the test froze."""
    try:
        yield
    finally:
        gc.unfreeze()


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_it_freezes_after_enough_entries_and_collects_garbage_first(unfrozen: None) -> None:
    collector = Collector()
    collector.after_commit(FREEZE_ENTRIES_MIN - 1)
    assert collector.freezes == 0
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle, garbage once the names go
    gone = weakref.ref(a)
    del a, b
    collector.after_commit(1)
    assert collector.freezes == 1 and gc.get_freeze_count() > 0
    assert gone() is None  # collected before the freeze, not frozen for ever


def test_the_whole_heap_is_walked_again_each_time_the_entries_doubled(unfrozen: None) -> None:
    collector = Collector()
    step = FREEZE_ENTRIES_MIN
    passes = []
    for _ in range(8 * FULL_PASS_ENTRIES_MIN // step):
        collector.after_commit(step)
        passes.append(collector.full_passes)
    assert collector.freezes == len(passes)
    # At 2x, 4x and 8x the floor: a bounded number of full passes, not one per freeze.
    assert collector.full_passes == 3
    assert passes.index(1) + 1 == 2 * FULL_PASS_ENTRIES_MIN // step


def test_nothing_happens_while_the_collector_is_disabled(unfrozen: None) -> None:
    collector = Collector()
    gc.disable()
    try:
        collector.after_commit(10 * FREEZE_ENTRIES_MIN)
    finally:
        gc.enable()
    assert collector.freezes == 0
