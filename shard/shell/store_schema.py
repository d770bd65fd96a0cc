"""The store's on-disk layout (SHELL): its databases, the places' ids, and the upgrades
from older schemas. :class:`shard.shell.store.Store` opens and writes it.

Layout (all keys sortable; the slot comes first so a slot is one contiguous range):

* ``marking``: key ``slot (2 bytes BE) | place id (2 bytes) | time (8 bytes BE) |
  entry`` (fixed offsets, so recovery slices instead of searching), where ``entry`` is
  the encoding ``msgpack((time, fields))``, or, when that is longer than
  ``ENTRY_IN_KEY_BYTES_MAX`` (LMDB keys hold at most 511 bytes; a long URL does not
  fit), ``0xc1 | 16-byte BLAKE2b digest of the encoding``; value: the entry's
  multiplicity (4 bytes BE), followed by the encoding when the key holds only its
  digest. Recovery rebuilds the token from whichever holds the encoding. Time-ordered
  keys put a commit's new entries together at the end of their slot's range. The
  table is the marking up to the last folded log record; see docs/shard.md.
* ``log``: key ``seq (8 bytes BE)`` -> a batch log record (``shard/shell/store_log.py``):
  commits append records, the shard's loop folds the oldest into ``marking`` in
  slices, and recovery is ``marking`` plus every record.
* ``meta``: ``net`` (the net's name), ``incarnation`` (starts so far), ``clock_ms``
  (the shard's time high-water mark), ``initialised`` (the initial marking was
  committed), ``schema`` (layout version), ``place:<name>`` (each place's stable id),
  ``count:<place id>`` (how many tokens the place holds, 8 bytes BE: a shard that
  reads a place's tokens after it starts firing knows their number at once),
  ``fired:<transition>`` (committed firings of the transition over every incarnation,
  8 bytes BE, written with the batch that fired them) and ``firings_since``
  (msgpack((wall ms, what)): since when ``fired:`` counts; what is ``created`` or
  ``upgraded from schema N``, a store that kept no totals before).
* ``outbox``: key ``lane (4 bytes BE) | first seq (8 bytes BE)`` -> ``count (4 bytes BE)
  | entries`` (a run of the handoff protocol: msgpack of ``[(place, time, fields)]``,
  see docs/handoff.md); ``lanes``: ``lane (4)`` -> the lane's next seq (8), kept even
  when the lane's runs are all acknowledged, so seq numbers never repeat;
  ``inbox``: ``sender (2) | lane (4)`` -> the highest seq applied (8).
  ``meta`` also holds ``shard_id``/``shard_count`` (whose data this is: the shard's id
  and the shard count its cluster *started* with, which a scale-out or scale-in does not
  change), ``table`` (this shard's copy of the partition table) and ``endpoints`` (where
  peers were last seen).
* ``phases``: ``slot (2 bytes BE)`` -> msgpack((phase, move id, count, digest)) for a
  slot this shard sealed for a move (docs/handoff.md, "Slot moves"): its tokens stay in
  ``marking`` until the move commits, but the shard does not fire them.
  ``staged``: ``slot (2)`` -> msgpack((move id, count, digest, entries, hwms)), a
  moving slot's shipment this shard received and keeps apart until the move commits.
* ``clients``: 16-byte BLAKE2b digest of the client id -> msgpack((client id, last
  request_seq, reply frame, shard clock of last use)): per-client deduplication,
  bounded to ``CLIENTS_MAX`` entries (least recently used evicted; the shard clock is
  persisted and monotone, so the order holds across restarts).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from time import time_ns
from typing import Any, Final

import lmdb

from nets.codec import pack
from nets.errors import CpnError
from nets.model import Net, Place
from shard.shell.store_log import Delta

SCHEMA_VERSION: Final = 8
# LMDB keys hold at most 511 bytes: after slot, place id and time, entries of up to this
# size stay in the key itself.
ENTRY_IN_KEY_BYTES_MAX: Final = 320


class StoreError(CpnError):
    """The store cannot do what was asked (locked, full disk, another net's data...)."""


@dataclass(frozen=True, slots=True)
class Databases:
    """The environment's named databases (see the module docstring)."""

    marking: Any
    meta: Any
    clients: Any
    outbox: Any
    lanes: Any
    inbox: Any
    phases: Any
    staged: Any
    log: Any


def open_databases(env: lmdb.Environment) -> Databases:
    return Databases(
        marking=env.open_db(b"marking"),
        meta=env.open_db(b"meta"),
        clients=env.open_db(b"clients"),
        outbox=env.open_db(b"outbox"),
        lanes=env.open_db(b"lanes"),
        inbox=env.open_db(b"inbox"),
        phases=env.open_db(b"phases"),
        staged=env.open_db(b"staged"),
        log=env.open_db(b"log"),
    )


@dataclass(frozen=True, slots=True)
class PlaceIds:
    """Every stored place's stable 2-byte id, both ways, and as numbers."""

    ids: Mapping[str, bytes]  # place name -> id (every place ever stored)
    names: Mapping[bytes, str]  # id -> place name
    # The same ids as numbers, as log records name places (only the net's places).
    numbers: Mapping[str, int]
    places_by_number: Mapping[int, Place]


def assign_place_ids(txn: lmdb.Transaction, meta: Any, net: Net) -> PlaceIds:
    """Give every place of the net a stable 2-byte id (kept in ``meta``)."""
    ids: dict[str, bytes] = {}
    for key, value in txn.cursor(db=meta):
        if bytes(key).startswith(b"place:"):
            ids[bytes(key)[6:].decode()] = bytes(value)
    used = {int.from_bytes(v, "big") for v in ids.values()}
    for place in net.places:
        if place.name not in ids:
            new_id = max(used, default=0) + 1
            assert new_id < 1 << 16, "more than 65,535 places were ever stored"
            used.add(new_id)
            ids[place.name] = new_id.to_bytes(2, "big")
            txn.put(b"place:" + place.name.encode(), ids[place.name], db=meta)
    numbers = {name: int.from_bytes(i, "big") for name, i in ids.items()}
    return PlaceIds(
        ids=ids,
        names={v: k for k, v in ids.items()},
        numbers=numbers,
        places_by_number={numbers[place.name]: place for place in net.places},
    )


# What the batch log adds to the marking table, read in the given transaction.
LogDelta = Callable[[lmdb.Transaction], Delta]


def count_places(txn: lmdb.Transaction, db: Databases, ids: PlaceIds, log_delta: LogDelta) -> None:
    """Write every place's token count (a store from before the counts were kept)."""
    counts: Counter[bytes] = Counter(dict.fromkeys(ids.names, 0))
    for key, value in txn.cursor(db=db.marking):
        counts[bytes(key[2:4])] += int.from_bytes(value[:4], "big")
    for name, changes in log_delta(txn).items():
        counts[ids.ids[name]] += sum(changes.values())
    for place_id, count in counts.items():
        txn.put(b"count:" + place_id, count.to_bytes(8, "big"), db=db.meta)


def _start_firing_totals(
    txn: lmdb.Transaction, db: Databases, _ids: PlaceIds, _log_delta: LogDelta
) -> None:
    """Schema 6 to 7: the firing totals count from now (no earlier ones were kept)."""
    txn.put(b"firings_since", pack((wall_ms(), "upgraded from schema 6")), db=db.meta)


def _start_log(txn: lmdb.Transaction, db: Databases, _ids: PlaceIds, _log_delta: LogDelta) -> None:
    """Schema 7 to 8: the batch log starts empty (a schema-7 marking table is the
    whole marking, so nothing moves); a release before schema 8 would ignore the
    log, so the schema number alone keeps it from opening the store."""
    assert txn.stat(db.log)["entries"] == 0, "a schema-7 store with a batch log"


# Each older schema's step to the next one, all in the transaction that opens the store
# (Store._start_incarnation): schema 5 lacked the per-place counts, schema 6 the firing
# totals, schema 7 the batch log. A new schema adds one line here.
UPGRADES: Final[dict[int, Callable[[lmdb.Transaction, Databases, PlaceIds, LogDelta], None]]] = {
    5: count_places,
    6: _start_firing_totals,
    7: _start_log,
}


def wall_ms() -> int:
    return time_ns() // 1_000_000
