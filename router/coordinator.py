"""The router's side of slot moves, scaling and fencing (pure, sans-IO).

The router's core (:class:`router.control.ControlPlane`) holds one :class:`Coordinator`:
the partition table, the durable move records (:class:`router.moves.Move`), the shard
count the cluster is heading for (``members``) and each shard's fenced incarnation. The
core feeds it what the shards say and the time; whenever :attr:`Coordinator.changed` is
set, the core's outcome carries :meth:`Coordinator.encode` and the table, which the
daemon writes in **one** LMDB transaction before it answers. A restarted router builds a
new coordinator from that blob (the ``control`` argument). Nothing here reads a clock or
touches a socket.

Theory of operation (docs/handoff.md, "Slot moves"):

* **Orders and answers.** Shards report (:class:`~router.wire.MoveReport`) every
  heartbeat and at once when they have answers; the reply
  (:class:`~router.wire.MoveOrders`) lists the requests :func:`router.moves.requests_for`
  gives for every move the shard is a party to. A shard answers each order from its
  durable slot phase, so orders are repeated freely. An answer to a request that is
  no longer asked (a repeat that crossed the move's next step) is stale and ignored;
  an answer from the wrong party is ignored and counted.
* **The commit point.** Every move whose target staged the shipment is committed in
  one new table (one epoch for all of them) in the same call that recorded the
  answer, so the daemon persists the new owners and the moves' ``activating`` state
  in one transaction.
* **Planning.** While the table is not spread evenly over ``members`` shards, up to
  ``in_flight_max`` moves are in flight (:func:`router.moves.plan_moves`); new moves
  are planned only while every member shard is alive.
* **Scaling.** :meth:`Coordinator.scale` sets ``members``. Growing widens the table
  at once (the new shards join it owning nothing). Shrinking moves every slot off the
  leaving shards; once they own nothing, their outboxes drained, they hold no pool
  token and no other shard's outbox owes them one, for ``RETIRE_STABLE_MS`` of fresh
  reports, the table narrows to ``members`` shards and they are retired. Their
  committed firing totals (from those last reports: a shard that owns nothing and
  holds nothing fires nothing more) are kept durably, so that `cpn status` still
  counts them; a retired shard that scaling brings back counts its own again.
* **Fencing.** A shard that reports a new incarnation (it restarted) gets its slots
  back at a new epoch (:meth:`router.table.PartitionTable.refenced`); its
  ``fence_epoch`` says from which table on it may fire. Messages stamped with an
  older epoch for its slots are redirected from then on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from nets.codec import pack, unpack
from nets.errors import CpnError
from router.handoff import ProtocolError
from router.moves import (
    TERMINAL,
    Move,
    MoveEvent,
    MoveState,
    failed,
    plan_moves,
    requests_for,
    step,
)
from router.table import SHARDS_MAX, PartitionTable

MOVES_IN_FLIGHT_MAX: Final = 64  # slots sealed at once: ~6% of them pause for a moment
REPORT_FRESH_MS: Final = 1_500  # a report older than this says nothing about now
RETIRE_STABLE_MS: Final = 1_000  # the retire condition must hold this long
FINISHED_KEPT_MAX: Final = 32  # finished moves kept for `cpn status`

Order = tuple[int, str, int, int, int, int, bytes, int]

# Which request an answer answers, and which party gives it.
_KIND_OF: Final = {
    MoveEvent.SEALED: "seal",
    MoveEvent.STAGED: "stage",
    MoveEvent.STAGE_FAILED: "stage",
    MoveEvent.ACTIVATED: "activate",
    MoveEvent.FORGOTTEN: "forget",
    MoveEvent.UNSEALED: "unseal",
    MoveEvent.DISCARDED: "discard",
}
_FROM_SOURCE: Final = frozenset({MoveEvent.SEALED, MoveEvent.FORGOTTEN, MoveEvent.UNSEALED})


class CoordinatorError(CpnError):
    """A request the coordinator refuses (a shard count out of range...)."""


@dataclass(frozen=True, slots=True)
class ShardReport:
    """What a shard last said about itself (``at_ms``: the router's monotonic clock)."""

    at_ms: int
    outbox_tokens: int
    pool_tokens: int
    owed: tuple[int, ...]
    firings_total: Mapping[str, int]


def _move_fields(move: Move) -> tuple[Any, ...]:
    return (
        move.move_id,
        move.slot,
        move.source,
        move.target,
        move.state.value,
        move.count,
        move.digest,
        move.commit_epoch,
        move.unsealed,
        move.discarded,
        move.error,
    )


def _move_of(fields: tuple[Any, ...]) -> Move:
    move_id, slot, source, target, state, count, digest, epoch, unsealed, discarded, error = fields
    return Move(
        move_id,
        slot,
        source,
        target,
        MoveState(state),
        count,
        digest,
        epoch,
        unsealed,
        discarded,
        error,
    )


@dataclass(frozen=True, slots=True)
class _Record:
    """The coordinator's durable part, as :meth:`Coordinator.encode` writes it."""

    members: int
    next_move_id: int
    moves: tuple[Move, ...]
    finished: tuple[Move, ...]
    fences: tuple[tuple[int, tuple[int, int]], ...]
    moves_done: int
    moves_aborted: int
    retired_firings: dict[int, dict[str, int]]

    @classmethod
    def fresh(cls, table: PartitionTable, members: int | None) -> _Record:
        return cls(table.shard_count if members is None else members, 1, (), (), (), 0, 0, {})

    @classmethod
    def decode(cls, blob: bytes) -> _Record:
        try:
            fields = unpack(blob)
            # A record written before the retired shards' firings were kept has 7 fields.
            members, next_id, moves, finished, fences, done, aborted = fields[:7]
            retired = fields[7] if len(fields) > 7 else ()
            return cls(
                int(members),
                int(next_id),
                tuple(map(_move_of, moves)),
                tuple(map(_move_of, finished)),
                tuple((int(k), (int(inc), int(epoch))) for k, inc, epoch in fences),
                int(done),
                int(aborted),
                {int(k): {str(t): int(n) for t, n in totals} for k, totals in retired},
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise CpnError(f"the router's move records are damaged: {exc}") from exc


class Coordinator:
    """Moves, scaling and fencing over the router's table (see the module docstring)."""

    def __init__(
        self,
        table: PartitionTable,
        *,
        members: int | None = None,
        in_flight_max: int = MOVES_IN_FLIGHT_MAX,
        control: bytes | None = None,
    ) -> None:
        """A coordinator over ``table``; ``control``: what :meth:`encode` wrote, if any.

        Raises:
            CpnError: ``control`` is not what :meth:`encode` wrote.
        """
        record = _Record.fresh(table, members) if control is None else _Record.decode(control)
        self.table = table
        self.members = record.members
        self.in_flight_max = in_flight_max
        self.moves: dict[int, Move] = {m.move_id: m for m in record.moves}  # not finished
        self.finished: list[Move] = list(record.finished)  # the last few DONE or ABORTED
        self.next_move_id = record.next_move_id
        self.fences: dict[int, tuple[int, int]] = dict(record.fences)  # shard -> (inc, epoch)
        self.reports: dict[int, ShardReport] = {}
        # Retired shard -> its committed firings per transition (see _retire).
        self.retired_firings: dict[int, dict[str, int]] = record.retired_firings
        self.counters: Counter[str] = Counter()
        if control is not None:  # (a fresh coordinator shows no counters yet)
            self.counters.update(moves_done=record.moves_done, moves_aborted=record.moves_aborted)
        self.changed = False  # durable state changed: persist before answering
        self.transitions: list[str] = []  # move states reached since the last persist
        self._retire_ok_since_ms: int | None = None
        # The inputs of the last plan_moves that planned nothing (see _plan).
        self._planned_nothing_for: tuple[object, ...] | None = None

    # -- persistence ------------------------------------------------------------------

    def encode(self) -> bytes:
        """Everything durable but the table (the daemon stores that beside it)."""
        return pack(
            (
                self.members,
                self.next_move_id,
                tuple(_move_fields(m) for m in self.moves.values()),
                tuple(_move_fields(m) for m in self.finished),
                tuple((k, inc, epoch) for k, (inc, epoch) in sorted(self.fences.items())),
                self.counters["moves_done"],
                self.counters["moves_aborted"],
                tuple(
                    (k, tuple(sorted(totals.items())))
                    for k, totals in sorted(self.retired_firings.items())
                ),
            )
        )

    @classmethod
    def decode(cls, table: PartitionTable, blob: bytes | None, **options: Any) -> Coordinator:
        """A coordinator from its persisted state (``None``: a fresh one).

        Raises:
            CpnError: the blob is not what :meth:`encode` wrote.
        """
        return cls(table, control=blob, **options)

    def take_transitions(self) -> list[str]:
        """The move states reached since the last call (fault points hook on them)."""
        taken, self.transitions = self.transitions, []
        return taken

    # -- who is in the cluster --------------------------------------------------------

    def span(self) -> int:
        """Shard ids ``0 .. span - 1`` belong to the cluster (members and leaving ones)."""
        return max(self.table.shard_count, self.members)

    def scale(self, members: int) -> None:
        """Head for ``members`` shards.

        Raises:
            CoordinatorError: ``members`` is not in 1..SHARDS_MAX.
        """
        if not 0 < members <= SHARDS_MAX:
            raise CoordinatorError(f"shard count {members} is not in 1..{SHARDS_MAX}")
        if members == self.members:
            return
        self.members = members
        self._retire_ok_since_ms = None
        if members > self.table.shard_count:
            self.table = self.table.resized(members)  # the new shards own nothing yet
        for shard_id in [k for k in self.retired_firings if k < members]:
            # Back in the cluster, on its own data directory: it reports its totals again.
            del self.retired_firings[shard_id]
        self.changed = True

    def incarnation(self, shard_id: int, incarnation: int) -> int:
        """Record that ``shard_id`` runs as ``incarnation``; its fence epoch.

        A first incarnation has nothing to fence; a later one gets its slots back at a
        new epoch, so that messages judged against the old incarnation's table view
        are redirected and the old incarnation's word counts for nothing.
        """
        known = self.fences.get(shard_id)
        if known is not None and incarnation <= known[0]:
            return known[1]
        if known is None and incarnation <= 1:
            fence = 1
        else:
            self.table = self.table.refenced(shard_id)
            fence = self.table.epoch
            self.counters["fences"] += 1
        self.fences[shard_id] = (incarnation, fence)
        self.changed = True
        return fence

    def fence_epoch(self, shard_id: int, incarnation: int) -> int:
        known = self.fences.get(shard_id)
        return known[1] if known is not None and known[0] == incarnation else 0

    # -- reports and orders -----------------------------------------------------------

    def report(
        self,
        shard_id: int,
        answers: Iterable[tuple[int, str, int, bytes]],
        *,
        now_ms: int,
        outbox_tokens: int,
        pool_tokens: int,
        owed: tuple[int, ...],
        firings_total: Mapping[str, int],
    ) -> None:
        """Take a shard's report: step the moves it answers, commit what staged."""
        self.reports[shard_id] = ShardReport(
            now_ms, outbox_tokens, pool_tokens, owed, dict(firings_total)
        )
        for move_id, event_name, count, digest in answers:
            self._answer(shard_id, move_id, event_name, count, digest)
        self._commit_staged()

    def _answer(
        self, shard_id: int, move_id: int, event_name: str, count: int, digest: bytes
    ) -> None:
        try:
            event = MoveEvent(event_name)
            kind = _KIND_OF[event]
        except (ValueError, KeyError):
            self.counters["answers_malformed"] += 1
            return
        move = self.moves.get(move_id)
        if move is None or move.state in TERMINAL:
            self.counters["answers_stale"] += 1
            return
        party = move.source if event in _FROM_SOURCE else move.target
        if shard_id != party:
            self.counters["answers_misdirected"] += 1
            return
        if kind not in {r.kind for r in requests_for(move)}:
            self.counters["answers_stale"] += 1  # a repeat that crossed the next step
            return
        try:
            new = step(move, event, count=count, digest=digest)
        except ProtocolError as exc:
            new = failed(move, str(exc))
        self._set(new)

    def _set(self, move: Move) -> None:
        before = self.moves.get(move.move_id)
        if before is not None and before == move:
            return
        self.changed = True
        if before is None or before.state is not move.state:
            self.transitions.append(move.state.value)
        if move.state in (MoveState.DONE, MoveState.ABORTED):
            self.moves.pop(move.move_id, None)
            self.counters["moves_done" if move.state is MoveState.DONE else "moves_aborted"] += 1
            self.finished = [*self.finished, move][-FINISHED_KEPT_MAX:]
        else:
            self.moves[move.move_id] = move

    def _commit_staged(self) -> None:
        """The commit point: every staged move's new owner, in one table change."""
        staged = [m for m in self.moves.values() if m.state is MoveState.COMMITTED]
        if not staged:
            return
        table = self.table.assign({m.slot: m.target for m in staged})
        self.table = table
        for move in staged:
            self._set(step(move, MoveEvent.COMMIT, epoch=table.epoch))
        self.counters["commits"] += 1

    def orders_for(self, shard_id: int) -> tuple[Order, ...]:
        """The requests to (re)send to ``shard_id`` (see :class:`~router.wire.MoveOrders`)."""
        orders = []
        for move in self.moves.values():
            for request in requests_for(move):
                if request.shard != shard_id:
                    continue
                if request.kind == "seal":
                    epoch = self.table.slot_epochs[move.slot]
                elif request.kind in ("activate", "forget"):
                    epoch = move.commit_epoch
                else:
                    epoch = 0
                orders.append(
                    (
                        move.move_id,
                        request.kind,
                        move.slot,
                        move.source,
                        move.target,
                        move.count,
                        move.digest,
                        epoch,
                    )
                )
        return tuple(orders)

    # -- the clock ----------------------------------------------------------------------

    def tick(self, now_ms: int, alive: Collection[int]) -> None:
        """Commit what staged, retire drained leaving shards, plan the next moves."""
        self._commit_staged()
        self._retire(now_ms)
        self._plan(alive)

    def _plan(self, alive: Collection[int]) -> None:
        if not all(k in alive for k in range(self.members)):
            return  # a new shard not up yet, or a member down: wait
        moving = list(self.moves.values())
        # plan_moves is a pure function of these: asked again with the same (the router
        # ticks every turn), it would plan nothing again.
        asked = (
            self.table.epoch,
            self.table.shard_count,
            self.members,
            self.in_flight_max,
            tuple((m.move_id, m.slot, m.target, m.state) for m in moving),
        )
        if asked == self._planned_nothing_for:
            return
        stuck = {m.slot for m in moving if m.state is MoveState.ERROR}
        plans = plan_moves(self.table, self.members, moving=moving, limit=self.in_flight_max)
        self._planned_nothing_for = asked if not plans else None
        for slot, source, target in plans:
            if slot in stuck:
                continue
            move = Move(self.next_move_id, slot, source, target)
            self.next_move_id += 1
            self._set(step(move, MoveEvent.START))

    def _retire(self, now_ms: int) -> None:
        leaving = range(self.members, self.table.shard_count)
        if not leaving:
            self._retire_ok_since_ms = None
            return
        if not self._may_retire(now_ms, leaving):
            self._retire_ok_since_ms = None
            return
        if self._retire_ok_since_ms is None:
            self._retire_ok_since_ms = now_ms
        if now_ms - self._retire_ok_since_ms < RETIRE_STABLE_MS:
            return
        for shard_id in leaving:
            # The report is fresh (_may_retire) and the shard owns and holds nothing:
            # these are its final totals.
            self.retired_firings[shard_id] = dict(self.reports[shard_id].firings_total)
        self.table = self.table.resized(self.members)
        self.counters["shards_retired"] += len(leaving)
        self._retire_ok_since_ms = None
        self.changed = True

    def _may_retire(self, now_ms: int, leaving: range) -> bool:
        if any(owner in leaving for owner in self.table.owners):
            return False
        if any(m.source in leaving or m.target in leaving for m in self.moves.values()):
            return False
        for shard_id in range(self.table.shard_count):
            report = self.reports.get(shard_id)
            if report is None or now_ms - report.at_ms > REPORT_FRESH_MS:
                return False
            if shard_id in leaving and (report.outbox_tokens or report.pool_tokens):
                return False
            if any(k in leaving for k in report.owed):
                return False
        return True

    # -- reading ------------------------------------------------------------------------

    def active(self) -> list[Move]:
        return sorted(self.moves.values(), key=lambda m: m.move_id)

    def summary(self) -> dict[str, Any]:
        """Moves and scaling as ``cpn status`` shows them (msgpack-able)."""
        return {
            "members": self.members,
            "table_shards": self.table.shard_count,
            "moves_active": [
                {
                    "move_id": m.move_id,
                    "slot": m.slot,
                    "source": m.source,
                    "target": m.target,
                    "state": m.state.value,
                    "error": m.error,
                }
                for m in self.active()
            ],
            "moves_done": self.counters["moves_done"],
            "moves_aborted": self.counters["moves_aborted"],
            # [shard id, {transition: firings}] of each retired shard (cpn status).
            "firings_retired": [[k, t] for k, t in sorted(self.retired_firings.items())],
            "move_counters": dict(self.counters),
        }
