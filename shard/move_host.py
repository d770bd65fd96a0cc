"""The slot mover's narrow access to a shard's engine and store (:class:`shard.mover.MoveHost`).

A slot move (:mod:`shard.mover`, docs/handoff.md, "Slot moves") takes a slot's tokens
out of the engine when it seals the slot, puts them back when it unseals or activates
one, reads what the store committed for a slot, and gives pool tokens away when the
shard leaves. :class:`EngineMoveHost` is that access and no more: the mover and the
link (:mod:`shard.link`) are handed it on each call, never the core, so that what a move
may do to the marking is read in one page. It changes the engine only; what a move
changes in the batch, the mover records itself.
"""

from __future__ import annotations

from collections.abc import Callable

from nets.engine import Engine
from nets.firing import PlacedEntry
from nets.model import Net, Token
from shard.deferred import DeferredLoad
from shard.shard_setup import StoredSlots


class EngineMoveHost:
    """A core's engine and store as the mover sees them (module docstring).

    Args:
        net, engine, deferred: the core's.
        slots: the store's committed entries of a slot.
        committed_firings: the core's committed firings per transition (a retiring
            shard's move reports carry them).
    """

    def __init__(
        self,
        net: Net,
        engine: Engine,
        deferred: DeferredLoad,
        slots: StoredSlots,
        committed_firings: Callable[[], dict[str, int]],
    ) -> None:
        self._pools = tuple(place.name for place in net.places if place.pool)
        self._engine = engine
        self._deferred = deferred
        self._slots = slots
        self.committed_firings = committed_firings

    def sealed_entries(self, slot: int) -> list[PlacedEntry]:
        """A slot's committed entries, the deferred ones loaded first (to take it out)."""
        self._deferred.complete(self._engine, self._engine.now)
        return self._slots.slot_entries(slot)

    def stored_entries(self, slot: int) -> list[PlacedEntry]:
        return self._slots.slot_entries(slot)

    def extract(self, entries: list[PlacedEntry]) -> None:
        self._engine.extract(entries)

    def add_entries(self, entries: list[PlacedEntry]) -> None:
        by_place: dict[str, list[tuple[int, Token]]] = {}
        for place, time_ms, token in entries:
            by_place.setdefault(place, []).append((time_ms, token))
        for place, timed in by_place.items():
            self._engine.add_checked(place, timed)

    def pool_entries(self) -> list[PlacedEntry]:
        return [(place, t, tok) for place in self._pools for t, tok in self._engine.tokens(place)]

    def pool_token_count(self) -> int:
        return sum(self._engine.count(place) for place in self._pools)
