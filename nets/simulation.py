"""Running a net alone under virtual time and summarising what happened.

The simulation is the engine's own :meth:`~nets.engine.Engine.run` loop (fire all that
is enabled now, then jump to the next deadline) with a bound on steps, plus a summary
record. It reads no clock: wall time is the caller's business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nets.engine import Engine, TieBreak
from nets.model import Net


@dataclass(frozen=True, slots=True)
class SimulationSummary:
    """What a simulated run did."""

    net: str
    seed: int
    steps: int
    virtual_ms: int  # the virtual time when the run stopped
    dead: bool  # nothing enabled and nothing pending: the net can never fire again
    step_limit_reached: bool
    firings: Mapping[str, int]
    tokens: Mapping[str, int]


def simulate(
    net: Net,
    *,
    until_ms: int,
    seed: int = 0,
    tie_break: TieBreak | str = TieBreak.ORDERED,
    steps_max: int = 10_000_000,
) -> SimulationSummary:
    """Fire ``net`` from its initial marking in virtual time up to ``until_ms``."""
    engine = Engine(net, seed=seed, tie_break=tie_break)
    steps = sum(1 for _ in engine.run(until=until_ms, max_steps=steps_max))
    stats = engine.statistics()
    dead = engine.next_deadline() is None and not engine.enabled(engine.now)
    return SimulationSummary(
        net=net.name,
        seed=seed,
        steps=steps,
        virtual_ms=engine.now,
        dead=dead,
        step_limit_reached=steps >= steps_max,
        firings=stats.firings,
        tokens=stats.tokens,
    )
