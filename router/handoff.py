"""The handoff protocol: tokens that cross partitions move exactly once (pure, sans-IO).

Theory of operation (docs/handoff.md has the state tables and sequence diagrams):

* A **lane** is where tokens go: a slot (its owner may change) or a shard's pool lane
  (:func:`router.table.pool_lane`). Each sender numbers the tokens it sends on each
  lane 1, 2, 3, ... (``seq``). Tokens leave in **runs**: consecutive seq numbers of one
  lane, written to the sender's durable outbox in the same transaction as the firing
  that produced them.
* The **receiver** keeps, per (sender, lane), the highest seq it applied (``hwm``). In
  one transaction it applies the part of a run above ``hwm`` (only if the run starts at
  or below ``hwm + 1``: no gaps) and moves ``hwm``; then it acknowledges ``(lane, hwm)``,
  cumulatively. A run for a lane it does not own, or stamped with an epoch older than
  the lane's last change of owner, is redirected (never dropped, never applied); if the
  sender's table is newer than the receiver's, the receiver cannot judge and defers.
* The **sender** resends unacknowledged runs after ``resend_ms`` (go-back-N from the
  last acknowledged seq), drops runs once acknowledged, and after a redirect waits for
  a table at the redirect's epoch before sending the lane's runs to the new owner.

Dedup state is bounded: one counter per (sender, lane) on each side, never a set of ids.
Both machines are table-driven. The sender's lane moves by :data:`LANE_TRANSITIONS`,
``(state, event) -> state``; a pair missing from it is a :class:`ProtocolError`, checked
before the event changes anything, and the lane stays in the ERROR state, refusing
everything after, until the process restarts. The receiver judges each run by
:data:`RECEIVE_TABLE`; a malformed message refuses the sender's incarnation for good.

Validate, then act: :meth:`Inbox.receive` only judges (it returns a :class:`Receipt`
with the verdicts and the hwms the message *would* leave); the shell checks every
accepted entry, then calls :meth:`Inbox.commit` and persists the hwms in one
transaction. A message refused half-way needs no undoing. Neither machine does I/O; the
shard (the shell) persists what they decide before anything is sent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from nets.errors import CpnError
from router.slots import SLOT_COUNT
from router.table import POOL_LANE_BASE, SHARDS_MAX, PartitionTable, is_pool_lane

RESEND_MS_DEFAULT: Final = 1_000
LANE_WINDOW_TOKENS_MAX: Final = 50_000  # unacknowledged tokens in flight per lane
DESTINATION_WINDOW_TOKENS_MAX: Final = 50_000  # ... and per destination shard
MESSAGE_TOKENS_MAX: Final = 20_000  # tokens per Handoff message
MESSAGE_RUNS_MAX: Final = 4_096


class ProtocolError(CpnError):
    """An event the handoff machine's table does not allow in the current state."""


class AcknowledgementError(ProtocolError):
    """An answer with a fault in some lanes; ``done``: the runs the others acknowledged."""

    def __init__(self, message: str, *, done: list[Run]) -> None:
        super().__init__(message)
        self.done = done


# -- sender ------------------------------------------------------------------------------


class LaneState(Enum):
    """Sender side of one lane."""

    IDLE = "idle"  # every token offered is acknowledged
    SENDING = "sending"  # runs wait for acknowledgement; sent as the window allows
    REDIRECTED = "redirected"  # the owner changed; waiting for a table at wait_epoch
    ERROR = "error"  # sticky: a protocol violation was seen on this lane


class LaneEvent(Enum):
    """What happens to a lane; the outbox derives the event from what it was given."""

    OFFER = "offer"  # new tokens for the lane were committed to the outbox
    SEND = "send"  # runs of the lane were handed to the network
    ACK = "ack"  # the receiver acknowledged up to some seq; tokens remain unacknowledged
    ACK_ALL = "ack_all"  # ... and now every token offered is acknowledged
    REDIRECT = "redirect"  # the receiver does not own the lane at our epoch
    TABLE = "table"  # our partition table changed (not to the epoch a redirect awaits)
    CAUGHT_UP = "caught_up"  # our table reached the epoch a redirected lane waits for
    TIMEOUT = "timeout"  # no acknowledgement within resend_ms: go back


