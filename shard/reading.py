"""The read side of a shard: what it counts, and the functions that read it.

The core answers :meth:`shard.core.ShardCore.reading` with a :class:`CoreReading`: the
gauges and cumulative counters of its engine, leases, exchange and mover, read without
walking a marking or sorting anything. The shell adds its own figures (commit latencies,
batch sizes, its counters) in a :class:`ShardReading`, and a :class:`ReadingMark` says
how far a reader has read, so that each histogram observation is taken exactly once even
when the core was rebuilt in between (after a failed commit).

The functions below build those readings and the answers to ``QueryCounts``,
``QueryTokens`` and ``Stats`` from the parts of a core, passed explicitly: they change
nothing but loading a deferred place that a query must see whole, so that what a shard
shows is decided in one module, apart from what it does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from nets.engine import Engine
from nets.model import Net
from router.wire import QueryTokens, Tokens
from shard.deferred import DeferredLoad
from shard.exchange import Exchange
from shard.lease_desk import LeaseDesk
from shard.mover import Mover
from shard.request_checks import RequestError, place_of

TOKENS_PAGE_MAX: Final = 10_000


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


def token_counts(net: Net, engine: Engine, deferred: DeferredLoad) -> dict[str, int]:
    """Tokens per place, counting those of a deferred place still to load."""
    return {p.name: engine.count(p.name) + deferred.pending(p.name) for p in net.places}


def tokens_page(
    net: Net,
    engine: Engine,
    deferred: DeferredLoad,
    deferred_places: frozenset[str],
    query: QueryTokens,
) -> Tokens:
    """The page of a place's entries ``query`` asks for (a deferred place is loaded
    whole first: a page of it must not depend on how far loading got).

    Raises:
        RequestError: ``unknown_place``, or ``bad_request`` for a page out of bounds.
    """
    place_of(net, query.place)
    if query.offset < 0 or not 0 < query.limit <= TOKENS_PAGE_MAX:
        raise RequestError("bad_request", f"need offset >= 0 and 0 < limit <= {TOKENS_PAGE_MAX}")
    if query.place in deferred_places:
        deferred.complete(engine, engine.now)
    entries = engine.tokens(query.place)
    page = entries[query.offset : query.offset + query.limit]
    return Tokens(
        query.place, query.offset, len(entries), tuple((t, tuple(tok)) for t, tok in page)
    )


def quantile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile of ``sorted_values`` (0.0 for none), to three decimals."""
    if not sorted_values:
        return 0.0
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 3)


def shard_statistics(
    net: Net,
    engine: Engine,
    deferred: DeferredLoad,
    exchange: Exchange,
    mover: Mover,
    leases: LeaseDesk,
    *,
    incarnation: int,
    counters: Counter[str],
    firings_total: Mapping[str, int],
    firings_since_ms: int,
    firings_since: Any,
    firings_committed_ms: int,
    handoff_latencies_ms: Iterable[int],
    read_only_reason: str | None,
    shell: Mapping[str, Any],
) -> dict[str, Any]:
    """A ``Stats`` answer: the core's figures and the shell's (its ``counters`` entry is
    added to ``counters``, the core's, its polls', exchange's and link's)."""
    stats = engine.statistics()
    handoff: list[float] = sorted(handoff_latencies_ms)
    shell = dict(shell)
    return {
        "net": net.name,
        "incarnation": incarnation,
        # When the deferred places' tokens were all loaded, and how many there were.
        "deferred_loaded_ms": deferred.loaded_ms,
        "deferred_tokens": deferred.loaded,
        "now_ms": engine.now,
        "firings": dict(stats.firings),
        "firings_total": dict(firings_total),
        "firings_since_ms": firings_since_ms,
        "firings_since": firings_since,
        "firings_committed_ms": firings_committed_ms,
        "tokens": token_counts(net, engine, deferred),
        # Tokens this shard handed off that the receiver has not acknowledged yet,
        # by place, and those of deferred places not loaded yet (counted in tokens).
        "in_flight": exchange.in_flight(),
        "tokens_loading": deferred.pending_total(),
        "handoff_ms_p50": quantile(handoff, 0.50),
        "handoff_ms_p99": quantile(handoff, 0.99),
        "read_only": read_only_reason or "",
        "leases_live": len(leases.leases),
        "lease_progress": leases.progress_shown(),
        "counters": dict(counters + Counter(shell.pop("counters", {}))),
        **exchange.statistics(),
        **mover.statistics(exchange),
        **shell,
    }


def core_reading(
    net: Net,
    engine: Engine,
    deferred: DeferredLoad,
    exchange: Exchange,
    leases: LeaseDesk,
    *,
    queues: Iterable[str],
    incarnation: int,
    read_only: bool,
    enabled_left: bool,
    leases_parked: int,
    counters: Counter[str],
    handoffs_timed: int,
) -> CoreReading:
    """The figures the shard's metrics show, read without walking a marking or
    sorting anything: proportional to the net's size, not its tokens."""
    stats = engine.statistics()  # copies two small dicts
    tokens = (
        {place: count + deferred.pending(place) for place, count in stats.tokens.items()}
        if deferred.active
        else dict(stats.tokens)
    )
    oldest_ms = leases.oldest_granted_ms()
    return CoreReading(
        net=net.name,
        incarnation=incarnation,
        read_only=read_only,
        firings=dict(stats.firings),
        tokens=tokens,
        queue_tokens={queue: tokens.get(queue, 0) for queue in queues},
        pending_tokens=stats.pending,
        enabled_left=enabled_left,
        leases_live=len(leases.leases),
        lease_age_ms_max=max(0, stats.now - oldest_ms) if oldest_ms is not None else 0,
        leases_parked=leases_parked,
        outbox_tokens=exchange.outbox.pending_tokens(),
        counters=dict(counters),
        handoffs_timed=handoffs_timed,
    )
