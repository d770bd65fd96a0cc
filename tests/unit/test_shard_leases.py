"""Leases in the shard's core: declared results, renewal, hand-back, token-by-token
completion, each driven by hand at times the test passes in (no store, socket or clock).

The net is ``tests.nets_for_tests.jobs``: the work queue ``work`` declares
``results=("results",)``; ``notes`` is a place of the net it does not declare.
"""

from __future__ import annotations

from typing import Any

import pytest

from nets.firing import PlacedEntry
from router.wire import Complete, Completed, Lease, Leased, Message, Put, decode, encode
from shard.batch import Recovered
from shard.core import RequestError, ShardCore, ShardSetup
from tests.nets_for_tests import jobs

T0_MS = 1_000_000
LEASE_MS = 30_000


class NoSlots:
    def slot_entries(self, slot: int) -> list[PlacedEntry]:
        raise AssertionError(f"slot {slot} read from a store that does not exist")


class Unbounded:
    def exhausted(self) -> bool:
        return False


def _core() -> ShardCore:
    setup = ShardSetup.of(jobs())
    recovered = Recovered(marking={}, clock_ms=0, clients={}, initialised=False)
    core = ShardCore(setup, recovered, incarnation=1, now_ms=T0_MS, slots=NoSlots())
    core.take_batch()
    core.committed(T0_MS)
    return core


def _request(core: ShardCore, now_ms: int, message: Message) -> Any:
    # Through the wire format, as the shell decodes what a socket delivers.
    return core.handle(now_ms, decode(encode(message, message_id=1)))


def _job(n: int) -> tuple[str, str, int]:
    return ("q", f"job{n}", n)


def _result(n: int) -> tuple[str, tuple[str, str, int]]:
    return ("results", ("q", f"job{n}", n * 10))


def _leased(core: ShardCore, jobs_count: int, *, now_ms: int = T0_MS) -> Leased:
    """``jobs_count`` jobs put into ``work`` and leased by ``worker`` (request 1)."""
    _request(core, now_ms, Put("client", 1, "work", tuple(_job(n) for n in range(jobs_count))))
    leased = _request(core, now_ms, Lease("worker", 1, "work", jobs_count, LEASE_MS))
    assert isinstance(leased, Leased) and len(leased.entries) == jobs_count
    core.take_batch()
    return leased


def _counts(core: ShardCore) -> dict[str, int]:
    return {place: core.engine.count(place) for place in ("work", "work__held", "results")}


def _refused(core: ShardCore, now_ms: int, message: Message, code: str, match: str) -> None:
    """``message`` is refused with ``code`` and changes nothing (batch, client table)."""
    clients = dict(core.clients)
    with pytest.raises(RequestError, match=match) as refused:
        _request(core, now_ms, message)
    assert refused.value.code == code
    assert core.take_batch().is_empty(), f"a refused {type(message).__name__} changed the batch"
    assert core.clients == clients


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
    assert _counts(core) == {"work": 0, "work__held": 2, "results": 0}
    assert core.engine.count("notes") == 0
    done = _request(core, T0_MS + 2, Complete("worker", 2, leased.lease_id, (_result(0),)))
    assert done == Completed(2, leased.lease_id, False)
    assert _counts(core) == {"work": 0, "work__held": 0, "results": 1}


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
    assert _counts(core) == {"work": 0, "work__held": 1, "results": 0}
