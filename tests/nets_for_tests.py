"""Small nets for the shard's integration and chaos tests (``tests.nets_for_tests:NAME``).

* :func:`jobs`: ``inbox`` --dispatch--> ``work`` (a work queue), ``results`` for what
  workers complete, and ``notes``, a plain place that no transition touches. Every
  place is keyed by ``queue``, so the partition rule holds.
* :func:`circulation`: ``BALLS`` tokens move ``left`` -> ``right`` -> ``left`` forever,
  each hop taking ``HOP_DELAY_MS``; no transition creates or destroys a ball, so the
  set of balls is an invariant the shard must keep across kills.
* :func:`jobs_and_circulation`: both in one net, for the chaos test (clients put,
  lease and complete while the shard keeps firing the circulation on its clock).
* :func:`jobs_counting_builds`: :func:`jobs`, counting its builds in a file.
* :func:`hopping`: the cluster's workload: a ``Hopper`` put into ``hops`` changes its
  key on every hop (so it crosses partitions, mostly to other shards) until it lands
  in ``arrived``; every hop also takes and returns a ``Ticket`` from the pool place
  ``tickets`` (its ``uses`` counts the hops it made possible), so tickets move
  between shards on demand and their number is conserved.

Subprocesses import this module by path, so it must stay importable with only the
repository root on ``PYTHONPATH``.
"""

from __future__ import annotations

from typing import NamedTuple

from nets.model import Net, Place, Transition, variables

BALLS = 8
HOP_DELAY_MS = 15


class Job(NamedTuple):
    queue: str
    job_id: str
    payload: int


class Result(NamedTuple):
    queue: str
    job_id: str
    value: int


class Ball(NamedTuple):
    name: str
    lap: int  # constant: a ball that changed would be a bug, not a lap counter


def _jobs_parts() -> tuple[list[Place], list[Transition]]:
    inbox = Place("inbox", Job, key="queue")
    work = Place("work", Job, key="queue", work_queue=True, results=("results",))
    results = Place("results", Result, key="queue")
    notes = Place("notes", Job, key="queue")
    j, q = variables("j q")
    dispatch = Transition("dispatch", consume=[inbox(j, queue=q)], produce=[work.produce(j)])
    return [inbox, work, results, notes], [dispatch]


def _circulation_parts() -> tuple[list[Place], list[Transition]]:
    balls = [Ball(f"ball{i:02d}", 0) for i in range(BALLS)]
    left = Place("left", Ball, key="name", initial=balls)
    right = Place("right", Ball, key="name")
    b, n = variables("b n")
    to_right = Transition(
        "to_right", consume=[left(b, name=n)], produce=[right.produce(b, delay=HOP_DELAY_MS)]
    )
    to_left = Transition(
        "to_left", consume=[right(b, name=n)], produce=[left.produce(b, delay=HOP_DELAY_MS)]
    )
    return [left, right], [to_right, to_left]


def jobs() -> Net:
    """Jobs flow from ``inbox`` to the work queue ``work``; results go to ``results``."""
    places, transitions = _jobs_parts()
    return Net("test_jobs", places=places, transitions=transitions)


def circulation() -> Net:
    """``BALLS`` balls circulating between ``left`` and ``right`` forever."""
    places, transitions = _circulation_parts()
    return Net("test_circulation", places=places, transitions=transitions)


def jobs_and_circulation() -> Net:
    """The jobs net and the circulation in one net (the chaos test's workload)."""
    job_places, job_transitions = _jobs_parts()
    ball_places, ball_transitions = _circulation_parts()
    return Net(
        "test_jobs_and_circulation",
        places=job_places + ball_places,
        transitions=job_transitions + ball_transitions,
    )


TICKETS = 6


class Hopper(NamedTuple):
    key: str  # the partition key: changes on every hop
    hopper_id: int
    hops_left: int


class Ticket(NamedTuple):
    name: str
    uses: int


def hopper(hopper_id: int, hops: int) -> Hopper:
    """A hopper as a client puts it (its key is where its first hop happens)."""
    return Hopper(f"k{hopper_id}-{hops}", hopper_id, hops)


def landed(hopper_id: int) -> Hopper:
    """The token a hopper ends as, in ``arrived``, whatever its number of hops."""
    return Hopper(f"k{hopper_id}-0", hopper_id, 0)


def hopping() -> Net:
    """Hoppers crossing partitions with a ticket from a pool for every hop."""
    return _hopping("test_hopping", TICKETS)


def hopping_one_ticket() -> Net:
    """:func:`hopping` with a single ticket: every other shard must get it on demand."""
    return _hopping("test_hopping_one_ticket", 1)


def _hopping(name: str, tickets_count: int) -> Net:
    hops = Place("hops", Hopper, key="key")
    arrived = Place("arrived", Hopper, key="key")
    tickets = Place(
        "tickets", Ticket, pool=True, initial=[Ticket(f"t{i}", 0) for i in range(tickets_count)]
    )
    h, k, t = variables("h k t")
    hop = Transition(
        "hop",
        consume=[hops(h, key=k), tickets(t)],
        guard=lambda h: h.hops_left > 0,
        produce=[
            hops.produce(lambda h: hopper(h.hopper_id, h.hops_left - 1)),
            tickets.produce(lambda t: Ticket(t.name, t.uses + 1)),
        ],
    )
    land = Transition(
        "land",
        consume=[hops(h, key=k)],
        guard=lambda h: h.hops_left == 0,
        produce=[arrived.produce(h)],
    )
    return Net(name, places=[hops, arrived, tickets], transitions=[hop, land])


STAGE_CAPACITY = 2


def staged() -> Net:
    """Jobs move from ``inbox`` into ``stage``, a place of capacity ``STAGE_CAPACITY``.

    In a cluster a capacity holds per shard: each shard's ``stage`` takes at most
    ``STAGE_CAPACITY`` jobs (its share of the stage), the rest wait in ``inbox``.
    """
    inbox = Place("inbox", Job, key="queue")
    stage = Place("stage", Job, key="queue", capacity=STAGE_CAPACITY)
    j, q = variables("j q")
    enter = Transition("enter", consume=[inbox(j, queue=q)], produce=[stage.produce(j)])
    return Net("test_staged", places=[inbox, stage], transitions=[enter])


def jobs_counting_builds(builds_file: str = "") -> Net:
    """:func:`jobs`, noting each build as a line in ``builds_file`` (a standby's test)."""
    if builds_file:
        with open(builds_file, "a", encoding="utf-8") as out:
            out.write("built\n")
    return jobs()
