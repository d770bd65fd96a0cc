"""Leases in the shard's core: declared results, renewal, hand-back, token-by-token
completion, each driven by hand at times the test passes in (no store, socket or clock).

The net is ``tests.nets_for_tests.jobs``: the work queue ``work`` declares
``results=("results",)``; ``notes`` is a place of the net it does not declare.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from nets.firing import PlacedEntry
from router.wire import (
    Complete,
    Completed,
    Lease,
    Leased,
    Message,
    Put,
    Release,
    Released,
    Renew,
    Renewed,
    decode,
    encode,
)
from shard.batch import Batch, Recovered
from shard.core import ShardCore
from shard.lease_desk import LEASE_PROGRESS_CHARS_MAX, LEASE_PROGRESS_SHOWN_MAX
from shard.request_checks import RequestError
from shard.shard_setup import ShardSetup
from tests.nets_for_tests import jobs

T0_MS = 1_000_000
LEASE_MS = 30_000


class NoSlots:
    def slot_entries(self, slot: int) -> list[PlacedEntry]:
        raise AssertionError(f"slot {slot} read from a store that does not exist")


class Unbounded:
    def exhausted(self) -> bool:
        return False


class Store:
    """The committed batches, as a store would hold them (marking and client table)."""

    def __init__(self) -> None:
        self.entries: Counter[tuple[str, int, Any]] = Counter()
        self.clients: dict[str, tuple[int, bytes]] = {}
        self.clock_ms = 0

    def commit(self, batch: Batch) -> None:
        self.entries.update(batch.marking)
        self.clients.update(batch.clients)
        self.clock_ms = max(self.clock_ms, batch.clock_ms)
        assert all(n >= 0 for n in self.entries.values()), "a batch removed what is not there"

    def recovered(self) -> Recovered:
        marking: dict[str, list[tuple[int, Any]]] = {}
        for (place, time_ms, token), n in sorted(self.entries.items()):
            marking.setdefault(place, []).extend([(time_ms, token)] * n)
        return Recovered(marking, self.clock_ms, dict(self.clients), initialised=True)


def _core(store: Store | None = None, *, incarnation: int = 1, now_ms: int = T0_MS) -> ShardCore:
    """A core of ``jobs``: new, or restarted from ``store`` (its commits go there)."""
    setup = ShardSetup.of(jobs())
    if store is None:
        recovered = Recovered(marking={}, clock_ms=0, clients={}, initialised=False)
    else:
        recovered = store.recovered()
    core = ShardCore(setup, recovered, incarnation=incarnation, now_ms=now_ms, slots=NoSlots())
    _commit(core, store)
    return core


def _commit(core: ShardCore, store: Store | None) -> None:
    batch = core.take_batch()
    if store is not None:
        store.commit(batch)
    core.committed(core.engine.now)


def _fire(core: ShardCore, now_ms: int) -> None:
    core.fire(now_ms, Unbounded())


def _request(core: ShardCore, now_ms: int, message: Message) -> Any:
    # Through the wire format, as the shell decodes what a socket delivers.
    return core.handle(now_ms, decode(encode(message, message_id=1)))


def _job(n: int) -> tuple[str, str, int]:
    return ("q", f"job{n}", n)


def _result(n: int) -> tuple[str, tuple[str, str, int]]:
    return ("results", ("q", f"job{n}", n * 10))


def _leased(
    core: ShardCore, jobs_count: int, *, now_ms: int = T0_MS, store: Store | None = None
) -> Leased:
    """``jobs_count`` jobs put into ``work`` and leased by ``worker`` (request 1)."""
    _request(core, now_ms, Put("client", 1, "work", tuple(_job(n) for n in range(jobs_count))))
    leased = _request(core, now_ms, Lease("worker", 1, "work", jobs_count, LEASE_MS))
    assert isinstance(leased, Leased) and len(leased.entries) == jobs_count
    assert leased.expires_at_ms == now_ms + LEASE_MS
    _commit(core, store)
    return leased


def _counts(core: ShardCore) -> dict[str, int]:
    places = ("work", "work__held", "work__timer", "results")
    return {place: core.engine.count(place) for place in places}


def _work(core: ShardCore) -> list[tuple[str, str, int]]:
    """The jobs in the queue (not leased), as field tuples."""
    return sorted(tuple(token) for _t, token in core.engine.tokens("work"))


def _refused(core: ShardCore, now_ms: int, message: Message, code: str, match: str) -> None:
    """``message`` is refused with ``code`` and changes nothing (batch, client table)."""
    _commit(core, None)
    clients = dict(core.client_table.clients)
    with pytest.raises(RequestError, match=match) as refused:
        _request(core, now_ms, message)
    assert refused.value.code == code
    assert core.take_batch().is_empty(), f"a refused {type(message).__name__} changed the batch"
    assert core.client_table.clients == clients


# -- declared results ---------------------------------------------------------------------


def test_a_completion_into_an_undeclared_place_is_refused_and_the_lease_stays_live() -> None:
    core = _core()
    leased = _leased(core, 2)
    wrong = Complete("worker", 2, leased.lease_id, (_result(0), ("notes", _job(0))))
    _refused(
        core,
        T0_MS + 1,
        wrong,
        "wrong_place",
        r"lease '0\.1\.1' of work queue 'work' cannot produce into place 'notes': "
        r"the queue declares results \(results\)",
    )
    assert _counts(core) == {"work": 0, "work__held": 2, "work__timer": 2, "results": 0}
    assert core.engine.count("notes") == 0
    done = _request(core, T0_MS + 2, Complete("worker", 2, leased.lease_id, (_result(0),)))
    assert done == Completed(2, leased.lease_id, False)
    assert _counts(core) == {"work": 0, "work__held": 0, "work__timer": 2, "results": 1}


def test_a_result_of_the_wrong_colour_is_refused_and_nothing_is_applied() -> None:
    core = _core()
    leased = _leased(core, 1)
    bad = Complete("worker", 2, leased.lease_id, (_result(0), ("results", ("q", "j", "x"))))
    _refused(core, T0_MS + 1, bad, "wrong_colour", "place 'results'")
    _refused(
        core,
        T0_MS + 1,
        Complete("worker", 2, leased.lease_id, (("work__held", ("0.1.1", 0, *_job(0))),)),
        "reserved_place",
        "lease machinery",
    )
    _refused(
        core,
        T0_MS + 1,
        Complete("worker", 2, leased.lease_id, (("nowhere", _job(0)),)),
        "unknown_place",
        "has no place 'nowhere'",
    )
    assert _counts(core) == {"work": 0, "work__held": 1, "work__timer": 1, "results": 0}


# -- renewal ------------------------------------------------------------------------------


def test_a_renewal_postpones_the_expiry_even_across_a_restart() -> None:
    store = Store()
    core = _core(store)
    leased = _leased(core, 2, store=store)
    renewed = _request(core, T0_MS + 20_000, Renew("worker", 2, leased.lease_id, LEASE_MS))
    new_expiry = T0_MS + 20_000 + LEASE_MS
    assert renewed == Renewed(2, leased.lease_id, new_expiry)
    batch = core.take_batch()
    moved = {(time_ms, n) for (place, time_ms, _t), n in batch.marking.items() if n}
    assert moved == {(leased.expires_at_ms, -1), (new_expiry, 1)}, "each timer moved"
    store.commit(batch)
    core.committed(T0_MS + 20_000)
    _fire(core, T0_MS + 20_000)
    assert core.next_deadline_ms() == new_expiry, "no wake-up at the old expiry"

    _fire(core, leased.expires_at_ms + 1)
    assert _work(core) == [], "the tokens did not come back at the old expiry"
    assert _counts(core)["work__held"] == 2
    # A restarted shard reads the moved timers: still not expired, then expired.
    core = _core(store, incarnation=2, now_ms=leased.expires_at_ms + 1)
    _fire(core, leased.expires_at_ms + 1)
    assert _work(core) == [] and core.lease_desk.leases[leased.lease_id].expires_at_ms == new_expiry
    _fire(core, new_expiry)
    assert _work(core) == [_job(0), _job(1)], "they come back after the new expiry"
    assert _counts(core) == {"work": 2, "work__held": 0, "work__timer": 0, "results": 0}


def test_an_expired_or_unknown_lease_cannot_be_renewed() -> None:
    core = _core()
    leased = _leased(core, 1)
    _fire(core, leased.expires_at_ms)
    assert _work(core) == [_job(0)]
    for lease_id in (leased.lease_id, "0.1.99"):
        _refused(
            core,
            leased.expires_at_ms + 1,
            Renew("worker", 2, lease_id, LEASE_MS),
            "lease_expired",
            f"lease '{lease_id}' is unknown or expired",
        )


def test_a_renewal_is_bounded() -> None:
    core = _core()
    leased = _leased(core, 1)
    for renew in (
        Renew("worker", 2, leased.lease_id, 0),
        Renew("worker", 2, leased.lease_id, LEASE_MS, "x" * (LEASE_PROGRESS_CHARS_MAX + 1)),
    ):
        _refused(core, T0_MS + 1, renew, "bad_request", "a renewal needs 0 < lease_ms")
    assert core.lease_desk.leases[leased.lease_id].expires_at_ms == leased.expires_at_ms


def test_the_statistics_show_live_leases_and_their_latest_progress() -> None:
    core = _core()
    count = LEASE_PROGRESS_SHOWN_MAX + 2
    _request(core, T0_MS, Put("client", 1, "work", tuple(_job(n) for n in range(count))))
    lease_ids = []
    for n in range(count):
        leased = _request(core, T0_MS, Lease(f"worker{n}", 1, "work", 1, LEASE_MS))
        lease_ids.append(leased.lease_id)
    for n, lease_id in enumerate(lease_ids):
        _request(core, T0_MS + 1, Renew(f"worker{n}", 2, lease_id, LEASE_MS, f"at {n}"))
    _request(core, T0_MS + 2, Renew("worker0", 3, lease_ids[0], LEASE_MS, "at the end"))
    stats = core.statistics()
    assert stats["leases_live"] == count
    assert stats["counters"]["leases_renewed"] == count + 1
    shown = stats["lease_progress"]
    assert len(shown) == LEASE_PROGRESS_SHOWN_MAX
    assert shown[:2] == [(lease_ids[0], "at the end"), (lease_ids[-1], f"at {count - 1}")]
    _request(core, T0_MS + 3, Complete("worker0", 4, lease_ids[0], ()))
    _request(core, T0_MS + 3, Renew("worker1", 3, lease_ids[1], LEASE_MS))  # no progress
    stats = core.statistics()
    assert stats["leases_live"] == count - 1
    assert [lease_id for lease_id, _p in stats["lease_progress"]][:2] == lease_ids[-1:-3:-1]
    assert (
        lease_ids[0] not in core.lease_desk.progress
        and lease_ids[1] not in core.lease_desk.progress
    )


# -- hand-back ----------------------------------------------------------------------------


def test_a_release_puts_all_the_tokens_back_at_once() -> None:
    core = _core()
    leased = _leased(core, 3)
    released = _request(core, T0_MS + 5, Release("worker", 2, leased.lease_id))
    assert released == Released(2, leased.lease_id, 3)
    assert _work(core) == [_job(0), _job(1), _job(2)]
    assert leased.lease_id not in core.lease_desk.leases
    again = _request(core, T0_MS + 6, Lease("other", 1, "work", 3, LEASE_MS))
    assert len(again.entries) == 3, "released work is leased again at once"
    _refused(
        core,
        T0_MS + 7,
        Complete("worker", 3, leased.lease_id, ()),
        "lease_expired",
        "completed or handed back",
    )
    # The old lease's timers are spent at its expiry; the new lease is untouched.
    _fire(core, leased.expires_at_ms)
    assert _counts(core) == {"work": 0, "work__held": 3, "work__timer": 3, "results": 0}
    assert core.statistics()["counters"]["leases_released"] == 1


def test_a_release_of_some_indexes_leaves_the_others_leased() -> None:
    core = _core()
    leased = _leased(core, 3)
    released = _request(core, T0_MS + 5, Release("worker", 2, leased.lease_id, (2, 0)))
    assert released == Released(2, leased.lease_id, 2)
    assert _work(core) == [_job(0), _job(2)]
    assert core.lease_desk.leases[leased.lease_id].indexes() == (1,)
    _refused(
        core,
        T0_MS + 6,
        Release("worker", 3, leased.lease_id, (0,)),
        "unknown_index",
        r"holds no token with index 0: .* \(it holds 1\)",
    )
    _refused(
        core,
        T0_MS + 6,
        Release("worker", 3, leased.lease_id, (1, 1)),
        "bad_request",
        "index 1 is given twice",
    )
    done = _request(core, T0_MS + 7, Complete("worker", 3, leased.lease_id, (_result(1),)))
    assert done == Completed(3, leased.lease_id, False)
    assert leased.lease_id not in core.lease_desk.leases
    _fire(core, leased.expires_at_ms)
    assert _counts(core) == {"work": 2, "work__held": 0, "work__timer": 0, "results": 1}


# -- token by token -----------------------------------------------------------------------


def test_tokens_complete_one_by_one_and_the_rest_expire_as_usual() -> None:
    core = _core()
    leased = _leased(core, 3)
    one = Complete("worker", 2, leased.lease_id, (_result(1),), (1,))
    assert _request(core, T0_MS + 1, one) == Completed(2, leased.lease_id, False)
    assert core.lease_desk.leases[leased.lease_id].indexes() == (0, 2)
    _refused(
        core,
        T0_MS + 2,
        Complete("worker", 3, leased.lease_id, (_result(1),), (1,)),
        "unknown_index",
        "holds no token with index 1",
    )
    _refused(
        core,
        T0_MS + 2,
        Complete("worker", 3, leased.lease_id, (), (7,)),
        "unknown_index",
        "holds no token with index 7",
    )
    zero = Complete("worker", 3, leased.lease_id, (_result(0),), (0,))
    assert _request(core, T0_MS + 3, zero) == Completed(3, leased.lease_id, False)
    counters = core.statistics()["counters"]
    assert counters["leased_tokens_completed"] == 2 and "leases_completed" not in counters
    # A renewal moves only the timer of the token still held.
    assert _request(core, T0_MS + 4, Renew("worker", 4, leased.lease_id, 2 * LEASE_MS))
    _fire(core, leased.expires_at_ms)
    assert _counts(core) == {"work": 0, "work__held": 1, "work__timer": 1, "results": 2}
    _fire(core, T0_MS + 4 + 2 * LEASE_MS)
    assert _work(core) == [_job(2)], "the token not completed expired as any"
    assert _counts(core) == {"work": 1, "work__held": 0, "work__timer": 0, "results": 2}
    _refused(
        core,
        T0_MS + 4 + 2 * LEASE_MS,
        Complete("worker", 5, leased.lease_id, (), (2,)),
        "lease_expired",
        "unknown or expired",
    )


def test_completing_the_last_tokens_ends_the_lease() -> None:
    core = _core()
    leased = _leased(core, 2)
    _request(core, T0_MS + 1, Complete("worker", 2, leased.lease_id, (), (0,)))
    _request(core, T0_MS + 2, Complete("worker", 3, leased.lease_id, (_result(1),)))  # the rest
    assert leased.lease_id not in core.lease_desk.leases
    counters = core.statistics()["counters"]
    assert counters["leases_completed"] == 1 and counters["leased_tokens_completed"] == 2
    _fire(core, leased.expires_at_ms)
    assert _counts(core) == {"work": 0, "work__held": 0, "work__timer": 0, "results": 1}


# -- repeats ------------------------------------------------------------------------------


def test_repeats_are_answered_from_the_client_table_and_never_applied_again() -> None:
    core = _core()
    leased = _leased(core, 4)
    requests: list[tuple[Message, Message]] = [
        (
            Complete("worker", 2, leased.lease_id, (_result(0),), (0,)),
            Completed(2, leased.lease_id, True),
        ),
        (
            Renew("worker", 3, leased.lease_id, LEASE_MS, "half"),
            Renewed(3, leased.lease_id, T0_MS + 1 + LEASE_MS),
        ),
        (Release("worker", 4, leased.lease_id, (1,)), Released(4, leased.lease_id, 1)),
    ]
    for request, repeated in requests:
        first = _request(core, T0_MS + 1, request)
        _commit(core, None)
        before = (_counts(core), core.lease_desk.leases[leased.lease_id])
        assert _request(core, T0_MS + 1, request) == repeated
        assert core.take_batch().is_empty(), f"a repeated {type(request).__name__} was applied"
        assert (_counts(core), core.lease_desk.leases[leased.lease_id]) == before
        assert first == repeated or first == Completed(2, leased.lease_id, False)
    with pytest.raises(RequestError) as stale:
        _request(core, T0_MS + 3, requests[0][0])
    assert stale.value.code == "stale_request"
    # A grant repeated after some of its tokens were completed gives no entries: the
    # tokens the repeat would name may be another lease's by now.
    _request(core, T0_MS + 3, Put("client", 2, "work", (_job(7), _job(8))))
    granted = _request(core, T0_MS + 3, Lease("w2", 1, "work", 2, LEASE_MS))
    assert _request(core, T0_MS + 3, Lease("w2", 1, "work", 2, LEASE_MS)) == granted
    _request(core, T0_MS + 4, Complete("helper", 1, granted.lease_id, (), (1,)))
    repeat = _request(core, T0_MS + 5, Lease("w2", 1, "work", 2, LEASE_MS))
    assert repeat == Leased(1, granted.lease_id, granted.expires_at_ms, ())
