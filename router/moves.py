"""Moving a slot from one shard to another while the cluster runs (pure, sans-IO).

Theory of operation (docs/handoff.md, "Slot moves", has the sequence diagram):

A move is a durable record the router keeps; each step is a message the router (re)sends
until the party's answer comes, and every answer is idempotent, so a crash of any party
at any step is resumed from the records, never left half-done:

1. ``PLANNED``: the router recorded the move of ``slot`` from ``source`` to ``target``.
2. ``SEALING``: the router asks the source to seal the slot: the source stops firing
   it, defers handoffs and redirects puts for it, and ships everything the slot holds
   (its tokens, pending ones with their times, and its dedup state: the inbox high-water
   marks of the slot's lane) to the target through its durable outbox, with the count
   and digest of the shipment. The source answers ``Sealed(count, digest)``.
3. ``STAGING``: the target stores the shipment apart (not fired), checks its count and
   digest, and answers ``Staged(count, digest)``; a mismatch answers ``StageFailed``.
4. ``COMMITTED``: the router records the new owner at ``epoch + 1``. This is the commit
   point: before it, the move can be aborted (the source unseals, the target discards
   what it staged); after it, only forward.
5. ``ACTIVATING``: the target adopts the new table, moves the staged shipment into its
   marking and its inbox, and fires the slot; it answers ``Activated``.
6. ``FORGETTING``: the source drops the slot's tokens (sealed since step 2) and from
   then on redirects to the target; it answers ``Forgotten``. ``DONE``.

Aborting (before the commit point): ``ABORTING`` asks the source to unseal and the
target to discard; ``ABORTED`` once both answered.

The table of allowed (state, event) pairs is :data:`MOVE_TRANSITIONS`; any other pair
is a :class:`~router.handoff.ProtocolError` and the move goes to ``ERROR`` (sticky: an
operator looks at it). Stale answers (an answer for an earlier step, repeated after a
resend) are allowed and change nothing. :func:`requests_for` gives the request(s) to
(re)send in a state, which is all a restarted router needs. :func:`plan_moves` decides
which slots move for a new shard count, a few at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import ClassVar, Final

from nets.codec import pack
from router.handoff import ProtocolError
from router.slots import SLOT_COUNT
from router.table import PartitionTable

MOVES_IN_FLIGHT_MAX: Final = 4  # slots moving at once: firing never stops cluster-wide


class MoveState(Enum):
    PLANNED = "planned"
    SEALING = "sealing"
    STAGING = "staging"
    COMMITTED = "committed"
    ACTIVATING = "activating"
    FORGETTING = "forgetting"
    DONE = "done"
    ABORTING = "aborting"
    ABORTED = "aborted"
    ERROR = "error"


class MoveEvent(Enum):
    START = "start"  # the router begins (or resumes) the move
    SEALED = "sealed"  # the source sealed the slot and shipped it
    STAGED = "staged"  # the target staged the shipment and it checked out
    STAGE_FAILED = "stage_failed"  # the target's count or digest disagreed
    COMMIT = "commit"  # the router recorded the new owner at epoch + 1
    ACTIVATED = "activated"  # the target fires the slot
    FORGOTTEN = "forgotten"  # the source dropped the slot
    ABORT = "abort"  # give the move up (only before the commit point)
    UNSEALED = "unsealed"  # the source fires the slot again (abort)
    DISCARDED = "discarded"  # the target dropped what it staged (abort)


_M = MoveState
_V = MoveEvent
# (state, event) -> the state it leads to. Repeated answers of a step already passed
# (a resend crossed the answer) lead back to the same state; anything else raises.
MOVE_TRANSITIONS: Final[dict[tuple[MoveState, MoveEvent], MoveState]] = {
    (_M.PLANNED, _V.START): _M.SEALING,
    (_M.PLANNED, _V.ABORT): _M.ABORTED,  # nothing was asked of anyone yet
    (_M.SEALING, _V.START): _M.SEALING,  # resume: ask again
    (_M.SEALING, _V.SEALED): _M.STAGING,
    (_M.SEALING, _V.ABORT): _M.ABORTING,
    (_M.STAGING, _V.START): _M.STAGING,
    (_M.STAGING, _V.SEALED): _M.STAGING,  # repeated
    (_M.STAGING, _V.STAGED): _M.COMMITTED,
    (_M.STAGING, _V.STAGE_FAILED): _M.ABORTING,
    (_M.STAGING, _V.ABORT): _M.ABORTING,
    (_M.COMMITTED, _V.START): _M.COMMITTED,
    (_M.COMMITTED, _V.STAGED): _M.COMMITTED,  # repeated
    (_M.COMMITTED, _V.COMMIT): _M.ACTIVATING,
    (_M.ACTIVATING, _V.START): _M.ACTIVATING,
    (_M.ACTIVATING, _V.STAGED): _M.ACTIVATING,  # repeated
    (_M.ACTIVATING, _V.ACTIVATED): _M.FORGETTING,
    (_M.FORGETTING, _V.START): _M.FORGETTING,
    (_M.FORGETTING, _V.ACTIVATED): _M.FORGETTING,  # repeated
    (_M.FORGETTING, _V.FORGOTTEN): _M.DONE,
    (_M.DONE, _V.START): _M.DONE,
    (_M.DONE, _V.ACTIVATED): _M.DONE,  # repeated
    (_M.DONE, _V.FORGOTTEN): _M.DONE,  # repeated
    (_M.ABORTING, _V.START): _M.ABORTING,
    (_M.ABORTING, _V.SEALED): _M.ABORTING,  # late: the source unseals all the same
    (_M.ABORTING, _V.STAGED): _M.ABORTING,  # late: the target discards all the same
    (_M.ABORTING, _V.STAGE_FAILED): _M.ABORTING,
    (_M.ABORTING, _V.ABORT): _M.ABORTING,
    (_M.ABORTING, _V.UNSEALED): _M.ABORTING,  # done once both answered (see step())
    (_M.ABORTING, _V.DISCARDED): _M.ABORTING,
    (_M.ABORTED, _V.START): _M.ABORTED,
    (_M.ABORTED, _V.ABORT): _M.ABORTED,
    (_M.ABORTED, _V.UNSEALED): _M.ABORTED,  # repeated
    (_M.ABORTED, _V.DISCARDED): _M.ABORTED,  # repeated
}
TERMINAL: Final = frozenset({MoveState.DONE, MoveState.ABORTED, MoveState.ERROR})
# Up to and including STAGING a move can still be given up; from COMMITTED on it cannot.
ABORTABLE: Final = frozenset({MoveState.PLANNED, MoveState.SEALING, MoveState.STAGING})


@dataclass(frozen=True, slots=True)
class Move:
    """The router's durable record of one slot move."""

    move_id: int
    slot: int
    source: int
    target: int
    state: MoveState = MoveState.PLANNED
    count: int = -1  # the shipment's token count, as the source sealed it
    digest: bytes = b""
    commit_epoch: int = 0  # the table epoch that made the target the owner
    unsealed: bool = False  # ABORTING: the source answered
    discarded: bool = False  # ABORTING: the target answered
    error: str = ""


