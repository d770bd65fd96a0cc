"""The shard's LMDB store on real files under ``tmp_path``.

What a store must give back after a commit, a close and a reopen: markings with
multiplicities, tokens with tuple-typed fields, the clock and the client table; what
it refuses (a directory held by another process, another net's data); how it copes
with a map that is too small (it grows) and a disk that is full (a clear error, and
the committed state intact).
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import shard.shell.store
from nets import Net, Place
from nets.model import Token
from shard.batch import Batch
from shard.shell.store import Durability, Store, StoreError

pytestmark = pytest.mark.integration

SUBPROCESS_TIMEOUT_S = 60


class Item(NamedTuple):
    key: str
    n: int


class Shape(NamedTuple):
    path: tuple[str, ...]  # the partition key, itself a tuple
    corner: tuple[int, str]
    rows: tuple[tuple[int, ...], ...]
    weight: float
    blob: bytes
    on: bool


def _net(name: str = "store_test") -> Net:
    return Net(
        name,
        places=[
            Place("items", Item, key="key"),
            Place("pool", Item, pool=True),
            Place("fixed", Item),
            Place("shapes", Shape, key="path"),
        ],
        transitions=[],
    )


NET = _net()


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[Any]:
    """``open_store(path=..., **kwargs)`` opens a Store on NET; all are closed afterwards."""
    opened: list[Store] = []

    def opener(path: Path | None = None, **kwargs: Any) -> Store:
        kwargs.setdefault("net", NET)
        kwargs.setdefault("durability", Durability.PROCESS)
        store = Store(path or tmp_path / "data", **kwargs)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


def _reopen(store: Store, **kwargs: Any) -> Store:
    store.close()
    return Store(store.path, net=store.net, durability=store.durability, **kwargs)


def _sorted(marking: dict[str, list[tuple[int, Token]]]) -> dict[str, list[tuple[int, Token]]]:
    return {place: sorted(entries) for place, entries in marking.items() if entries}


# -- round trips ----------------------------------------------------------------------------


def test_empty_store_recovers_nothing(open_store: Any) -> None:
    store = open_store()
    recovered = store.recover()
    assert recovered.marking == {"items": [], "pool": [], "fixed": [], "shapes": []}
    assert recovered.clock_ms == 0
    assert dict(recovered.clients) == {}
    assert recovered.initialised is False
    assert store.incarnation == 1
    assert list(store.entries()) == []


def test_marking_with_multiplicities_round_trips(open_store: Any) -> None:
    store = open_store()
    a, b = Item("a", 1), Item("b", 2)
    batch = Batch(clock_ms=120)
    batch.add("items", 5, a, n=3)  # the same (time, token) entry three times
    batch.add("items", 5, a)  # ...and once more, separately: four in all
    batch.add("items", 7, a)  # the same token at another time is another entry
    batch.add("pool", 0, b, n=2)
    batch.add("fixed", 3, b)
    batch.add("fixed", 3, b)
    batch.remove("fixed", 3, b)  # net +1
    store.commit(batch, initialised=True)

    expected = {
        "items": [(5, a)] * 4 + [(7, a)],
        "pool": [(0, b), (0, b)],
        "fixed": [(3, b)],
    }
    for reopened in (False, True):
        if reopened:
            store = _reopen(store)
        recovered = store.recover()
        assert _sorted(dict(recovered.marking)) == expected
        assert recovered.clock_ms == 120
        assert recovered.initialised
        assert sorted(store.entries()) == sorted(
            (place, t, tok) for place, entries in expected.items() for t, tok in entries
        )
    assert store.incarnation == 2

    # Taking copies away lowers the multiplicity; the last copy removes the entry.
    batch = Batch(clock_ms=130)
    batch.remove("items", 5, a, n=3)
    batch.remove("items", 7, a)
    batch.remove("pool", 0, b, n=2)
    store.commit(batch)
    store = _reopen(store)
    assert _sorted(dict(store.recover().marking)) == {"items": [(5, a)], "fixed": [(3, b)]}
    assert store.statistics().commits == 0  # counted per incarnation

    # New entries and one more copy of a stored one in one batch: new entries go in at
    # once unless one of them exists already; then the whole batch goes one by one.
    batch = Batch(clock_ms=140)
    batch.add("items", 9, b)
    batch.add("items", 5, a)  # stored once already: now twice
    batch.add("items", 11, b)
    store.commit(batch)
    assert _sorted(dict(_reopen(store).recover().marking)) == {
        "items": [(5, a), (5, a), (9, b), (11, b)],
        "fixed": [(3, b)],
    }


def test_tuple_typed_fields_round_trip(open_store: Any) -> None:
    store = open_store()
    shapes = [
        Shape(("a", "b"), (1, "x"), ((1, 2), (), (3,)), 0.5, b"\x00\xff", True),
        Shape((), (0, ""), (), -1.25, b"", False),
        Shape(("a", "b"), (2, "y"), ((4,),), 2.0, b"z", False),
    ]
    batch = Batch(clock_ms=1)
    for i, shape in enumerate(shapes):
        batch.add("shapes", i, shape, n=i + 1)
    store.commit(batch)
    store = _reopen(store)
    recovered = sorted(store.recover().marking["shapes"])
    assert recovered == sorted((i, s) for i, s in enumerate(shapes) for _ in range(i + 1))
    for _time, token in recovered:
        assert type(token) is Shape
        assert type(token.path) is tuple and type(token.corner) is tuple
        assert all(type(row) is tuple for row in token.rows)


def test_token_with_a_long_field_round_trips(open_store: Any) -> None:
    """A token is data from users (a URL, a payload): its size is not LMDB's key limit."""
    store = open_store()
    url = "https://a.example/" + "x" * 1_000
    batch = Batch(clock_ms=1)
    batch.add("items", 0, Item(url, 1))  # a long partition key
    shape = Shape(("p",) * 300, (1, url), (), 0.0, b"\x01" * 2_000, True)
    batch.add("shapes", 0, shape)
    store.commit(batch)
    recovered = _reopen(store).recover()
    assert recovered.marking["items"] == [(0, Item(url, 1))]
    assert recovered.marking["shapes"] == [(0, shape)]


