"""Classic place-transition nets with known state counts, written as PNML test data.

``python tests/pnml_generate.py`` (re)writes ``tests/data/pnml/generated/*.pnml``; the
conformance test checks that the files are what this script generates. The nets are
built with the ordinary net API and written by ``nets.pnml.dumps``, so they also test
the writer. Their structure is the one of the Model Checking Contest's models of the
same name (Kanban, FMS, Philosophers), with the parameter ``n`` in the initial marking
(Kanban, FMS) or in the number of components (Philosophers); the published counts are
listed in ``tests/data/pnml/README.md``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from nets.model import Net, Place, Transition
from nets.pnml import DOT, Dot, dumps

OUT = Path(__file__).resolve().parent / "data" / "pnml" / "generated"

Arcs = tuple[Iterable[str], Iterable[str]]  # (input places, output places), one token each


def _pt_net(name: str, initial: dict[str, int], transitions: dict[str, Arcs]) -> Net:
    names: list[str] = []
    for inputs, outputs in transitions.values():
        for p in (*inputs, *outputs):
            if p not in names:
                names.append(p)
    places = {p: Place(p, Dot, initial=[DOT] * initial.get(p, 0)) for p in sorted(names)}
    return Net(
        name,
        places=places.values(),
        transitions=[
            Transition(
                t,
                consume=[places[p]() for p in inputs],
                produce=[places[p].produce(DOT) for p in outputs],
            )
            for t, (inputs, outputs) in transitions.items()
        ],
    )


def kanban(n: int) -> Net:
    """Ciardo and Tilgner's Kanban system: four cells, ``n`` kanban cards per cell."""
    transitions: dict[str, Arcs] = {}
    for i in range(1, 5):
        transitions[f"tok{i}"] = ([f"Pm{i}"], [f"Pout{i}"])
        transitions[f"tredo{i}"] = ([f"Pm{i}"], [f"Pback{i}"])
        transitions[f"tback{i}"] = ([f"Pback{i}"], [f"Pm{i}"])
    transitions["tin4"] = (["P4"], ["Pm4"])
    transitions["tout1"] = (["Pout1"], ["P1"])
    transitions["tsynch1_23"] = (["Pout2", "Pout3", "P1"], ["P2", "P3", "Pm1"])
    transitions["tsynch4_23"] = (["P2", "P3", "Pout4"], ["P4", "Pm2", "Pm3"])
    return _pt_net(f"Kanban-{n}", {f"P{i}": n for i in range(1, 5)}, transitions)


def fms(n: int) -> Net:
    """Ciardo and Trivedi's flexible manufacturing system with ``n`` pallets per type."""
    transitions: dict[str, Arcs] = {
        "tP1": (["P1"], ["P1wM1"]),
        "tM1": (["M1", "P1wM1"], ["P1M1"]),
        "tP1M1": (["P1M1"], ["P1d", "M1"]),
        "tP1e": (["P1d"], ["P1s"]),
        "tP1j": (["P1d"], ["P1wP2"]),
        "tP1s": (["P1s"], ["P1"]),
        "tP2": (["P2"], ["P2wM2"]),
        "tM2": (["P2wM2", "M2"], ["P2M2"]),
        "tP2M2": (["P2M2"], ["P2d", "M2"]),
        "tP2e": (["P2d"], ["P2s"]),
        "tP2j": (["P2d"], ["P2wP1"]),
        "tP2s": (["P2s"], ["P2"]),
        "tx": (["P1wP2", "P2wP1"], ["P12"]),
        "tP12": (["P12"], ["P12wM3"]),
        "tM3": (["P12wM3", "M3"], ["P12M3"]),
        "tP12M3": (["P12M3"], ["P12s", "M3"]),
        "tP12s": (["P12s"], ["P1", "P2"]),
        "tP3": (["P3"], ["P3M2"]),
        "tP3M2": (["P3M2", "M2"], ["P3s", "M2"]),
        "tP3s": (["P3s"], ["P3"]),
    }
    initial = {"P1": n, "P2": n, "P3": n, "M1": 3, "M2": 1, "M3": 2}
    return _pt_net(f"FMS-{n}", initial, transitions)


def philosophers(n: int) -> Net:
    """``n`` dining philosophers who take their two forks in either order."""
    transitions: dict[str, Arcs] = {}
    for i in range(1, n + 1):
        left = f"Fork_{(i - 2) % n + 1}"
        mine = f"Fork_{i}"
        transitions[f"FF1a_{i}"] = ([f"Think_{i}", left], [f"Catch1_{i}"])
        transitions[f"FF1b_{i}"] = ([f"Think_{i}", mine], [f"Catch2_{i}"])
        transitions[f"FF2a_{i}"] = ([f"Catch1_{i}", mine], [f"Eat_{i}"])
        transitions[f"FF2b_{i}"] = ([f"Catch2_{i}", left], [f"Eat_{i}"])
        transitions[f"End_{i}"] = ([f"Eat_{i}"], [f"Think_{i}", mine, left])
    initial = {f"{kind}_{i}": 1 for kind in ("Think", "Fork") for i in range(1, n + 1)}
    return _pt_net(f"Philosophers-{n}", initial, transitions)


GENERATED = {
    "Kanban-1": lambda: kanban(1),
    "Kanban-2": lambda: kanban(2),
    "Kanban-3": lambda: kanban(3),
    "FMS-2": lambda: fms(2),
    "FMS-3": lambda: fms(3),
    "Philosophers-5": lambda: philosophers(5),
    "Philosophers-10": lambda: philosophers(10),
}


def generated_bytes(name: str) -> bytes:
    return dumps(GENERATED[name]())


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in GENERATED:
        (OUT / f"{name}.pnml").write_bytes(generated_bytes(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
