"""What a shard counts, read once per batch for its metrics (pure records).

The core answers :meth:`shard.core.ShardCore.reading` with a :class:`CoreReading`: the
gauges and cumulative counters of its engine, leases, exchange and mover, read without
walking a marking or sorting anything. The shell adds its own figures (commit latencies,
batch sizes, its counters) in a :class:`ShardReading`, and a :class:`ReadingMark` says
how far a reader has read, so that each histogram observation is taken exactly once even
when the core was rebuilt in between (after a failed commit).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CoreReading:
    """The core's figures as of its last step (docs/observability.md)."""

    net: str
    incarnation: int
    read_only: bool
    firings: Mapping[str, int]  # this incarnation's, per transition
    tokens: Mapping[str, int]  # per place, deferred tokens not yet loaded included
    queue_tokens: Mapping[str, int]  # work waiting per work queue (not leased)
    pending_tokens: int  # timed tokens not due yet
    enabled_left: bool  # the last batch stopped at a bound with work still enabled
    leases_live: int
    lease_age_ms_max: int  # of the oldest live lease
    leases_parked: int  # long polls waiting for work
    outbox_tokens: int  # handed off, not acknowledged
    counters: Mapping[str, int]  # the core's, its polls', exchange's, link's and mover's
    handoffs_timed: int  # handed-in tokens whose latency was taken, ever (this core)


@dataclass(frozen=True, slots=True)
class ReadingMark:
    """How far a reader has read: the shell's core generation (a rebuilt core counts
    afresh), its commits and the timed handoffs seen."""

    generation: int = 0
    commits: int = 0
    handoffs_timed: int = 0


@dataclass(frozen=True, slots=True)
class ShardReading:
    """A core reading with the shell's figures, and what is new since a mark."""

    core: CoreReading
    shell_counters: Mapping[str, int]
    recovery_ms: int  # how long this start's recovery took
    commit_latencies_ms: tuple[float, ...]  # of the commits since the mark
    batch_entries: tuple[int, ...]  # marking entries of the commits since the mark
    handoff_latencies_ms: tuple[int, ...]  # of the handoffs timed since the mark
    mark: ReadingMark  # where the next reading starts
