"""The shard's durable state: one LMDB environment per data directory (SHELL).

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

Theory of operation: the shard collects a :class:`Batch` (the marking's net change
from many firings, puts, leases and completions; client replies; the clock) and
:meth:`Store.commit` writes it in one write transaction. Nothing leaves the process
before its batch is committed. A full map grows the map and retries; a full disk (or
any other write failure) raises :class:`StoreError` and leaves the committed state as
it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from time import time_ns
from typing import Any, Final

import lmdb
import msgpack

from nets.codec import CodecError, pack, token_from_fields, unpack
from nets.errors import CpnError
from nets.model import Net, Token
from router.shell.datadir import lock_directory
from router.slots import slot_of_token
from shard.batch import ArrivedRun, Batch, Recovered
from shard.shell.marking_reader import DeferredMarking, MarkingReadError, read_marking
from shard.shell.store_log import (
    CATCH_UP_ENTRIES_MAX,
    LOG_BATCH_BYTES_MAX,
    LOG_BATCH_ENTRIES_MAX,
    LOG_ENTRIES_MAX,
    LOG_RECORD_ENTRIES_MAX,
    Delta,
    LogRecordError,
    apply_to_entries,
    delta_of,
    encode_record,
    fold_record,
    fold_run,
    record_entries,
)

SCHEMA_VERSION: Final = 8
# LMDB keys hold at most 511 bytes: after slot, place id and time, entries of up to this
# size stay in the key itself.
ENTRY_IN_KEY_BYTES_MAX: Final = 320
PLACE_NAME_BYTES_MAX: Final = 160
PREFIXES_CACHED_MAX: Final = 100_000
MAP_SIZE_BYTES_INITIAL: Final = 64 * 1024 * 1024
MAP_SIZE_BYTES_MAX: Final = 1 << 40
CLIENTS_MAX: Final = 100_000


class StoreError(CpnError):
    """The store cannot do what was asked (locked, full disk, another net's data...)."""


class Durability(Enum):
    """What a committed batch survives.

    ``FSYNC``: every commit is flushed to disk before it returns (survives power loss).
    ``PROCESS``: commits reach the operating system but are not flushed (survives a
    killed process, not a crashed host); much faster on slow disks.
    """

    FSYNC = "fsync"
    PROCESS = "process"


@dataclass(frozen=True, slots=True)
class CommitStatistics:
    commits: int
    entries_written: int  # marking-table entries written (by catch-up or large batches)
    map_size_bytes: int
    map_resizes: int
    log_entries: int = 0  # entries the batch log holds now (docs/shard.md, "The store")
    log_records: int = 0
    catch_ups: int = 0  # slices folded into the marking table (and commits that folded)
    entries_folded: int = 0  # log entries folded so far


class Store:
    """One shard's LMDB environment, opened once per process.

    Opening takes an exclusive lock on the directory (a second process gets a
    :class:`StoreError`), clears reader slots left by killed processes and starts a
    new incarnation.

    Raises:
        StoreError: the directory is locked by another process, holds another net's
            data, or cannot be opened.
    """

    def __init__(
        self,
        path: Path,
        *,
        net: Net,
        durability: Durability = Durability.FSYNC,
        map_size_bytes: int = MAP_SIZE_BYTES_INITIAL,
        shard_id: int = 0,
        shard_count: int = 1,
        fault: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        # A fault point (router/shell/datadir.py) inside a catch-up slice's transaction,
        # after its writes and before its commit: the SIGKILL tests aim there.
        self._fault = fault
        self.net = net
        self._places = {p.name: p for p in net.places}
        self._place_names = frozenset(self._places)
        self.shard_id = shard_id
        self.shard_count = shard_count
        for place in net.places:
            if len(place.name.encode()) > PLACE_NAME_BYTES_MAX:
                raise StoreError(
                    f"place name {place.name[:40]!r}... is longer than {PLACE_NAME_BYTES_MAX} "
                    "bytes, which the store's table of place ids cannot hold"
                )
        for transition in net.transitions:
            if len(transition.name.encode()) > PLACE_NAME_BYTES_MAX:
                raise StoreError(
                    f"transition name {transition.name[:40]!r}... is longer than "
                    f"{PLACE_NAME_BYTES_MAX} bytes, which the store's firing totals cannot hold"
                )
        self.durability = durability
        self._readers: list[DeferredMarking] = []  # deferred readers not yet done
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_directory(self.path, error=StoreError)
        try:
            self._env = lmdb.open(
                str(self.path / "lmdb"),
                map_size=map_size_bytes,
                max_dbs=10,
                subdir=True,
                sync=durability is Durability.FSYNC,
                metasync=durability is Durability.FSYNC,
                writemap=False,  # a full disk must be an error, never SIGBUS
                lock=True,
            )
        except lmdb.Error as exc:
            os.close(self._lock_fd)
            raise StoreError(f"cannot open the store in {self.path}: {exc}") from exc
        self._env.reader_check()  # reader slots of killed processes
        self._marking = self._env.open_db(b"marking")
        self._meta = self._env.open_db(b"meta")
        self._clients = self._env.open_db(b"clients")
        self._outbox = self._env.open_db(b"outbox")
        self._lanes = self._env.open_db(b"lanes")
        self._inbox = self._env.open_db(b"inbox")
        self._phases = self._env.open_db(b"phases")
        self._staged = self._env.open_db(b"staged")
        self._log = self._env.open_db(b"log")
        self._commits = 0
        self._entries_written = 0
        self._packer = msgpack.Packer(use_bin_type=True)
        self._key_positions = {
            p.name: p.colour_set.field_index(p.key) if p.key is not None else -1 for p in net.places
        }
        self._prefixes: dict[tuple[str, Any], bytes] = {}
        self._resizes = 0
        self._catch_ups = 0
        self._entries_folded = 0
        self.incarnation = self._start_incarnation()
        # The log's length and next seq, kept in memory (read once here: the log is
        # bounded, and only this process writes it).
        self.log_entries, self.log_records, self._log_next = self._read_log_extent()

    # -- opening ------------------------------------------------------------------------

    def _start_incarnation(self) -> int:
        def start(txn: lmdb.Transaction) -> int:
            stored = txn.get(b"net", db=self._meta)
            stored_net = None if stored is None else bytes(stored).decode()
            if stored_net is not None and stored_net != self.net.name:
                raise StoreError(
                    f"{self.path} holds the data of net {stored_net!r}, not "
                    f"{self.net.name!r}; use another --data directory"
                )
            schema = txn.get(b"schema", db=self._meta)
            version = SCHEMA_VERSION if schema is None else int(schema)
            if version != SCHEMA_VERSION and version not in _UPGRADES:
                raise StoreError(f"{self.path} has store schema {version}, not {SCHEMA_VERSION}")
            identity = f"{self.shard_id}/{self.shard_count}".encode()
            stored_identity = txn.get(b"shard", db=self._meta)
            if stored_identity is not None and bytes(stored_identity) != identity:
                stored_id, stored_count = bytes(stored_identity).decode().split("/")
                raise StoreError(
                    f"{self.path} holds the data of shard {stored_id} of a {stored_count}-shard "
                    f"cluster, not shard {self.shard_id} of {self.shard_count}; use the data "
                    "directory that belongs to this shard"
                )
            txn.put(b"shard", identity, db=self._meta)
            self._assign_place_ids(txn)
            if stored_net is None:
                txn.put(b"firings_since", pack((_wall_ms(), "created")), db=self._meta)
            # Each step brings schema N to N + 1, in this same transaction: a store is
            # upgraded whole or not at all.
            for step_from in range(version, SCHEMA_VERSION):
                _UPGRADES[step_from](self, txn)
            incarnation = int(txn.get(b"incarnation", b"0", db=self._meta)) + 1
            txn.put(b"net", self.net.name.encode(), db=self._meta)
            txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=self._meta)
            txn.put(b"incarnation", str(incarnation).encode(), db=self._meta)
            return incarnation

        try:
            incarnation: int = self._write(start)
            return incarnation
        except StoreError:
            self.close()
            raise

    def recover(self, deferred: frozenset[str] = frozenset()) -> Recovered:
        """Read the committed state: marking, clock and client table.

        Stored tokens are trusted: each was checked against its colour set when it
        entered the net, so recovery only rebuilds them (it is one cursor scan; see
        docs/shard.md, "The store", for its speed). The places in ``deferred`` are left
        out: the result counts their tokens and holds a reader of their entries, to be
        read after the shard starts (see shard/shell/marking_reader.py).
        """
        gc_was_enabled = gc.isenabled()
        # A million new tuples would trigger the cyclic garbage collector over and over
        # (tripling the time); tokens cannot form cycles, so it is paused meanwhile.
        gc.disable()
        try:
            return self._recover(deferred)
        except MarkingReadError as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        finally:
            if gc_was_enabled:
                gc.enable()

    def _assign_place_ids(self, txn: lmdb.Transaction) -> None:
        """Give every place of the net a stable 2-byte id (kept in ``meta``)."""
        ids: dict[str, bytes] = {}
        for key, value in txn.cursor(db=self._meta):
            if bytes(key).startswith(b"place:"):
                ids[bytes(key)[6:].decode()] = bytes(value)
        used = {int.from_bytes(v, "big") for v in ids.values()}
        for place in self.net.places:
            if place.name not in ids:
                new_id = max(used, default=0) + 1
                assert new_id < 1 << 16, "more than 65,535 places were ever stored"
                used.add(new_id)
                ids[place.name] = new_id.to_bytes(2, "big")
                txn.put(b"place:" + place.name.encode(), ids[place.name], db=self._meta)
        self._place_ids = ids
        self._places_by_id = {v: k for k, v in ids.items()}
        # The same ids as numbers, as log records name places (only the net's places).
        self._place_numbers = {name: int.from_bytes(i, "big") for name, i in ids.items()}
        self._places_by_number = {
            self._place_numbers[name]: place for name, place in self._places.items()
        }

    def recount(self) -> None:
        """Count every place's tokens again from the stored entries (a scan)."""
        self._write(self._count_places)

    def _count_places(self, txn: lmdb.Transaction) -> None:
        """Write every place's token count (a store from before the counts were kept)."""
        counts: Counter[bytes] = Counter(dict.fromkeys(self._places_by_id, 0))
        for key, value in txn.cursor(db=self._marking):
            counts[bytes(key[2:4])] += int.from_bytes(value[:4], "big")
        for name, changes in self._log_delta(txn).items():
            counts[self._place_ids[name]] += sum(changes.values())
        for place_id, count in counts.items():
            txn.put(b"count:" + place_id, count.to_bytes(8, "big"), db=self._meta)

    def _start_log(self, txn: lmdb.Transaction) -> None:
        """Schema 7 to 8: the batch log starts empty (a schema-7 marking table is the
        whole marking, so nothing moves); a release before schema 8 would ignore the
        log, so the schema number alone keeps it from opening the store."""
        assert txn.stat(self._log)["entries"] == 0, "a schema-7 store with a batch log"

    def _start_firing_totals(self, txn: lmdb.Transaction) -> None:
        """Schema 6 to 7: the firing totals count from now (no earlier ones were kept)."""
        txn.put(b"firings_since", pack((_wall_ms(), "upgraded from schema 6")), db=self._meta)

    def _recover(self, deferred: frozenset[str]) -> Recovered:
        places = {p.name: p for p in self.net.places}
        deferred_ids = frozenset(self._place_ids[name] for name in deferred)
        # One read transaction for everything; the deferred reader takes it over, so
        # that what it reads later belongs to the same snapshot as the rest.
        txn = self._env.begin()
        try:
            recovered, logged_deferred = self._read_state(txn, places, deferred_ids)
        except BaseException:
            txn.abort()
            raise
        if not deferred:
            txn.abort()
            return recovered
        reader = DeferredMarking(
            txn,
            self._marking,
            self._places_by_id,
            places,
            deferred_ids,
            skip_slots=frozenset(recovered.phases),
            where=self.path,
            logged=logged_deferred,
        )
        self._readers = [r for r in self._readers if not r.done]
        self._readers.append(reader)
        return dataclasses.replace(recovered, deferred=reader)

    def _read_state(
        self, txn: lmdb.Transaction, places: Mapping[str, Any], deferred_ids: frozenset[bytes]
    ) -> tuple[Recovered, dict[str, Counter[tuple[int, Token]]]]:
        """What the store holds, and the log's changes to the deferred places (for
        their reader)."""
        clients: dict[str, tuple[int, bytes]] = {}
        clock_ms = int(txn.get(b"clock_ms", b"0", db=self._meta))
        initialised = txn.get(b"initialised", db=self._meta) is not None
        marking = read_marking(
            txn.cursor(db=self._marking), self._places_by_id, places, deferred_ids
        )
        # The snapshot plus the log (replayed in memory: recovery never writes, so it
        # also works on a full disk). The deferred places' share goes to their reader.
        sealed = {int.from_bytes(key, "big") for key, _value in txn.cursor(db=self._phases)}
        deferred_names = {self._places_by_id[i] for i in deferred_ids}
        logged_deferred: dict[str, Counter[tuple[int, Token]]] = {}
        for name, changes in self._log_delta(txn).items():
            if name in deferred_names:
                if sealed:  # the reader skips sealed slots: so does their log
                    place = self._places[name]
                    changes = Counter(
                        {
                            e: n
                            for e, n in changes.items()
                            if slot_of_token(place, e[1]) not in sealed
                        }
                    )
                logged_deferred[name] = changes
                continue
            try:
                marking[name] = apply_to_entries(marking[name], changes, where=repr(name))
            except LogRecordError as exc:
                raise StoreError(f"{self.path}: {exc}") from exc
        deferred_counts = {
            name: int.from_bytes(
                txn.get(b"count:" + self._place_ids[name], bytes(8), db=self._meta), "big"
            )
            for name, place_id in self._place_ids.items()
            if place_id in deferred_ids
        }
        for _key, value in txn.cursor(db=self._clients):
            client_id, seq, reply, _used = unpack(bytes(value))
            clients[client_id] = (seq, reply)
        runs = [
            (
                int.from_bytes(key[:4], "big"),
                int.from_bytes(key[4:12], "big"),
                int.from_bytes(value[:4], "big"),
                bytes(value[4:]),
            )
            for key, value in txn.cursor(db=self._outbox)
        ]
        next_seqs = {
            int.from_bytes(key, "big"): int.from_bytes(value, "big")
            for key, value in txn.cursor(db=self._lanes)
        }
        hwms = {
            (int.from_bytes(key[:2], "big"), int.from_bytes(key[2:6], "big")): int.from_bytes(
                value, "big"
            )
            for key, value in txn.cursor(db=self._inbox)
        }
        table = txn.get(b"table", db=self._meta)
        endpoints = txn.get(b"endpoints", db=self._meta)
        firings_total = {}
        cursor = txn.cursor(db=self._meta)
        if cursor.set_range(b"fired:"):
            for key, value in cursor:
                if not bytes(key).startswith(b"fired:"):
                    break
                firings_total[bytes(key)[6:].decode()] = int.from_bytes(value, "big")
        since = txn.get(b"firings_since", db=self._meta)
        since_ms, since_what = (0, "") if since is None else unpack(bytes(since))
        phases = {
            int.from_bytes(key, "big"): bytes(value) for key, value in txn.cursor(db=self._phases)
        }
        staged = {
            int.from_bytes(key, "big"): bytes(value) for key, value in txn.cursor(db=self._staged)
        }
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

    def slot_entries(self, slot: int) -> list[tuple[str, int, Token]]:
        """Every committed entry of ``slot``, one per token (a range scan: the slot's
        keys are contiguous). A slot move reads what it seals, ships or forgets here."""
        if self.log_records:
            # The slot's table entries are one range scan, but its log entries would need
            # the whole log decoded, for every slot a move reads (a scale-in reads
            # hundreds): fold the log first, which the loop's slices would have done
            # anyway. Where that write fails (a full disk), the log is read instead.
            with contextlib.suppress(StoreError):
                self.catch_up(LOG_ENTRIES_MAX)
        places = {p.name: p for p in self.net.places}
        prefix = slot.to_bytes(2, "big")
        held: Counter[tuple[str, int, Token]] = Counter()
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._marking)
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if key[:2] != prefix:
                        break
                    name, time, token, count = self._decode_entry(key, value, places)
                    held[(name, time, token)] += count
            for name, changes in self._log_delta(txn).items():
                for (time, token), n in changes.items():
                    if n and slot_of_token(places[name], token) == slot:
                        held[(name, time, token)] += n
        return _one_per_token(held)

    def _decode_entry(
        self, key: bytes, value: bytes, places: Mapping[str, Any]
    ) -> tuple[str, int, Token, int]:
        name = self._places_by_id.get(bytes(key[2:4]), "")
        place = places.get(name)
        if place is None:
            raise StoreError(
                f"{self.path} holds tokens of place {name!r}, which net {self.net.name!r} "
                "does not have"
            )
        try:
            encoded = value[4:] if len(value) > 4 else key[12:]
            time, fields = unpack(bytes(encoded))
        except CodecError as exc:
            raise StoreError(
                f"{self.path}: corrupt marking entry in place {name!r}: {exc}"
            ) from exc
        token = token_from_fields(place.colour_set, fields, where=f"stored {name}")
        return name, time, token, int.from_bytes(value[:4], "big")

    # -- committing ---------------------------------------------------------------------

    def _entry_key(self, place: str, time: int, token: Token) -> tuple[bytes, bytes]:
        """The LMDB key of an entry and its encoding (see the module docstring)."""
        key_position = self._key_positions[place]
        key_value = None if key_position < 0 else token[key_position]
        prefix = self._prefixes.get((place, key_value))
        if prefix is None:
            # Hashing the key to its slot costs more than the rest: remember the prefix.
            if len(self._prefixes) >= PREFIXES_CACHED_MAX:
                self._prefixes.clear()
            slot = slot_of_token(self.net.place(place), token)
            prefix = self._prefixes[(place, key_value)] = (
                slot.to_bytes(2, "big") + self._place_ids[place]
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
        # Too long for an LMDB key: name it by a digest, marked by 0xc1, a byte that
        # never starts a msgpack value (so the two forms cannot be confused).
        return head + b"\xc1" + hashlib.blake2b(entry, digest_size=16).digest(), entry

    def commit(self, batch: Batch, *, initialised: bool = False) -> None:
        """Write ``batch`` in one transaction (nothing if it fails).

        The marking delta and the handoff runs applied go into the log, in records of
        at most ``LOG_RECORD_ENTRIES_MAX`` entries (the initial marking, and a batch
        larger than ``LOG_BATCH_ENTRIES_MAX`` entries or ``LOG_BATCH_BYTES_MAX`` bytes,
        write their additions to the marking table and log only their removals); the
        rest (counts, clients, outbox, clock) as before.

        Raises:
            StoreError: the write failed (e.g. the disk is full) or the batch holds a
                token that cannot be stored; the committed state is unchanged and the
                caller must not release anything of the batch.
        """
        changes: Counter[str] = Counter()
        delta: list[tuple[int, int, Token, int]] = []
        numbers = self._place_numbers
        for (place, time, token), n in batch.marking.items():
            if n == 0:
                continue
            if not 0 <= time < 1 << 63:
                raise StoreError(
                    f"cannot store {token!r} in {place!r}: time {time} is out of range"
                )
            changes[place] += n
            delta.append((numbers[place], time, token, n))
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
        logged_size = len(logged) + (0 if direct else arrived_tokens)

        def write(txn: lmdb.Transaction) -> tuple[int, int, int, int, int]:
            log_entries, log_records, log_next = self.log_entries, self.log_records, self._log_next
            folded = written = 0
            if direct:
                additions = self._batch_delta(batch)
                for counter in additions.values():
                    for entry, n in counter.items():
                        if n < 0:
                            counter[entry] = 0  # logged below
                written += self._apply_delta(txn, additions)
            if records:
                if log_entries + logged_size > LOG_ENTRIES_MAX:
                    # The loop fell behind: fold the oldest records here, so the log
                    # (and recovery's replay) stays within its bound.
                    gone, folded, written_now = self._catch_up(
                        txn, log_entries + logged_size - LOG_ENTRIES_MAX
                    )
                    written += written_now
                    log_entries, log_records = log_entries - folded, log_records - gone
                for value in records:
                    txn.put(log_next.to_bytes(8, "big"), value, db=self._log, append=True)
                    log_next += 1
                log_entries, log_records = log_entries + logged_size, log_records + len(records)
            for place, n in changes.items():
                if n:
                    key = b"count:" + self._place_ids[place]
                    count = int.from_bytes(txn.get(key, bytes(8), db=self._meta), "big") + n
                    # The log is not searched for what a batch removes (the engine only
                    # removes what it holds); a count below zero is still caught here.
                    assert count >= 0, f"{place}: no stored entry to remove ({count} left)"
                    txn.put(key, count.to_bytes(8, "big"), db=self._meta)
            for client_id, (seq, reply) in batch.clients.items():
                txn.put(
                    _client_key(client_id),
                    pack((client_id, seq, reply, batch.clock_ms)),
                    db=self._clients,
                )
            if batch.clients and txn.stat(self._clients)["entries"] > CLIENTS_MAX:
                self._evict_clients(txn)
            self._write_handoff(txn, batch)
            for transition, n in batch.firings.items():
                key = b"fired:" + transition.encode()
                fired = int.from_bytes(txn.get(key, bytes(8), db=self._meta), "big") + n
                txn.put(key, fired.to_bytes(8, "big"), db=self._meta)
            txn.put(b"clock_ms", str(batch.clock_ms).encode(), db=self._meta)
            if initialised:
                txn.put(b"initialised", b"1", db=self._meta)
            return log_entries, log_records, log_next, written, folded

        log_entries, log_records, log_next, written, folded = self._write(write)
        # Only now that the transaction is committed do the figures in memory move.
        self.log_entries, self.log_records, self._log_next = log_entries, log_records, log_next
        self._entries_written += written
        if folded:
            self._catch_ups += 1
            self._entries_folded += folded
        self._commits += 1

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

    def catch_up(self, entries_max: int = CATCH_UP_ENTRIES_MAX) -> int:
        """Fold the oldest log records (at least one, about ``entries_max`` entries) into
        the marking table in one write transaction; returns the log entries folded.

        Raises:
            StoreError: the write failed; the log and marking table are as they were.
        """
        if not self.log_records:
            return 0

        def write(txn: lmdb.Transaction) -> tuple[int, int, int]:
            return self._catch_up(txn, entries_max)

        records, folded, written = self._write(write)
        self.log_entries -= folded
        self.log_records -= records
        self._entries_written += written
        self._catch_ups += 1
        self._entries_folded += folded
        return int(folded)

    def _catch_up(self, txn: lmdb.Transaction, entries_max: int) -> tuple[int, int, int]:
        """Fold the oldest records, at least one and then while they fit in
        ``entries_max`` entries; returns (records, entries folded, entries written)."""
        delta: Delta = {}
        keys: list[bytes] = []
        folded = 0
        cursor = txn.cursor(db=self._log)
        for key, value in cursor:
            size = record_entries(value)
            if keys and folded + size > entries_max:
                break
            self._fold(bytes(value), delta)
            keys.append(bytes(key))
            folded += size
        for key in keys:
            txn.delete(key, db=self._log)
        written = self._apply_delta(txn, delta)
        if self._fault is not None:
            self._fault("store-catch-up")
        return len(keys), folded, written

    def _fold(self, value: bytes, delta: Delta) -> None:
        try:
            fold_record(value, delta, self._places_by_number, self._places)
        except LogRecordError as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    def _batch_delta(self, batch: Batch) -> Delta:
        """A batch's whole marking change: its delta and the runs it applied, decoded."""
        delta = delta_of(batch.marking)
        for run in batch.arrived:
            try:
                fold_run(run.skip, run.blob, delta, self._places)
            except LogRecordError as exc:
                raise StoreError(f"cannot store the run from shard {run.sender}: {exc}") from exc
        return delta

    def _apply_delta(self, txn: lmdb.Transaction, delta: Delta) -> int:
        """Write a marking delta into the marking table; returns the entries written."""
        written = 0
        for place, changes in delta.items():
            for (time, token), n in changes.items():
                if n:
                    written += self._apply_entry(txn, place, time, token, n)
        return written

    def _apply_entry(
        self, txn: lmdb.Transaction, place: str, time: int, token: Token, n: int
    ) -> int:
        """Add ``n`` (< 0: remove) of one entry in the marking table; returns 1."""
        key, entry = self._entry_key(place, time, token)
        # The common cases take one LMDB operation: a new entry (put without
        # overwrite) and an entry that leaves (pop); a multiplicity needs two.
        # The value holds the encoding only when the key holds a digest of it.
        tail = entry if len(entry) > ENTRY_IN_KEY_BYTES_MAX else b""
        if n > 0:
            value = n.to_bytes(4, "big") + tail
            if txn.put(key, value, overwrite=False, db=self._marking):
                return 1
            old = txn.get(key, db=self._marking)
        else:
            old = txn.pop(key, db=self._marking)
        assert old is not None, f"{place}: no stored entry {time} {token!r} to remove"
        # Distinct entries with one 128-bit digest would be a programmer error
        # (or a broken hash); refuse rather than merge their counts.
        assert bytes(old[4:]) == tail, f"digest collision in {place!r}"
        count = int.from_bytes(old[:4], "big") + n
        assert count >= 0, f"negative count for {place} {time} {token!r}"
        if count > 0:
            txn.put(key, count.to_bytes(4, "big") + tail, db=self._marking)
        return 1

    def _read_log_extent(self) -> tuple[int, int, int]:
        """(entries, records, next seq) of the stored log."""
        entries = records = 0
        last = 0
        with self._env.begin() as txn:
            for key, value in txn.cursor(db=self._log):
                entries += record_entries(value)
                records += 1
                last = int.from_bytes(key, "big")
        return entries, records, last + 1

    def _log_delta(self, txn: lmdb.Transaction) -> Delta:
        """The whole log folded: what it adds to the marking table."""
        delta: Delta = {}
        for _key, value in txn.cursor(db=self._log):
            self._fold(bytes(value), delta)
        return delta

    def _write_handoff(self, txn: lmdb.Transaction, batch: Batch) -> None:
        """The batch's outbox runs, lane counters, inbox marks, table and endpoints."""
        for lane, first_seq, count, entries in batch.runs_added:
            key = lane.to_bytes(4, "big") + first_seq.to_bytes(8, "big")
            txn.put(key, count.to_bytes(4, "big") + entries, db=self._outbox)
        for lane, first_seq in batch.runs_removed:
            txn.delete(lane.to_bytes(4, "big") + first_seq.to_bytes(8, "big"), db=self._outbox)
        for lane, next_seq in batch.next_seqs.items():
            txn.put(lane.to_bytes(4, "big"), next_seq.to_bytes(8, "big"), db=self._lanes)
        for (sender, lane), hwm in batch.hwms.items():
            key = sender.to_bytes(2, "big") + lane.to_bytes(4, "big")
            txn.put(key, hwm.to_bytes(8, "big"), db=self._inbox)
        if batch.table is not None:
            txn.put(b"table", batch.table, db=self._meta)
        if batch.endpoints is not None:
            txn.put(b"endpoints", pack(batch.endpoints), db=self._meta)
        for sender, lane in batch.hwms_removed:
            txn.delete(sender.to_bytes(2, "big") + lane.to_bytes(4, "big"), db=self._inbox)
        for db, records in ((self._phases, batch.phases), (self._staged, batch.staged)):
            for slot, record in records.items():
                if record is None:
                    txn.delete(slot.to_bytes(2, "big"), db=db)
                else:
                    txn.put(slot.to_bytes(2, "big"), record, db=db)

    def _evict_clients(self, txn: lmdb.Transaction) -> None:
        """Drop the least recently used tenth of the client table (rare, bounded)."""
        used = sorted(
            (unpack(bytes(value))[3], bytes(key)) for key, value in txn.cursor(db=self._clients)
        )
        for _tick, key in used[: max(1, len(used) // 10)]:
            txn.delete(key, db=self._clients)

    def _write(self, work: Any) -> Any:
        """Run ``work(txn)`` in a write transaction, growing the map when it is full."""
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    return work(txn)
            except lmdb.MapFullError:
                # No transaction may be open in this process to grow the map: the with
                # block aborted the write, and the deferred reader's is ended here.
                for reader in self._readers:
                    reader.detach()
                size = self._env.info()["map_size"]
                if size >= MAP_SIZE_BYTES_MAX:
                    raise StoreError(f"{self.path}: the store reached {size} bytes") from None
                self._env.set_mapsize(min(size * 2, MAP_SIZE_BYTES_MAX))
                self._resizes += 1
            except lmdb.DiskError as exc:
                raise StoreError(f"{self.path}: disk error, writes stopped: {exc}") from exc
            except lmdb.Error as exc:
                if getattr(exc, "errno", None) == errno.ENOSPC or "No space" in str(exc):
                    raise StoreError(f"{self.path}: the disk is full, writes stopped") from exc
                raise StoreError(f"{self.path}: write failed: {exc}") from exc

    def statistics(self) -> CommitStatistics:
        return CommitStatistics(
            commits=self._commits,
            entries_written=self._entries_written,
            map_size_bytes=self._env.info()["map_size"],
            map_resizes=self._resizes,
            log_entries=self.log_entries,
            log_records=self.log_records,
            catch_ups=self._catch_ups,
            entries_folded=self._entries_folded,
        )

    def entries(self) -> Iterator[tuple[str, int, Token]]:
        """Every stored entry, one per token (for checks and tools)."""
        places = self._places
        held: Counter[tuple[str, int, Token]] = Counter()
        with self._env.begin() as txn:
            for key, value in txn.cursor(db=self._marking):
                name, time, token, count = self._decode_entry(key, value, places)
                held[(name, time, token)] += count
            for name, changes in self._log_delta(txn).items():
                held.update({(name, time, token): n for (time, token), n in changes.items()})
        yield from _one_per_token(held)

    def close(self) -> None:
        """Close the environment and release the directory lock (idempotent)."""
        env: lmdb.Environment | None = getattr(self, "_env", None)
        for reader in self._readers:
            reader.close()
        self._readers = []
        if env is not None:
            env.close()
            del self._env
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = -1


# Each older schema's step to the next one (see _start_incarnation): schema 5 lacked
# the per-place counts, schema 6 the firing totals, schema 7 the batch log. A new
# schema adds one line here.
_UPGRADES: Final[dict[int, Callable[[Store, lmdb.Transaction], None]]] = {
    5: Store._count_places,
    6: Store._start_firing_totals,
    7: Store._start_log,
}


def _one_per_token(
    held: Counter[tuple[str, int, Token]],
) -> list[tuple[str, int, Token]]:
    """Entries with multiplicities as one (place, time, token) per token."""
    assert all(n >= 0 for n in held.values()), "the log removes an entry never stored"
    return [entry for entry, n in held.items() for _ in range(n)]


def _wall_ms() -> int:
    return time_ns() // 1_000_000


def _client_key(client_id: str) -> bytes:
    # Client ids are chosen by clients and may be long; LMDB keys may not.
    return hashlib.blake2b(client_id.encode(), digest_size=16).digest()
