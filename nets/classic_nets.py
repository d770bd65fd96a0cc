"""Classic place/transition nets of known state-space sizes, built in the net language.

They serve the explorer's tests and benchmark (bench/verify.py) as reference points
whose sizes are published:

* :func:`kanban` (Ciardo and Tilgner's Kanban system, 16 places and 16 transitions, as
  in the Model Checking Contest): 160 states for N=1, 4,600 for N=2, 58,400 for N=3,
  454,475 for N=4, 2,546,432 for N=5;
* :func:`philosophers` (dining philosophers, each philosopher thinking, holding the left
  fork, or eating; forks shared with the neighbour): a small deadlocking classic.

Every place holds copies of the one :class:`Dot` token, so the explorer takes its
packed P/T path (nets/explore_pt.py).
"""

from __future__ import annotations

from typing import NamedTuple

from nets.model import Net, Place, Transition


class Dot(NamedTuple):
    """The uncoloured token."""

    dot: bool = True


DOT = Dot()


def _arcs(name: str, places: dict[str, Place], take: list[str], give: list[str]) -> Transition:
    return Transition(
        name,
        consume=[places[p]() for p in take],
        produce=[places[p].produce(DOT) for p in give],
    )


def kanban(n: int = 1) -> Net:
    """The Kanban system with ``n`` kanban cards per cell."""
    names = [f"{kind}{i}" for i in range(1, 5) for kind in ("P", "Pm", "Pback", "Pout")]
    places = {
        name: Place(
            name, Dot, initial=[DOT] * (n if name.startswith("P") and name[1:].isdigit() else 0)
        )
        for name in names
    }
    transitions = [_arcs("tin1", places, ["P1"], ["Pm1"])]
    for i in range(1, 5):
        transitions += [
            _arcs(f"tredo{i}", places, [f"Pm{i}"], [f"Pback{i}"]),
            _arcs(f"tback{i}", places, [f"Pback{i}"], [f"Pm{i}"]),
            _arcs(f"tok{i}", places, [f"Pm{i}"], [f"Pout{i}"]),
        ]
    transitions += [
        _arcs("tsynch1_23", places, ["Pout1", "P2", "P3"], ["P1", "Pm2", "Pm3"]),
        _arcs("tsynch4_23", places, ["Pout2", "Pout3", "P4"], ["P2", "P3", "Pm4"]),
        _arcs("tout4", places, ["Pout4"], ["P4"]),
    ]
    return Net(f"kanban-{n}", places=list(places.values()), transitions=transitions)


def philosophers(n: int = 5) -> Net:
    """``n`` dining philosophers who take the left fork, then the right, then eat."""
    places: dict[str, Place] = {}
    for i in range(n):
        places[f"think{i}"] = Place(f"think{i}", Dot, initial=[DOT])
        places[f"fork{i}"] = Place(f"fork{i}", Dot, initial=[DOT])
        places[f"left{i}"] = Place(f"left{i}", Dot)
        places[f"eat{i}"] = Place(f"eat{i}", Dot)
    transitions = []
    for i in range(n):
        right = f"fork{(i + 1) % n}"
        transitions += [
            _arcs(f"take_left{i}", places, [f"think{i}", f"fork{i}"], [f"left{i}"]),
            _arcs(f"take_right{i}", places, [f"left{i}", right], [f"eat{i}"]),
            _arcs(f"release{i}", places, [f"eat{i}"], [f"think{i}", f"fork{i}", right]),
        ]
    return Net(f"philosophers-{n}", places=list(places.values()), transitions=transitions)