@dataclass(frozen=True, slots=True)
class Request:
    """What the router asks a party to do (idempotent: asking twice is harmless)."""

    KINDS: ClassVar[tuple[str, ...]] = (
        "seal",
        "stage",
        "commit",
        "activate",
        "forget",
        "unseal",
        "discard",
    )

    kind: str  # one of KINDS
    shard: int  # -1: the router itself (commit)
    move: Move


def step(
    move: Move,
    event: MoveEvent,
    *,
    count: int = -1,
    digest: bytes = b"",
    epoch: int = 0,
) -> Move:
    """The move after ``event`` (a new record; the router persists it, then acts).

    ``count`` and ``digest`` come with SEALED and STAGED (a STAGED that disagrees with
    what was sealed is treated as STAGE_FAILED); ``epoch`` with COMMIT.

    Raises:
        ProtocolError: the pair is not in :data:`MOVE_TRANSITIONS` (or an ABORT after
            the commit point); the returned-by-exception move is in ERROR: use
            :func:`failed` to record it.
    """
    if (
        event is MoveEvent.STAGED
        and move.state is MoveState.STAGING
        and (count, digest) != (move.count, move.digest)
    ):
        event = MoveEvent.STAGE_FAILED
    new = MOVE_TRANSITIONS.get((move.state, event))
    if new is None:
        raise ProtocolError(
            f"move {move.move_id} of slot {move.slot} ({move.source} -> {move.target}): "
            f"{event.value} is not allowed in state {move.state.value}"
        )
    if event is MoveEvent.SEALED and move.state is MoveState.SEALING:
        return replace(move, state=new, count=count, digest=digest)
    if event is MoveEvent.COMMIT:
        return replace(move, state=new, commit_epoch=epoch)
    if move.state is MoveState.ABORTING:
        unsealed = move.unsealed or event is MoveEvent.UNSEALED
        discarded = move.discarded or event is MoveEvent.DISCARDED
        done = unsealed and discarded
        return replace(
            move,
            state=MoveState.ABORTED if done else new,
            unsealed=unsealed,
            discarded=discarded,
        )
    return replace(move, state=new)


