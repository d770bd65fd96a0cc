"""When a shard process runs Python's cyclic garbage collector in full (SHELL).

A shard's marking is up to millions of long-lived, acyclic tuples. Python's collector,
left to itself, walks all of them in every full collection, and a shard whose marking
grows (a receiver of handed-off tokens, a put of many tokens) triggers a full
collection each time its heap has grown by a quarter: a receiving shard spent most of
its time there (docs/handoff.md, "The receive path"). Recovery already freezes what it
reads (``ShardRuntime._recover``); :class:`Collector` does the same for what enters
the marking later.

Theory of operation: after each commit the runtime reports how many marking entries
the batch changed. Once ``FREEZE_ENTRIES_MIN`` have changed since the last freeze,
the collector runs once (so no garbage of that moment is frozen) and the survivors are
frozen out of later collections (``gc.freeze``): a full collection then walks only
what is newer. Frozen objects are still freed by reference counting when their last
reference goes; only a cycle formed among frozen objects after they were frozen would
be missed. So whenever the entries changed have doubled since the last time, everything
is unfrozen and collected once more before it is frozen again: each object is walked
a bounded number of times over the process's life, not once per quarter of growth.
"""

from __future__ import annotations

import gc
from typing import Final

FREEZE_ENTRIES_MIN: Final = 20_000  # marking entries changed between two freezes
FULL_PASS_GROWTH: Final = 2  # unfreeze and collect all once the entries doubled
FULL_PASS_ENTRIES_MIN: Final = 100_000  # ... but not while there are few


class Collector:
    """Freezes the long-lived heap after commits that changed many marking entries.

    The heap's growth is judged by the marking entries the commits changed, not by
    ``gc.get_freeze_count()``, which walks the frozen objects to count them.
    """

    def __init__(self) -> None:
        self.entries_since_freeze = 0
        self.entries_total = 0
        self.entries_at_full_pass = 0
        self.freezes = 0
        self.full_passes = 0

    def after_commit(self, entries_changed: int) -> None:
        """A batch that changed ``entries_changed`` marking entries is committed."""
        self.entries_since_freeze += entries_changed
        self.entries_total += entries_changed
        if self.entries_since_freeze < FREEZE_ENTRIES_MIN or not gc.isenabled():
            return
        self.entries_since_freeze = 0
        floor = max(FULL_PASS_ENTRIES_MIN, self.entries_at_full_pass)
        full = self.entries_total >= FULL_PASS_GROWTH * floor
        if full:
            gc.unfreeze()
            self.full_passes += 1
            self.entries_at_full_pass = self.entries_total
        gc.collect()
        gc.freeze()
        self.freezes += 1
