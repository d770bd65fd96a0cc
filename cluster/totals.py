"""Cluster-wide figures that tell the truth: firing totals and tokens with those in flight.

A shard's engine counts the firings of its own process only, and a place's count on a
shard leaves out the tokens it handed off that no receiver committed yet. This module
puts together what `cpn status` and `cpn marking` show instead (docs/operations.md,
"What the totals mean"):

* **Firing totals**: each shard's ``firings_total`` (committed firings over its store's
  life, persisted with the batch that fired them) plus the router's ``firings_retired``
  (a retired shard's last totals). A shard that does not answer is named, never
  silently left out; since when the totals count is the earliest ``firings_since_ms``.
* **Marking**: each place's tokens on the shards that answered, beside the tokens in
  their outboxes not yet acknowledged (``in flight``); shards still loading deferred
  tokens or not answering are named.

The functions that combine figures are pure (dicts in, a record out); the two readers
ask the cluster through a :class:`~cluster.client.ClusterClient`.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cluster.client import ClusterClient
from nets.errors import CpnError
from router.wire import Counts, QueryCounts


@dataclass(frozen=True, slots=True)
class FiringTotals:
    """Committed firings per transition, cluster-wide.

    ``since_ms``: the earliest time any shard's totals count from (wall ms, 0: unknown);
    ``upgraded``: shards whose totals count only from an upgrade of their store (their
    firings before it were never counted); ``retired``: retired shards whose last totals
    are included; ``missing``: shards that did not answer (their firings are not in).
    """

    firings: dict[str, int]
    since_ms: int
    upgraded: tuple[int, ...]
    retired: tuple[int, ...]
    missing: tuple[int, ...]


def firing_totals(
    shard_count: int,
    shard_stats: Mapping[int, Mapping[str, Any]],
    router_stats: Mapping[str, Any],
) -> FiringTotals:
    """Totals over shards ``0 .. shard_count - 1`` (those in the cluster, leaving ones
    too) from their statistics, and over the retired ones from the router's."""
    firings: Counter[str] = Counter()
    since: list[int] = []
    upgraded = []
    for shard_id, stats in sorted(shard_stats.items()):
        firings.update(stats.get("firings_total", {}))
        if stats.get("firings_since_ms"):
            since.append(int(stats["firings_since_ms"]))
        if str(stats.get("firings_since", "")).startswith("upgraded"):
            upgraded.append(shard_id)
    retired = []
    for shard_id, totals in router_stats.get("firings_retired", []):
        # A retired shard scaled back in reports its own totals again (the router
        # forgets its record then; this guards a status taken in between).
        if shard_id >= shard_count:
            firings.update(totals)
            retired.append(int(shard_id))
    missing = tuple(k for k in range(shard_count) if k not in shard_stats)
    return FiringTotals(
        dict(sorted(firings.items())),
        min(since, default=0),
        tuple(upgraded),
        tuple(retired),
        missing,
    )


def describe_totals(totals: FiringTotals) -> list[str]:
    """The lines `cpn status` prints for the totals."""
    since = _wall(totals.since_ms) if totals.since_ms else "an unknown time"
    lines = [f"firings per transition (committed, cluster-wide, counted since {since}):"]
    if totals.firings:
        rows = [(transition, f"{n:,}") for transition, n in totals.firings.items()]
        lines.extend(_table([("transition", "total"), *rows]))
    else:
        lines.append("  (none)")
    if totals.retired:
        lines.append(f"  including retired shards {_ids(totals.retired)} (kept by the router)")
    if totals.upgraded:
        lines.append(
            f"  shards {_ids(totals.upgraded)} count only since their store was upgraded to "
            "schema 7 (earlier firings were not recorded)"
        )
    if totals.missing:
        lines.append(
            f"  WITHOUT shards {_ids(totals.missing)}: they did not answer (restarting or "
            "unreachable); ask again"
        )
    return lines


