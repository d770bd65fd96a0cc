"""nets/handoffs.py alone: partition keys, and which outputs may hand off, on small nets.

Each net is built here, in a module with source, so that the analysis can read the
output functions. The rule is conservative (the module's docstring): it says "stays"
only where the net's structure shows it, "may hand off" everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

from nets.handoffs import Handoff, Partitioning, handoffs, partitions
from nets.model import Net, OutputArc, Place, Transition, variables


class Job(NamedTuple):
    queue: str
    n: int


class Other(NamedTuple):
    n: int
    queue: str  # the key field at another position than Job's


class Lock(NamedTuple):
    name: str


j, q, lock, c = variables("j q lock c")
jobs = Place("jobs", Job, key="queue", initial=[Job("a", 1)])
done = Place("done", Job, key="queue")
others = Place("others", Other, key="queue")
locks = Place("locks", Lock, pool=True, initial=[Lock("l")])
config = Place("config", Job, initial=[Job("cfg", 0)])  # neither keyed nor pool: fixed
log = Place("log", Job)


def _net(*transitions: Transition) -> Net:
    return Net("t", places=[jobs, done, others, locks, config, log], transitions=transitions)


def _from_jobs(*outputs: OutputArc) -> Net:
    return _net(Transition("move", consume=[jobs(j, queue=q)], produce=list(outputs)))


def test_each_place_is_keyed_pool_or_fixed() -> None:
    assert partitions(_net()) == (
        Partitioning("jobs", "key queue"),
        Partitioning("done", "key queue"),
        Partitioning("others", "key queue"),
        Partitioning("locks", "pool"),
        Partitioning("config", "fixed"),
        Partitioning("log", "fixed"),
    )


def replace_payload(j: Job) -> Job:
    n = j.n + 1  # rebinds a name that does not carry the key
    return j._replace(n=n)


def new_job(q: str, j: Job) -> Job:
    return Job(q, j.n)


def new_job_from_field(j: Job) -> Job:
    return Job(queue=j.queue, n=0)


STAYS: dict[str, Callable[[], OutputArc]] = {
    "the consumed token": lambda: done.produce(j),
    "_replace of another field": lambda: done.produce(replace_payload),
    "a lambda's _replace": lambda: done.produce(lambda j: j._replace(n=2)),
    "the colour built from the key variable": lambda: done.produce(new_job),
    "the colour built from the token's key field": lambda: done.produce(new_job_from_field),
    "into a pool place": lambda: locks.produce(Lock("l")),
}


@pytest.mark.parametrize("case", sorted(STAYS))
def test_outputs_that_provably_stay(case: str) -> None:
    assert handoffs(_from_jobs(STAYS[case]())) == ()


def rekey(j: Job) -> Job:
    return j._replace(queue="b")


def rebound_key(j: Job, q: str) -> Job:
    q = q + "-next"
    return Job(q, j.n)


def through_helper(j: Job) -> Job:
    return rekey(j)


MAY_HAND_OFF: dict[str, tuple[Callable[[], OutputArc], str]] = {
    "a constant token": (
        lambda: done.produce(Job("b", 0)),
        "the produced token's queue is not shown to equal 'q'",
    ),
    "_replace of the key": (
        lambda: done.produce(rekey),
        "the produced token's queue is not shown to equal 'q'",
    ),
    "a rebound key variable": (
        lambda: done.produce(rebound_key),
        "the produced token's queue is not shown to equal 'q'",
    ),
    "a function the analysis does not follow": (
        lambda: done.produce(through_helper),
        "the produced token's queue is not shown to equal 'q'",
    ),
    "the key at another position": (
        # A token whose key field sits at another position in the output's colour.
        lambda: others.produce(j),
        "the produced token's queue is not shown to equal 'q'",
    ),
    "produce_all": (
        lambda: done.produce_all(lambda j: [j]),
        "produce_all: the key of each produced token is not known before firing",
    ),
    "into a fixed place from a keyed firing": (
        lambda: log.produce(j),
        "produces into a fixed place from another partition",
    ),
}


@pytest.mark.parametrize("case", sorted(MAY_HAND_OFF))
def test_outputs_that_may_hand_off(case: str) -> None:
    output, reason = MAY_HAND_OFF[case]
    arc = output()
    assert handoffs(_from_jobs(arc)) == (Handoff("move", arc.place.name, reason),)


def test_a_fixed_firing_stays_in_fixed_places_and_hands_off_keyed_outputs() -> None:
    fixed = Transition(
        "announce",
        consume=[config(c)],
        produce=[config.produce(c), log.produce(c), done.produce(c)],
    )
    assert handoffs(_net(fixed)) == (
        Handoff(
            "announce",
            "done",
            "fires without a key variable and produces into keyed place 'done'",
        ),
    )


def test_a_pool_only_firing_hands_off_everything_but_pool_outputs() -> None:
    pooled = Transition(
        "spin",
        consume=[locks(lock)],
        produce=[locks.produce(lock), log.produce(Job("x", 0))],
    )
    assert handoffs(_net(pooled)) == (
        Handoff("spin", "log", "produces into a fixed place from another partition"),
    )


def test_handoffs_are_listed_in_net_order() -> None:
    first = Transition("first", consume=[jobs(j, queue=q)], produce=[done.produce(rekey)])
    second = Transition("second", consume=[done(j, queue=q)], produce=[log.produce(j)])
    found: list[Any] = [(h.transition, h.place) for h in handoffs(_net(first, second))]
    assert found == [("first", "done"), ("second", "log")]
