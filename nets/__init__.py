"""Coloured Petri Nets: the modelling language and its pure, deterministic engine.

A net is data: places (typed by a colour set, a ``typing.NamedTuple`` class),
transitions with arcs whose inscriptions are ordinary Python functions, and an
initial marking. :class:`Engine` fires it; time is always a parameter.

Typical use::

    from typing import NamedTuple
    from nets import Net, Place, Transition, variables

    class Job(NamedTuple):
        queue: str
        n: int

    jobs = Place("jobs", Job, key="queue")
    done = Place("done", Job, key="queue")
    j, q = variables("j q")
    work = Transition("work", consume=[jobs(j, queue=q)], produce=[done.produce(j, delay=5)])
    net = Net("example", places=[jobs, done], transitions=[work])

See ``docs/language.md`` for the whole language.
"""

from nets.engine import Engine, EngineStatistics, TieBreak
from nets.errors import CpnError, NetDefinitionError, TokenError
from nets.firing import Step
from nets.model import (
    ConsumeArc,
    InhibitorArc,
    Net,
    OutputArc,
    Place,
    ReadArc,
    Transition,
    Var,
    variables,
)

__all__ = [
    "ConsumeArc",
    "CpnError",
    "Engine",
    "EngineStatistics",
    "InhibitorArc",
    "Net",
    "NetDefinitionError",
    "OutputArc",
    "Place",
    "ReadArc",
    "Step",
    "TieBreak",
    "TokenError",
    "Transition",
    "Var",
    "variables",
]
