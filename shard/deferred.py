"""The tokens a shard loads after it starts firing (SHELL, driven by the shard's loop).

Places that no arc reads, no capacity bounds and no lease watches (``done``,
``stored``, a failure log) only accumulate tokens; they often hold most of a shard's
marking. Reading them back is what made recovery after a SIGKILL slow, and nothing
the engine decides depends on them. So recovery leaves them out, the shard starts
serving and firing, and this loads them a chunk per turn of the loop, from the
snapshot recovery saw (shard/marking_reader.py).

Until it is done, anything that reads such a place sees the whole of it anyway:
counts add what is still to load (the store keeps each place's count), and a request
for the tokens themselves, or a slot being sealed for a move, first loads the rest.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from nets.engine import Engine
from shard.marking_reader import DeferredMarking

log = logging.getLogger(__name__)

# Entries loaded per turn of the shard's loop: about 5 ms of decoding on an idle core.
CHUNK_ENTRIES_MAX: Final = 2_048


class DeferredLoad:
    """What is left to load of the deferred places, and loading it."""

    def __init__(
        self, places: frozenset[str], reader: DeferredMarking | None, counts: dict[str, int]
    ) -> None:
        self.places = places
        self._reader = reader
        self._pending = {name: n for name, n in counts.items() if n}
        self.loaded = 0  # entries loaded so far
        self.loaded_ms = 0  # when the last one was (wall-clock ms; 0: not yet)
        if reader is None or not self._pending:
            self._finish()

    @property
    def active(self) -> bool:
        """Whether entries are still to load."""
        return self._reader is not None

    def pending(self, place: str) -> int:
        """How many tokens of ``place`` are still to load."""
        return self._pending.get(place, 0)

    def not_loaded(self, place: str, count: int) -> None:
        """``count`` tokens of ``place`` will not be loaded (their slot is sealed)."""
        self._pending[place] = self._pending.get(place, 0) - count

    def step(self, engine: Engine, entries_max: int = CHUNK_ENTRIES_MAX) -> int:
        """Load one chunk into ``engine``; returns how many entries it held."""
        reader = self._reader
        if reader is None:
            return 0
        loaded = 0
        for place, entries in reader.read(entries_max).items():
            engine.add_checked(place, entries)
            self._pending[place] = self._pending.get(place, 0) - len(entries)
            loaded += len(entries)
        self.loaded += loaded
        if reader.done:
            self._finish()
        return loaded

    def complete(self, engine: Engine) -> None:
        """Load everything that is left (before reading a deferred place's tokens)."""
        while self._reader is not None:
            self.step(engine, entries_max=1 << 30)

    def close(self) -> None:
        """Stop loading (the shard recovers again, or stops)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _finish(self) -> None:
        self.close()
        self.loaded_ms = time.time_ns() // 1_000_000
        wrong = {name: n for name, n in self._pending.items() if n}
        if wrong:
            # The stored counts and the stored entries disagree: counts would be off by
            # these numbers; the tokens themselves are all loaded.
            log.error("deferred places loaded, but their counts were off by %s", wrong)
        self._pending = {}
