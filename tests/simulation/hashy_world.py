"""Runners for the determinism tests (loaded by import path, also in a child process)."""

from __future__ import annotations

from cluster.sim.trace import Trace

NAMES = tuple(f"node-{i}" for i in range(16))


def hash_dependent(seed: int) -> Trace:
    """Iterates a set of strings: its order follows ``PYTHONHASHSEED``, a bug to catch."""
    trace = Trace()
    trace.record(0, "world", "start", seed)
    for time_ms, name in enumerate(set(NAMES), start=1):
        trace.record(time_ms, name, "visit")
    return trace


def failing(seed: int) -> Trace:
    raise RuntimeError(f"the world of seed {seed} fell over")


def chatty(seed: int) -> Trace:
    print("a runner that prints must not spoil its trace")
    trace = Trace()
    trace.record(0, "world", "start", seed)
    return trace