def failed(move: Move, why: str) -> Move:
    """The move in the sticky ERROR state, with the reason."""
    return replace(move, state=MoveState.ERROR, error=why)


def requests_for(move: Move) -> list[Request]:
    """The request(s) to (re)send in the move's state; empty when nothing is awaited.

    A restarted router calls this for every move that is not terminal: the parties
    answer a repeated request as they answered the first.
    """
    state = move.state
    if state is MoveState.SEALING:
        return [Request("seal", move.source, move)]
    if state is MoveState.STAGING:
        return [Request("stage", move.target, move)]
    if state is MoveState.COMMITTED:
        return [Request("commit", -1, move)]
    if state is MoveState.ACTIVATING:
        return [Request("activate", move.target, move)]
    if state is MoveState.FORGETTING:
        return [Request("forget", move.source, move)]
    if state is MoveState.ABORTING:
        requests = []
        if not move.unsealed:
            requests.append(Request("unseal", move.source, move))
        if not move.discarded:
            requests.append(Request("discard", move.target, move))
        return requests
    return []


class SlotPhase(Enum):
    """A slot at one shard, as far as moves go (the shard keeps it durably)."""

    ABSENT = "absent"  # not this shard's
    OWNED = "owned"  # this shard fires it
    SEALED = "sealed"  # source: not fired, shipped, waiting for the router's verdict
    STAGED = "staged"  # target: the shipment is stored apart, not fired
    ACTIVE = "active"  # target: fired here (the same as OWNED, reached by a move)


# (phase, request kind) -> (the phase after it, the answer). A request that finds the
# step done already answers as the first time (idempotent); others raise.
SLOT_TRANSITIONS: Final[dict[tuple[SlotPhase, str], tuple[SlotPhase, MoveEvent]]] = {
    (SlotPhase.OWNED, "seal"): (SlotPhase.SEALED, MoveEvent.SEALED),
    (SlotPhase.SEALED, "seal"): (SlotPhase.SEALED, MoveEvent.SEALED),
    (SlotPhase.SEALED, "forget"): (SlotPhase.ABSENT, MoveEvent.FORGOTTEN),
    (SlotPhase.ABSENT, "forget"): (SlotPhase.ABSENT, MoveEvent.FORGOTTEN),
    (SlotPhase.SEALED, "unseal"): (SlotPhase.OWNED, MoveEvent.UNSEALED),
    (SlotPhase.OWNED, "unseal"): (SlotPhase.OWNED, MoveEvent.UNSEALED),
    (SlotPhase.ABSENT, "stage"): (SlotPhase.STAGED, MoveEvent.STAGED),
    (SlotPhase.STAGED, "stage"): (SlotPhase.STAGED, MoveEvent.STAGED),
    (SlotPhase.STAGED, "activate"): (SlotPhase.ACTIVE, MoveEvent.ACTIVATED),
    (SlotPhase.ACTIVE, "activate"): (SlotPhase.ACTIVE, MoveEvent.ACTIVATED),
    (SlotPhase.STAGED, "discard"): (SlotPhase.ABSENT, MoveEvent.DISCARDED),
    (SlotPhase.ABSENT, "discard"): (SlotPhase.ABSENT, MoveEvent.DISCARDED),
}


