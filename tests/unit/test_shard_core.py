"""The shard's sans-IO core (shard/core.py) driven by hand: no store, socket or clock.

Two cores of one cluster exchange the frames their ``sends`` return, as a simulator
will: what one shard produces for the other's slot crosses as a ``Handoff``, is
acknowledged, and leaves the sender's outbox only then. Time is a number the test
passes in.
"""

from __future__ import annotations

from typing import Any

import pytest

from nets.firing import PlacedEntry
from router.wire import (
    REQUESTS,
    Complete,
    Completed,
    Counts,
    Envelope,
    Handoff,
    HandoffAck,
    Lease,
    Leased,
    Message,
    Ping,
    Pong,
    Put,
    PutAck,
    QueryCounts,
    Redirect,
    decode,
    encode,
)
from shard.batch import Batch, Recovered
from shard.core import _REQUEST_HANDLERS, ShardCore
from shard.link import ROUTER
from shard.request_checks import RequestError
from shard.shard_setup import ShardSetup
from tests.nets_for_tests import hopper, hopping, jobs

T0_MS = 1_000_000


class NoSlots:
    """No slot is ever sealed in these tests: the store is never asked."""

    def slot_entries(self, slot: int) -> list[PlacedEntry]:
        raise AssertionError(f"slot {slot} read from a store that does not exist")


class Unbounded:
    def exhausted(self) -> bool:
        return False


def _fresh() -> Recovered:
    return Recovered(marking={}, clock_ms=0, clients={}, initialised=False)


def _core(net: Any, shard_id: int = 0, shard_count: int = 1) -> ShardCore:
    setup = ShardSetup.of(net, shard_id=shard_id, shard_count=shard_count)
    return ShardCore(setup, _fresh(), incarnation=1, now_ms=T0_MS, slots=NoSlots())


def _request(core: ShardCore, now_ms: int, message: Message, incarnation: int = 0) -> Any:
    # Through the wire format, as the shell decodes what a socket delivers.
    return core.handle(now_ms, decode(encode(message, message_id=1, incarnation=incarnation)))


def test_every_request_has_a_handler_and_replies_do_not() -> None:
    shard_requests = set(REQUESTS) - {m for m in REQUESTS if m.__name__ in _ROUTER_ONLY}
    assert set(_REQUEST_HANDLERS) == shard_requests
    core = _core(jobs())
    with pytest.raises(RequestError, match="PutAck is a reply, not a request"):
        core.handle(T0_MS, Envelope(PutAck(1, 1, False), 0, 0))


_ROUTER_ONLY = {"GetTable", "Heartbeat", "ClusterStatus", "MoveReport", "Scale"}


def test_a_new_store_gets_its_initial_marking_in_the_first_batch() -> None:
    core = _core(hopping())
    assert not core.initialised
    batch = core.take_batch()
    assert sum(n for (place, _t, _tok), n in batch.marking.items() if place == "tickets") == 6
    core.committed(T0_MS)
    assert core.initialised and core.take_batch().is_empty()


def test_put_lease_complete_at_times_the_caller_gives() -> None:
    core = _core(jobs())
    core.take_batch()
    core.committed(T0_MS)
    job = ("q", "job1", 7)
    ack = _request(core, T0_MS, Put("client", 1, "inbox", (job,), 0))
    assert ack == PutAck(1, 1, False)
    assert core.fire(T0_MS, Unbounded()) == 1  # dispatch: inbox -> work
    leased = _request(core, T0_MS + 5, Lease("worker", 1, "work", 1, 30_000, 0))
    assert isinstance(leased, Leased) and leased.expires_at_ms == T0_MS + 5 + 30_000
    # The lease's expiry is the core's next deadline: nothing else is due.
    core.fire(T0_MS + 5, Unbounded())
    assert core.next_deadline_ms() == T0_MS + 5 + 30_000
    done = _request(
        core, T0_MS + 9, Complete("worker", 2, leased.lease_id, (("results", ("q", "job1", 8)),))
    )
    assert done == Completed(2, leased.lease_id, False)
    batch = core.take_batch()
    assert batch.clients.keys() == {"client", "worker"}
    assert _request(core, T0_MS + 10, QueryCounts()) == Counts(
        {
            "inbox": 0,
            "work": 0,
            "results": 1,
            "notes": 0,
            "work__held": 0,
            "work__timer": 1,
        },
        T0_MS + 10,
        {},
        0,
    )


