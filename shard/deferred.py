"""The tokens a shard loads after it starts firing: what is left, and loading a chunk.

Places that no arc reads, no capacity bounds and no lease watches (``done``,
``stored``, a failure log) only accumulate tokens; they often hold most of a shard's
marking. Reading them back is what made recovery after a SIGKILL slow, and nothing
the engine decides depends on them. So recovery leaves them out, the shard starts
serving and firing, and this loads them a chunk per turn of the loop, from the
snapshot recovery saw (the store's :class:`~shard.batch.DeferredReader`).

Until it is done, anything that reads such a place sees the whole of it anyway:
counts add what is still to load (the store keeps each place's count), and a request
for the tokens themselves, or a slot being sealed for a move, first loads the rest.

An entry that cannot be read back (a corrupt store) fails every later step too: the
shard's loop stops on it, as a startup read would have, rather than serve a marking
with a hole in it. When the stored counts turn out wrong, :attr:`DeferredLoad.recount`
asks the shell to count the places again in the store.
"""

from __future__ import annotations

from typing import Final

from nets.engine import Engine
from shard.batch import DeferredReader, StoreReadError

# Entries loaded per turn of the shard's loop: about 12 ms on an idle core, under the
# 20 ms a batch may fire while requests wait. Each chunk also costs a fixed few ms
# (every key it touches is a bucket to extend), so smaller chunks load more slowly.
CHUNK_ENTRIES_MAX: Final = 4_096


class DeferredLoad:
    """What is left to load of the deferred places, and loading it."""

    def __init__(self, reader: DeferredReader | None, counts: dict[str, int]) -> None:
        self._reader = reader
        self._pending = {name: n for name, n in counts.items() if n}
        self._failed: StoreReadError | None = None
        self.loaded = 0  # entries loaded so far
        self.loaded_ms = 0  # the time given with the last chunk (0: not yet)
        # The stored counts disagreed with the entries: the store should count again.
        self.recount = False
        self.wrong_counts: dict[str, int] = {}
        if reader is None:
            self._finish(0)

    @property
    def active(self) -> bool:
        """Whether entries are still to load."""
        return self._reader is not None

    def pending(self, place: str) -> int:
        """How many tokens of ``place`` are still to load."""
        return self._pending.get(place, 0)

    def pending_total(self) -> int:
        """How many tokens are still to load, all places together."""
        return sum(self._pending.values()) if self.active else 0

    def not_loaded(self, place: str, count: int) -> None:
        """``count`` tokens of ``place`` will not be loaded (their slot is sealed)."""
        self._pending[place] = self._pending.get(place, 0) - count

    def step(self, engine: Engine, now_ms: int, entries_max: int = CHUNK_ENTRIES_MAX) -> int:
        """Load one chunk into ``engine``; returns how many entries it held.

        Raises:
            StoreReadError: an entry cannot be read back (now or in an earlier step).
        """
        reader = self._reader
        if self._failed is not None:
            raise self._failed
        if reader is None:
            return 0
        try:
            chunk = reader.read(entries_max)
        except StoreReadError as exc:
            self._failed = exc
            raise
        loaded = 0
        for place, entries in chunk.items():
            engine.add_checked(place, entries)
            self._pending[place] = self._pending.get(place, 0) - len(entries)
            loaded += len(entries)
        self.loaded += loaded
        if reader.done:
            self._finish(now_ms)
        return loaded

    def complete(self, engine: Engine, now_ms: int) -> None:
        """Load everything that is left (before reading a deferred place's tokens)."""
        while self._reader is not None:
            self.step(engine, now_ms, entries_max=1 << 30)

    def close(self) -> None:
        """Stop loading (the shard recovers again, or stops)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _finish(self, now_ms: int) -> None:
        self.close()
        self.loaded_ms = now_ms
        wrong = {name: n for name, n in self._pending.items() if n}
        self._pending = {}
        # The stored counts and entries disagree (a bug, or a store edited by hand):
        # every entry is loaded, so counts are right from now on; the stored ones are
        # counted again from the entries (by the shell), for the next start.
        self.recount = bool(wrong)
        self.wrong_counts = wrong