_S = LaneState
_E = LaneEvent
# (state, event) -> the state it leads to. Any pair not listed is a ProtocolError and
# leaves the lane in ERROR, which no event leaves (sticky).
LANE_TRANSITIONS: Final[dict[tuple[LaneState, LaneEvent], LaneState]] = {
    (_S.IDLE, _E.OFFER): _S.SENDING,
    (_S.IDLE, _E.ACK_ALL): _S.IDLE,  # a repeated ack of what is acknowledged
    (_S.IDLE, _E.REDIRECT): _S.IDLE,  # stale: nothing is waiting
    (_S.IDLE, _E.TABLE): _S.IDLE,
    (_S.SENDING, _E.OFFER): _S.SENDING,
    (_S.SENDING, _E.SEND): _S.SENDING,
    (_S.SENDING, _E.ACK): _S.SENDING,
    (_S.SENDING, _E.ACK_ALL): _S.IDLE,
    (_S.SENDING, _E.REDIRECT): _S.REDIRECTED,
    (_S.SENDING, _E.TABLE): _S.SENDING,
    (_S.SENDING, _E.TIMEOUT): _S.SENDING,
    (_S.REDIRECTED, _E.OFFER): _S.REDIRECTED,
    # A late ack from the old owner is true: it applied those tokens before it let go.
    (_S.REDIRECTED, _E.ACK): _S.REDIRECTED,
    (_S.REDIRECTED, _E.ACK_ALL): _S.IDLE,
    (_S.REDIRECTED, _E.REDIRECT): _S.REDIRECTED,
    (_S.REDIRECTED, _E.TABLE): _S.REDIRECTED,
    (_S.REDIRECTED, _E.CAUGHT_UP): _S.SENDING,
    (_S.REDIRECTED, _E.TIMEOUT): _S.REDIRECTED,
}


def lane_step(state: LaneState, event: LaneEvent) -> LaneState:
    """The state a lane in ``state`` goes to on ``event`` (:data:`LANE_TRANSITIONS`).

    Raises:
        ProtocolError: the pair is not in the table; the caller puts the lane in ERROR.
    """
    new = LANE_TRANSITIONS.get((state, event))
    if new is None:
        raise ProtocolError(f"event {event.value} is not allowed in state {state.value}")
    return new


@dataclass(slots=True)
class Run:
    """Consecutive tokens ``first_seq .. last_seq`` of one lane, as stored and sent."""

    lane: int
    first_seq: int
    count: int
    entries: bytes  # msgpack of [(place, time, fields), ...], opaque to the machine

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1


@dataclass(slots=True)
class OutLane:
    """The sender's state for one lane."""

    lane: int
    state: LaneState = LaneState.IDLE
    next_seq: int = 1  # the seq the next offered token gets
    acked: int = 0  # every seq up to this one is acknowledged
    sent: int = 0  # every seq up to this one was sent in the current round
    resend_at_ms: int = 0
    wait_epoch: int = 0  # REDIRECTED: the table epoch to wait for
    runs: deque[Run] = field(default_factory=deque)
    error: str = ""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Runs to send to one shard in one message, stamped with our table's epoch."""

    shard: int
    epoch: int
    runs: tuple[Run, ...]


