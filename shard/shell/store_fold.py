"""Writing the batch log and folding it into the marking table (SHELL).

:class:`BatchLog` turns a batch's marking change into log records
(``shard/shell/store_log.py`` defines their format), folds the oldest records into the
``marking`` table in slices, writes marking entries under their keys (the layout is in
``shard/shell/store_schema.py``) and reads the whole log back as one delta. It works
inside transactions its caller opens and commits (:class:`shard.shell.store.Store`),
and keeps no count of the log: the store moves its figures only once a transaction is
committed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import lmdb
import msgpack

from nets.model import Net, Token
from router.slots import slot_of_token
from shard.batch import ArrivedRun, Batch
from shard.shell.store_log import (
    LOG_BATCH_BYTES_MAX,
    LOG_BATCH_ENTRIES_MAX,
    LOG_RECORD_ENTRIES_MAX,
    Delta,
    LogRecordError,
    decode_record,
    delta_of,
    encode_record,
    fold_record,
    fold_run,
    record_entries,
)
from shard.shell.store_schema import ENTRY_IN_KEY_BYTES_MAX, Databases, PlaceIds, StoreError

PREFIXES_CACHED_MAX: Final = 100_000
TIME_LIMIT: Final = 1 << 63  # a time is 8 bytes of the key, below 2**63
COUNT_ONE: Final = (1).to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class LoggedBatch:
    """A batch's marking change, ready for its write transaction."""

    changes: Counter[str]  # tokens added (removed: < 0) per place, for the counts
    # The additions go to the marking table directly (BatchLog.write_additions), and
    # the records hold only the removals.
    direct: bool
    records: list[bytes]  # the log records to append, in order
    entries: int  # the log entries they stand for