def test_long_client_id_round_trips(open_store: Any) -> None:
    store = open_store()
    client_id = "worker-" + "w" * 1_000
    batch = Batch(clock_ms=1)
    batch.clients[client_id] = (1, b"reply")
    store.commit(batch)
    assert dict(_reopen(store).recover().clients) == {client_id: (1, b"reply")}


def test_clock_and_client_table_round_trip(open_store: Any) -> None:
    store = open_store()
    batch = Batch(clock_ms=42)
    batch.clients["worker-1"] = (7, b"reply seven")
    batch.clients["client-\u00e9"] = (1, b"")
    store.commit(batch)
    batch = Batch(clock_ms=50)
    batch.clients["worker-1"] = (8, b"reply eight")  # a client's newest request wins
    store.commit(batch)
    recovered = _reopen(store).recover()
    assert recovered.clock_ms == 50
    assert dict(recovered.clients) == {"worker-1": (8, b"reply eight"), "client-\u00e9": (1, b"")}


def test_failed_commit_writes_nothing(open_store: Any) -> None:
    store = open_store()
    first = Batch(clock_ms=10)
    first.add("items", 0, Item("a", 1))
    store.commit(first)
    bad = Batch(clock_ms=20)
    bad.add("items", 0, Item("b", 2))
    bad.clients["c"] = (1, b"r")
    bad.remove("pool", 0, Item("nothing", 0))  # not there: a programmer error
    with pytest.raises(AssertionError, match="no stored entry"):
        store.commit(bad)
    recovered = store.recover()
    assert _sorted(dict(recovered.marking)) == {"items": [(0, Item("a", 1))]}
    assert recovered.clock_ms == 10
    assert dict(recovered.clients) == {}


@pytest.mark.parametrize("durability", list(Durability))
def test_both_durability_modes_commit_and_recover(open_store: Any, durability: Durability) -> None:
    store = open_store(durability=durability)
    # What each mode promises is LMDB's sync flags; check they are the ones asked for.
    flags = store._env.flags()
    assert flags["sync"] is flags["metasync"] is (durability is Durability.FSYNC)
    for i in range(3):
        batch = Batch(clock_ms=i)
        batch.add("items", i, Item("k", i))
        batch.clients["c"] = (i, b"r%d" % i)
        store.commit(batch)
    store = _reopen(store)
    recovered = store.recover()
    assert sorted(recovered.marking["items"]) == [(i, Item("k", i)) for i in range(3)]
    assert dict(recovered.clients) == {"c": (2, b"r2")}
    assert recovered.clock_ms == 2


# -- opening: incarnations, locks, other nets -------------------------------------------


def test_each_open_is_a_new_incarnation(open_store: Any) -> None:
    store = open_store()
    seen = [store.incarnation]
    for _ in range(3):
        store = _reopen(store)
        seen.append(store.incarnation)
    store.close()
    assert seen == [1, 2, 3, 4]