class Outbox:
    """The sender side: lanes of unacknowledged runs (see the module docstring).

    Args:
        resend_ms: how long a sent run waits for its acknowledgement before the lane
            goes back and sends it again.
    """

    def __init__(self, *, resend_ms: int = RESEND_MS_DEFAULT) -> None:
        assert resend_ms > 0
        self.resend_ms = resend_ms
        self.lanes: dict[int, OutLane] = {}
        self.table_epoch = 0

    # -- the table ------------------------------------------------------------------------

    def _step(self, lane: OutLane, event: LaneEvent) -> None:
        """Move ``lane`` on ``event``, before anything else of the event is applied.

        Raises:
            ProtocolError: the pair is not in :data:`LANE_TRANSITIONS`; the lane is in
                ERROR from then on (keeping the first violation as its reason) and
                nothing of the event was applied.
        """
        try:
            lane.state = lane_step(lane.state, event)
        except ProtocolError as exc:
            lane.state = LaneState.ERROR
            lane.error = lane.error or f"lane {lane.lane}: {exc}"
            raise ProtocolError(f"lane {lane.lane}: {exc}") from None

    def _lane(self, lane: int) -> OutLane:
        found = self.lanes.get(lane)
        if found is None:
            found = self.lanes[lane] = OutLane(lane)
        return found

    # -- events -----------------------------------------------------------------------------

    def restore(self, lane: int, *, next_seq: int, runs: Iterable[Run]) -> None:
        """Load a lane from the durable outbox (at startup, before any event)."""
        assert lane not in self.lanes, f"lane {lane} restored twice"
        out = self._lane(lane)
        out.next_seq = next_seq
        out.runs.extend(sorted(runs, key=lambda r: r.first_seq))
        # A lane without runs had everything acknowledged: its counter alone survives.
        out.acked = out.sent = out.runs[0].first_seq - 1 if out.runs else next_seq - 1
        if out.runs:
            assert out.runs[-1].last_seq < next_seq, f"lane {lane}: a run beyond next_seq"
            out.state = LaneState.SENDING

    def offer(self, lane: int, entries: bytes, count: int) -> Run:
        """Number ``count`` new tokens of ``lane``; the caller stores the run it gets.

        Raises:
            ProtocolError: the lane is in the ERROR state (the run is not created).
        """
        assert count > 0
        out = self._lane(lane)
        self._step(out, LaneEvent.OFFER)
        run = Run(lane, out.next_seq, count, entries)
        out.next_seq += count
        out.runs.append(run)
        return run

    def table_changed(self, table: PartitionTable) -> None:
        """Our partition table is now ``table``: redirected lanes may go again."""
        self.table_epoch = max(self.table_epoch, table.epoch)
        for out in self.lanes.values():
            if out.state is LaneState.ERROR:
                continue
            if out.state is LaneState.REDIRECTED and self.table_epoch >= out.wait_epoch:
                self._step(out, LaneEvent.CAUGHT_UP)
                out.resend_at_ms = 0
            else:
                self._step(out, LaneEvent.TABLE)

    def due(self, now_ms: int, table: PartitionTable) -> list[Outgoing]:
        """The messages to send now; the runs in them count as sent from now on.

        A lane whose oldest sent run waited ``resend_ms`` without acknowledgement goes
        back to its first unacknowledged seq. Runs go to the lane's owner in
        ``table``; each message holds at most ``MESSAGE_TOKENS_MAX`` tokens.
        """
        self.table_epoch = max(self.table_epoch, table.epoch)
        by_shard: dict[int, list[Run]] = {}
        # Tokens sent and not yet acknowledged, per destination: a receiver slower than
        # its senders gets at most a window's worth to chew on, not a growing pile that
        # times out and is sent again before it was read (congestion collapse).
        in_flight: dict[int, int] = {}
        for out in self.lanes.values():
            if out.state is LaneState.SENDING and out.sent > out.acked:
                owner = table.owner(out.lane)
                in_flight[owner] = in_flight.get(owner, 0) + out.sent - out.acked
        for out in self.lanes.values():
            if out.state is not LaneState.SENDING:
                continue
            owner = table.owner(out.lane)
            if out.sent > out.acked and now_ms >= out.resend_at_ms:
                self._step(out, LaneEvent.TIMEOUT)
                in_flight[owner] -= out.sent - out.acked
                out.sent = out.acked
            if out.sent >= out.next_seq - 1:
                continue
            budget = max(0, DESTINATION_WINDOW_TOKENS_MAX - in_flight.get(owner, 0))
            window_end = min(out.acked + LANE_WINDOW_TOKENS_MAX, out.sent + budget)
            picked: list[Run] = []
            for run in out.runs:
                if run.last_seq <= out.sent:
                    continue
                # A run starting inside the window goes whole; one run may always go
                # when nothing is in flight.
                if run.first_seq > window_end and (picked or in_flight.get(owner, 0) > 0):
                    break
                picked.append(run)
                in_flight[owner] = in_flight.get(owner, 0) + run.count
            if not picked:
                continue
            self._step(out, LaneEvent.SEND)
            if out.sent == out.acked:
                # The timer runs from the oldest unacknowledged send: restarting it on
                # every send would let a steady stream of new runs postpone a lost
                # run's resend indefinitely.
                out.resend_at_ms = now_ms + self.resend_ms
            out.sent = picked[-1].last_seq
            by_shard.setdefault(table.owner(out.lane), []).extend(picked)
        messages = []
        for shard, runs in sorted(by_shard.items()):
            chunk: list[Run] = []
            tokens = 0
            for run in runs:
                if chunk and (
                    tokens + run.count > MESSAGE_TOKENS_MAX or len(chunk) >= MESSAGE_RUNS_MAX
                ):
                    messages.append(Outgoing(shard, self.table_epoch, tuple(chunk)))
                    chunk, tokens = [], 0
                chunk.append(run)
                tokens += run.count
            messages.append(Outgoing(shard, self.table_epoch, tuple(chunk)))
        return messages

    def acknowledged(
        self,
        *,
        acks: Sequence[tuple[int, int]],
        redirects: Sequence[tuple[int, int, int]] = (),
        deferred: Sequence[int] = (),
        now_ms: int,
    ) -> list[Run]:
        """Apply a receiver's answer; return the runs now wholly acknowledged.

        The caller deletes the returned runs from the durable outbox (in its next
        commit; a run resent after a crash before that is a duplicate the receiver
        drops).

        Raises:
            AcknowledgementError: for a lane the answer may not touch (an
                acknowledgement of a seq never offered: the lane goes to ERROR; a lane
                in ERROR; a redirect for a lane never used). Every other lane of the
                answer is applied all the same, and the error's ``done`` holds the
                runs acknowledged, for the caller to delete as usual.
        """
        done: list[Run] = []
        errors: list[str] = []
        for lane, hwm in acks:
            try:
                done.extend(self._acknowledge(lane, hwm, now_ms))
            except ProtocolError as exc:  # one lane's fault: the others go on
                errors.append(str(exc))
        for lane, _owner, epoch in redirects:
            try:
                self._redirect(lane, epoch)
            except ProtocolError as exc:
                errors.append(str(exc))
        for lane in deferred:
            out = self.lanes.get(lane)
            if out is not None and out.state is LaneState.SENDING:
                # The receiver's table is behind ours: send again after the timeout
                # (the go-back of due()), not at once, which would make the two shards
                # ping-pong the runs until the receiver's table catches up.
                out.resend_at_ms = now_ms + self.resend_ms
        if errors:
            raise AcknowledgementError("; ".join(errors), done=done)
        return done

    def _acknowledge(self, lane: int, hwm: int, now_ms: int) -> list[Run]:
        out = self.lanes.get(lane)
        if out is None:
            raise ProtocolError(f"acknowledgement for unknown lane {lane}")
        if hwm >= out.next_seq:
            out.state = LaneState.ERROR
            out.error = out.error or (
                f"lane {lane}: acknowledged up to seq {hwm}, but only "
                f"{out.next_seq - 1} were ever offered"
            )
            raise ProtocolError(
                f"lane {lane}: acknowledged up to seq {hwm}, but only "
                f"{out.next_seq - 1} were ever offered"
            )
        acked = max(out.acked, hwm)  # a repeated or older ack changes nothing
        everything = acked == out.next_seq - 1
        # The table judges the event first: a refused ack leaves the lane's runs alone.
        self._step(out, LaneEvent.ACK_ALL if everything else LaneEvent.ACK)
        if hwm <= out.acked:
            return []
        out.acked = hwm
        out.sent = max(out.sent, hwm)
        out.resend_at_ms = now_ms + self.resend_ms
        done = []
        while out.runs and out.runs[0].last_seq <= hwm:
            done.append(out.runs.popleft())
        return done

    def _redirect(self, lane: int, epoch: int) -> None:
        out = self.lanes.get(lane)
        if out is None:
            raise ProtocolError(f"redirect for lane {lane}, which was never used")
        self._step(out, LaneEvent.REDIRECT)
        if out.state is LaneState.IDLE:
            return  # stale: it answers something already acknowledged
        # Wait for a table at least as new as the receiver's. The redirect answers a
        # message stamped with an older epoch than the receiver's (else it would not
        # redirect), so a table at ``epoch`` names the lane's owner; if ours is already
        # there (the redirect answers a message sent before our table changed), send
        # again at once rather than wait for an epoch that may never come.
        out.wait_epoch = max(out.wait_epoch, epoch)
        out.sent = out.acked
        if self.table_epoch >= out.wait_epoch:
            self._step(out, LaneEvent.CAUGHT_UP)
            out.resend_at_ms = 0

    # -- reading ----------------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        """When :meth:`due` next has something to do that no event will trigger."""
        deadlines = [
            out.resend_at_ms
            for out in self.lanes.values()
            if out.state is LaneState.SENDING and out.sent > out.acked
        ]
        return min(deadlines, default=None)

    def has_unsent(self) -> bool:
        return any(
            out.state is LaneState.SENDING and out.sent < out.next_seq - 1
            for out in self.lanes.values()
        )

    def waiting_epoch(self) -> int:
        """The highest table epoch a redirected lane waits for (0: none waits)."""
        return max(
            (o.wait_epoch for o in self.lanes.values() if o.state is LaneState.REDIRECTED),
            default=0,
        )

    def pending_tokens(self) -> int:
        """Tokens offered and not yet acknowledged (they sit in the durable outbox)."""
        return sum(out.next_seq - 1 - out.acked for out in self.lanes.values() if out.runs)

    def failed_lanes(self) -> dict[int, str]:
        return {o.lane: o.error for o in self.lanes.values() if o.state is LaneState.ERROR}


