"""A net whose guard reads the clock (``tests.impure_nets:clocked``), for the commands
that refuse an impure net unless ``--allow-impure`` is given.

The guard always holds (the clock is past 0), so the net runs the same with the flag:
``a`` moves to ``b`` once, then the net is dead. Subprocesses import this module by
path, so it must stay importable with only the repository root on ``PYTHONPATH``.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from nets.model import Net, Place, Transition, variables


class Item(NamedTuple):
    key: str
    n: int


def after_epoch(x: Item) -> bool:
    return time.time() > x.n  # impure on purpose: a clock read in a guard


def clocked() -> Net:
    """``a`` --move (guard reads the clock)--> ``b``, one token."""
    x, k = variables("x k")
    a = Place("a", Item, key="key", initial=[Item("k", 0)])
    b = Place("b", Item, key="key")
    move = Transition("move", consume=[a(x, key=k)], guard=after_epoch, produce=[b.produce(x)])
    return Net("impure", places=[a, b], transitions=[move])