def test_second_open_in_the_same_process_is_refused(open_store: Any) -> None:
    store = open_store()
    with pytest.raises(StoreError, match="in use") as refused:
        Store(store.path, net=NET)
    assert f"pid {os.getpid()}" in str(refused.value)
    assert store.recover().initialised is False  # the holder is unaffected
    store.close()
    assert open_store(store.path).incarnation == 2  # closing released the lock


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from typing import NamedTuple
    from nets import Net, Place
    from shard.shell.store import Durability, Store, StoreError

    class Item(NamedTuple):
        key: str
        n: int

    net = Net("store_test", places=[Place("items", Item, key="key")], transitions=[])
    try:
        store = Store(Path(sys.argv[1]), net=net, durability=Durability.PROCESS)
    except StoreError as exc:
        print("refused:", exc, flush=True)
        sys.exit(3)
    print("holding", store.incarnation, flush=True)
    if sys.argv[2] == "hold":
        time.sleep(120)
    """
)


def _python(*args: str, **kwargs: Any) -> Any:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return [sys.executable, "-c", _HOLDER, *args], {"env": env, "text": True, **kwargs}


def test_second_process_on_the_same_directory_is_refused(open_store: Any) -> None:
    store = open_store()
    argv, options = _python(str(store.path), "exit")
    done = subprocess.run(
        argv, capture_output=True, timeout=SUBPROCESS_TIMEOUT_S, check=False, **options
    )
    assert done.returncode == 3, done.stderr
    assert "in use by another process" in done.stdout
    assert f"(pid {os.getpid()})" in done.stdout


def test_lock_dies_with_a_killed_holder(tmp_path: Path, open_store: Any) -> None:
    path = tmp_path / "data"
    argv, options = _python(str(path), "hold")
    holder = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options)
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()  # the child prints at once, or exits (EOF)
        assert line.strip() == "holding 1", holder.stderr.read() if holder.stderr else line
        with pytest.raises(StoreError, match=rf"in use by another process \(pid {holder.pid}\)"):
            Store(path, net=NET)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    assert holder.returncode == -signal.SIGKILL
    store = open_store(path)
    assert store.incarnation == 2


def test_store_of_another_net_is_refused_naming_both(open_store: Any) -> None:
    store = open_store()
    store.close()
    with pytest.raises(StoreError) as refused:
        Store(store.path, net=_net("other_net"))
    message = str(refused.value)
    assert "'store_test'" in message and "'other_net'" in message
    # The refusal took nothing: no incarnation was spent and the lock was released.
    assert open_store(store.path).incarnation == 2


def test_store_of_another_shard_is_refused_naming_both(open_store: Any) -> None:
    store = open_store(shard_id=1, shard_count=2)
    store.close()
    with pytest.raises(StoreError) as refused:
        Store(store.path, net=NET, shard_id=0, shard_count=2)
    assert "shard 1 of a 2-shard cluster, not shard 0 of 2" in str(refused.value)
    with pytest.raises(StoreError):
        Store(store.path, net=NET, shard_id=1, shard_count=3)
    assert open_store(store.path, shard_id=1, shard_count=2).incarnation == 2


def test_outbox_runs_lane_counters_inbox_marks_and_table_round_trip(open_store: Any) -> None:
    store = open_store(shard_id=1, shard_count=2)
    first = Batch(runs_added=[(7, 1, 2, b"ab"), (7, 3, 1, b"c"), (0x10000, 1, 1, b"p")])
    first.next_seqs.update({7: 4, 0x10000: 2})
    first.hwms[(0, 9)] = 41
    first.table, first.endpoints = b"table", ("tcp://127.0.0.1:1", "")
    store.commit(first)
    second = Batch(runs_removed=[(7, 1)])
    second.hwms[(0, 9)] = 42
    store.commit(second)
    recovered = _reopen(store, shard_id=1, shard_count=2).recover()
    assert recovered.runs == [(7, 3, 1, b"c"), (0x10000, 1, 1, b"p")]
    assert recovered.next_seqs == {7: 4, 0x10000: 2}
    assert recovered.hwms == {(0, 9): 42}
    assert (recovered.table, recovered.endpoints) == (b"table", ("tcp://127.0.0.1:1", ""))


# -- growth and bounds ----------------------------------------------------------------------


def test_map_grows_from_a_tiny_size(open_store: Any) -> None:
    map_size_bytes = 65536
    store = open_store(map_size_bytes=map_size_bytes)
    expected = []
    for round_ in range(10):
        batch = Batch(clock_ms=round_)
        for i in range(300):
            token = Item(f"key-{round_}-{i}-" + "x" * 40, i)
            batch.add("items", round_, token, n=1 + i % 3)
            expected += [(round_, token)] * (1 + i % 3)
        store.commit(batch)
    stats = store.statistics()
    assert stats.map_resizes > 0
    assert stats.map_size_bytes > map_size_bytes
    assert stats.commits == 10
    assert sorted(store.recover().marking["items"]) == sorted(expected)
    # Reopened with the tiny size again: LMDB takes the file's size, writes still work.
    store = _reopen(store, map_size_bytes=map_size_bytes)
    assert sorted(store.recover().marking["items"]) == sorted(expected)
    batch = Batch(clock_ms=99)
    batch.add("pool", 0, Item("one more", 0))
    store.commit(batch)
    assert store.recover().marking["pool"] == [(0, Item("one more", 0))]


def test_client_table_evicts_the_least_recently_used(
    open_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard.shell.store, "CLIENTS_MAX", 5)
    store = open_store()
    for i in range(5):
        batch = Batch(clock_ms=i)
        batch.clients[f"c{i}"] = (1, b"r")
        store.commit(batch)
    batch = Batch(clock_ms=5)
    batch.clients["c0"] = (2, b"r")  # c0 is used again: c1 is now the least recent
    store.commit(batch)
    for i in range(5, 9):
        batch = Batch(clock_ms=i + 1)
        batch.clients[f"c{i}"] = (1, b"r")
        store.commit(batch)
        assert len(store.recover().clients) <= 5
    assert sorted(store.recover().clients) == ["c0", "c5", "c6", "c7", "c8"]
    assert store.recover().clients["c0"] == (2, b"r")


def test_client_table_eviction_is_least_recently_used_across_restarts(
    open_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client used after a restart is more recent than one idle since before it."""
    monkeypatch.setattr(shard.shell.store, "CLIENTS_MAX", 3)
    store = open_store()
    clock_ms = 1_000  # the shard's clock only moves forward, across restarts too
    for name in ("old-1", "old-2", "old-3"):  # the first incarnation's last uses
        clock_ms += 10
        batch = Batch(clock_ms=clock_ms)
        batch.clients[name] = (1, b"r")
        store.commit(batch)
    store = _reopen(store)
    for name in ("new-1", "new-2"):  # used after the restart, so the most recent
        clock_ms += 10
        batch = Batch(clock_ms=clock_ms)
        batch.clients[name] = (1, b"r")
        store.commit(batch)
    kept = sorted(store.recover().clients)
    assert "new-1" in kept, f"the most recently used client was evicted; kept {kept}"
    assert kept == ["new-1", "new-2", "old-3"]