# -- receiver ----------------------------------------------------------------------------


class Ownership(Enum):
    """How the receiver's table judges a run's lane."""

    OWNED = "owned"
    NOT_OWNED = "not_owned"
    STALE_EPOCH = "stale_epoch"  # the sender's table predates the lane's last move
    TABLE_BEHIND = "table_behind"  # the sender's table is newer than ours
    SEALED = "sealed"  # ours, but sealed for a move: its hwms must not move (defer)


class Order(Enum):
    """Where a run falls relative to what the receiver applied."""

    NEXT = "next"  # starts at or below hwm + 1 and goes beyond hwm
    DUPLICATE = "duplicate"  # everything in it was applied before
    GAP = "gap"  # starts beyond hwm + 1: an earlier run is missing


class Verdict(Enum):
    APPLY = "apply"  # apply the part above hwm, acknowledge
    ACK = "ack"  # apply nothing, acknowledge hwm
    REDIRECT = "redirect"  # apply nothing, name the owner
    DEFER = "defer"  # apply nothing, ask to send again later


RECEIVE_TABLE: Final[dict[tuple[Ownership, Order], Verdict]] = {
    (Ownership.OWNED, Order.NEXT): Verdict.APPLY,
    (Ownership.OWNED, Order.DUPLICATE): Verdict.ACK,
    (Ownership.OWNED, Order.GAP): Verdict.ACK,
    (Ownership.NOT_OWNED, Order.NEXT): Verdict.REDIRECT,
    (Ownership.NOT_OWNED, Order.DUPLICATE): Verdict.REDIRECT,
    (Ownership.NOT_OWNED, Order.GAP): Verdict.REDIRECT,
    (Ownership.STALE_EPOCH, Order.NEXT): Verdict.REDIRECT,
    (Ownership.STALE_EPOCH, Order.DUPLICATE): Verdict.REDIRECT,
    (Ownership.STALE_EPOCH, Order.GAP): Verdict.REDIRECT,
    (Ownership.TABLE_BEHIND, Order.NEXT): Verdict.DEFER,
    (Ownership.TABLE_BEHIND, Order.DUPLICATE): Verdict.DEFER,
    (Ownership.TABLE_BEHIND, Order.GAP): Verdict.DEFER,
    (Ownership.SEALED, Order.NEXT): Verdict.DEFER,
    (Ownership.SEALED, Order.DUPLICATE): Verdict.DEFER,
    (Ownership.SEALED, Order.GAP): Verdict.DEFER,
}


