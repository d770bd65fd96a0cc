"""The partition table: spread, epochs, pool lanes, encoding, and every TableError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nets.codec import pack
from router.slots import SLOT_COUNT
from router.table import (
    POOL_LANE_BASE,
    SHARDS_MAX,
    PartitionTable,
    TableError,
    is_pool_lane,
    pool_lane,
)

THREE = PartitionTable.initial(3)


@pytest.mark.parametrize("shard_count", [1, 2, 3, 7, SHARDS_MAX])
def test_initial_spreads_slots_evenly_at_epoch_1(shard_count: int) -> None:
    table = PartitionTable.initial(shard_count)
    assert (table.epoch, table.shard_count) == (1, shard_count)
    assert table.owners == tuple(slot % shard_count for slot in range(SLOT_COUNT))
    assert set(table.slot_epochs) == {1}
    counts = table.slot_counts()
    assert sorted(counts) == list(range(shard_count))
    assert sum(counts.values()) == SLOT_COUNT
    assert max(counts.values()) - min(counts.values()) <= 1
    for shard in range(shard_count):
        assert table.slots_of(shard) == list(range(shard, SLOT_COUNT, shard_count))


def test_slot_counts_names_a_shard_that_owns_nothing() -> None:
    emptied = THREE.assign(dict.fromkeys(THREE.slots_of(2), 0))
    assert emptied.slot_counts() == {0: 683, 1: 341, 2: 0}
    assert emptied.slots_of(2) == []


def test_assign_bumps_the_epoch_and_only_the_changed_slots_epochs() -> None:
    # Slot 4 belongs to shard 1 and moves; slot 5 "moves" to its own owner, shard 2.
    moved = THREE.assign({4: 0, 5: 2})
    assert moved.epoch == 2
    assert (moved.owner(4), moved.lane_epoch(4)) == (0, 2)
    assert (moved.owner(5), moved.lane_epoch(5)) == (2, 1)
    changed = [s for s in range(SLOT_COUNT) if moved.owners[s] != THREE.owners[s]]
    assert changed == [4]
    assert [s for s in range(SLOT_COUNT) if moved.slot_epochs[s] != 1] == [4]
    # The table is frozen: the original is untouched.
    assert (THREE.epoch, THREE.owner(4), THREE.lane_epoch(4)) == (1, 1, 1)


def test_a_slot_remembers_the_epoch_of_its_last_move() -> None:
    table = THREE.assign({4: 0}).assign({7: 0}).assign({})
    assert table.epoch == 4  # an empty change still makes a new epoch
    assert (table.lane_epoch(4), table.lane_epoch(7), table.lane_epoch(8)) == (2, 3, 1)
    back = table.assign({4: 1})
    assert (back.owner(4), back.lane_epoch(4)) == (1, 5)


def test_assign_can_grow_the_cluster() -> None:
    grown = THREE.assign({9: 3, 10: 3}, shard_count=4)
    assert grown.shard_count == 4
    assert grown.slots_of(3) == [9, 10]
    assert grown.slot_counts()[3] == 2


@pytest.mark.parametrize("shard", [0, 2, SHARDS_MAX - 1])
def test_pool_lanes_belong_to_their_shard_forever(shard: int) -> None:
    lane = pool_lane(shard)
    assert lane == POOL_LANE_BASE + shard
    assert is_pool_lane(lane)
    moved = PartitionTable.initial(SHARDS_MAX).assign({0: 1}).assign({0: 2})
    for table in (PartitionTable.initial(SHARDS_MAX), moved):
        assert (table.owner(lane), table.lane_epoch(lane)) == (shard, 1)


def test_slots_are_not_pool_lanes() -> None:
    assert not is_pool_lane(0)
    assert not is_pool_lane(SLOT_COUNT - 1)


@pytest.mark.parametrize(
    "table",
    [THREE, THREE.assign({4: 0}).assign({5: 1}), PartitionTable.initial(1)],
    ids=["initial", "moved", "single"],
)
def test_encode_decode_round_trip(table: PartitionTable) -> None:
    decoded = PartitionTable.decode(table.encode())
    assert decoded == table
    assert type(decoded.owners) is tuple
    fields = (table.epoch, table.shard_count, table.owners, table.slot_epochs)
    assert PartitionTable.from_fields(*fields) == table


@settings(max_examples=50)
@given(st.lists(st.dictionaries(st.integers(0, SLOT_COUNT - 1), st.integers(0, 4)), max_size=4))
def test_any_sequence_of_moves_round_trips(changes: list[dict[int, int]]) -> None:
    table = PartitionTable.initial(5)
    for moves in changes:
        previous, table = table, table.assign(moves)
        assert table.epoch == previous.epoch + 1
        for slot in range(SLOT_COUNT):
            moved = table.owners[slot] != previous.owners[slot]
            assert table.slot_epochs[slot] == (table.epoch if moved else previous.slot_epochs[slot])
    assert PartitionTable.decode(table.encode()) == table


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_decoding_garbage_raises_table_error_only(data: bytes) -> None:
    try:
        table = PartitionTable.decode(data)
    except TableError:
        return
    assert PartitionTable.decode(table.encode()) == table


# -- every TableError ---------------------------------------------------------------------

OWNERS = THREE.owners
EPOCHS = THREE.slot_epochs


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((1, 3, OWNERS[:-1], EPOCHS), "maps 1024 slots, got 1023 owners"),
        ((1, 3, OWNERS, (*EPOCHS, 1)), "1025 slot epochs"),
        ((1, 0, OWNERS, EPOCHS), "shard count 0 is not in 1..256"),
        ((1, SHARDS_MAX + 1, OWNERS, EPOCHS), "shard count 257"),
        ((0, 3, OWNERS, EPOCHS), "epoch 0 is not positive"),
        ((1, 2, OWNERS, EPOCHS), "slot 2 is owned by shard 2, not one of 0..1"),
        ((1, 3, (-1, *OWNERS[1:]), EPOCHS), "slot 0 is owned by shard -1"),
        ((1, 3, OWNERS, (1, 2, *EPOCHS[2:])), "slot 1 changed owner at epoch 2, after"),
        ((1, 3, OWNERS, (0, *EPOCHS[1:])), "slot 0 changed owner at epoch 0"),
    ],
)
def test_a_malformed_table_is_refused(fields: tuple[object, ...], message: str) -> None:
    with pytest.raises(TableError, match=message):
        PartitionTable.from_fields(*fields)  # type: ignore[arg-type]
    with pytest.raises(TableError, match="not a partition table"):
        PartitionTable.decode(pack(fields))


@pytest.mark.parametrize("shard_count", [0, -1, SHARDS_MAX + 1])
def test_initial_refuses_a_shard_count_out_of_range(shard_count: int) -> None:
    with pytest.raises(TableError, match=f"shard count {shard_count} is not in 1..256"):
        PartitionTable.initial(shard_count)


@pytest.mark.parametrize(
    ("moves", "shard_count", "message"),
    [
        ({SLOT_COUNT: 0}, None, "slot 1024 is not in 0..1023"),
        ({-1: 0}, None, "slot -1 is not in 0..1023"),
        ({4: 3}, None, "slot 4 is owned by shard 3, not one of 0..2"),
        ({}, 2, "slot 2 is owned by shard 2, not one of 0..1"),  # shrinking leaves orphans
        ({}, 0, "shard count 0 is not in 1..256"),
    ],
)
def test_assign_refuses_a_bad_change(
    moves: dict[int, int], shard_count: int | None, message: str
) -> None:
    with pytest.raises(TableError, match=message):
        THREE.assign(moves, shard_count=shard_count)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never valid msgpack
        pack("a table"),
        pack((1, 3, OWNERS)),
        pack((1, 3, 7, EPOCHS)),
        pack(("1", 3, OWNERS, EPOCHS)),
        pack((1, 3, ("x",) * SLOT_COUNT, EPOCHS)),
        pack((1, 3, (None,) * SLOT_COUNT, EPOCHS)),
        THREE.encode() + b"\x00",  # trailing bytes
    ],
    ids=lambda data: repr(data[:12]),
)
def test_decode_refuses_what_is_not_a_table(data: bytes) -> None:
    with pytest.raises(TableError, match="not a partition table"):
        PartitionTable.decode(data)


def test_refencing_moves_only_the_shards_slots_to_a_new_epoch() -> None:
    fenced = THREE.refenced(1)
    assert fenced.epoch == THREE.epoch + 1
    assert fenced.owners == THREE.owners
    for slot in range(SLOT_COUNT):
        expected = fenced.epoch if THREE.owners[slot] == 1 else THREE.slot_epochs[slot]
        assert fenced.slot_epochs[slot] == expected


def test_resizing_keeps_the_owners_and_refuses_to_drop_an_owner() -> None:
    grown = THREE.resized(4)
    assert (grown.epoch, grown.shard_count, grown.owners) == (2, 4, THREE.owners)
    assert grown.slot_counts()[3] == 0
    with pytest.raises(TableError, match=r"owned by shard 2, not one of 0\.\.1"):
        THREE.resized(2)
