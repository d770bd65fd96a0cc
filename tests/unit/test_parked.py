"""Parked lease requests (shard/parked.py): the pure bookkeeping."""

from __future__ import annotations

from pathlib import Path

from router.wire import Lease, Leased, Message, Put, decode, encode
from shard.parked import ParkedLease, ParkedLeases
from shard.shell.runtime import ShardConfig, ShardRuntime
from shard.shell.store import Durability

JOBS = "tests.nets_for_tests:jobs"


def _parked(client: str, place: str = "work", deadline_ms: int = 1_000) -> ParkedLease:
    return ParkedLease(client.encode(), 1, Lease(client, 1, place, 1, 30_000, 500), deadline_ms)


def test_parked_leases_are_answered_in_arrival_order_while_work_lasts() -> None:
    parked = ParkedLeases()
    for client in ("a", "b", "c"):
        parked.park(_parked(client))
    parked.park(_parked("x", place="other"))
    work = {"work": 2, "other": 0}

    def grant(p: ParkedLease) -> str:
        work[p.lease.place] -= 1
        return p.lease.client_id

    answered = parked.answer(0, lambda place: work[place] > 0, grant)
    assert answered == ["a", "b"]  # "c" waits on: the two tokens are gone
    assert len(parked) == 2 and parked.places() == {"work", "other"}
    assert parked.answer(999, lambda _place: False, grant) == []
    # Their wait is over: answered (empty) in arrival order.
    assert parked.answer(1_000, lambda _place: False, lambda p: p.lease.client_id) == ["c", "x"]
    assert len(parked) == 0 and parked.next_deadline_ms() is None


def test_a_client_keeps_one_parked_lease_its_newest() -> None:
    parked = ParkedLeases()
    parked.park(_parked("a", deadline_ms=500))
    parked.park(_parked("b", deadline_ms=700))
    parked.park(_parked("a", deadline_ms=900))  # asked again: the older one is gone
    assert len(parked) == 2 and parked.next_deadline_ms() == 700
    dropped = parked.drop("b")
    assert dropped is not None and dropped.deadline_ms == 700
    assert parked.drop("b") is None
    assert [p.lease.client_id for p in parked.take_all()] == ["a"]


def test_a_lease_is_taken_back_only_if_no_reply_of_the_batch_delivered_it(tmp_path: Path) -> None:
    """A client that timed out asks again from a new socket; both copies are handled in
    one batch. The reply to the old socket cannot be sent, the repeat's can: the lease
    stands (taking it back would hand its tokens to two workers). Undelivered both
    times: the tokens go back to the queue at once."""
    runtime = ShardRuntime(ShardConfig(JOBS, tmp_path / "shard", durability=Durability.PROCESS))
    core = runtime.core
    try:

        def handle(message: Message, message_id: int) -> Message | None:
            now_ms = runtime.clock.now_ms()
            return core.handle(now_ms, decode(encode(message, message_id=message_id)))

        handle(Put("putter", 1, "work", (("q", "job1", 1), ("q", "job2", 2)), 0), 1)
        assert runtime.commit()
        for seq, delivered in ((1, True), (2, False)):
            lease = Lease("worker", seq, "work", 1, 60_000, 0)
            first, repeat = handle(lease, 2), handle(lease, 3)
            assert isinstance(first, Leased) and first == repeat and first.entries
            assert runtime.commit()
            core.replies_sent([((b"old", first, 2), False), ((b"new", repeat, 3), delivered)])
            assert runtime.commit()
            # The first lease (delivered by its repeat) still holds job1; the second,
            # delivered by neither reply, is taken back.
            assert core.engine.count("work__held") == 1
        assert core.counters["leases_taken_back"] == 1
        assert [tok.job_id for _t, tok in core.engine.tokens("work")] == ["job2"]
    finally:
        runtime.close()