def test_same_inputs_same_outputs() -> None:
    def run() -> list[bytes]:
        core = _core(jobs())
        core.take_batch()
        core.committed(T0_MS)
        frames = []
        for i in range(5):
            put = Put("c", i + 1, "inbox", ((f"q{i}", f"j{i}", i),), i)
            reply = _request(core, T0_MS + i, put)
            frames.append(encode(reply, message_id=0))
            core.fire(T0_MS + i, Unbounded())
        frames.append(encode(_request(core, T0_MS + 9, QueryCounts()), message_id=0))
        batch = core.take_batch()
        frames.append(repr(sorted(batch.marking.items())).encode())
        return frames

    assert run() == run()


def _exchange(sender: ShardCore, receiver: ShardCore, now_ms: int) -> int:
    """Deliver the sender's handoff frames to the receiver and its answers back, as a
    network would after both committed; returns how many runs crossed."""
    crossed = 0
    sender.take_batch()
    sender.committed(now_ms)
    for send in sender.sends(now_ms):
        if send.target == ROUTER:
            continue
        envelope = decode(send.frame)
        assert isinstance(envelope.message, Handoff) and send.target == receiver.setup.shard_id
        reply = receiver.handle(now_ms, envelope)
        assert isinstance(reply, HandoffAck)
        receiver.take_batch()
        receiver.committed(now_ms)
        sender.peer_message(
            now_ms, receiver.setup.shard_id, decode(encode(reply, message_id=0, incarnation=1))
        )
        crossed += 1
    return crossed


def test_two_cores_hand_tokens_over_without_sockets() -> None:
    left, right = _core(hopping(), 0, 2), _core(hopping(), 1, 2)
    now = T0_MS
    total = 40
    for index in range(total):
        # Put at the shard that owns the hopper's first key, as a client's router would.
        put = Put("client", index + 1, "hops", (tuple(hopper(index, 5)),), 0)
        for core in (left, right):
            if not isinstance(_request(core, now, put), Redirect):
                break
    for _turn in range(200):
        fired = 0
        for core in (left, right):
            core.loop_back()
            fired += core.fire(now, Unbounded())
        crossed = _exchange(left, right, now) + _exchange(right, left, now)
        pending = left.exchange.outbox.pending_tokens() + right.exchange.outbox.pending_tokens()
        if fired == crossed == pending == 0:
            break
        now += 10
    landed = _count(left, "arrived") + _count(right, "arrived")
    assert landed + _count(left, "hops") + _count(right, "hops") == total
    assert landed == total, "every hopper arrived: nothing lost, nothing twice"
    assert left.exchange.outbox.pending_tokens() == right.exchange.outbox.pending_tokens() == 0
    assert left.counters["requests_Handoff"] + right.counters["requests_Handoff"] > 0


def _count(core: ShardCore, place: str) -> int:
    return core.engine.count(place)


def test_a_failed_commit_rebuilds_a_read_only_core_that_still_answers_queries() -> None:
    core = _core(jobs())
    core.take_batch()
    core.committed(T0_MS)
    _request(core, T0_MS, Put("client", 1, "inbox", (("q", "a", 1),), 0))
    core.take_batch()  # its commit fails: the store still holds the empty marking
    again = core.after_failed_commit(
        Recovered(marking={}, clock_ms=T0_MS, clients={}, initialised=True), "disk full", T0_MS
    )
    assert again.engine.count("inbox") == 0
    assert again.counters is core.counters  # the counters go on
    with pytest.raises(RequestError, match="disk full"):
        _request(again, T0_MS + 1, Put("client", 2, "inbox", (("q", "b", 1),), 0))
    assert isinstance(_request(again, T0_MS + 1, Ping()), Pong)
    assert again.fire(T0_MS + 1, Unbounded()) == 0
    assert isinstance(again.take_batch(), Batch)
