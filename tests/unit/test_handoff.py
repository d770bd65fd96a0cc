"""The handoff machines, pair by pair: the sender's lane states and the receiver's verdicts.

The sender (:class:`Outbox`) is driven through its public methods only: each
(:class:`LaneState`, :class:`LaneEvent`) pair is reached by a short history of offers,
sends and answers, then the event is delivered by the method that raises it. The
receiver (:class:`Inbox`) is judged on every (:class:`Ownership`, :class:`Order`) pair
of its verdict table. docs/handoff.md renders both tables; a test keeps it in step.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from router.handoff import (
    DESTINATION_WINDOW_TOKENS_MAX,
    LANE_TRANSITIONS,
    LANE_WINDOW_TOKENS_MAX,
    MESSAGE_RUNS_MAX,
    MESSAGE_TOKENS_MAX,
    RECEIVE_TABLE,
    Accepted,
    AcknowledgementError,
    Inbox,
    LaneEvent,
    LaneState,
    Order,
    Outbox,
    Outgoing,
    Ownership,
    ProtocolError,
    Receipt,
    Run,
    Verdict,
    lane_step,
)
from router.slots import SLOT_COUNT
from router.table import POOL_LANE_BASE, SHARDS_MAX, PartitionTable, pool_lane

ROOT = Path(__file__).resolve().parents[2]
RESEND_MS = 100
TABLE = PartitionTable.initial(3)  # slot s belongs to shard s % 3
LANE = 4  # shard 1's slot at epoch 1
MOVED = TABLE.assign({LANE: 2})  # epoch 2: the slot moves to shard 2

_S = LaneState
_E = LaneEvent

# -- the sender ---------------------------------------------------------------------------


def outbox_in(state: LaneState) -> Outbox:
    """An outbox whose lane ``LANE`` is in ``state``, reached through public methods.

    Seq 1-2 were offered and sent at t=0 (to shard 1); SENDING also has seq 3 offered
    and not yet sent; IDLE had 1-2 acknowledged; REDIRECTED was redirected to shard 2
    at epoch 2; ERROR was acknowledged beyond what it ever offered.
    """
    out = Outbox(resend_ms=RESEND_MS)
    out.table_changed(TABLE)
    out.offer(LANE, b"a", 2)
    assert out.due(0, TABLE) == [Outgoing(1, 1, (Run(LANE, 1, 2, b"a"),))]
    if state is _S.IDLE:
        assert out.acknowledged(acks=[(LANE, 2)], now_ms=1) == [Run(LANE, 1, 2, b"a")]
    elif state is _S.SENDING:
        out.offer(LANE, b"b", 1)
    elif state is _S.REDIRECTED:
        out.acknowledged(acks=(), redirects=[(LANE, 2, MOVED.epoch)], now_ms=1)
    elif state is _S.ERROR:
        with pytest.raises(ProtocolError, match="acknowledged up to seq 3, but only 2"):
            out.acknowledged(acks=[(LANE, 3)], now_ms=1)
    assert out.lanes[LANE].state is state
    return out


# How each event reaches the machine. A "send" happens before any resend deadline,
# a "timeout" at it; "ack" acknowledges seq 1 (tokens remain: in idle it repeats what is
# acknowledged, which is ack_all), "ack_all" everything offered; "table" brings a table
# older than the one a redirected lane waits for, "caught_up" that table.
DELIVER: dict[LaneEvent, Callable[[Outbox], object]] = {
    _E.OFFER: lambda out: out.offer(LANE, b"c", 1),
    _E.SEND: lambda out: out.due(1, TABLE),
    _E.ACK: lambda out: out.acknowledged(acks=[(LANE, 1)], now_ms=1),
    _E.ACK_ALL: lambda out: out.acknowledged(acks=[(LANE, out.lanes[LANE].next_seq - 1)], now_ms=1),
    _E.REDIRECT: lambda out: out.acknowledged(acks=(), redirects=[(LANE, 2, 2)], now_ms=1),
    _E.TABLE: lambda out: out.table_changed(TABLE),
    _E.CAUGHT_UP: lambda out: out.table_changed(MOVED),
    _E.TIMEOUT: lambda out: out.due(RESEND_MS, TABLE),
}
# Pairs that no method raises: due() sends only for SENDING lanes, table_changed()
# passes over a failed lane and raises caught_up only for a redirected one, and an
# idle lane has nothing left to acknowledge but everything. In these states the
# methods above raise another event, or none.
NEVER_RAISED = {
    (_S.IDLE, _E.SEND),
    (_S.IDLE, _E.TIMEOUT),
    (_S.IDLE, _E.ACK),
    (_S.IDLE, _E.CAUGHT_UP),
    (_S.SENDING, _E.CAUGHT_UP),
    (_S.REDIRECTED, _E.SEND),
    (_S.REDIRECTED, _E.TIMEOUT),
    (_S.ERROR, _E.SEND),
    (_S.ERROR, _E.TIMEOUT),
    (_S.ERROR, _E.TABLE),
    (_S.ERROR, _E.CAUGHT_UP),
}
PAIRS = [(state, event) for state in LaneState for event in LaneEvent]


def _pair_id(pair: tuple[LaneState, LaneEvent]) -> str:
    return f"{pair[0].value}-{pair[1].value}"


@pytest.mark.parametrize("pair", PAIRS, ids=_pair_id)
def test_lane_step_follows_the_table_and_refuses_every_other_pair(
    pair: tuple[LaneState, LaneEvent],
) -> None:
    state, event = pair
    if pair in LANE_TRANSITIONS:
        assert lane_step(state, event) is LANE_TRANSITIONS[pair]
    else:
        with pytest.raises(ProtocolError, match=f"event {event.value} is not allowed"):
            lane_step(state, event)


@pytest.mark.parametrize("pair", PAIRS, ids=_pair_id)
def test_every_lane_state_and_event_pair_moves_as_the_table_says_or_raises(
    pair: tuple[LaneState, LaneEvent],
) -> None:
    state, event = pair
    out = outbox_in(state)
    lane = out.lanes[LANE]
    before = (lane.next_seq, lane.acked, lane.sent, list(lane.runs))
    new = LANE_TRANSITIONS.get(pair)
    if pair in NEVER_RAISED:
        DELIVER[event](out)
        assert lane.state is state
    elif new is None:
        with pytest.raises(ProtocolError, match=f"event {event.value} is not allowed"):
            DELIVER[event](out)
        assert lane.state is _S.ERROR
        # Validate, then act: a refused event changed nothing but the state.
        assert (lane.next_seq, lane.acked, lane.sent, list(lane.runs)) == before
    else:
        result = DELIVER[event](out)
        assert lane.state is new
        if event in (_E.SEND, _E.TIMEOUT):
            assert result, "the event happened: runs were sent"


def test_the_table_refuses_exactly_what_it_does_not_list() -> None:
    refused = {pair for pair in PAIRS if pair not in LANE_TRANSITIONS}
    assert refused - NEVER_RAISED == {
        (_S.ERROR, _E.OFFER),
        (_S.ERROR, _E.ACK),
        (_S.ERROR, _E.ACK_ALL),
        (_S.ERROR, _E.REDIRECT),
    }
    assert _S.ERROR not in LANE_TRANSITIONS.values()
    assert not any(state is _S.ERROR for state, _event in LANE_TRANSITIONS)


@pytest.mark.parametrize("state", [_S.IDLE, _S.SENDING, _S.REDIRECTED], ids=lambda s: s.value)
@pytest.mark.parametrize("event", list(LaneEvent), ids=lambda e: e.value)
def test_a_failed_lane_stays_failed_whatever_comes_next(state: LaneState, event: LaneEvent) -> None:
    out = outbox_in(state)
    with pytest.raises(ProtocolError, match="acknowledged up to seq 9"):
        out.acknowledged(acks=[(LANE, 9)], now_ms=1)
    assert out.failed_lanes() == {LANE: out.lanes[LANE].error}
    for _ in range(2):
        with contextlib.suppress(ProtocolError):
            assert DELIVER[event](out) in ([], None)  # due() and table_changed() pass it over
        assert out.lanes[LANE].state is _S.ERROR
        assert "acknowledged up to seq 9" in out.lanes[LANE].error  # the first violation
    assert out.next_deadline() is None
    assert not out.has_unsent()
    # Other lanes carry on.
    out.offer(LANE + 3, b"x", 1)
    assert [(m.shard, m.runs) for m in out.due(2, TABLE)] == [(1, (Run(LANE + 3, 1, 1, b"x"),))]


@pytest.mark.parametrize(
    "answer",
    [
        {"acks": [(LANE + 3, 1)]},
        {"acks": (), "redirects": [(LANE + 3, 2, 2)]},
    ],
    ids=["ack", "redirect"],
)
def test_an_answer_for_a_lane_never_used_is_a_protocol_error(answer: dict[str, object]) -> None:
    out = outbox_in(_S.SENDING)
    with pytest.raises(ProtocolError, match=f"lane {LANE + 3}"):
        out.acknowledged(**answer, now_ms=1)  # type: ignore[arg-type]
    assert out.failed_lanes() == {}


def test_a_deferral_of_an_unknown_lane_is_ignored() -> None:
    out = outbox_in(_S.SENDING)
    assert out.acknowledged(acks=(), deferred=[LANE + 3], now_ms=1) == []
    assert LANE + 3 not in out.lanes


def _resent_seqs(messages: Sequence[Outgoing]) -> list[int]:
    return [run.first_seq for message in messages for run in message.runs]


def test_unacknowledged_runs_are_resent_after_resend_ms_going_back_n() -> None:
    out = Outbox(resend_ms=RESEND_MS)
    for _ in range(3):
        out.offer(LANE, b"", 2)  # seq 1-2, 3-4, 5-6
    assert _resent_seqs(out.due(0, TABLE)) == [1, 3, 5]
    assert out.next_deadline() == RESEND_MS
    assert out.acknowledged(acks=[(LANE, 2)], now_ms=10) == [Run(LANE, 1, 2, b"")]
    assert out.next_deadline() == 10 + RESEND_MS  # progress restarts the timer
    assert out.due(10 + RESEND_MS - 1, TABLE) == []
    # Go back to the first unacknowledged seq and send everything from there again.
    assert _resent_seqs(out.due(10 + RESEND_MS, TABLE)) == [3, 5]
    assert out.pending_tokens() == 4


def test_a_steady_stream_of_new_runs_does_not_postpone_a_resend() -> None:
    out = Outbox(resend_ms=RESEND_MS)
    out.offer(LANE, b"", 1)
    out.due(0, TABLE)  # lost
    for now_ms in range(25, RESEND_MS, 25):
        out.offer(LANE, b"", 1)
        assert _resent_seqs(out.due(now_ms, TABLE)) == [now_ms // 25 + 1]
    assert _resent_seqs(out.due(RESEND_MS, TABLE)) == [1, 2, 3, 4]


def test_a_repeated_or_stale_acknowledgement_changes_nothing() -> None:
    out = outbox_in(_S.SENDING)
    out.acknowledged(acks=[(LANE, 2)], now_ms=5)
    for hwm in (2, 1, 0):
        assert out.acknowledged(acks=[(LANE, hwm)], now_ms=6) == []
    assert (out.lanes[LANE].acked, out.pending_tokens(), out.lanes[LANE].state) == (
        2,
        1,
        _S.SENDING,
    )


def test_a_redirected_lane_waits_for_the_new_table_then_goes_to_the_new_owner() -> None:
    out = outbox_in(_S.REDIRECTED)
    assert out.waiting_epoch() == 2
    assert out.due(10 * RESEND_MS, TABLE) == []
    assert out.next_deadline() is None
    out.offer(LANE, b"b", 1)  # keeps waiting
    out.table_changed(TABLE)  # not yet
    assert out.lanes[LANE].state is _S.REDIRECTED
    out.table_changed(MOVED)
    assert out.waiting_epoch() == 0
    assert out.due(11 * RESEND_MS, MOVED) == [
        Outgoing(2, 2, (Run(LANE, 1, 2, b"a"), Run(LANE, 3, 1, b"b")))
    ]


def test_a_redirect_that_our_table_already_answers_sends_again_at_once() -> None:
    # The old owner redirects a message sent before our table moved on: the table we
    # hold already names the new owner, so the lane must not wait for another epoch.
    out = outbox_in(_S.SENDING)
    out.table_changed(MOVED)
    out.acknowledged(acks=(), redirects=[(LANE, 2, MOVED.epoch)], now_ms=1)
    assert out.lanes[LANE].state is _S.SENDING
    assert out.waiting_epoch() == 0
    assert out.due(2, MOVED) == [Outgoing(2, 2, (Run(LANE, 1, 2, b"a"), Run(LANE, 3, 1, b"b")))]


def test_a_fault_in_one_lane_of_an_answer_leaves_the_other_lanes_applied() -> None:
    out = Outbox(resend_ms=RESEND_MS)
    good, bad = LANE, LANE + 3  # both shard 1's
    out.offer(good, b"", 2)
    out.offer(bad, b"", 2)
    out.due(0, TABLE)
    with pytest.raises(
        AcknowledgementError, match=f"lane {bad}: acknowledged up to seq 9"
    ) as raised:
        out.acknowledged(acks=[(bad, 9), (good, 2)], redirects=[(999, 0, 1)], now_ms=1)
    assert [(run.lane, run.first_seq) for run in raised.value.done] == [(good, 1)]
    assert "redirect for lane 999" in str(raised.value)
    assert out.lanes[good].state is _S.IDLE
    assert out.lanes[bad].state is _S.ERROR
    assert out.pending_tokens() == 2  # the failed lane's tokens stay in the outbox


def test_a_late_ack_from_the_old_owner_counts() -> None:
    out = outbox_in(_S.REDIRECTED)
    assert out.acknowledged(acks=[(LANE, 2)], now_ms=1) == [Run(LANE, 1, 2, b"a")]
    assert out.lanes[LANE].state is _S.IDLE
    assert out.pending_tokens() == 0


def test_a_stale_redirect_of_an_acknowledged_lane_is_ignored() -> None:
    out = outbox_in(_S.IDLE)
    out.acknowledged(acks=(), redirects=[(LANE, 2, 2)], now_ms=1)
    assert out.lanes[LANE].state is _S.IDLE
    assert out.waiting_epoch() == 0


def test_a_deferred_lane_is_sent_again_after_resend_ms_not_at_once() -> None:
    out = outbox_in(_S.SENDING)
    out.due(1, TABLE)  # seq 3 goes too
    out.acknowledged(acks=(), deferred=[LANE], now_ms=50)
    assert out.due(51, TABLE) == []
    assert out.next_deadline() == 50 + RESEND_MS
    assert _resent_seqs(out.due(50 + RESEND_MS, TABLE)) == [1, 3]


def test_a_lane_sends_at_most_its_window_and_more_as_acks_come() -> None:
    window = min(LANE_WINDOW_TOKENS_MAX, DESTINATION_WINDOW_TOKENS_MAX)
    size = math.gcd(window, MESSAGE_TOKENS_MAX)  # runs that fill the window exactly
    out = Outbox(resend_ms=RESEND_MS)
    runs = window // size + 1
    for _ in range(runs):
        out.offer(LANE, b"", size)
    sent = out.due(0, TABLE)
    assert sum(run.count for message in sent for run in message.runs) == window
    assert all(sum(r.count for r in m.runs) <= MESSAGE_TOKENS_MAX for m in sent)
    assert out.has_unsent()
    assert out.due(1, TABLE) == []
    out.acknowledged(acks=[(LANE, size)], now_ms=2)
    assert _resent_seqs(out.due(3, TABLE)) == [window + 1]
    assert not out.has_unsent()


def test_a_destination_window_spans_its_lanes_but_one_run_always_goes() -> None:
    out = Outbox(resend_ms=RESEND_MS)
    lanes = [slot for slot in range(SLOT_COUNT) if TABLE.owner(slot) == TABLE.owner(LANE)][:3]
    for lane in lanes:
        out.offer(lane, b"", DESTINATION_WINDOW_TOKENS_MAX // 2)
    sent = out.due(0, TABLE)
    # Two lanes fill the destination's window; the third waits for acknowledgements.
    assert sorted(r.lane for m in sent for r in m.runs) == sorted(lanes[:2])
    out.acknowledged(acks=[(lanes[0], DESTINATION_WINDOW_TOKENS_MAX // 2)], now_ms=1)
    assert [r.lane for m in out.due(2, TABLE) for r in m.runs] == [lanes[2]]
    lone = Outbox(resend_ms=RESEND_MS)
    lone.offer(LANE, b"", DESTINATION_WINDOW_TOKENS_MAX * 2)  # larger than any window
    assert [r.count for m in lone.due(0, TABLE) for r in m.runs] == [
        DESTINATION_WINDOW_TOKENS_MAX * 2
    ]


def _message_sizes(out: Outbox) -> list[tuple[int, list[int]]]:
    return [(m.shard, [run.count for run in m.runs]) for m in out.due(0, TABLE)]


@pytest.mark.parametrize(
    ("counts", "sizes"),
    [
        ([15_000, 15_000], [[15_000], [15_000]]),
        ([5_000] * 5, [[5_000] * 4, [5_000]]),
        ([1, MESSAGE_TOKENS_MAX + 1, 1], [[1], [MESSAGE_TOKENS_MAX + 1], [1]]),
    ],
    ids=["split", "fill", "oversized-run-alone"],
)
def test_messages_hold_at_most_message_tokens_max(
    counts: list[int], sizes: list[list[int]]
) -> None:
    out = Outbox()
    for count in counts:
        out.offer(LANE, b"", count)
    assert _message_sizes(out) == [(1, size) for size in sizes]


def test_messages_hold_at_most_message_runs_max_and_go_per_shard() -> None:
    out = Outbox()
    for _ in range(MESSAGE_RUNS_MAX + 1):
        out.offer(LANE, b"", 1)
    out.offer(pool_lane(0), b"", 1)
    out.offer(LANE + 1, b"", 2)  # slot 5: shard 2
    sizes = _message_sizes(out)
    assert [(shard, len(runs)) for shard, runs in sizes] == [
        (0, 1),
        (1, MESSAGE_RUNS_MAX),
        (1, 1),
        (2, 1),
    ]


def test_next_deadline_and_pending_tokens_follow_the_lanes() -> None:
    out = Outbox(resend_ms=RESEND_MS)
    assert (out.next_deadline(), out.pending_tokens(), out.has_unsent()) == (None, 0, False)
    out.offer(LANE, b"", 3)
    out.offer(pool_lane(2), b"", 4)
    assert (out.next_deadline(), out.pending_tokens(), out.has_unsent()) == (None, 7, True)
    out.due(20, TABLE)
    assert (out.next_deadline(), out.has_unsent()) == (20 + RESEND_MS, False)
    out.acknowledged(acks=[(LANE, 3), (pool_lane(2), 1)], now_ms=30)
    assert (out.next_deadline(), out.pending_tokens()) == (30 + RESEND_MS, 3)
    out.acknowledged(acks=[(pool_lane(2), 4)], now_ms=40)
    assert (out.next_deadline(), out.pending_tokens()) == (None, 0)
    assert {lane.state for lane in out.lanes.values()} == {_S.IDLE}


def test_restore_resends_the_durable_outbox_in_seq_order() -> None:
    out = Outbox(resend_ms=RESEND_MS)
    out.restore(LANE, next_seq=12, runs=[Run(LANE, 9, 3, b"c"), Run(LANE, 6, 3, b"b")])
    assert out.lanes[LANE].state is _S.SENDING
    assert out.pending_tokens() == 6
    assert out.due(0, TABLE) == [Outgoing(1, 1, (Run(LANE, 6, 3, b"b"), Run(LANE, 9, 3, b"c")))]
    assert out.offer(LANE, b"d", 1) == Run(LANE, 12, 1, b"d")


def test_restore_of_an_acknowledged_lane_keeps_its_counter_and_nothing_pending() -> None:
    out = Outbox(resend_ms=RESEND_MS)
    out.restore(LANE, next_seq=10, runs=())
    assert (out.lanes[LANE].state, out.pending_tokens()) == (_S.IDLE, 0)
    assert out.offer(LANE, b"", 1) == Run(LANE, 10, 1, b"")
    assert out.pending_tokens() == 1
    assert _resent_seqs(out.due(0, TABLE)) == [10]


# -- the receiver --------------------------------------------------------------------------

ME = 1
SENDER = 0
HWM = 5
HERE = 3  # shard 0's slot at epoch 1, ours since epoch 2
ELSEWHERE = 5  # shard 2's slot
OURS = TABLE.assign({HERE: ME})  # epoch 2

# (lane, message epoch) that make each ownership, judged by OURS.
OWNERSHIP_CASES = {
    Ownership.OWNED: (HERE, 2),
    Ownership.NOT_OWNED: (ELSEWHERE, 2),
    Ownership.STALE_EPOCH: (HERE, 1),
    Ownership.TABLE_BEHIND: (HERE, 3),
    Ownership.SEALED: (HERE, 2),  # with HERE sealed for a move
}
# (first seq, count) that make each order against hwm 5.
ORDER_CASES = {
    Order.NEXT: (6, 2),
    Order.DUPLICATE: (2, 4),
    Order.GAP: (7, 1),
}


def receive(
    inbox: Inbox,
    runs: Sequence[tuple[int, int, int]],
    *,
    epoch: int = 2,
    sender: int = SENDER,
    incarnation: int = 1,
    table: PartitionTable = OURS,
    sealed: tuple[int, ...] = (),
) -> Receipt:
    return inbox.receive(
        sender=sender, incarnation=incarnation, epoch=epoch, runs=runs, table=table, sealed=sealed
    )


@pytest.mark.parametrize("ownership", list(Ownership), ids=lambda o: o.value)
@pytest.mark.parametrize("order", list(Order), ids=lambda o: o.value)
def test_every_ownership_and_order_pair_gets_its_verdict(
    ownership: Ownership, order: Order
) -> None:
    lane, epoch = OWNERSHIP_CASES[ownership]
    first_seq, count = ORDER_CASES[order]
    inbox = Inbox(ME, {(SENDER, lane): HWM})
    sealed = (lane,) if ownership is Ownership.SEALED else ()
    assert inbox.ownership(lane, epoch, OURS, sealed) is ownership
    receipt = receive(inbox, [(lane, first_seq, count)], epoch=epoch, sealed=sealed)
    verdict = RECEIVE_TABLE[(ownership, order)]
    assert receipt.verdicts == (verdict,)
    applied = verdict is Verdict.APPLY
    last_seq = first_seq + count - 1
    assert receipt.accepted == ((Accepted(0, 0),) if applied else ())
    assert receipt.hwms == ({(SENDER, lane): last_seq} if applied else {})
    assert inbox.hwms == {(SENDER, lane): HWM}  # judged, not yet acted on
    inbox.commit(receipt)
    assert inbox.hwms == {(SENDER, lane): last_seq if applied else HWM}
    expected_acks = {Verdict.APPLY: ((lane, last_seq),), Verdict.ACK: ((lane, HWM),)}
    assert receipt.acks == expected_acks.get(verdict, ())
    redirect = ((lane, OURS.owner(lane), OURS.epoch),)
    assert receipt.redirects == (redirect if verdict is Verdict.REDIRECT else ())
    assert receipt.deferred == ((lane,) if verdict is Verdict.DEFER else ())


def test_a_receipt_not_committed_leaves_no_trace() -> None:
    # The shell refuses the message after judging (an entry it cannot decode): the
    # same runs are judged the same way when they come again.
    inbox = Inbox(ME, {(SENDER, HERE): HWM})
    first = receive(inbox, [(HERE, HWM + 1, 2)])
    assert inbox.hwms == {(SENDER, HERE): HWM}
    again = receive(inbox, [(HERE, HWM + 1, 2)])
    assert again == first
    inbox.commit(again)
    assert inbox.hwms == {(SENDER, HERE): HWM + 2}
    assert receive(inbox, [(HERE, HWM + 1, 2)]).verdicts == (Verdict.ACK,)


def test_a_stale_receipt_is_not_committed() -> None:
    inbox = Inbox(ME)
    first = receive(inbox, [(HERE, 1, 2)])
    second = receive(inbox, [(HERE, 1, 3)])  # judged against the same hwm
    inbox.commit(first)
    with pytest.raises(AssertionError, match="stale"):
        inbox.commit(second)  # it would apply seq 1-2 a second time
    assert inbox.hwms == {(SENDER, HERE): 2}


def test_the_verdict_table_is_complete() -> None:
    assert set(RECEIVE_TABLE) == {(o, r) for o in Ownership for r in Order}


def test_a_run_overlapping_the_hwm_applies_only_its_new_part() -> None:
    inbox = Inbox(ME, {(SENDER, HERE): HWM})
    receipt = receive(inbox, [(HERE, 4, 4)])  # seq 4-7: 4 and 5 were applied before
    assert receipt.accepted == (Accepted(0, 2),)
    assert receipt.acks == ((HERE, 7),)


def test_runs_of_one_lane_in_one_message_are_judged_in_order() -> None:
    inbox = Inbox(ME)
    receipt = receive(inbox, [(HERE, 3, 2), (HERE, 1, 2), (HERE, 3, 2)])
    assert receipt.verdicts == (Verdict.ACK, Verdict.APPLY, Verdict.APPLY)
    assert receipt.accepted == (Accepted(1, 0), Accepted(2, 0))
    assert receipt.acks == ((HERE, 0), (HERE, 2), (HERE, 4))
    assert receipt.hwms == {(SENDER, HERE): 4}


def test_the_hwm_is_kept_per_sender_and_lane() -> None:
    inbox = Inbox(ME, {(SENDER, HERE): HWM})
    receipt = receive(inbox, [(HERE, 1, 1), (pool_lane(ME), 1, 1)], sender=2)
    assert receipt.verdicts == (Verdict.APPLY, Verdict.APPLY)
    inbox.commit(receipt)
    assert inbox.hwms == {(SENDER, HERE): HWM, (2, HERE): 1, (2, pool_lane(ME)): 1}


def test_redirects_name_the_current_owner_and_epoch() -> None:
    later = OURS.assign({ELSEWHERE: 0})  # epoch 3
    receipt = receive(Inbox(ME), [(ELSEWHERE, 1, 1), (HERE, 1, 1)], epoch=1, table=later)
    assert receipt.redirects == ((ELSEWHERE, 0, 3), (HERE, ME, 3))  # the second: stale


def test_pool_lanes_ignore_epochs() -> None:
    inbox = Inbox(ME)
    receipt = receive(inbox, [(pool_lane(ME), 1, 2), (pool_lane(2), 1, 1), (HERE, 1, 1)], epoch=9)
    assert receipt.verdicts == (Verdict.APPLY, Verdict.REDIRECT, Verdict.DEFER)
    assert receipt.redirects == ((pool_lane(2), 2, OURS.epoch),)
    assert receipt.deferred == (HERE,)
    assert inbox.ownership(pool_lane(ME), 0, OURS) is Ownership.OWNED


def test_runs_a_shard_sends_itself_are_deduplicated_like_any_other() -> None:
    # A slot moved here with its dedup state while our outbox still held runs for it.
    inbox = Inbox(ME, {(ME, HERE): HWM})
    receipt = receive(inbox, [(HERE, 4, 2), (HERE, 6, 1)], sender=ME)
    assert receipt.verdicts == (Verdict.ACK, Verdict.APPLY)
    assert receipt.acks == ((HERE, HWM), (HERE, 6))


@pytest.mark.parametrize(
    ("bad_run", "message"),
    [
        ((HERE, 0, 1), "first seq 0 and 1 tokens"),
        ((HERE, 1, 0), "first seq 1 and 0 tokens"),
        ((-1, 1, 1), "lane -1 is neither a slot"),
        ((SLOT_COUNT, 1, 1), f"lane {SLOT_COUNT} is neither"),
        ((POOL_LANE_BASE - 1, 1, 1), "neither a slot"),
        ((POOL_LANE_BASE + SHARDS_MAX, 1, 1), "nor a pool lane"),
    ],
    ids=["seq-0", "empty", "negative-lane", "beyond-slots", "below-pools", "beyond-pools"],
)
def test_a_malformed_message_refuses_its_sender_incarnation_for_good(
    bad_run: tuple[int, int, int], message: str
) -> None:
    inbox = Inbox(ME, {(SENDER, HERE): HWM})
    with pytest.raises(ProtocolError, match=f"shard 0 \\(incarnation 1\\): .*{message}"):
        receive(inbox, [(HERE, HWM + 1, 1), bad_run])
    assert inbox.hwms == {(SENDER, HERE): HWM}  # not even the good run was applied
    for _ in range(2):
        with pytest.raises(ProtocolError, match="incarnation 1\\) is refused"):
            receive(inbox, [(HERE, HWM + 1, 1)])
    assert inbox.hwms == {(SENDER, HERE): HWM}
    # Another sender, and the sender's next incarnation, are heard.
    assert receive(inbox, [(HERE, 1, 1)], sender=2).verdicts == (Verdict.APPLY,)
    receipt = receive(inbox, [(HERE, HWM + 1, 1)], incarnation=2)
    assert receipt.verdicts == (Verdict.APPLY,)
    assert inbox.failed.keys() == {(SENDER, 1)}


# -- the documentation --------------------------------------------------------------------


def _markdown_rows(heading: str) -> dict[str, list[str]]:
    """The rows of the first Markdown table after ``heading`` in docs/handoff.md."""
    text = (ROOT / "docs" / "handoff.md").read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [re.sub(r"[`*]", "", cell).strip() for cell in line.strip("|").split("|")]
        if not set(cells[0]) <= set("-: "):
            rows[cells[0]] = cells[1:]
    return rows


def test_the_documented_sender_table_is_lane_transitions() -> None:
    rows = _markdown_rows("## The sender's lane states")
    header = rows.pop("state")
    assert header == [event.value for event in LaneEvent]
    documented = {
        (LaneState(state), LaneEvent(event)): LaneState(cell)
        for state, cells in rows.items()
        for event, cell in zip(header, cells, strict=True)
        if cell != "refused"
    }
    assert documented == LANE_TRANSITIONS
    assert sorted(rows) == sorted(state.value for state in LaneState)


def test_the_documented_receiver_table_is_receive_table() -> None:
    rows = _markdown_rows("## The receiver's verdicts")
    header = rows.pop("ownership")
    documented = {
        (Ownership(ownership), Order(order)): Verdict(cell)
        for ownership, cells in rows.items()
        for order, cell in zip(header, cells, strict=True)
    }
    assert documented == RECEIVE_TABLE
