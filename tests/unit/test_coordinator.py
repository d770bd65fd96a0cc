"""The router's move coordinator (pure): scaling, orders and answers, commits, fencing.

Shards are simulated by :class:`FakeShards`, which answers each order from a durable
slot phase (router.moves.SLOT_TRANSITIONS), may lose answers, and the coordinator may
be "restarted" (encoded and decoded) between any two steps: every scale must still end
with the slots spread, every move done, and each slot moved by exactly one commit.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from router.coordinator import RETIRE_STABLE_MS, Coordinator, CoordinatorError
from router.moves import SlotPhase, shipment_digest, slot_step
from router.slots import SLOT_COUNT
from router.table import PartitionTable

SHIPMENT = shipment_digest([("targets", 1, ("a", 1))], {0: 3})


class FakeShards:
    """Shards that answer orders from their durable slot phases (lossy if asked)."""

    def __init__(self, table: PartitionTable, rng: random.Random, *, loss: float = 0.0) -> None:
        self.phases: dict[tuple[int, int], SlotPhase] = {
            (owner, slot): SlotPhase.OWNED for slot, owner in enumerate(table.owners)
        }
        self.rng = rng
        self.loss = loss
        self.pending: dict[int, list[tuple[int, str, int, bytes]]] = {}

    def phase(self, shard: int, slot: int) -> SlotPhase:
        return self.phases.get((shard, slot), SlotPhase.ABSENT)

    def take(
        self, shard: int, orders: tuple[tuple[int, str, int, int, int, int, bytes, int], ...]
    ) -> None:
        for move_id, kind, slot, _source, _target, _count, _digest, _epoch in orders:
            phase = self.phase(shard, slot)
            if phase is SlotPhase.ACTIVE and kind == "seal":
                phase = SlotPhase.OWNED  # an active slot is an owned one, moving on again
            phase, event = slot_step(phase, kind)
            self.phases[(shard, slot)] = phase
            count, digest = SHIPMENT if event.value in ("sealed", "staged") else (-1, b"")
            if self.rng.random() >= self.loss:
                self.pending.setdefault(shard, []).append((move_id, event.value, count, digest))

    def answers(self, shard: int) -> list[tuple[int, str, int, bytes]]:
        return self.pending.pop(shard, [])


def _drive(
    coordinator: Coordinator,
    shards: FakeShards,
    *,
    alive: set[int],
    rng: random.Random,
    restart_p: float = 0.0,
    # Retiring a shard needs its condition to hold for RETIRE_STABLE_MS (20 rounds) with
    # no router restart in between (the timer is not persisted: a restarted router looks
    # again), which at restart_p = 0.2 takes about 430 rounds on average, with a long tail.
    rounds_max: int = 20_000,
) -> Coordinator:
    now_ms = 0
    for _ in range(rounds_max):
        now_ms += 50
        for shard in sorted(alive):
            coordinator.report(
                shard,
                shards.answers(shard),
                now_ms=now_ms,
                outbox_tokens=0,
                pool_tokens=0,
                owed=(),
                firings_total={},
            )
            shards.take(shard, coordinator.orders_for(shard))
        coordinator.tick(now_ms, alive)
        if rng.random() < restart_p:
            coordinator = Coordinator.decode(coordinator.table, coordinator.encode())
        if not coordinator.moves and coordinator.table.shard_count == coordinator.members:
            counts = Counter(coordinator.table.owners)
            if (
                max(counts.values()) - min(counts.values()) <= 1
                and len(counts) == coordinator.members
            ):
                return coordinator
    raise AssertionError(f"not finished: {coordinator.summary()}")


def test_scaling_out_waits_for_the_new_shard_then_spreads_the_slots() -> None:
    coordinator = Coordinator(PartitionTable.initial(2))
    coordinator.scale(3)
    assert (coordinator.table.shard_count, coordinator.table.epoch) == (3, 2)
    coordinator.tick(0, {0, 1})
    assert not coordinator.moves, "no move before shard 2 is alive"
    coordinator.tick(0, {0, 1, 2})
    assert len(coordinator.moves) == 64
    seals = coordinator.orders_for(0) + coordinator.orders_for(1)
    assert {order[1] for order in seals} == {"seal"}
    assert all(order[4] == 2 for order in seals), "every slot goes to the new shard"


@pytest.mark.parametrize(("loss", "restart_p"), [(0.0, 0.0), (0.3, 0.0), (0.3, 0.2)])
def test_a_scale_out_and_in_finishes_through_lost_answers_and_router_restarts(
    loss: float, restart_p: float, seed: int
) -> None:
    rng = random.Random(seed)
    table = PartitionTable.initial(2)
    shards = FakeShards(table, rng, loss=loss)
    coordinator = Coordinator(table)
    coordinator.scale(3)
    coordinator = _drive(coordinator, shards, alive={0, 1, 2}, rng=rng, restart_p=restart_p)
    owners = Counter(coordinator.table.owners)
    assert owners == {0: 341, 1: 342, 2: 341}, f"seed {seed}"
    for slot, owner in enumerate(coordinator.table.owners):
        assert shards.phase(owner, slot) in (SlotPhase.OWNED, SlotPhase.ACTIVE), (seed, slot)
        others = [k for k in range(3) if k != owner]
        assert all(shards.phase(k, slot) is SlotPhase.ABSENT for k in others), (seed, slot)
    assert coordinator.counters["moves_done"] == 341
    coordinator.scale(2)
    coordinator = _drive(coordinator, shards, alive={0, 1, 2}, rng=rng, restart_p=restart_p)
    assert coordinator.table.shard_count == 2, "shard 2 retired"
    assert Counter(coordinator.table.owners) == {0: 512, 1: 512}


def test_repeated_and_misdirected_answers_change_nothing() -> None:
    coordinator = Coordinator(PartitionTable.initial(2))
    coordinator.scale(3)
    coordinator.tick(0, {0, 1, 2})
    move = min(coordinator.moves.values(), key=lambda m: m.move_id)
    sealed = (move.move_id, "sealed", *SHIPMENT)
    report = {"now_ms": 1, "outbox_tokens": 0, "pool_tokens": 0, "owed": (), "firings_total": {}}
    coordinator.report(move.target, [sealed], **report)  # the target cannot seal
    assert coordinator.counters["answers_misdirected"] == 1
    coordinator.report(move.source, [sealed], **report)
    coordinator.report(move.target, [(move.move_id, "staged", *SHIPMENT)], **report)
    epoch = coordinator.table.epoch
    assert coordinator.moves[move.move_id].state.value == "activating"
    assert coordinator.table.owners[move.slot] == move.target
    coordinator.report(move.source, [sealed, sealed], **report)  # late repeats
    assert coordinator.moves[move.move_id].state.value == "activating"
    assert coordinator.table.epoch == epoch
    assert coordinator.counters["answers_stale"] == 2
    coordinator.report(move.source, [(99_999, "forgotten", -1, b"")], **report)
    assert coordinator.counters["answers_stale"] == 3


def test_a_shipment_that_disagrees_aborts_the_move_and_the_slot_is_moved_again() -> None:
    coordinator = Coordinator(PartitionTable.initial(2), in_flight_max=1)
    coordinator.scale(3)
    coordinator.tick(0, {0, 1, 2})
    (move,) = coordinator.moves.values()
    report = {"now_ms": 1, "outbox_tokens": 0, "pool_tokens": 0, "owed": (), "firings_total": {}}
    coordinator.report(move.source, [(move.move_id, "sealed", *SHIPMENT)], **report)
    coordinator.report(move.target, [(move.move_id, "staged", 1, b"other")], **report)
    assert coordinator.moves[move.move_id].state.value == "aborting"
    assert coordinator.table.owners[move.slot] == move.source, "no commit"
    assert [o[1] for o in coordinator.orders_for(move.source)] == ["unseal"]
    assert [o[1] for o in coordinator.orders_for(move.target)] == ["discard"]
    coordinator.report(move.source, [(move.move_id, "unsealed", -1, b"")], **report)
    coordinator.report(move.target, [(move.move_id, "discarded", -1, b"")], **report)
    assert move.move_id not in coordinator.moves
    assert coordinator.counters["moves_aborted"] == 1
    coordinator.tick(2, {0, 1, 2})
    (again,) = coordinator.moves.values()
    assert again.slot == move.slot and again.move_id > move.move_id


def test_a_new_incarnation_gets_its_slots_back_at_a_new_epoch() -> None:
    coordinator = Coordinator(PartitionTable.initial(2))
    assert coordinator.incarnation(1, 1) == 1, "a first incarnation has nothing to fence"
    assert coordinator.table.epoch == 1
    fence = coordinator.incarnation(1, 2)
    assert fence == coordinator.table.epoch == 2
    assert coordinator.incarnation(1, 2) == 2, "the same incarnation again: no new epoch"
    table = coordinator.table
    assert all(
        table.slot_epochs[s] == (2 if table.owners[s] == 1 else 1) for s in range(SLOT_COUNT)
    )
    assert coordinator.fence_epoch(1, 2) == 2
    assert coordinator.fence_epoch(1, 1) == 0, "an old incarnation is never fenced in"
    restored = Coordinator.decode(coordinator.table, coordinator.encode())
    assert restored.incarnation(1, 2) == 2


def test_a_leaving_shard_retires_only_once_it_owes_and_holds_nothing() -> None:
    coordinator = Coordinator(PartitionTable.initial(2))
    coordinator.scale(1)
    rng = random.Random(0)
    shards = FakeShards(coordinator.table, rng)
    # Moves only: no retire while shard 1 still reports pool tokens.
    now_ms = 0
    for _ in range(200):
        now_ms += 50
        for shard in (0, 1):
            coordinator.report(
                shard,
                shards.answers(shard),
                now_ms=now_ms,
                outbox_tokens=0,
                pool_tokens=3 if shard == 1 else 0,
                owed=(),
                firings_total={},
            )
            shards.take(shard, coordinator.orders_for(shard))
        coordinator.tick(now_ms, {0, 1})
    assert set(coordinator.table.owners) == {0}
    assert coordinator.table.shard_count == 2, "it still holds pool tokens"
    for owed in ((1,), ()):  # shard 0 owes it a token first, then nothing
        start_ms = now_ms
        while now_ms - start_ms <= RETIRE_STABLE_MS + 100:
            now_ms += 50
            coordinator.report(
                0, [], now_ms=now_ms, outbox_tokens=1, pool_tokens=0, owed=owed, firings_total={}
            )
            coordinator.report(
                1, [], now_ms=now_ms, outbox_tokens=0, pool_tokens=0, owed=(), firings_total={}
            )
            coordinator.tick(now_ms, {0, 1})
        assert coordinator.table.shard_count == (2 if owed else 1)


def test_a_shard_count_out_of_range_is_refused() -> None:
    coordinator = Coordinator(PartitionTable.initial(2))
    with pytest.raises(CoordinatorError, match=r"shard count 0 is not in 1\.\.256"):
        coordinator.scale(0)
