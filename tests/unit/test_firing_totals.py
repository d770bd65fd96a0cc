"""Firing totals and tokens in flight: persisted with the batch, kept for retired shards,
shown whole (docs/operations.md, "What the totals mean").

The store part runs on real LMDB files under ``tmp_path``: a committed batch's firings
count, a failed commit's do not, a reopened store gives them back, and stores of schema
6 and 5 (built here by taking the newer keys out of a real store) are upgraded. The
rest is pure: two shard cores handing tokens over, the router's coordinator retiring a
shard, and the figures `cpn status` and `cpn marking` print.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import lmdb
import pytest

from cluster.totals import describe_marking, describe_totals, firing_totals, marking_view
from nets.codec import pack, unpack
from router.coordinator import RETIRE_STABLE_MS, Coordinator
from router.table import PartitionTable
from router.wire import Counts, HandoffAck, Put, QueryCounts, Redirect, decode, encode
from shard.batch import Batch, Recovered
from shard.shell.store import SCHEMA_VERSION, Durability, Store, StoreError
from tests.nets_for_tests import hopper, hopping
from tests.unit.test_shard_core import T0_MS, Unbounded, _core, _request

NET = hopping()


def _open(path: Path) -> Store:
    return Store(path, net=NET, durability=Durability.PROCESS)


def _commit_firings(store: Store, **fired: int) -> None:
    batch = Batch(firings=Counter(fired), clock_ms=T0_MS)
    store.commit(batch)


def test_committed_firings_add_up_across_reopens(tmp_path: Path) -> None:
    store = _open(tmp_path / "data")
    first = store.recover()
    assert first.firings_total == {}
    assert first.firings_since == "created" and first.firings_since_ms > 0
    _commit_firings(store, hop=3, land=1)
    _commit_firings(store, hop=2)
    store.close()
    store = _open(tmp_path / "data")
    try:
        again = store.recover()
        assert again.firings_total == {"hop": 5, "land": 1}
        assert again.firings_since_ms == first.firings_since_ms  # a restart is no new start
    finally:
        store.close()


def test_a_failed_commit_counts_none_of_its_firings(tmp_path: Path) -> None:
    store = _open(tmp_path / "data")
    try:
        _commit_firings(store, hop=4)
        bad = Batch(firings=Counter(hop=100), clock_ms=T0_MS)
        bad.add("hops", -1, hopper(1, 3))  # a time the store refuses, inside the write
        with pytest.raises(StoreError, match="out of range"):
            store.commit(bad)
        assert store.recover().firings_total == {"hop": 4}
    finally:
        store.close()


def _downgrade(path: Path, schema: int) -> None:
    """Make a store what schema ``schema`` wrote: 6 lacks the firing totals, 5 also the
    per-place counts."""
    env = lmdb.open(str(path / "lmdb"), max_dbs=10, subdir=True)
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn)
        newer = (b"fired:", b"firings_since") + ((b"count:",) if schema < 6 else ())
        keys = [bytes(k) for k, _v in txn.cursor(db=meta) if bytes(k).startswith(newer)]
        assert any(k.startswith(b"fired:") for k in keys), "the store keeps totals"
        for key in keys:
            txn.delete(key, db=meta)
        txn.put(b"schema", str(schema).encode(), db=meta)
    env.close()


@pytest.mark.parametrize("schema", [6, 5])
def test_an_older_store_is_upgraded_and_counts_from_then(tmp_path: Path, schema: int) -> None:
    store = _open(tmp_path / "data")
    batch = Batch(firings=Counter(hop=7), clock_ms=T0_MS)
    batch.add("arrived", T0_MS, hopper(1, 0))
    store.commit(batch)
    store.catch_up(1 << 62)  # stores before schema 8 kept no batch log
    store.close()
    _downgrade(tmp_path / "data", schema)
    store = _open(tmp_path / "data")
    try:
        recovered = store.recover(frozenset({"arrived"}))
        assert recovered.firings_total == {}  # schema 6 kept none: they count from now
        assert recovered.firings_since == "upgraded from schema 6"
        assert recovered.deferred_counts == {"arrived": 1}  # 5's step ran too
        _commit_firings(store, hop=1)
        assert store.recover().firings_total == {"hop": 1}
    finally:
        if recovered.deferred is not None:
            recovered.deferred.close()
        store.close()
    env = lmdb.open(str(tmp_path / "data" / "lmdb"), max_dbs=10, subdir=True, readonly=True)
    with env.begin() as txn:
        assert txn.get(b"schema", db=env.open_db(b"meta", txn=txn)) == str(SCHEMA_VERSION).encode()
    env.close()


def test_a_store_of_an_unknown_schema_is_refused(tmp_path: Path) -> None:
    _open(tmp_path / "data").close()
    _downgrade_schema_only(tmp_path / "data", 4)
    with pytest.raises(StoreError, match="has store schema 4, not 8"):
        _open(tmp_path / "data")


def _downgrade_schema_only(path: Path, schema: int) -> None:
    env = lmdb.open(str(path / "lmdb"), max_dbs=10, subdir=True)
    with env.begin(write=True) as txn:
        txn.put(b"schema", str(schema).encode(), db=env.open_db(b"meta", txn=txn))
    env.close()


def test_the_core_counts_a_batch_once_committed_and_never_a_failed_one() -> None:
    core = _core(hopping())
    core.take_batch()
    core.committed(T0_MS)
    _request(core, T0_MS, Put("client", 1, "hops", (tuple(hopper(1, 3)),), 0))
    core.fire(T0_MS, Unbounded())
    assert core.statistics()["firings_total"] == {}  # fired, not yet committed
    core.take_batch()
    core.committed(T0_MS)
    assert core.statistics()["firings_total"] == {"hop": 3, "land": 1}
    _request(core, T0_MS + 1, Put("client", 2, "hops", (tuple(hopper(2, 2)),), 0))
    core.fire(T0_MS + 1, Unbounded())
    core.take_batch()  # its commit fails: the store still holds the totals of before
    stored = Recovered(
        marking={}, clock_ms=T0_MS, clients={}, initialised=True, firings_total={"hop": 3}
    )
    again = core.after_failed_commit(stored, "disk full", T0_MS + 1)
    assert again.statistics()["firings_total"] == {"hop": 3}
    assert again.recorder.committed_firings() == {"hop": 3}


def test_tokens_handed_off_show_in_flight_until_acknowledged() -> None:
    left, right = _core(hopping(), 0, 2), _core(hopping(), 1, 2)
    for core in (left, right):
        core.take_batch()
        core.committed(T0_MS)
    for index in range(20):
        put = Put("client", index + 1, "hops", (tuple(hopper(index, 1)),), 0)
        for core in (left, right):
            if not isinstance(_request(core, T0_MS, put), Redirect):
                break
    for core in (left, right):
        core.fire(T0_MS, Unbounded())
        core.take_batch()
        core.committed(T0_MS)
    flying = left.exchange.in_flight().get("hops", 0) + right.exchange.in_flight().get("hops", 0)
    assert flying > 0, "some hop crossed to the other shard"
    counts = {k: _request(core, T0_MS, QueryCounts()) for k, core in enumerate((left, right))}
    view = marking_view(counts, 2)
    # Every token is in a place or in flight (each hopper is in hops or arrived).
    assert view.counts["hops"] + view.counts["arrived"] + view.in_flight["hops"] == 20
    for sender, receiver in ((left, right), (right, left)):
        for send in sender.sends(T0_MS):
            envelope = decode(send.frame)
            if send.target != receiver.setup.shard_id:
                continue
            ack = receiver.handle(T0_MS, envelope)
            assert isinstance(ack, HandoffAck)
            receiver.take_batch()
            receiver.committed(T0_MS)
            sender.peer_message(
                T0_MS, receiver.setup.shard_id, decode(encode(ack, message_id=0, incarnation=1))
            )
    assert left.exchange.in_flight() == right.exchange.in_flight() == {}


def test_the_router_keeps_a_retired_shards_totals_until_it_comes_back() -> None:
    coordinator = Coordinator(PartitionTable.initial(2).resized(3), members=2)
    reports = {0: {"hop": 10}, 1: {"hop": 20}, 2: {"hop": 5, "land": 1}}
    for now_ms in (0, RETIRE_STABLE_MS + 1):
        for shard_id, totals in reports.items():
            coordinator.report(
                shard_id, (), now_ms=now_ms, outbox_tokens=0, pool_tokens=0, owed=(),
                firings_total=totals,
            )  # fmt: skip
        coordinator.tick(now_ms, alive={0, 1, 2})
    assert coordinator.table.shard_count == 2, "shard 2 retired"
    assert coordinator.retired_firings == {2: {"hop": 5, "land": 1}}
    restarted = Coordinator.decode(coordinator.table, coordinator.encode())
    assert restarted.retired_firings == {2: {"hop": 5, "land": 1}}
    assert restarted.summary()["firings_retired"] == [[2, {"hop": 5, "land": 1}]]
    restarted.scale(3)  # back, on its own store: it reports its totals itself again
    assert restarted.retired_firings == {}


def test_a_router_record_from_before_the_totals_decodes() -> None:
    table = PartitionTable.initial(2)
    fields = unpack(Coordinator(table).encode())
    old = Coordinator.decode(table, pack(fields[:7]))  # the 7 fields an older router wrote
    assert old.retired_firings == {}


def test_status_adds_retired_shards_and_names_the_silent_ones() -> None:
    shards = {
        0: {"firings_total": {"hop": 10}, "firings_since_ms": 2_000, "firings_since": "created"},
        1: {
            "firings_total": {"hop": 20, "land": 2},
            "firings_since_ms": 1_000,
            "firings_since": "upgraded from schema 6",
        },
    }
    router = {"firings_retired": [[3, {"hop": 5}], [1, {"hop": 99}]]}
    totals = firing_totals(3, shards, router)
    # Shard 1 is back in the cluster: the router's old record of it does not count.
    assert totals.firings == {"hop": 35, "land": 2}
    assert (totals.since_ms, totals.upgraded, totals.retired, totals.missing) == (
        1_000,
        (1,),
        (3,),
        (2,),
    )
    text = "\n".join(describe_totals(totals))
    assert "counted since 1970-01-01 00:00:01 UTC" in text
    assert "including retired shards 3" in text
    assert "shards 1 count only since their store was upgraded" in text
    assert "WITHOUT shards 2" in text


def test_marking_shows_in_flight_beside_each_place_and_recovering_shards() -> None:
    replies = {
        0: Counts({"hops": 526, "arrived": 0}, T0_MS, {"hops": 2_000}, 0),
        2: Counts({"hops": 0, "arrived": 0}, T0_MS, {"hops": 474}, 1_200),
    }
    view = marking_view(replies, 3)
    assert view.counts == {"hops": 526, "arrived": 0}
    assert view.in_flight == {"hops": 2_474}
    lines = describe_marking(view)
    assert lines[1].split() == ["place", "tokens", "in", "flight"]
    assert lines[2].split() == ["hops", "526", "2,474"]
    assert lines[4].split() == ["(all)", "526", "2,474"]
    text = "\n".join(lines)
    assert "shard 2 is recovering: 1,200 tokens of deferred places still to load" in text
    assert "WITHOUT shards 1" in text
    # The statistics carry the same figures (cpn status reads those).
    same = marking_view({0: {"tokens": {"hops": 1}, "in_flight": {"hops": 2}}}, 1)
    assert (same.counts, same.in_flight, same.missing) == ({"hops": 1}, {"hops": 2}, ())
