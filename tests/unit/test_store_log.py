"""The store's batch log (schema 8) on real LMDB files under ``tmp_path``.

A commit is one log record; the marking table catches up in slices; recovery is the
table plus the log, whichever part holds what. Checked here: recovery and ``entries()``
agree at every point between commits and slices (tokens that pass through cancel in a
slice and are never written), removals that the log holds of entries the table holds,
deferred places, the log's hard bound, batches too large for a record, handoff runs
logged as they arrived, a slice that fails half-way or is SIGKILLed inside its
transaction (fault point ``store-catch-up``), and the upgrade from schema 7.
"""

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import lmdb
import pytest

import shard.shell.store
import shard.shell.store_fold
from nets import Net, Place
from nets.codec import pack
from nets.model import Token
from router.shell.datadir import FAULT_ENV
from shard.batch import ArrivedRun, Batch
from shard.shell.store import SCHEMA_VERSION, Durability, Store, StoreError

pytestmark = pytest.mark.integration


class Item(NamedTuple):
    key: str
    n: int


NET = Net(
    "store_log_test",
    places=[Place("work", Item, key="key"), Place("done", Item, key="key"), Place("bag", Item)],
    transitions=[],
)
DEFERRED = frozenset({"done"})
ROOT = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT_S = 60
Marking = Counter[tuple[str, int, Token]]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "data", net=NET, durability=Durability.PROCESS)
    yield opened
    opened.close()


def _recovered(store: Store, deferred: frozenset[str] = frozenset()) -> Marking:
    recovered = store.recover(deferred)
    found: Marking = Counter(
        (place, t, token) for place, entries in recovered.marking.items() for t, token in entries
    )
    reader = recovered.deferred
    while reader is not None and not reader.done:
        for place, entries in reader.read(5).items():
            found.update((place, t, token) for t, token in entries)
    return found


def _check(store: Store, expected: Marking) -> None:
    """Every way of reading the store back gives ``expected``, and the counts agree."""
    expected = +expected
    assert _recovered(store) == expected
    assert _recovered(store, DEFERRED) == expected
    assert Counter(store.entries()) == expected
    recovered = store.recover(frozenset(p.name for p in NET.places))
    if recovered.deferred is not None:
        recovered.deferred.close()
    by_place = Counter()
    for (place, _t, _token), n in expected.items():
        by_place[place] += n
    assert recovered.deferred_counts == {p.name: by_place[p.name] for p in NET.places}


def _commit(store: Store, marking: Marking, clock_ms: int, **changes: int) -> None:
    batch = Batch(clock_ms=clock_ms)
    for spec, n in changes.items():
        place, _, number = spec.partition("_")
        entry = (place, int(number), Item(f"k{int(number) % 7}", int(number)))
        batch.marking[entry] += n
        marking[entry] += n
    store.commit(batch)


def test_commits_go_to_the_log_and_slices_fold_them_in_order(store: Store) -> None:
    marking: Marking = Counter()
    _commit(store, marking, 1, work_1=1, work_2=2, done_3=1, bag_4=1)
    _commit(store, marking, 2, work_1=-1, work_5=1, done_6=3)
    _commit(store, marking, 3, work_5=-1, done_3=-1, bag_4=-1, bag_7=1)
    assert (store.log_records, store.log_entries) == (3, 11)  # distinct entries
    assert store.statistics().entries_written == 0  # nothing reached the table yet
    _check(store, marking)
    # One record per slice here (each is larger than a 1-entry slice allows).
    assert store.catch_up(entries_max=1) == 4
    _check(store, marking)
    _commit(store, marking, 4, work_2=-2, done_6=-1)
    assert store.catch_up(entries_max=1 << 30) == 9  # the rest, folded together
    assert store.log_records == 0
    _check(store, marking)
    assert store.catch_up() == 0  # nothing left


