"""The slot-move machine: its tables, every fault point, aborts, and the move planner."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.handoff import ProtocolError
from router.moves import (
    ABORTABLE,
    MOVE_TRANSITIONS,
    SLOT_TRANSITIONS,
    Move,
    MoveEvent,
    MoveState,
    Request,
    SlotPhase,
    plan_moves,
    requests_for,
    shipment_digest,
    slot_step,
    step,
)
from router.slots import SLOT_COUNT
from router.table import PartitionTable

TOKENS = [("targets", 5, ("a.example", i)) for i in range(4)]
HWMS = {0: 7, 2: 3}
COUNT, DIGEST = shipment_digest(TOKENS, HWMS)


def _move(state: MoveState = MoveState.PLANNED) -> Move:
    return replace(Move(1, 17, source=0, target=1), state=state, count=COUNT, digest=DIGEST)


# -- the tables ---------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "event"), list(itertools.product(MoveState, MoveEvent)))
def test_every_state_event_pair_goes_where_the_table_says_or_raises(
    state: MoveState, event: MoveEvent
) -> None:
    move = _move(state)
    expected = MOVE_TRANSITIONS.get((state, event))
    if expected is None:
        with pytest.raises(ProtocolError, match=f"{event.value} is not allowed in state"):
            step(move, event, count=COUNT, digest=DIGEST, epoch=9)
        return
    after = step(move, event, count=COUNT, digest=DIGEST, epoch=9)
    if state is MoveState.ABORTING:
        # Aborting ends once both parties answered (see the next test).
        assert after.state in {MoveState.ABORTING, MoveState.ABORTED}
    else:
        assert after.state is expected


BEFORE_COMMIT = {MoveState.PLANNED, MoveState.SEALING, MoveState.STAGING}


def test_an_abort_after_the_commit_point_is_refused() -> None:
    assert BEFORE_COMMIT == ABORTABLE
    for state in (MoveState.COMMITTED, MoveState.ACTIVATING, MoveState.FORGETTING):
        with pytest.raises(ProtocolError):
            step(_move(state), MoveEvent.ABORT)


def test_aborting_ends_when_both_parties_answered_in_any_order_and_repeats_are_harmless() -> None:
    for answers in itertools.permutations([MoveEvent.UNSEALED, MoveEvent.DISCARDED]):
        move = _move(MoveState.ABORTING)
        assert [r.kind for r in requests_for(move)] == ["unseal", "discard"]
        move = step(move, answers[0])
        move = step(move, answers[0])  # repeated: still waiting for the other
        assert move.state is MoveState.ABORTING
        assert len(requests_for(move)) == 1
        move = step(move, answers[1])
        assert move.state is MoveState.ABORTED
        assert requests_for(move) == []


def test_a_shipment_that_does_not_check_out_aborts_the_move() -> None:
    move = step(_move(MoveState.SEALING), MoveEvent.SEALED, count=COUNT, digest=DIGEST)
    assert move.state is MoveState.STAGING
    wrong = step(move, MoveEvent.STAGED, count=COUNT, digest=b"other")
    assert wrong.state is MoveState.ABORTING
    short = step(move, MoveEvent.STAGED, count=COUNT - 1, digest=DIGEST)
    assert short.state is MoveState.ABORTING


@pytest.mark.parametrize(("phase", "kind"), list(itertools.product(SlotPhase, Request.KINDS)))
def test_every_slot_phase_and_request_goes_where_the_table_says_or_raises(
    phase: SlotPhase, kind: str
) -> None:
    expected = SLOT_TRANSITIONS.get((phase, kind))
    if expected is None:
        with pytest.raises(ProtocolError, match=f"{kind!r} is not allowed"):
            slot_step(phase, kind)
    else:
        assert slot_step(phase, kind) == expected


def test_the_digest_ignores_order_and_sees_every_token_and_mark() -> None:
    assert shipment_digest(reversed(TOKENS), HWMS) == (COUNT, DIGEST)
    assert shipment_digest(TOKENS[:-1], HWMS)[1] != DIGEST
    assert shipment_digest(TOKENS, {**HWMS, 0: 8})[1] != DIGEST
    assert shipment_digest([*TOKENS, TOKENS[0]], HWMS)[0] == COUNT + 1


# -- every fault point, against parties that keep their phase durably ---------------------


@dataclass
class Party:
    """A shard's durable view of the moving slot, and what it holds of it."""

    phase: SlotPhase
    tokens: list[tuple[str, int, tuple[object, ...]]] = field(default_factory=list)
    staged: list[tuple[str, int, tuple[object, ...]]] = field(default_factory=list)

    def fires(self) -> bool:
        return self.phase in {SlotPhase.OWNED, SlotPhase.ACTIVE}


