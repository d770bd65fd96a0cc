"""Small nets for the whole-cluster simulation's tests: they start with their work in
their initial marking, so no client has to put it."""

from __future__ import annotations

from nets.model import Net, Place, Transition, variables
from tests.nets_for_tests import Hopper, Ticket, hopper

HOPPERS = 24
HOPS = 4


def hopping_seeded(hoppers: int = HOPPERS, hops: int = HOPS, tickets: int = 4) -> Net:
    """Hoppers that cross partitions on every hop, each hop taking a pool ticket."""
    places = Place("hops", Hopper, key="key", initial=[hopper(i, hops) for i in range(hoppers)])
    arrived = Place("arrived", Hopper, key="key")
    pool = Place("tickets", Ticket, pool=True, initial=[Ticket(f"t{i}", 0) for i in range(tickets)])
    h, k, t = variables("h k t")
    hop = Transition(
        "hop",
        consume=[places(h, key=k), pool(t)],
        guard=lambda h: h.hops_left > 0,
        produce=[
            places.produce(lambda h: hopper(h.hopper_id, h.hops_left - 1)),
            pool.produce(lambda t: Ticket(t.name, t.uses + 1), delay=20),
        ],
    )
    land = Transition(
        "land",
        consume=[places(h, key=k)],
        guard=lambda h: h.hops_left == 0,
        produce=[arrived.produce(h)],
    )
    return Net("sim_hopping", places=[places, arrived, pool], transitions=[hop, land])
