"""Places a shard reads after it starts: the store's counts and its deferred reader.

On real LMDB files under ``tmp_path``: recovery leaves the deferred places out but
counts them; the reader then gives back every one of their entries (multiplicities,
entries too long for a key, many slots), in chunks, from the snapshot recovery saw,
skipping sealed slots, and keeps going when the map grows under it; a store written
before the counts were kept gets them when it is opened.
"""

import gc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import lmdb
import pytest

from nets import Engine, Net, Place
from nets.model import Token
from router.slots import slot_of_token
from shard.batch import Batch
from shard.deferred import DeferredLoad
from shard.shell.marking_reader import DeferredMarking, MarkingReadError
from shard.shell.runtime import ShardConfig, ShardRuntime
from shard.shell.store import Durability, Store

pytestmark = pytest.mark.integration


class Item(NamedTuple):
    key: str
    n: int
    text: str


NET = Net(
    "deferred_test",
    places=[
        Place("work", Item, key="key"),
        Place("done", Item, key="key"),
        Place("log", Item),
    ],
    transitions=[],
)
DEFERRED = frozenset({"done", "log"})
NET_PATH = f"{__name__}:NET"  # what a shard loads, as `cpn shard --net` would
LONG = "x" * 600  # too long for an LMDB key: stored under its digest


def _item(n: int, text: str = "") -> Item:
    return Item(f"k{n % 97}", n, text)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "data", net=NET, durability=Durability.PROCESS)
    yield opened
    opened.close()


def _fill(store: Store) -> Counter[tuple[str, int, Token]]:
    """A marking over many slots, with a multiplicity and long entries in each place."""
    batch = Batch()
    for n in range(300):
        batch.add("work", 10 + n, _item(n))
        batch.add("done", 20 + n, _item(n, LONG if n % 50 == 0 else ""))
        batch.add("log", 30, _item(n))
    batch.add("done", 5, _item(7), n=3)
    batch.clock_ms = 1_000
    store.commit(Batch(clock_ms=999), initialised=True)  # (the initial marking: direct)
    store.commit(batch)  # a record of the batch log
    assert store.log_records == 1
    return Counter(batch.marking)


def _read_all(reader: DeferredMarking | None, chunk: int) -> Counter[tuple[str, int, Token]]:
    found: Counter[tuple[str, int, Token]] = Counter()
    while reader is not None and not reader.done:
        for place, entries in reader.read(chunk).items():
            assert len(entries) <= chunk + 3, "a chunk holds about what was asked"
            found.update((place, t, tok) for t, tok in entries)
    return found


def _only(marking: Counter[tuple[str, int, Token]], places: frozenset[str]) -> Counter[Any]:
    return Counter({e: n for e, n in marking.items() if e[0] in places})


@pytest.mark.parametrize("folded", [False, True], ids=["from the log", "from the table"])
@pytest.mark.parametrize("chunk", [1, 7, 100_000])
def test_recovery_counts_the_deferred_places_and_the_reader_gives_every_entry(
    store: Store, chunk: int, folded: bool
) -> None:
    written = _fill(store)
    if folded:
        store.catch_up(1 << 62)
    recovered = store.recover(DEFERRED)
    assert recovered.marking["done"] == [] and recovered.marking["log"] == []
    assert sorted(recovered.marking["work"]) == sorted(
        (t, tok) for (p, t, tok), _n in written.items() if p == "work"
    )
    assert recovered.deferred_counts == {"done": 303, "log": 300}
    assert _read_all(recovered.deferred, chunk) == _only(written, DEFERRED)


def test_without_deferred_places_recovery_reads_everything(store: Store) -> None:
    written = _fill(store)
    recovered = store.recover()
    assert recovered.deferred is None and recovered.deferred_counts == {}
    found = Counter((p, t, tok) for p, entries in recovered.marking.items() for t, tok in entries)
    assert found == written


def test_the_reader_reads_the_snapshot_recovery_saw(store: Store) -> None:
    written = _fill(store)
    recovered = store.recover(DEFERRED)
    later = Batch()
    later.add("done", 5_000, _item(1_000))  # the shard holds these already
    later.remove("done", 20, _item(0, LONG))
    later.clock_ms = 2_000
    store.commit(later)
    assert _read_all(recovered.deferred, 50) == _only(written, DEFERRED)
    assert store.recover(DEFERRED).deferred_counts == {"done": 303, "log": 300}


def test_the_reader_skips_sealed_slots(store: Store) -> None:
    written = _fill(store)
    sealed = {slot_of_token(NET.place("done"), _item(n)) for n in (3, 4)}
    seal = Batch()
    seal.phases.update(dict.fromkeys(sealed, b"sealed for a move"))
    seal.clock_ms = 1_001
    store.commit(seal)
    recovered = store.recover(DEFERRED)
    assert recovered.deferred is not None
    expected = Counter(
        {
            (p, t, tok): n
            for (p, t, tok), n in _only(written, DEFERRED).items()
            if p == "log" or slot_of_token(NET.place("done"), tok) not in sealed
        }
    )
    assert _read_all(recovered.deferred, 10) == expected