@dataclass
class World:
    move: Move
    source: Party
    target: Party
    epoch: int = 1
    owner: int = 0  # the slot's owner in the router's table
    shipped: list[tuple[str, int, tuple[object, ...]]] = field(default_factory=list)

    def handle(self, request: Request) -> MoveEvent | None:
        """A party (or the router, for commit) carries out a request; its answer."""
        if request.kind == "commit":
            # The router's commit is one transaction (new owner, epoch + 1) and is
            # idempotent: committed before the crash, it is not committed twice.
            if self.owner != self.move.target:
                self.owner, self.epoch = self.move.target, self.epoch + 1
            return MoveEvent.COMMIT
        party = self.source if request.shard == self.move.source else self.target
        phase, answer = slot_step(party.phase, request.kind)
        if request.kind == "seal" and party.phase is SlotPhase.OWNED:
            self.shipped = list(party.tokens)  # through the durable outbox
        elif request.kind == "stage" and party.phase is SlotPhase.ABSENT:
            party.staged = list(self.shipped)
        elif request.kind == "activate" and party.phase is SlotPhase.STAGED:
            party.tokens, party.staged = party.staged, []
        elif request.kind == "forget" and party.phase is SlotPhase.SEALED:
            party.tokens = []
        elif request.kind == "discard":
            party.staged = []
        party.phase = phase
        return answer

    def answer(self, request: Request, event: MoveEvent) -> None:
        party = self.source if request.shard == self.move.source else self.target
        held = party.tokens if request.kind == "seal" else party.staged
        count, digest = shipment_digest(held, HWMS)
        self.move = step(self.move, event, count=count, digest=digest, epoch=self.epoch)

    def assert_one_owner(self) -> None:
        assert not (self.source.fires() and self.target.fires()), self


def _world() -> World:
    move = Move(1, 17, source=0, target=1)
    return World(move, Party(SlotPhase.OWNED, list(TOKENS)), Party(SlotPhase.ABSENT))


def _run(world: World, *, crash_at: int, after_handling: bool, abort_at: int) -> None:
    """Drive the move; at request number ``crash_at`` a crash loses the answer (and,
    unless ``after_handling``, the request itself); at ``abort_at`` the router aborts."""
    world.move = step(world.move, MoveEvent.START)
    for n in range(100):
        if world.move.state in {MoveState.DONE, MoveState.ABORTED}:
            return
        if n == abort_at:
            try:
                world.move = step(world.move, MoveEvent.ABORT)
            except ProtocolError:
                assert world.move.state not in BEFORE_COMMIT
        for request in requests_for(world.move):
            lost = n == crash_at
            if lost and not after_handling:
                continue  # the request died with the router or the party: resend next round
            answer = world.handle(request)
            world.assert_one_owner()
            if lost or answer is None:
                continue  # handled and persisted, but the answer is lost: asked again
            world.answer(request, answer)
    raise AssertionError(f"the move did not end: {world}")


@pytest.mark.parametrize("crash_at", range(12))
@pytest.mark.parametrize("after_handling", [False, True])
@pytest.mark.parametrize("abort_at", [-1, 0, 1, 2, 3, 4, 5])
def test_a_move_completes_or_rolls_back_whatever_step_a_crash_hits(
    crash_at: int, after_handling: bool, abort_at: int
) -> None:
    world = _world()
    _run(world, crash_at=crash_at, after_handling=after_handling, abort_at=abort_at)
    if world.move.state is MoveState.DONE:
        assert (world.source.phase, world.target.phase) == (SlotPhase.ABSENT, SlotPhase.ACTIVE)
        assert world.target.tokens == TOKENS
        assert world.source.tokens == []
        assert (world.owner, world.epoch) == (1, 2)
    else:
        assert world.move.state is MoveState.ABORTED
        assert (world.source.phase, world.target.phase) == (SlotPhase.OWNED, SlotPhase.ABSENT)
        assert world.source.tokens == TOKENS
        assert world.target.staged == []
        assert (world.owner, world.epoch) == (0, 1)  # the table never changed
    assert not world.target.staged


# -- planning -------------------------------------------------------------------------------


def _settle(table: PartitionTable, shards: int) -> PartitionTable:
    for _round in range(SLOT_COUNT):
        plans = plan_moves(table, shards)
        if not plans:
            return table
        count = max(shards, table.shard_count)
        table = table.assign({slot: target for slot, _source, target in plans}, shard_count=count)
    raise AssertionError("planning did not converge")


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(1, 8))
def test_planning_spreads_the_slots_within_one_and_empties_leaving_shards(
    start: int, end: int
) -> None:
    table = _settle(PartitionTable.initial(start), end)
    loads = [table.slot_counts().get(shard, 0) for shard in range(end)]
    assert max(loads) - min(loads) <= 1
    assert sum(loads) == SLOT_COUNT
    assert all(owner < end for owner in table.owners)


def test_planning_moves_a_few_slots_at_a_time_and_leaves_moving_ones_alone() -> None:
    table = PartitionTable.initial(2)
    first = plan_moves(table, 3)
    assert len(first) == 4
    assert all(target == 2 for _slot, _source, target in first)
    moving = [Move(i, slot, source, target) for i, (slot, source, target) in enumerate(first)]
    assert plan_moves(table, 3, moving=moving) == []  # four in flight already
    moving[0] = replace(moving[0], state=MoveState.DONE)
    again = plan_moves(table, 3, moving=moving)
    assert len(again) == 1
    assert again[0][0] not in {m.slot for m in moving[1:]}
