"""Parked lease requests (shard/parked.py) and the fetch worker's lease rule: pure parts."""

from __future__ import annotations

from cluster.crawl_worker import LEASE_END_MARGIN_MS, _within_lease
from router.wire import Lease
from shard.parked import ParkedLease, ParkedLeases


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


def test_a_fetch_is_never_sent_near_its_leases_end() -> None:
    fetch = ("d", "http://d/", "page", 0, 1, "direct000", "", 10_000, 1_000)
    assert _within_lease(fetch, 60_000) == fetch  # far from the end: as the net decided
    cut = _within_lease(fetch, 10_000 + LEASE_END_MARGIN_MS + 300)
    assert cut == (*fetch[:8], 300)
    # A lease that ends too soon after the start: the limit is before it, refused late.
    assert _within_lease(fetch, 10_500)[8] == -500