# -- a full disk ----------------------------------------------------------------------------

TMPFS_BYTES = 2 * 1024 * 1024
BALLAST_BYTES = 256 * 1024
BATCHES_MAX = 10_000  # far more than 2 MB can hold: the loop always ends on the error


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs under ``tmp_path`` (root and a working ``mount`` only)."""
    if os.geteuid() != 0:
        pytest.skip("the full-disk test mounts a tmpfs, which needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("the full-disk test needs mount(8) and umount(8)")
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], timeout=SUBPROCESS_TIMEOUT_S, check=True)


@pytest.mark.serial
def test_full_disk_stops_writes_and_keeps_the_committed_state(tiny_tmpfs: Path) -> None:
    # Ballast the operator can delete to make room for the restart.
    ballast = tiny_tmpfs / "ballast"
    ballast.write_bytes(b"\0" * BALLAST_BYTES)
    path = tiny_tmpfs / "data"
    store = Store(path, net=NET, durability=Durability.FSYNC, map_size_bytes=64 * 1024 * 1024)
    try:
        committed: list[tuple[int, Token]] = []
        failure: StoreError | None = None
        for round_ in range(BATCHES_MAX):
            batch = Batch(clock_ms=round_)
            tokens = [Item(f"k{round_}-{i}", i) for i in range(50)]
            for token in tokens:
                batch.add("items", round_, token)
            batch.clients["c"] = (round_, b"x" * 100)
            try:
                store.commit(batch)
            except StoreError as exc:
                failure = exc
                break
            committed += [(round_, token) for token in tokens]
        assert failure is not None, f"{BATCHES_MAX} batches fit on a {TMPFS_BYTES}-byte disk"
        message = str(failure).lower()
        assert "disk" in message and ("space" in message or "full" in message), message
        assert committed, "the disk was full before the first commit; shrink the ballast"
        last_round = committed[-1][0]

        # The failed commit left nothing behind, in this process...
        recovered = store.recover()
        assert sorted(recovered.marking["items"]) == sorted(committed)
        assert recovered.clock_ms == last_round
        assert dict(recovered.clients)["c"][0] == last_round
        store.close()

        # ...and on disk, once space is freed and the store is opened again.
        ballast.unlink()
        store = Store(path, net=NET, durability=Durability.FSYNC)
        recovered = store.recover()
        assert store.incarnation == 2
        assert sorted(recovered.marking["items"]) == sorted(committed)
        assert recovered.clock_ms == last_round
        assert dict(recovered.clients) == {"c": (last_round, b"x" * 100)}
    finally:
        store.close()
