"""What the dashboard shows at one moment, and firing rates from successive samples.

Both are pure: the sampler (cluster/dashboard/sampler.py) reads the cluster and the
clock and hands the readings in; nothing here does I/O.

Firing rates. A shard reports ``firings``, counts per transition since *this
incarnation* started (a restarted shard counts from its recovered state again), so a
count that drops, or an incarnation that changes, means a restart, not negative work.
:class:`FiringRates` keeps the last ``RATE_WINDOW_MS`` of samples and sums, per shard
and per transition, the increases between consecutive samples of the same
incarnation; an interval across a restart adds nothing (the rate dips for one window
rather than spiking). Where a shard reports persisted totals (``firings_total``, a
dict per transition, added by the metrics work), those are used instead: they do not
restart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

RATE_WINDOW_MS: Final = 1_000
RATE_SAMPLES_MAX: Final = 64  # bounds the window whatever the sampling interval


@dataclass(frozen=True, slots=True)
class ShardReading:
    """One shard's firing counters at one sample: its incarnation and counts."""

    incarnation: int
    firings: Mapping[str, int]


def firing_counts(stats: Mapping[str, Any]) -> dict[str, int]:
    """The cumulative firing counts per transition in a shard's statistics: the
    persisted ``firings_total`` when the shard reports it, else ``firings``."""
    totals = stats.get("firings_total")
    if isinstance(totals, Mapping):
        return {str(name): int(count) for name, count in totals.items()}
    return {str(name): int(count) for name, count in stats.get("firings", {}).items()}


@dataclass(frozen=True, slots=True)
class FiringRates:
    """Samples of every shard's counters over the last ``RATE_WINDOW_MS``, oldest first."""

    samples: tuple[tuple[int, Mapping[int, ShardReading]], ...] = ()

    def add(self, now_ms: int, readings: Mapping[int, ShardReading]) -> FiringRates:
        """These rates with a sample at ``now_ms`` added and samples that fell out of
        the window dropped (the newest one before the window is kept: it starts it)."""
        samples = (*self.samples, (now_ms, dict(readings)))[-RATE_SAMPLES_MAX:]
        first = 0
        while first + 1 < len(samples) and samples[first + 1][0] <= now_ms - RATE_WINDOW_MS:
            first += 1
        return FiringRates(samples[first:])

    def per_transition(self) -> dict[str, float]:
        """Firings per second of each transition, summed over the shards."""
        total: Counter[str] = Counter()
        for counts in self._increases().values():
            total.update(counts)
        span_s = self._span_s()
        return {name: count / span_s for name, count in sorted(total.items())} if span_s else {}

    def per_shard(self) -> dict[int, float]:
        """Firings per second of each shard, all transitions together."""
        span_s = self._span_s()
        if not span_s:
            return {}
        return {k: sum(c.values()) / span_s for k, c in sorted(self._increases().items())}

    def _span_s(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        return (self.samples[-1][0] - self.samples[0][0]) / 1000

    def _increases(self) -> dict[int, Counter[str]]:
        increases: dict[int, Counter[str]] = {}
        for (_, before), (_, after) in zip(self.samples, self.samples[1:], strict=False):
            for shard_id, now in after.items():
                then = before.get(shard_id)
                if then is None or then.incarnation != now.incarnation:
                    continue  # a restart (or a shard not heard before): no interval
                grown = Counter(
                    {name: count - then.firings.get(name, 0) for name, count in now.firings.items()}
                )
                if any(delta < 0 for delta in grown.values()):
                    continue  # counts went down: restarted between two samples
                increases.setdefault(shard_id, Counter()).update(grown)
        return increases


@dataclass(frozen=True, slots=True)
class ShardView:
    """One shard's row on the page: the router's view and its own statistics."""

    shard_id: int
    alive: bool
    progressing: bool
    endpoint: str
    pid: int | None
    slots: int
    epoch: int
    incarnation: int | None  # None while the shard does not answer
    firings: int | None
    firings_per_s: float | None
    outbox_tokens: int | None
    in_flight_tokens: int | None  # sent, not yet acknowledged (the shard's in_flight)
    error: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.shard_id,
            "alive": self.alive,
            "progressing": self.progressing,
            "endpoint": self.endpoint,
            "pid": self.pid,
            "slots": self.slots,
            "epoch": self.epoch,
            "incarnation": self.incarnation,
            # An incarnation counts the shard's starts: all but the first are restarts.
            "restarts": None if self.incarnation is None else max(self.incarnation - 1, 0),
            "firings": self.firings,
            "firings_per_s": self.firings_per_s,
            "outbox_tokens": self.outbox_tokens,
            "in_flight_tokens": self.in_flight_tokens,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The cluster as the page shows it; ``seq`` grows with every sample taken.

    ``error`` is empty when the whole sample succeeded; otherwise it says what did not
    answer, and the figures are the last ones known.
    """

    seq: int
    sampled_ms: int  # wall-clock time of the sample, for the page's "as of"
    net: str
    epoch: int
    places: Mapping[str, int]
    firings: Mapping[str, int]
    rates: Mapping[str, float]
    shards: Sequence[ShardView]
    owners: Sequence[int]  # the owner of each slot
    moves: Sequence[Mapping[str, Any]]
    moves_done: int
    moves_aborted: int
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "sampled_ms": self.sampled_ms,
            "net": self.net,
            "epoch": self.epoch,
            "places": dict(self.places),
            "firings": dict(self.firings),
            "rates": {name: round(rate, 2) for name, rate in self.rates.items()},
            "shards": [shard.to_json() for shard in self.shards],
            "owners": list(self.owners),
            "moves": [dict(move) for move in self.moves],
            "moves_done": self.moves_done,
            "moves_aborted": self.moves_aborted,
            "error": self.error,
        }


def empty_snapshot(net: str, error: str) -> Snapshot:
    """What the page shows before the first sample (``seq`` 0)."""
    return Snapshot(0, 0, net, 0, {}, {}, {}, (), (), (), 0, 0, error)


def moves_in_flight(router_statistics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The router's active slot moves (router/coordinator.py's summary) as plain rows."""
    return [
        {key: move.get(key) for key in ("move_id", "slot", "source", "target", "state")}
        for move in router_statistics.get("moves_active", [])
    ]