def test_a_token_that_passes_through_within_a_slice_is_never_written(store: Store) -> None:
    marking: Marking = Counter()
    _commit(store, marking, 1, work_1=1, work_2=1)
    _commit(store, marking, 2, work_1=-1, work_3=1)
    _commit(store, marking, 3, work_3=-1)
    store.catch_up(1 << 30)
    assert store.statistics().entries_written == 1  # work_2 only
    _check(store, marking)


def test_a_fold_writes_the_table_a_direct_write_would(tmp_path: Path) -> None:
    """Catch-up keys entries straight from the logged fields (no tokens rebuilt): the
    table it leaves is byte for byte the one the same marking written directly leaves,
    long entries (a digest in the key, the encoding in the value) and counts > 1 too."""
    long_key = "k" + "x" * 600  # past LMDB's key limit: keyed by a digest
    entries = {
        ("work", 5, Item(long_key, 1)): 2,
        ("done", 6, Item(long_key, 2)): 1,
        ("bag", 7, Item("b" * 700, 3)): 1,
        ("work", 8, Item("short", 4)): 3,
    }
    folded = Store(tmp_path / "folded", net=NET, durability=Durability.PROCESS)
    direct = Store(tmp_path / "direct", net=NET, durability=Durability.PROCESS)
    try:
        marking: Marking = Counter()
        for clock_ms, (entry, n) in enumerate(entries.items(), start=1):
            folded.commit(Batch(marking=Counter({entry: n}), clock_ms=clock_ms))
            marking[entry] += n
        gone = ("work", 8, Item("short", 4))
        folded.commit(Batch(marking=Counter({gone: -1}), clock_ms=9))  # a multiplicity
        marking[gone] -= 1
        folded.catch_up(1 << 30)
        assert folded.log_records == 0
        _check(folded, marking)
        direct.commit(Batch(marking=Counter(marking), clock_ms=9), initialised=True)

        def table(store: Store) -> list[tuple[bytes, bytes]]:
            with store._env.begin() as txn:
                return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=store._db.marking)]

        assert table(folded) == table(direct)
        assert len(table(folded)) == len(entries)
    finally:
        folded.close()
        direct.close()


def test_the_log_removes_what_the_table_holds_deferred_or_not(store: Store) -> None:
    marking: Marking = Counter()
    _commit(store, marking, 1, work_1=1, done_2=2, done_3=1, bag_4=1)
    store.catch_up(1 << 30)
    _commit(store, marking, 2, work_1=-1, done_2=-1, done_3=-1, bag_4=-1, done_9=1)
    _check(store, marking)
    store.close()
    reopened = Store(store.path, net=NET, durability=Durability.PROCESS)
    try:
        assert (reopened.log_records, reopened.log_entries) == (1, 5)  # read at opening
        _check(reopened, marking)
    finally:
        reopened.close()


def test_the_log_never_passes_its_bound(store: Store, monkeypatch: Any) -> None:
    monkeypatch.setattr(shard.shell.store, "LOG_ENTRIES_MAX", 10)
    marking: Marking = Counter()
    for i in range(20):
        _commit(store, marking, i, **{f"work_{i}": 1, f"done_{i}": 1, f"bag_{i}": 1})
        assert store.log_entries <= 10
    assert store.statistics().catch_ups > 0
    _check(store, marking)


def test_a_commit_folds_the_oldest_records_in_its_own_transaction(store: Store) -> None:
    # The busy shard's slice (ShardRuntime.commit(fold=True)): the oldest records go to
    # the table before the batch's own record is appended, in one transaction.
    marking: Marking = Counter()
    _commit(store, marking, 1, work_1=1, done_2=1)
    _commit(store, marking, 2, work_1=-1, bag_3=1)
    assert (store.log_records, store.log_entries) == (2, 4)
    batch = Batch(clock_ms=3)
    for entry, n in ((("done", 2, Item("k2", 2)), -1), (("work", 4, Item("k4", 4)), 1)):
        batch.marking[entry] += n
        marking[entry] += n
    store.commit(batch, fold_entries_max=1)  # at least one record: the oldest
    assert (store.log_records, store.log_entries) == (2, 4)
    assert store.statistics().catch_ups == 1
    _check(store, marking)
    batch = Batch(clock_ms=4, marking=Counter({("bag", 5, Item("k5", 5)): 1}))
    marking[("bag", 5, Item("k5", 5))] += 1
    store.commit(batch, fold_entries_max=1 << 20)  # all of the log before this batch
    assert (store.log_records, store.log_entries) == (1, 1)
    _check(store, marking)