def test_the_map_grows_while_a_reader_is_open(tmp_path: Path) -> None:
    store = Store(
        tmp_path / "data", net=NET, durability=Durability.PROCESS, map_size_bytes=256 * 1024
    )
    try:
        written = _fill(store)
        recovered = store.recover(DEFERRED)
        first = _only(Counter(), DEFERRED)
        assert recovered.deferred is not None
        for place, entries in recovered.deferred.read(10).items():
            first.update((place, t, tok) for t, tok in entries)
        big = Batch()
        for n in range(3_000):
            big.add("work", 50_000 + n, _item(n, "y" * 200))
        big.clock_ms = 3_000
        store.commit(big)  # needs a larger map: the reader's transaction must end first
        assert store.statistics().map_resizes > 0
        assert first + _read_all(recovered.deferred, 25) == _only(written, DEFERRED)
    finally:
        store.close()


def test_counts_follow_every_commit(store: Store) -> None:
    written = _fill(store)
    batch = Batch()
    for n in range(0, 300, 3):
        batch.remove("log", 30, _item(n))
    batch.remove("done", 5, _item(7), n=2)
    batch.add("work", 1, _item(1))
    store.commit(batch)
    written.update(batch.marking)
    expected: Counter[str] = Counter()
    for (place, _t, _tok), n in written.items():
        expected[place] += n
    assert store.recover(frozenset({"work", "done", "log"})).deferred_counts == expected


def test_a_store_from_before_the_counts_gets_them_when_opened(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", net=NET, durability=Durability.PROCESS)
    _fill(store)
    store.catch_up(1 << 62)  # the whole batch log into the marking table
    store.close()
    # Make it what schema 5 wrote: the same, without the counts.
    env = lmdb.open(str(tmp_path / "data" / "lmdb"), max_dbs=10, subdir=True)
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn)
        counts = [bytes(k) for k, _v in txn.cursor(db=meta) if bytes(k).startswith(b"count:")]
        assert counts, "the store keeps counts"
        for key in counts:
            txn.delete(key, db=meta)
        txn.put(b"schema", b"5", db=meta)
    env.close()
    store = Store(tmp_path / "data", net=NET, durability=Durability.PROCESS)
    try:
        assert store.recover(DEFERRED).deferred_counts == {"done": 303, "log": 300}
    finally:
        store.close()


def _corrupt_one_done_entry(path: Path) -> None:
    """Replace one stored ``done`` entry by bytes that are not msgpack."""
    env = lmdb.open(str(path / "lmdb"), max_dbs=10, subdir=True)
    with env.begin(write=True) as txn:
        meta, marking = env.open_db(b"meta", txn=txn), env.open_db(b"marking", txn=txn)
        done_id = bytes(txn.get(b"place:done", db=meta))
        key = next(bytes(k) for k, _v in txn.cursor(db=marking) if bytes(k)[2:4] == done_id)
        txn.delete(key, db=marking)
        # The digest form (0xc1): the value holds the encoding, here a truncated array.
        txn.put(key[:12] + b"\xc1" + bytes(16), (1).to_bytes(4, "big") + b"\x93\x01", db=marking)
    env.close()


def test_an_entry_that_cannot_be_read_stops_the_load_for_good(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", net=NET, durability=Durability.PROCESS)
    _fill(store)
    store.catch_up(1 << 62)  # the whole batch log into the marking table
    store.close()
    _corrupt_one_done_entry(tmp_path / "data")
    store = Store(tmp_path / "data", net=NET, durability=Durability.PROCESS)
    try:
        recovered = store.recover(DEFERRED)
        load = DeferredLoad(recovered.deferred, recovered.deferred_counts)
        engine = Engine(NET, initial_marking=False)
        with pytest.raises(MarkingReadError, match="corrupt marking entry in place 'done'"):
            load.complete(engine, 1)
        with pytest.raises(MarkingReadError, match="corrupt"):
            load.step(engine, 2)  # and every later step: no marking with a hole in it
        assert load.active and load.loaded_ms == 0
        assert load.pending("done") + engine.count("done") == 303, "counts stay whole"
    finally:
        store.close()


def test_missing_counts_do_not_stop_the_load_and_are_counted_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", net=NET, durability=Durability.PROCESS)
    written = _fill(store)
    store.close()
    env = lmdb.open(str(tmp_path / "data" / "lmdb"), max_dbs=10, subdir=True)
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn)
        for key in [bytes(k) for k, _v in txn.cursor(db=meta) if bytes(k).startswith(b"count:")]:
            txn.delete(key, db=meta)
    env.close()
    store = Store(tmp_path / "data", net=NET, durability=Durability.PROCESS)
    assert store.recover(DEFERRED).deferred_counts == {"done": 0, "log": 0}
    store.close()
    # The shard's shell loads them chunk by chunk, then has the store count again.
    runtime = ShardRuntime(ShardConfig(NET_PATH, tmp_path / "data", durability=Durability.PROCESS))
    try:
        assert runtime.setup.deferred_places >= DEFERRED
        while runtime.core.deferred.active:
            runtime.load_deferred()
        assert runtime.core.deferred.recount
        engine = runtime.core.engine
        found = Counter((p, t, tok) for p in sorted(DEFERRED) for t, tok in engine.tokens(p))
        assert found == _only(written, DEFERRED)
        assert runtime.store.recover(DEFERRED).deferred_counts == {"done": 303, "log": 300}
    finally:
        runtime.close()
        gc.unfreeze()  # the finished load froze this process's heap, as a shard's
