"""What one write transaction commits (:class:`Batch`) and what a store holds when opened
(:class:`Recovered`): the records the shard's core and its store share.

The core builds a batch as it applies requests and fires; the shell commits it in one
LMDB write transaction and only then sends what the batch made true. Recovery hands the
core a :class:`Recovered`, from which the core is built whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from nets.errors import CpnError
from nets.model import Token

MarkingDelta = Counter[tuple[str, int, Token]]  # (place, time, token) -> +n / -n
PlacedEntries = tuple[tuple[str, int, Token], ...]  # (place, time, token) entries
# A run offered to the outbox: (lane, seq of its first entry, its entries in seq order).
OfferedRun = tuple[int, int, PlacedEntries]
# A run received from a peer's outbox and applied: (sender, lane, seq of its first
# applied entry, the entries applied, in seq order).
ReceivedRun = tuple[int, int, int, PlacedEntries]
# Entries a slot move took out of the engine or put in: (kind, move id, entries), kind
# one of MOVED_KINDS.
MovedEntries = tuple[str, int, PlacedEntries]
MOVED_KINDS = ("sealed", "unsealed", "activated", "forgotten")
Chunk = dict[str, list[tuple[int, Token]]]  # place -> (time, token) entries


class StoreReadError(CpnError):
    """An entry the store holds cannot be read back (a corrupt store)."""


class DeferredReader(Protocol):
    """The entries of the deferred places as of recovery's snapshot, read in chunks
    (docs/shard.md, "Deferred places"); the store provides it."""

    @property
    def done(self) -> bool: ...

    def read(self, entries_max: int) -> Chunk:
        """Up to ``entries_max`` more entries. Raises :class:`StoreReadError`."""
        ...

    def close(self) -> None: ...


StoredRun = tuple[int, int, int, bytes]  # (lane, first seq, count, entries)


@dataclass(frozen=True, slots=True)
class ArrivedRun:
    """A handoff run a peer sent, accepted and applied to the engine, which the store
    logs as it arrived: one record holding the run's bytes, not one entry per token
    (docs/shard.md, "The store").

    The core puts it in :attr:`Batch.arrived` *instead of* adding the run's entries to
    :attr:`Batch.marking`; the store decodes ``blob`` only when it folds the log into the
    marking table or recovers. ``blob`` is the run exactly as it came off the wire
    (``msgpack([(place, time, fields), ...])``, docs/handoff.md); its first ``skip``
    entries were applied before (a resent run's duplicates) and are not part of this
    record. ``counts`` is how many tokens the record adds to each place (the store keeps
    every place's count per commit without decoding the run).
    """

    sender: int
    lane: int
    first_seq: int  # seq of the blob's first entry (the applied ones start at + skip)
    skip: int
    blob: bytes
    counts: Mapping[str, int]
    # The entries applied, decoded (the core has them anyway): a batch that consumed
    # one of them stores the run in its marking delta instead (ShardCore.take_batch).
    entries: PlacedEntries = ()

    def tokens(self) -> int:
        """How many tokens the record adds to the marking."""
        return sum(self.counts.values())


@dataclass(slots=True)
class Batch:
    """Everything one write transaction commits.

    ``offered``, ``received`` and ``moved`` are a journal, not state: they say where
    the batch's entries came from and went (an outbox run, a peer's run, a slot move),
    which the marking delta alone does not (``offered`` repeats ``runs_added``
    decoded). The LMDB store does not write them; the simulator's token ledger
    reads them (docs/simulation.md). ``moved`` kinds: ``sealed`` entries left the engine
    for a move's shipment (the store keeps them), ``unsealed`` came back to it,
    ``activated`` entered the engine (and the store) from a shipment, ``forgotten`` left
    the store after the move (the engine no longer held them).
    """

    marking: MarkingDelta = field(default_factory=Counter)
    clients: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    clock_ms: int = 0
    runs_added: list[StoredRun] = field(default_factory=list)
    runs_removed: list[tuple[int, int]] = field(default_factory=list)  # (lane, first seq)
    next_seqs: dict[int, int] = field(default_factory=dict)  # lane -> next seq
    hwms: dict[tuple[int, int], int] = field(default_factory=dict)  # (sender, lane) -> hwm
    table: bytes | None = None
    endpoints: tuple[str, ...] | None = None
    hwms_removed: list[tuple[int, int]] = field(default_factory=list)  # (sender, lane)
    phases: dict[int, bytes | None] = field(default_factory=dict)  # slot -> record / None
    staged: dict[int, bytes | None] = field(default_factory=dict)  # slot -> record / None
    offered: list[OfferedRun] = field(default_factory=list)
    received: list[ReceivedRun] = field(default_factory=list)
    moved: list[MovedEntries] = field(default_factory=list)
    # Transition -> firings in this batch: added to the stored totals in the same
    # transaction, so a firing counts exactly when the marking change it made is durable.
    firings: Counter[str] = field(default_factory=Counter)
    # Handoff runs applied in this batch whose entries are *not* in ``marking``: the
    # store logs each as one record (see ArrivedRun). ``received`` journals them too.
    arrived: list[ArrivedRun] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (
            self.firings
            or self.arrived
            or self.hwms_removed
            or self.phases
            or self.staged
            or self.marking
            or self.clients
            or self.runs_added
            or self.runs_removed
            or self.hwms
            or self.table is not None
            or self.endpoints is not None
        )

    def add(self, place: str, time: int, token: Token, n: int = 1) -> None:
        self.marking[(place, time, token)] += n

    def remove(self, place: str, time: int, token: Token, n: int = 1) -> None:
        self.marking[(place, time, token)] -= n


@dataclass(frozen=True, slots=True)
class Recovered:
    """What a store holds when it is opened."""

    marking: Mapping[str, list[tuple[int, Token]]]
    clock_ms: int
    clients: Mapping[str, tuple[int, bytes]]
    initialised: bool
    runs: list[StoredRun] = field(default_factory=list)
    next_seqs: dict[int, int] = field(default_factory=dict)
    hwms: dict[tuple[int, int], int] = field(default_factory=dict)
    table: bytes | None = None
    endpoints: tuple[str, ...] = ()
    phases: dict[int, bytes] = field(default_factory=dict)
    staged: dict[int, bytes] = field(default_factory=dict)
    # The places recovery left out (``recover(deferred=...)``): their token counts, and
    # the reader of their entries (None when there are none).
    deferred_counts: dict[str, int] = field(default_factory=dict)
    deferred: DeferredReader | None = None
    # Committed firings per transition over every incarnation of this store, and since
    # when they count (wall ms; ``firings_since`` says what happened then: the store was
    # created, or upgraded from a schema that kept no totals). See docs/shard.md.
    firings_total: dict[str, int] = field(default_factory=dict)
    firings_since_ms: int = 0
    firings_since: str = ""