def test_a_batch_is_cut_into_records_of_bounded_entries(store: Store, monkeypatch: Any) -> None:
    # One record is one msgpack call when written and when folded: it stays small so
    # that no single call holds the GIL long (the metrics thread waits for it).
    monkeypatch.setattr(shard.shell.store_fold, "LOG_RECORD_ENTRIES_MAX", 2)
    marking: Marking = Counter()
    _commit(store, marking, 1, work_1=1, done_2=1, bag_3=1, work_4=1, done_5=1)
    assert (store.log_records, store.log_entries) == (3, 5)
    _check(store, marking)
    assert store.catch_up(entries_max=1) == 2  # one record at a time
    _check(store, marking)


def test_a_batch_too_large_for_the_log_writes_its_additions_to_the_table(
    store: Store, monkeypatch: Any
) -> None:
    monkeypatch.setattr(shard.shell.store_fold, "LOG_BATCH_ENTRIES_MAX", 3)
    marking: Marking = Counter()
    _commit(store, marking, 1, work_1=1, done_2=1)
    assert store.log_records == 1
    # Removes what the log adds: the removals are logged after it, the additions go to
    # the table (they commute with the log), and nothing of the log is folded.
    _commit(store, marking, 2, work_1=-1, done_2=-1, work_3=1, done_4=1, bag_5=1)
    assert (store.log_records, store.log_entries) == (2, 4)
    assert store.statistics().entries_written == 3
    _check(store, marking)
    _commit(store, marking, 3, work_3=-1, done_6=1, bag_7=1, work_8=1)  # removes from the table
    _check(store, marking)
    store.catch_up(1 << 30)
    _check(store, marking)


def test_a_batch_of_too_many_bytes_writes_its_additions_to_the_table(
    store: Store, monkeypatch: Any
) -> None:
    monkeypatch.setattr(shard.shell.store_fold, "LOG_BATCH_BYTES_MAX", 40)
    marking: Marking = Counter()
    _commit(store, marking, 1, work_1=1)
    assert store.log_records == 1
    _commit(store, marking, 2, work_1=-1, done_2=1, bag_3=1, work_4=1)
    assert store.log_entries == 2  # the first record and the removal
    _check(store, marking)


def _run(entries: list[tuple[str, int, Item]]) -> bytes:
    return pack([(place, time, tuple(token)) for place, time, token in entries])


def test_a_received_run_is_a_record_of_its_bytes(store: Store) -> None:
    entries = [
        ("work", 10, Item("k1", 1)),
        ("done", 11, Item("k2", 2)),
        ("done", 11, Item("k2", 2)),
    ]
    entries += [("work", 12, Item("k3", 3))]
    blob = _run(entries)
    batch = Batch(clock_ms=1)
    # The first entry was applied from an earlier copy of the run: skipped.
    batch.arrived.append(ArrivedRun(2, 5, 100, 1, blob, {"done": 2, "work": 1}))
    batch.add("bag", 1, Item("b", 0))
    store.commit(batch)
    assert (store.log_records, store.log_entries) == (2, 4)  # the run, then the delta
    marking: Marking = Counter(dict.fromkeys(entries[1:], 1))
    marking[("done", 11, Item("k2", 2))] = 2
    marking[("bag", 1, Item("b", 0))] = 1
    _check(store, marking)
    store.catch_up()
    _check(store, marking)


