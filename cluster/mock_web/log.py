"""The mock web's request log, read from the server's point of view (pure).

:class:`RequestRecord` is one request as :class:`cluster.mock_web.web.MockWeb` logged it. The
functions here answer, per host, the questions politeness tests ask of such a log: how
close did two request *starts* come (:func:`min_start_gap_ns`), how many requests were in
progress at once (:func:`max_concurrency`), and which consecutive starts came closer than
a minimum gap (:func:`politeness_violations`). The ``*_by`` forms answer the first two
for any records with a start and an end, grouped by any key (the mock forward proxy's log,
:mod:`cluster.mock_web.proxy`, groups by proxy).

Theory of operation: records are grouped by host (or the key) and ordered by (start, end);
a request occupies the half-open interval [start_ns, end_ns), so one that starts exactly
when another ends does not overlap it. Nothing depends on the order records are given in.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

STATUS_RESET: Final = 0  # the status recorded for a reset connection


@dataclass(frozen=True)
class RequestRecord:
    """One request the mock web answered (or reset), as its log holds it.

    Times: ``start_ns``/``end_ns`` from the server's monotonic clock (the request parsed,
    the answer written or the connection reset), ``start_wall_ms`` since the Unix epoch.
    ``status`` is ``STATUS_RESET`` (0) for a reset connection. ``attempt`` is the 1-based
    count of requests for this (host, path), 0 for a path the site does not have.
    """

    host: int
    netloc: str
    method: str
    path: str
    start_ns: int
    end_ns: int
    start_wall_ms: int
    status: int
    client: str
    attempt: int
    bytes_sent: int

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class Violation:
    """Two request starts at one host closer than its minimum gap."""

    host: int
    first: RequestRecord
    second: RequestRecord
    gap_ns: int
    min_gap_ns: int


class Span(Protocol):
    """Anything logged with a start and an end on one monotonic clock."""

    @property
    def start_ns(self) -> int: ...

    @property
    def end_ns(self) -> int: ...


SpanT = TypeVar("SpanT", bound=Span)
KeyT = TypeVar("KeyT", int, str)


def spans_by(records: Iterable[SpanT], key: Callable[[SpanT], KeyT]) -> dict[KeyT, list[SpanT]]:
    """Records grouped by ``key`` (keys in order), each group ordered by (start, end)."""
    groups: dict[KeyT, list[SpanT]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    for group in groups.values():
        group.sort(key=lambda r: (r.start_ns, r.end_ns))
    return dict(sorted(groups.items()))


def min_start_gap_ns_by(records: Iterable[SpanT], key: Callable[[SpanT], KeyT]) -> dict[KeyT, int]:
    """Per key with two records or more: the smallest gap between consecutive starts."""
    gaps: dict[KeyT, int] = {}
    for group, ordered in spans_by(records, key).items():
        if len(ordered) >= 2:
            gaps[group] = min(b.start_ns - a.start_ns for a, b in itertools.pairwise(ordered))
    return gaps


def max_concurrency_by(records: Iterable[SpanT], key: Callable[[SpanT], KeyT]) -> dict[KeyT, int]:
    """Per key: the most records in progress at once, each over [start_ns, end_ns)."""
    result: dict[KeyT, int] = {}
    for group, ordered in spans_by(records, key).items():
        # At equal times an end (-1) sorts before a start (+1): half-open intervals.
        events = sorted([(r.start_ns, 1) for r in ordered] + [(r.end_ns, -1) for r in ordered])
        running = peak = 0
        for _, step in events:
            running += step
            peak = max(peak, running)
        result[group] = peak
    return result


def _host(record: RequestRecord) -> int:
    return record.host


def min_start_gap_ns(records: Iterable[RequestRecord]) -> dict[int, int]:
    """Per host with two requests or more: the smallest gap between consecutive starts."""
    return min_start_gap_ns_by(records, _host)


def max_concurrency(records: Iterable[RequestRecord]) -> dict[int, int]:
    """Per host: the most requests in progress at once, each over [start_ns, end_ns).

    A request that starts exactly when another ends does not overlap it.
    """
    return max_concurrency_by(records, _host)


def politeness_violations(
    records: Iterable[RequestRecord], min_gap_ms: int | Mapping[int, int]
) -> tuple[Violation, ...]:
    """Consecutive request starts at one host closer than its minimum gap.

    ``min_gap_ms`` is one gap for all hosts or a gap per host (a host not in the mapping
    has no minimum).
    """
    found = []
    for host, ordered in spans_by(records, _host).items():
        gap_ms = min_gap_ms if isinstance(min_gap_ms, int) else min_gap_ms.get(host, 0)
        for first, second in itertools.pairwise(ordered):
            gap_ns = second.start_ns - first.start_ns
            if gap_ns < gap_ms * 1_000_000:
                found.append(Violation(host, first, second, gap_ns, gap_ms * 1_000_000))
    return tuple(found)