def slot_step(phase: SlotPhase, kind: str) -> tuple[SlotPhase, MoveEvent]:
    """A shard's slot phase after a move request, and the answer to send.

    Raises:
        ProtocolError: the request makes no sense in this phase (e.g. ``seal`` for a
            slot the shard does not own, ``activate`` with nothing staged).
    """
    found = SLOT_TRANSITIONS.get((phase, kind))
    if found is None:
        raise ProtocolError(
            f"move request {kind!r} is not allowed for a slot in phase {phase.value}"
        )
    return found


def shipment_digest(
    entries: Iterable[tuple[str, int, tuple[object, ...]]], hwms: Mapping[int, int]
) -> tuple[int, bytes]:
    """The count and digest of a slot's shipment: its entries and its dedup marks.

    Independent of order: the source and the target compute it over the same multiset
    of ``(place, time, fields)`` entries and the same ``sender -> hwm`` marks.
    """
    encoded = sorted(pack((place, time, tuple(fields))) for place, time, fields in entries)
    digest = hashlib.blake2b(digest_size=16)
    for item in encoded:
        digest.update(len(item).to_bytes(4, "big"))
        digest.update(item)
    digest.update(pack(sorted(hwms.items())))
    return len(encoded), digest.digest()


def plan_moves(
    table: PartitionTable,
    shard_count: int,
    *,
    moving: Sequence[Move] = (),
    limit: int = MOVES_IN_FLIGHT_MAX,
) -> list[tuple[int, int, int]]:
    """The next ``(slot, source, target)`` moves towards an even spread over ``shard_count``.

    Growing: the most loaded shards give slots to the new ones; shrinking: the
    leaving shards (ids ``>= shard_count``) give all theirs to the least loaded that
    stay. Slots already moving are left alone, and at most ``limit`` moves are in
    flight at once, so the rest of the cluster keeps firing. Deterministic.
    """
    assert shard_count > 0
    busy = {m.slot for m in moving if m.state not in TERMINAL}
    room = max(0, limit - len(busy))
    if room == 0:
        return []
    # Count slots as they will be once the moves in flight are done.
    owners = list(table.owners)
    for m in moving:
        if m.state not in TERMINAL:
            owners[m.slot] = m.target
    load = dict.fromkeys(range(max(shard_count, table.shard_count)), 0)
    for owner in owners:
        load[owner] += 1
    staying = [load[s] for s in range(shard_count)]
    if max(owners) < shard_count and max(staying) - min(staying) < 2:
        return []  # spread within one over shards that stay: no slot would move (the
        # router asks every turn, so the common answer must not cost a scan of slots)
    plans: list[tuple[int, int, int]] = []
    for slot in range(SLOT_COUNT):
        if len(plans) >= room:
            break
        if slot in busy:
            continue
        source = owners[slot]
        target = min(range(shard_count), key=lambda s: (load[s], s))
        # A leaving shard gives every slot; a staying one only while it holds at
        # least two more than the least loaded (so the spread ends within one).
        if source >= shard_count or load[source] - load[target] >= 2:
            plans.append((slot, source, target))
            load[source] -= 1
            load[target] += 1
    return plans