class BatchLog:
    """The log's records and the marking table's entries, for one open store.

    Args:
        net: the net whose tokens the store holds.
        db: the store's databases (this writes ``marking`` and ``log``).
        ids: the places' ids, assigned when the store was opened.
        where: the store's path, for error messages.
        fault: a fault point (router/shell/datadir.py) inside a catch-up slice's
            transaction, after its writes and before its commit: the SIGKILL tests
            aim there.
    """

    def __init__(
        self,
        *,
        net: Net,
        db: Databases,
        ids: PlaceIds,
        where: Path,
        fault: Callable[[str], None] | None,
    ) -> None:
        self._net = net
        self._marking = db.marking
        self._log = db.log
        self._ids = ids
        self._places = {p.name: p for p in net.places}
        self._where = where
        self._fault = fault
        self._packer = msgpack.Packer(use_bin_type=True)
        self._key_positions = {
            p.name: p.colour_set.field_index(p.key) if p.key is not None else -1 for p in net.places
        }
        self._prefixes: dict[tuple[str, Any], bytes] = {}

    def read_extent(self, txn: lmdb.Transaction) -> tuple[int, int, int]:
        """(entries, records, next seq) of the stored log."""
        entries = records = 0
        last = 0
        for key, value in txn.cursor(db=self._log):
            entries += record_entries(value)
            records += 1
            last = int.from_bytes(key, "big")
        return entries, records, last + 1

    def prepare(self, batch: Batch, *, initialised: bool) -> LoggedBatch:
        """A batch's log records, and whether its additions go to the table directly.

        Raises:
            StoreError: the batch holds a token that cannot be stored.
        """
        # One pass, with the dict's own get and bound appends: it runs over every entry
        # of every batch (about 0.4 us an entry; Counter's += and a separate range
        # check cost twice that).
        changes: Counter[str] = Counter()
        changed = changes.get
        delta: list[tuple[int, int, Token, int]] = []
        append = delta.append
        numbers = self._ids.numbers
        for (place, time, token), n in batch.marking.items():
            if n and 0 <= time < TIME_LIMIT:
                changes[place] = changed(place, 0) + n
                append((numbers[place], time, token, n))
            elif n:
                raise StoreError(
                    f"cannot store {token!r} in {place!r}: time {time} is out of range"
                )
        arrived_tokens = 0
        for run in batch.arrived:
            changes.update(run.counts)
            arrived_tokens += run.tokens()
        size = len(delta) + arrived_tokens
        # A batch too large for the log (the initial marking, a slot's shipment, a
        # flood of puts) writes its additions to the marking table directly; they
        # commute with the log (a table entry the log removes is only counted up). Its
        # removals, which may be of entries the log adds, go to the log as records.
        direct = initialised or size > LOG_BATCH_ENTRIES_MAX
        logged = [entry for entry in delta if entry[3] < 0] if direct else delta
        try:
            records = self._encode_records(logged, () if direct else batch.arrived)
        except (TypeError, ValueError, OverflowError) as exc:
            raise StoreError(f"cannot store the batch's marking change: {exc}") from exc
        if not direct and sum(map(len, records)) > LOG_BATCH_BYTES_MAX:
            # Replaying the log must stay cheap in bytes too (long tokens).
            direct = True
            logged = [entry for entry in delta if entry[3] < 0]
            records = self._encode_records(logged, ())
        entries = len(logged) + (0 if direct else arrived_tokens)
        return LoggedBatch(changes, direct, records, entries)

    def write_additions(self, txn: lmdb.Transaction, batch: Batch) -> int:
        """Write what a direct batch adds into the marking table (its removals are
        logged); returns the entries written."""
        additions = self._batch_delta(batch)
        for counter in additions.values():
            for entry, n in counter.items():
                if n < 0:
                    counter[entry] = 0  # logged
        return self.apply_delta(txn, additions)

    def _encode_records(
        self, delta: list[tuple[int, int, Token, int]], arrived: Sequence[ArrivedRun]
    ) -> list[bytes]:
        """A batch's log records: one per handoff run it applied (as the run arrived),
        then its delta in chunks of at most ``LOG_RECORD_ENTRIES_MAX`` entries. Each
        record is one msgpack call when written and one when folded: bounding it bounds
        how long either holds the GIL (the metrics thread waits for it,
        docs/observability.md).

        Raises:
            TypeError, ValueError, OverflowError: a token does not pack.
        """
        # The runs come first: the batch applied them before it fired, and its delta may
        # remove what they added. A slice folds a prefix of the log, which must never
        # remove an entry before the record that adds it (the delta's chunks hold
        # distinct entries, so their order does not matter).
        packer, chunk = self._packer, LOG_RECORD_ENTRIES_MAX
        records = [
            encode_record(packer, [], [(run.skip, run.blob)], run.tokens()) for run in arrived
        ]
        records += [
            encode_record(packer, delta[i : i + chunk], [], len(delta[i : i + chunk]))
            for i in range(0, len(delta), chunk)
        ]
        return records

    def catch_up(self, txn: lmdb.Transaction, entries_max: int) -> tuple[int, int, int]:
        """Fold the oldest records, at least one and then while they fit in
        ``entries_max`` entries; returns (records, entries folded, entries written).

        The records' entries are counted by their marking-table keys, built straight
        from the stored fields: a folded entry is never made a token again, and one
        produced by a record and consumed by a later one cancels out by its key.
        """
        counts: dict[bytes, int] = {}
        tails: dict[bytes, bytes] = {}
        keys: list[bytes] = []
        folded = 0
        cursor = txn.cursor(db=self._log)
        for key, value in cursor:
            size = record_entries(value)
            if keys and folded + size > entries_max:
                break
            self._fold_keyed(bytes(value), counts, tails)
            keys.append(bytes(key))
            folded += size
        for key in keys:
            txn.delete(key, db=self._log)
        written = self.write_entries(txn, counts, tails)
        if self._fault is not None:
            self._fault("store-catch-up")
        return len(keys), folded, written

    def _fold_keyed(
        self, value: bytes, counts: dict[bytes, int], tails: dict[bytes, bytes]
    ) -> None:
        """Add one record's changes to ``counts`` (marking-table key -> n), the long
        encodings to ``tails`` (see :meth:`_entry_key`).

        ``pack((time, fields))`` is the entry's encoding: a token packs as the tuple
        of its fields, which is what the record held (packed by this store).

        Raises:
            StoreError: the record does not decode or names an unknown place.
        """
        try:
            changes, arrived = decode_record(value)
            # (_entry_key clears the prefixes in place when there are too many.)
            prefixes, pack, counted = self._prefixes, self._packer.pack, counts.get
            new: Any = tuple.__new__
            last_number = -1
            name, position = "", -1
            cls: Any = None
            for number, time, fields, n in changes:
                if number != last_number:  # the place changes firing by firing
                    place = self._ids.places_by_number.get(number)
                    if place is None:
                        raise LogRecordError(f"a log record names place id {number}, unknown")
                    name, cls, last_number = place.name, place.colour_set.cls, number
                    position = self._key_positions[name]
                prefix = prefixes.get((name, None if position < 0 else fields[position]))
                if prefix is None:
                    key, entry = self._entry_key(name, time, new(cls, fields))
                else:
                    entry = pack((time, fields))
                    if len(entry) <= ENTRY_IN_KEY_BYTES_MAX:
                        key = prefix + time.to_bytes(8, "big") + entry
                    else:
                        key = prefix + time.to_bytes(8, "big") + _digest_marker(entry)
                if len(entry) > ENTRY_IN_KEY_BYTES_MAX:
                    assert tails.setdefault(key, entry) == entry, f"digest collision in {name!r}"
                counts[key] = counted(key, 0) + n
            if arrived:
                delta: Delta = {}
                for skip, blob in arrived:
                    fold_run(skip, blob, delta, self._places)
                self._key_delta(delta, counts, tails)
        except LogRecordError as exc:
            raise StoreError(f"{self._where}: {exc}") from exc
        except (TypeError, ValueError, OverflowError, IndexError) as exc:
            self._packer.reset()
            raise StoreError(f"{self._where}: corrupt log record: {exc}") from exc

    def log_delta(self, txn: lmdb.Transaction) -> Delta:
        """The whole log folded: what it adds to the marking table."""
        delta: Delta = {}
        for _key, value in txn.cursor(db=self._log):
            self._fold(bytes(value), delta)
        return delta

    def _fold(self, value: bytes, delta: Delta) -> None:
        try:
            fold_record(value, delta, self._ids.places_by_number, self._places)
        except LogRecordError as exc:
            raise StoreError(f"{self._where}: {exc}") from exc

    def _batch_delta(self, batch: Batch) -> Delta:
        """A batch's whole marking change: its delta and the runs it applied, decoded."""
        delta = delta_of(batch.marking)
        for run in batch.arrived:
            try:
                fold_run(run.skip, run.blob, delta, self._places)
            except LogRecordError as exc:
                raise StoreError(f"cannot store the run from shard {run.sender}: {exc}") from exc
        return delta

    def apply_delta(self, txn: lmdb.Transaction, delta: Delta) -> int:
        """Write a marking delta into the marking table; returns the entries written.

        Raises:
            StoreError: a token does not pack or its time is out of range.
        """
        counts: dict[bytes, int] = {}
        tails: dict[bytes, bytes] = {}
        self._key_delta(delta, counts, tails)
        return self.write_entries(txn, counts, tails)

    def write_entries(
        self, txn: lmdb.Transaction, counts: dict[bytes, int], tails: dict[bytes, bytes]
    ) -> int:
        """Add ``counts[key]`` (< 0: remove) of each entry to the marking table, the
        value holding ``tails[key]`` where the key holds only a digest; returns the
        entries written.

        Written in key order: a slot's keys are random, and in arrival order nearly
        every entry dirties (copies) another page of the table; sorted, neighbours
        share their pages (a 4,096-entry slice into a 200,000-entry table: 2.4 us an
        entry sorted, 3.7 unsorted, measured).
        """
        marking = self._marking
        put, pop, get = txn.put, txn.pop, txn.get
        written = 0
        for key in sorted(counts):
            n = counts[key]
            if not n:
                continue  # cancelled out
            written += 1
            tail = tails.get(key, b"") if tails else b""
            # The common cases take one LMDB operation: a new entry (put without
            # overwrite) and an entry that leaves (pop); a multiplicity needs two.
            if n > 0:
                value = COUNT_ONE if n == 1 and not tail else n.to_bytes(4, "big") + tail
                if put(key, value, overwrite=False, db=marking):
                    continue
                old = get(key, db=marking)
            else:
                old = pop(key, db=marking)
            assert old is not None, f"no stored entry {key.hex()} to remove"
            # Distinct entries with one 128-bit digest would be a programmer error
            # (or a broken hash); refuse rather than merge their counts.
            assert bytes(old[4:]) == tail, f"digest collision at {key.hex()}"
            count = int.from_bytes(old[:4], "big") + n
            assert count >= 0, f"negative count for {key.hex()}"
            if count > 0:
                put(key, count.to_bytes(4, "big") + tail, db=marking)
        return written

    def _key_delta(self, delta: Delta, counts: dict[bytes, int], tails: dict[bytes, bytes]) -> None:
        """Add each entry the delta changes to ``counts`` by its key, and its encoding
        to ``tails`` when the key holds only its digest (:meth:`_entry_key`, inlined:
        it runs once per entry written).

        Raises:
            StoreError: a token does not pack or its time is out of range.
        """
        prefixes = self._prefixes
        pack = self._packer.pack
        counted = counts.get
        for place, changes in delta.items():
            position = self._key_positions[place]
            for (time, token), n in changes.items():
                if not n:
                    continue
                prefix = prefixes.get((place, None if position < 0 else token[position]))
                try:
                    if prefix is None or not 0 <= time < TIME_LIMIT:
                        raise ValueError  # (the rare paths: _entry_key takes them)
                    entry: bytes = pack((time, token))
                    key = prefix + time.to_bytes(8, "big")
                    key += entry if len(entry) <= ENTRY_IN_KEY_BYTES_MAX else _digest_marker(entry)
                except (TypeError, ValueError, OverflowError):
                    self._packer.reset()
                    key, entry = self._entry_key(place, time, token)  # or StoreError
                if len(entry) > ENTRY_IN_KEY_BYTES_MAX:
                    assert tails.setdefault(key, entry) == entry, f"digest collision in {place!r}"
                counts[key] = counted(key, 0) + n

    def _entry_key(self, place: str, time: int, token: Token) -> tuple[bytes, bytes]:
        """The LMDB key of an entry and its encoding (see shard/shell/store_schema.py)."""
        key_position = self._key_positions[place]
        key_value = None if key_position < 0 else token[key_position]
        prefix = self._prefixes.get((place, key_value))
        if prefix is None:
            # Hashing the key to its slot costs more than the rest: remember the prefix.
            if len(self._prefixes) >= PREFIXES_CACHED_MAX:
                self._prefixes.clear()
            slot = slot_of_token(self._net.place(place), token)
            prefix = self._prefixes[(place, key_value)] = (
                slot.to_bytes(2, "big") + self._ids.ids[place]
            )
        if not 0 <= time < 1 << 63:
            raise StoreError(f"cannot store {token!r} in {place!r}: time {time} is out of range")
        try:
            entry: bytes = self._packer.pack((time, token))
        except (TypeError, ValueError, OverflowError) as exc:
            self._packer.reset()
            raise StoreError(f"cannot store {token!r} at time {time} in {place!r}: {exc}") from exc
        # Time first: entries of a slot and place are kept in time order, so a commit's
        # new entries (all about now) land together at the end of their range.
        head = prefix + time.to_bytes(8, "big")
        if len(entry) <= ENTRY_IN_KEY_BYTES_MAX:
            return head + entry, entry
        return head + _digest_marker(entry), entry


def _digest_marker(entry: bytes) -> bytes:
    # An encoding too long for an LMDB key is named by its digest, marked by 0xc1, a
    # byte that never starts a msgpack value (so the two forms cannot be confused).
    return b"\xc1" + hashlib.blake2b(entry, digest_size=16).digest()