def test_a_batch_that_consumes_what_it_received_folds_record_by_record(
    store: Store, monkeypatch: Any
) -> None:
    # A batch's delta removes an entry its received run added (a token handed off and
    # consumed in the same batch). Records are folded one at a time: the run's record
    # must come before the delta's, or a slice would remove an entry not yet stored.
    monkeypatch.setattr(shard.shell.store_fold, "LOG_RECORD_ENTRIES_MAX", 1)
    received = ("work", 10, Item("k1", 1))
    batch = Batch(clock_ms=1)
    batch.arrived.append(ArrivedRun(2, 5, 100, 0, _run([received]), {"work": 1}))
    batch.marking[received] -= 1  # fired at once
    batch.add("done", 11, Item("k1", 1))
    batch.add("bag", 12, Item("b", 0))
    store.commit(batch)
    marking: Marking = Counter({("done", 11, Item("k1", 1)): 1, ("bag", 12, Item("b", 0)): 1})
    assert store.log_records == 4
    while store.log_records:
        store.catch_up(entries_max=1)
        _check(store, marking)


def test_a_slice_that_fails_changes_nothing(store: Store, monkeypatch: Any) -> None:
    marking: Marking = Counter()
    _commit(store, marking, 1, work_1=1, done_2=1)
    _commit(store, marking, 2, work_1=-1, bag_3=1)

    def fail(txn: lmdb.Transaction, counts: Any, tails: Any) -> int:
        txn.put(b"\x00\x00\x00\x01" + bytes(9), b"half written")  # then dies
        raise lmdb.DiskError("injected")

    monkeypatch.setattr(store._batch_log, "write_entries", fail)
    with pytest.raises(StoreError, match="disk error"):
        store.catch_up(1 << 30)
    monkeypatch.undo()
    assert (store.log_records, store.log_entries) == (2, 4)
    _check(store, marking)
    store.catch_up(1 << 30)
    _check(store, marking)


def test_a_schema_7_store_is_upgraded_to_8(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", net=NET, durability=Durability.PROCESS)
    marking: Marking = Counter()
    _commit(store, marking, 1, work_1=1, done_2=2, bag_3=1)
    store.catch_up(1 << 30)  # schema 7 held everything in the marking table
    store.close()
    env = lmdb.open(str(tmp_path / "data" / "lmdb"), max_dbs=10, subdir=True)
    with env.begin(write=True) as txn:
        txn.put(b"schema", b"7", db=env.open_db(b"meta", txn=txn))
    env.close()
    store = Store(tmp_path / "data", net=NET, durability=Durability.PROCESS)
    try:
        _check(store, marking)
        _commit(store, marking, 2, work_1=-1, work_4=1)
        assert store.log_records == 1
        _check(store, marking)
    finally:
        store.close()
    env = lmdb.open(str(tmp_path / "data" / "lmdb"), max_dbs=10, subdir=True, readonly=True)
    with env.begin() as txn:
        assert txn.get(b"schema", db=env.open_db(b"meta", txn=txn)) == str(SCHEMA_VERSION).encode()
    env.close()


_KILLED_IN_A_SLICE = """
import functools, sys
from pathlib import Path
from router.shell.datadir import fault_point
from shard.batch import Batch
from shard.shell.store import Durability, Store
from tests.unit.test_store_log import NET, Item

path = Path(sys.argv[1])
store = Store(path, net=NET, durability=Durability.FSYNC,
              fault=functools.partial(fault_point, path))
for i in range(3):
    batch = Batch(clock_ms=i + 1)
    batch.add("work", i, Item("k", i))
    batch.add("done", i, Item("d", i), 2)
    if i:
        batch.remove("work", i - 1, Item("k", i - 1))
    store.commit(batch)
store.catch_up(1 << 30)  # killed in its transaction, after its writes
print("not killed")
"""


def test_a_sigkill_inside_a_slice_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "data"
    env = {**os.environ, FAULT_ENV: "store-catch-up", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_IN_A_SLICE, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    store = Store(path, net=NET, durability=Durability.FSYNC)
    try:
        assert store.log_records == 3  # the slice died with its transaction
        marking: Marking = Counter({("work", 2, Item("k", 2)): 1})
        marking.update({("done", i, Item("d", i)): 2 for i in range(3)})
        _check(store, marking)
        store.catch_up(1 << 30)
        _check(store, marking)
    finally:
        store.close()
