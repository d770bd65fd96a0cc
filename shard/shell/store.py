"""The shard's durable state: one LMDB environment per data directory (SHELL).

The layout of its tables, and the upgrades from older schemas, are in
``shard/shell/store_schema.py``; the batch log's records and their folding into the
marking table in ``shard/shell/store_fold.py`` (record format: ``shard/shell/store_log.py``);
reading the committed state back in ``shard/shell/store_recovery.py``.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final

import lmdb

from nets.codec import pack, unpack
from nets.model import Net, Token
from router.shell.datadir import lock_directory
from router.slots import slot_of_token
from shard.batch import Batch, Recovered
from shard.shell.marking_reader import DeferredMarking, MarkingReadError
from shard.shell.store_fold import BatchLog
from shard.shell.store_log import CATCH_UP_ENTRIES_MAX, LOG_ENTRIES_MAX
from shard.shell.store_recovery import decode_entry, one_per_token, read_state
from shard.shell.store_schema import (
    ENTRY_IN_KEY_BYTES_MAX,
    SCHEMA_VERSION,
    UPGRADES,
    PlaceIds,
    StoreError,
    assign_place_ids,
    count_places,
    open_databases,
    wall_ms,
)

# The store's public names. StoreError, SCHEMA_VERSION and ENTRY_IN_KEY_BYTES_MAX are
# defined with the layout (shard/shell/store_schema.py); callers import them from here.
__all__ = [
    "CLIENTS_MAX",
    "ENTRY_IN_KEY_BYTES_MAX",
    "MAP_SIZE_BYTES_INITIAL",
    "MAP_SIZE_BYTES_MAX",
    "PLACE_NAME_BYTES_MAX",
    "SCHEMA_VERSION",
    "CommitStatistics",
    "Durability",
    "Store",
    "StoreError",
]

PLACE_NAME_BYTES_MAX: Final = 160
MAP_SIZE_BYTES_INITIAL: Final = 64 * 1024 * 1024
MAP_SIZE_BYTES_MAX: Final = 1 << 40
CLIENTS_MAX: Final = 100_000


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
        self.net = net
        self._places = {p.name: p for p in net.places}
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
        self._db = open_databases(self._env)
        self._commits = 0
        self._entries_written = 0
        self._resizes = 0
        self._catch_ups = 0
        self._entries_folded = 0
        self.incarnation, self._ids, self._batch_log = self._start_incarnation(fault)
        # The log's length and next seq, kept in memory (read once here: the log is
        # bounded, and only this process writes it).
        with self._env.begin() as txn:
            self.log_entries, self.log_records, self._log_next = self._batch_log.read_extent(txn)

    # -- opening ------------------------------------------------------------------------

    def _start_incarnation(
        self, fault: Callable[[str], None] | None
    ) -> tuple[int, PlaceIds, BatchLog]:
        meta = self._db.meta

        def start(txn: lmdb.Transaction) -> tuple[int, PlaceIds, BatchLog]:
            stored = txn.get(b"net", db=meta)
            stored_net = None if stored is None else bytes(stored).decode()
            if stored_net is not None and stored_net != self.net.name:
                raise StoreError(
                    f"{self.path} holds the data of net {stored_net!r}, not "
                    f"{self.net.name!r}; use another --data directory"
                )
            schema = txn.get(b"schema", db=meta)
            version = SCHEMA_VERSION if schema is None else int(schema)
            if version != SCHEMA_VERSION and version not in UPGRADES:
                raise StoreError(f"{self.path} has store schema {version}, not {SCHEMA_VERSION}")
            identity = f"{self.shard_id}/{self.shard_count}".encode()
            stored_identity = txn.get(b"shard", db=meta)
            if stored_identity is not None and bytes(stored_identity) != identity:
                stored_id, stored_count = bytes(stored_identity).decode().split("/")
                raise StoreError(
                    f"{self.path} holds the data of shard {stored_id} of a {stored_count}-shard "
                    f"cluster, not shard {self.shard_id} of {self.shard_count}; use the data "
                    "directory that belongs to this shard"
                )
            txn.put(b"shard", identity, db=meta)
            ids = assign_place_ids(txn, meta, self.net)
            log = BatchLog(net=self.net, db=self._db, ids=ids, where=self.path, fault=fault)
            if stored_net is None:
                txn.put(b"firings_since", pack((wall_ms(), "created")), db=meta)
            # Each step brings schema N to N + 1, in this same transaction: a store is
            # upgraded whole or not at all.
            for step_from in range(version, SCHEMA_VERSION):
                UPGRADES[step_from](txn, self._db, ids, log.log_delta)
            incarnation = int(txn.get(b"incarnation", b"0", db=meta)) + 1
            txn.put(b"net", self.net.name.encode(), db=meta)
            txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=meta)
            txn.put(b"incarnation", str(incarnation).encode(), db=meta)
            return incarnation, ids, log

        try:
            started: tuple[int, PlaceIds, BatchLog] = self._write(start)
            return started
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

    def recount(self) -> None:
        """Count every place's tokens again from the stored entries (a scan)."""

        def write(txn: lmdb.Transaction) -> None:
            count_places(txn, self._db, self._ids, self._batch_log.log_delta)

        self._write(write)

    def _recover(self, deferred: frozenset[str]) -> Recovered:
        places = {p.name: p for p in self.net.places}
        deferred_ids = frozenset(self._ids.ids[name] for name in deferred)
        # One read transaction for everything; the deferred reader takes it over, so
        # that what it reads later belongs to the same snapshot as the rest.
        txn = self._env.begin()
        try:
            recovered, logged_deferred = read_state(
                txn,
                self._db,
                self._ids,
                places,
                deferred_ids,
                log_delta=self._batch_log.log_delta,
                where=self.path,
            )
        except BaseException:
            txn.abort()
            raise
        if not deferred:
            txn.abort()
            return recovered
        reader = DeferredMarking(
            txn,
            self._db.marking,
            self._ids.names,
            places,
            deferred_ids,
            skip_slots=frozenset(recovered.phases),
            where=self.path,
            logged=logged_deferred,
        )
        self._readers = [r for r in self._readers if not r.done]
        self._readers.append(reader)
        return dataclasses.replace(recovered, deferred=reader)

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
            cursor = txn.cursor(db=self._db.marking)
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if key[:2] != prefix:
                        break
                    name, time, token, count = self._decode_entry(key, value)
                    held[(name, time, token)] += count
            for name, changes in self._batch_log.log_delta(txn).items():
                for (time, token), n in changes.items():
                    if n and slot_of_token(places[name], token) == slot:
                        held[(name, time, token)] += n
        return one_per_token(held)

    def _decode_entry(self, key: bytes, value: bytes) -> tuple[str, int, Token, int]:
        return decode_entry(
            key, value, self._places, self._ids.names, where=self.path, net_name=self.net.name
        )

    # -- committing ---------------------------------------------------------------------

    def commit(self, batch: Batch, *, initialised: bool = False, fold_entries_max: int = 0) -> None:
        """Write ``batch`` in one transaction (nothing if it fails).

        The marking delta and the handoff runs applied go into the log, in records of
        at most ``LOG_RECORD_ENTRIES_MAX`` entries (the initial marking, and a batch
        larger than ``LOG_BATCH_ENTRIES_MAX`` entries or ``LOG_BATCH_BYTES_MAX`` bytes,
        write their additions to the marking table and log only their removals); the
        rest (counts, clients, outbox, clock) as before. With ``fold_entries_max``, the
        same transaction first folds the oldest records as :meth:`catch_up` would (at
        least one, about that many entries): a busy shard's slice then costs no
        transaction (an fsync) of its own.

        Raises:
            StoreError: the write failed (e.g. the disk is full) or the batch holds a
                token that cannot be stored; the committed state is unchanged and the
                caller must not release anything of the batch.
        """
        logged = self._batch_log.prepare(batch, initialised=initialised)

        def write(txn: lmdb.Transaction) -> tuple[int, int, int, int, int]:
            log_entries, log_records, log_next = self.log_entries, self.log_records, self._log_next
            folded = written = 0
            if logged.direct:
                written += self._batch_log.write_additions(txn, batch)
            # The loop fell behind (over LOG_ENTRIES_MAX): fold the oldest records here,
            # so the log (and recovery's replay) stays within its bound; or the shell
            # asked for its slice here. Before the batch's records: they stay logged.
            overflow = log_entries + logged.entries - LOG_ENTRIES_MAX if logged.records else 0
            if log_records and max(overflow, fold_entries_max) > 0:
                gone, folded, written_now = self._batch_log.catch_up(
                    txn, max(overflow, fold_entries_max)
                )
                written += written_now
                log_entries, log_records = log_entries - folded, log_records - gone
            if logged.records:
                for value in logged.records:
                    txn.put(log_next.to_bytes(8, "big"), value, db=self._db.log, append=True)
                    log_next += 1
                log_entries += logged.entries
                log_records += len(logged.records)
            for place, n in logged.changes.items():
                if n:
                    key = b"count:" + self._ids.ids[place]
                    count = int.from_bytes(txn.get(key, bytes(8), db=self._db.meta), "big") + n
                    # The log is not searched for what a batch removes (the engine only
                    # removes what it holds); a count below zero is still caught here.
                    assert count >= 0, f"{place}: no stored entry to remove ({count} left)"
                    txn.put(key, count.to_bytes(8, "big"), db=self._db.meta)
            for client_id, (seq, reply) in batch.clients.items():
                txn.put(
                    _client_key(client_id),
                    pack((client_id, seq, reply, batch.clock_ms)),
                    db=self._db.clients,
                )
            if batch.clients and txn.stat(self._db.clients)["entries"] > CLIENTS_MAX:
                self._evict_clients(txn)
            self._write_handoff(txn, batch)
            for transition, n in batch.firings.items():
                key = b"fired:" + transition.encode()
                fired = int.from_bytes(txn.get(key, bytes(8), db=self._db.meta), "big") + n
                txn.put(key, fired.to_bytes(8, "big"), db=self._db.meta)
            txn.put(b"clock_ms", str(batch.clock_ms).encode(), db=self._db.meta)
            if initialised:
                txn.put(b"initialised", b"1", db=self._db.meta)
            return log_entries, log_records, log_next, written, folded

        log_entries, log_records, log_next, written, folded = self._write(write)
        # Only now that the transaction is committed do the figures in memory move.
        self.log_entries, self.log_records, self._log_next = log_entries, log_records, log_next
        self._entries_written += written
        if folded:
            self._catch_ups += 1
            self._entries_folded += folded
        self._commits += 1

    def catch_up(self, entries_max: int = CATCH_UP_ENTRIES_MAX) -> int:
        """Fold the oldest log records (at least one, about ``entries_max`` entries) into
        the marking table in one write transaction; returns the log entries folded.

        Raises:
            StoreError: the write failed; the log and marking table are as they were.
        """
        if not self.log_records:
            return 0

        def write(txn: lmdb.Transaction) -> tuple[int, int, int]:
            return self._batch_log.catch_up(txn, entries_max)

        records, folded, written = self._write(write)
        self.log_entries -= folded
        self.log_records -= records
        self._entries_written += written
        self._catch_ups += 1
        self._entries_folded += folded
        return int(folded)

    def _write_handoff(self, txn: lmdb.Transaction, batch: Batch) -> None:
        """The batch's outbox runs, lane counters, inbox marks, table and endpoints."""
        for lane, first_seq, count, entries in batch.runs_added:
            key = lane.to_bytes(4, "big") + first_seq.to_bytes(8, "big")
            txn.put(key, count.to_bytes(4, "big") + entries, db=self._db.outbox)
        for lane, first_seq in batch.runs_removed:
            txn.delete(lane.to_bytes(4, "big") + first_seq.to_bytes(8, "big"), db=self._db.outbox)
        for lane, next_seq in batch.next_seqs.items():
            txn.put(lane.to_bytes(4, "big"), next_seq.to_bytes(8, "big"), db=self._db.lanes)
        for (sender, lane), hwm in batch.hwms.items():
            key = sender.to_bytes(2, "big") + lane.to_bytes(4, "big")
            txn.put(key, hwm.to_bytes(8, "big"), db=self._db.inbox)
        if batch.table is not None:
            txn.put(b"table", batch.table, db=self._db.meta)
        if batch.endpoints is not None:
            txn.put(b"endpoints", pack(batch.endpoints), db=self._db.meta)
        for sender, lane in batch.hwms_removed:
            txn.delete(sender.to_bytes(2, "big") + lane.to_bytes(4, "big"), db=self._db.inbox)
        for db, records in ((self._db.phases, batch.phases), (self._db.staged, batch.staged)):
            for slot, record in records.items():
                if record is None:
                    txn.delete(slot.to_bytes(2, "big"), db=db)
                else:
                    txn.put(slot.to_bytes(2, "big"), record, db=db)

    def _evict_clients(self, txn: lmdb.Transaction) -> None:
        """Drop the least recently used tenth of the client table (rare, bounded)."""
        used = sorted(
            (unpack(bytes(value))[3], bytes(key)) for key, value in txn.cursor(db=self._db.clients)
        )
        for _tick, key in used[: max(1, len(used) // 10)]:
            txn.delete(key, db=self._db.clients)

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
        held: Counter[tuple[str, int, Token]] = Counter()
        with self._env.begin() as txn:
            for key, value in txn.cursor(db=self._db.marking):
                name, time, token, count = self._decode_entry(key, value)
                held[(name, time, token)] += count
            for name, changes in self._batch_log.log_delta(txn).items():
                held.update({(name, time, token): n for (time, token), n in changes.items()})
        yield from one_per_token(held)

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


def _client_key(client_id: str) -> bytes:
    # Client ids are chosen by clients and may be long; LMDB keys may not.
    return hashlib.blake2b(client_id.encode(), digest_size=16).digest()