@dataclass(frozen=True, slots=True)
class Accepted:
    """Apply entries ``skip ..`` of run number ``index`` of the message."""

    index: int
    skip: int


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the receiver decided for one message (a verdict; nothing is applied yet).

    The shell applies ``accepted``, commits the receipt to the inbox
    (:meth:`Inbox.commit`) once everything of the message is accepted, and persists
    ``hwms`` in one transaction; then it sends ``acks``, ``redirects`` and
    ``deferred`` back (a HandoffAck). A receipt that is not committed leaves no trace.
    """

    accepted: tuple[Accepted, ...]
    hwms: dict[tuple[int, int], int]  # (sender, lane) -> new hwm, to persist
    acks: tuple[tuple[int, int], ...]
    redirects: tuple[tuple[int, int, int], ...]
    deferred: tuple[int, ...]
    verdicts: tuple[Verdict, ...]  # one per run, for statistics and tests
    # (sender, lane) -> the hwm the runs were judged against (0: none yet), for each
    # key of ``hwms``: a commit checks that nothing moved them in between.
    judged: dict[tuple[int, int], int] = field(default_factory=dict)


class Inbox:
    """The receiver side: the per-(sender, lane) high-water marks (bounded state).

    :meth:`receive` judges and :meth:`commit` acts: the hwms move only when the shell
    commits a receipt, so a message refused after judging (an entry the shell cannot
    decode) needs no undoing.

    Args:
        me: this shard's id.
        hwms: the persisted high-water marks ``(sender, lane) -> hwm``.
    """

    def __init__(self, me: int, hwms: dict[tuple[int, int], int] | None = None) -> None:
        self.me = me
        self.hwms: dict[tuple[int, int], int] = dict(hwms or {})
        self.failed: dict[tuple[int, int], str] = {}  # (sender, incarnation) -> why

    def ownership(
        self, lane: int, epoch: int, table: PartitionTable, sealed: Collection[int] = ()
    ) -> Ownership:
        if is_pool_lane(lane):
            return Ownership.OWNED if table.owner(lane) == self.me else Ownership.NOT_OWNED
        if epoch > table.epoch:
            return Ownership.TABLE_BEHIND
        if table.owner(lane) != self.me:
            return Ownership.NOT_OWNED
        if epoch < table.lane_epoch(lane):
            return Ownership.STALE_EPOCH
        if lane in sealed:
            return Ownership.SEALED
        return Ownership.OWNED

    def receive(
        self,
        *,
        sender: int,
        incarnation: int,
        epoch: int,
        runs: Sequence[tuple[int, int, int]],
        table: PartitionTable,
        sealed: Collection[int] = (),
    ) -> Receipt:
        """Judge a message's runs ``(lane, first_seq, count)``; the hwms do not move.

        Runs of one lane may follow each other in a message; they are judged in
        order, each against the hwm the previous one would leave. ``sender`` may be
        this shard itself: a slot that moved here while our outbox held runs for it
        gets them through the loopback, deduplicated by the hwm that moved with the
        slot (docs/handoff.md, "Slot moves"). ``sealed``: slots this shard owns but has
        sealed for a move; their runs are deferred, so the hwms that travel with the
        slot stay final.

        Returns:
            The receipt; the caller applies its accepted runs and then passes it to
            :meth:`commit`. Until then the inbox is as it was.

        Raises:
            ProtocolError: the message breaks the protocol (an empty run, a seq
                below 1, a lane that is neither a slot nor a shard's pool lane). This
                is the one thing a judgement changes: the sender incarnation is
                refused from then on (the receiver's sticky error state, as in h11),
                and nothing of the message is applied.
        """
        failed = self.failed.get((sender, incarnation))
        if failed is not None:
            raise ProtocolError(f"shard {sender} (incarnation {incarnation}) is refused: {failed}")
        problem = _malformed(runs)
        if problem:
            self.failed[(sender, incarnation)] = problem
            raise ProtocolError(f"shard {sender} (incarnation {incarnation}): {problem}")
        accepted: list[Accepted] = []
        hwms: dict[tuple[int, int], int] = {}
        judged: dict[tuple[int, int], int] = {}
        acks: list[tuple[int, int]] = []
        redirects: list[tuple[int, int, int]] = []
        deferred: list[int] = []
        verdicts: list[Verdict] = []
        for index, (lane, first_seq, count) in enumerate(runs):
            key = (sender, lane)
            hwm = hwms.get(key, self.hwms.get(key, 0))
            last_seq = first_seq + count - 1
            if last_seq <= hwm:
                order = Order.DUPLICATE
            elif first_seq > hwm + 1:
                order = Order.GAP
            else:
                order = Order.NEXT
            verdict = RECEIVE_TABLE[(self.ownership(lane, epoch, table, sealed), order)]
            verdicts.append(verdict)
            if verdict is Verdict.APPLY:
                accepted.append(Accepted(index, hwm + 1 - first_seq))
                judged.setdefault(key, self.hwms.get(key, 0))
                hwms[key] = last_seq
                acks.append((lane, last_seq))
            elif verdict is Verdict.ACK:
                acks.append((lane, hwm))
            elif verdict is Verdict.REDIRECT:
                redirects.append((lane, table.owner(lane), table.epoch))
            else:
                deferred.append(lane)
        return Receipt(
            tuple(accepted),
            hwms,
            tuple(acks),
            tuple(redirects),
            tuple(deferred),
            tuple(verdicts),
            judged,
        )

    def commit(self, receipt: Receipt) -> None:
        """Move the hwms as ``receipt`` says: every run it accepted is applied.

        Call it once the whole message is accepted (its entries decoded and checked),
        in the same step that persists ``receipt.hwms``. A receipt must be committed
        against the hwms it was judged on: judging two messages and committing both
        would apply the second's overlap twice (an assertion, a programmer error).
        """
        for key, hwm in receipt.judged.items():
            assert self.hwms.get(key, 0) == hwm, (
                f"receipt for (sender, lane) {key} judged at hwm {hwm}, now "
                f"{self.hwms.get(key, 0)}: it is stale"
            )
        self.hwms.update(receipt.hwms)


def _malformed(runs: Sequence[tuple[int, int, int]]) -> str:
    for lane, first_seq, count in runs:
        if first_seq < 1 or count < 1:
            return f"run on lane {lane} has first seq {first_seq} and {count} tokens"
        if not (0 <= lane < SLOT_COUNT or POOL_LANE_BASE <= lane < POOL_LANE_BASE + SHARDS_MAX):
            return (
                f"lane {lane} is neither a slot (0..{SLOT_COUNT - 1}) nor a pool lane "
                f"({POOL_LANE_BASE}..{POOL_LANE_BASE + SHARDS_MAX - 1})"
            )
    return ""
