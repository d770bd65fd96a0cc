"""Reading the store back (SHELL): the committed state a restarted shard starts from,
and stored marking entries decoded.

:func:`read_state` reads everything in one read transaction the caller opened
(:meth:`shard.shell.store.Store.recover`): the marking table, the batch log replayed
over it in memory, and the handoff, client and move tables. Recovery never writes, so
it also works on a full disk. See docs/shard.md, "The store".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lmdb

from nets.codec import CodecError, token_from_fields, unpack
from nets.model import Token
from router.slots import slot_of_token
from shard.batch import Recovered
from shard.shell.marking_reader import read_marking
from shard.shell.store_log import LogRecordError, apply_to_entries
from shard.shell.store_schema import Databases, LogDelta, PlaceIds, StoreError


def read_state(
    txn: lmdb.Transaction,
    db: Databases,
    ids: PlaceIds,
    places: Mapping[str, Any],
    deferred_ids: frozenset[bytes],
    *,
    log_delta: LogDelta,
    where: Path,
) -> tuple[Recovered, dict[str, Counter[tuple[int, Token]]]]:
    """What the store holds, and the log's changes to the deferred places (for
    their reader).

    Raises:
        StoreError: the log removes an entry the marking table does not hold, or a
            record does not decode.
        MarkingReadError: a marking entry cannot be read back.
    """
    clients: dict[str, tuple[int, bytes]] = {}
    clock_ms = int(txn.get(b"clock_ms", b"0", db=db.meta))
    initialised = txn.get(b"initialised", db=db.meta) is not None
    marking = read_marking(txn.cursor(db=db.marking), ids.names, places, deferred_ids)
    # The snapshot plus the log (replayed in memory: recovery never writes, so it
    # also works on a full disk). The deferred places' share goes to their reader.
    sealed = {int.from_bytes(key, "big") for key, _value in txn.cursor(db=db.phases)}
    deferred_names = {ids.names[i] for i in deferred_ids}
    logged_deferred: dict[str, Counter[tuple[int, Token]]] = {}
    for name, changes in log_delta(txn).items():
        if name in deferred_names:
            if sealed:  # the reader skips sealed slots: so does their log
                place = places[name]
                changes = Counter(
                    {e: n for e, n in changes.items() if slot_of_token(place, e[1]) not in sealed}
                )
            logged_deferred[name] = changes
            continue
        try:
            marking[name] = apply_to_entries(marking[name], changes, where=repr(name))
        except LogRecordError as exc:
            raise StoreError(f"{where}: {exc}") from exc
    deferred_counts = {
        name: int.from_bytes(txn.get(b"count:" + place_id, bytes(8), db=db.meta), "big")
        for name, place_id in ids.ids.items()
        if place_id in deferred_ids
    }
    for _key, value in txn.cursor(db=db.clients):
        client_id, seq, reply, _used = unpack(bytes(value))
        clients[client_id] = (seq, reply)
    runs = [
        (
            int.from_bytes(key[:4], "big"),
            int.from_bytes(key[4:12], "big"),
            int.from_bytes(value[:4], "big"),
            bytes(value[4:]),
        )
        for key, value in txn.cursor(db=db.outbox)
    ]
    next_seqs = {
        int.from_bytes(key, "big"): int.from_bytes(value, "big")
        for key, value in txn.cursor(db=db.lanes)
    }
    hwms = {
        (int.from_bytes(key[:2], "big"), int.from_bytes(key[2:6], "big")): int.from_bytes(
            value, "big"
        )
        for key, value in txn.cursor(db=db.inbox)
    }
    table = txn.get(b"table", db=db.meta)
    endpoints = txn.get(b"endpoints", db=db.meta)
    firings_total = {}
    cursor = txn.cursor(db=db.meta)
    if cursor.set_range(b"fired:"):
        for key, value in cursor:
            if not bytes(key).startswith(b"fired:"):
                break
            firings_total[bytes(key)[6:].decode()] = int.from_bytes(value, "big")
    since = txn.get(b"firings_since", db=db.meta)
    since_ms, since_what = (0, "") if since is None else unpack(bytes(since))
    phases = {int.from_bytes(key, "big"): bytes(value) for key, value in txn.cursor(db=db.phases)}
    staged = {int.from_bytes(key, "big"): bytes(value) for key, value in txn.cursor(db=db.staged)}
    recovered = Recovered(
        marking,
        clock_ms,
        clients,
        initialised,
        runs,
        next_seqs,
        hwms,
        None if table is None else bytes(table),
        () if endpoints is None else tuple(unpack(bytes(endpoints))),
        phases,
        staged,
        deferred_counts,
        firings_total=firings_total,
        firings_since_ms=since_ms,
        firings_since=since_what,
    )
    return recovered, logged_deferred


def decode_entry(
    key: bytes,
    value: bytes,
    places: Mapping[str, Any],
    names: Mapping[bytes, str],
    *,
    where: Path,
    net_name: str,
) -> tuple[str, int, Token, int]:
    """One marking-table entry: (place, time, token, multiplicity).

    Raises:
        StoreError: the entry names a place the net lacks, or does not decode.
    """
    name = names.get(bytes(key[2:4]), "")
    place = places.get(name)
    if place is None:
        raise StoreError(
            f"{where} holds tokens of place {name!r}, which net {net_name!r} does not have"
        )
    try:
        encoded = value[4:] if len(value) > 4 else key[12:]
        time, fields = unpack(bytes(encoded))
    except CodecError as exc:
        raise StoreError(f"{where}: corrupt marking entry in place {name!r}: {exc}") from exc
    token = token_from_fields(
        place.colour_set, fields, where=f"stored {name}", key_index=place.key_index
    )
    return name, time, token, int.from_bytes(value[:4], "big")


def one_per_token(
    held: Counter[tuple[str, int, Token]],
) -> list[tuple[str, int, Token]]:
    """Entries with multiplicities as one (place, time, token) per token."""
    assert all(n >= 0 for n in held.values()), "the log removes an entry never stored"
    return [entry for entry, n in held.items() for _ in range(n)]