@dataclass(frozen=True, slots=True)
class MarkingView:
    """Tokens per place on the shards that answered, and those in flight between shards.

    ``in_flight``: handed off by a shard, not yet acknowledged by the receiver (a token
    the receiver has just committed shows in both until its acknowledgement arrives);
    ``loading``: shard -> tokens of deferred places it is still loading after a restart
    (already counted in ``counts``); ``missing``: shards that did not answer.
    """

    counts: dict[str, int]
    in_flight: dict[str, int]
    loading: dict[int, int]
    missing: tuple[int, ...]


def marking_view(
    replies: Mapping[int, Counts | Mapping[str, Any]], shard_count: int
) -> MarkingView:
    """Combine each shard's :class:`~router.wire.Counts` (or its statistics, which hold
    the same figures under ``tokens``, ``in_flight`` and ``tokens_loading``)."""
    counts: Counter[str] = Counter()
    in_flight: Counter[str] = Counter()
    loading = {}
    places: list[str] = []
    for shard_id, reply in sorted(replies.items()):
        if isinstance(reply, Counts):
            shard_counts, flying, pending = reply.counts, reply.in_flight, reply.tokens_loading
        else:
            shard_counts = reply.get("tokens", {})
            flying = reply.get("in_flight", {})
            pending = int(reply.get("tokens_loading", 0))
        places.extend(p for p in shard_counts if p not in counts)
        counts.update(dict.fromkeys(shard_counts, 0))
        counts.update(shard_counts)
        in_flight.update(flying)
        if pending:
            loading[shard_id] = pending
    return MarkingView(
        {p: counts[p] for p in dict.fromkeys([*places, *in_flight])},
        dict(in_flight),
        loading,
        tuple(k for k in range(shard_count) if k not in replies),
    )


def describe_marking(view: MarkingView) -> list[str]:
    """The lines `cpn marking` (and `cpn status`) print for the tokens per place."""
    lines = ["tokens per place:"]
    rows: list[tuple[object, ...]] = [("place", "tokens", "in flight")]
    rows.extend(
        (place, f"{count:,}", f"{view.in_flight.get(place, 0):,}")
        for place, count in view.counts.items()
    )
    rows.append(("(all)", f"{sum(view.counts.values()):,}", f"{sum(view.in_flight.values()):,}"))
    lines.extend(_table(rows))
    lines.extend(marking_notes(view))
    return lines


def marking_notes(view: MarkingView) -> list[str]:
    """What makes the counts incomplete or in motion, one line each (none: exact)."""
    notes = []
    if view.in_flight:
        notes.append(
            "  in flight: handed off between shards, not yet acknowledged by the receiver "
            "(counted in no place yet)"
        )
    for shard_id, pending in sorted(view.loading.items()):
        notes.append(
            f"  shard {shard_id} is recovering: {pending:,} tokens of deferred places still "
            "to load (counted above from its store)"
        )
    if view.missing:
        notes.append(
            f"  WITHOUT shards {_ids(view.missing)}: they did not answer (restarting or "
            "unreachable); their tokens are not counted"
        )
    return notes


def read_marking(client: ClusterClient) -> MarkingView:
    """Ask every shard of the table for its counts; a shard that does not answer is
    named in the view, not an error."""
    shard_count = client.table(refresh=True).shard_count
    replies: dict[int, Counts] = {}
    for shard_id in range(shard_count):
        try:
            replies[shard_id] = client.shard(shard_id).request(QueryCounts(), Counts)
        except CpnError:
            continue
    return marking_view(replies, shard_count)


def _table(rows: Iterable[tuple[object, ...]]) -> list[str]:
    """Left-aligned columns two spaces apart, indented (numbers stay readable)."""
    rows = list(rows)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(f"{cell!s:<{w}}" for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _ids(shard_ids: Iterable[int]) -> str:
    return ", ".join(map(str, shard_ids))


def _wall(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
