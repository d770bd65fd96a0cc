"""The what-if report: one seed's figures, and their means and spreads over the seeds.

:mod:`cluster.sim.whatif` measures the runs and says what each figure means; this
module holds the figures as frozen records and renders them, as text for people
(:meth:`WhatIfReport.render`) and as plain JSON values for tools
(:meth:`WhatIfReport.to_json`). Percentiles are nearest-rank; a spread is the mean,
min and max of one per-seed figure over the seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cluster.sim.cluster_run import SimConfig

TIMER_SUFFIX: Final = "__timer"  # a work queue's lease timers (shard/leases.py)

# -- figures ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """A sample's size, mean, p50, p95 and max (nearest rank; all 0 when empty)."""

    count: int = 0
    mean: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    max: float = 0.0

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls()
        ordered = sorted(values)
        return cls(
            len(ordered),
            math.fsum(ordered) / len(ordered),
            _rank(ordered, 0.50),
            _rank(ordered, 0.95),
            ordered[-1],
        )

    def to_json(self) -> dict[str, float]:
        return {
            "count": self.count,
            "mean": round(self.mean, 3),
            "p50": self.p50,
            "p95": self.p95,
            "max": self.max,
        }


def _rank(ordered: Sequence[float], q: float) -> float:
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class Spread:
    """One figure over the seeds: its mean, min and max."""

    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(math.nan, math.nan, math.nan)
        return cls(math.fsum(values) / len(values), min(values), max(values))

    def to_json(self) -> dict[str, float | None]:
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 3)

        return {"mean": clean(self.mean), "min": clean(self.low), "max": clean(self.high)}


@dataclass(frozen=True, slots=True)
class TransitionFigures:
    name: str
    firings: int
    per_s: float
    latency_ms: Summary


@dataclass(frozen=True, slots=True)
class PlaceFigures:
    name: str
    mean: float  # time-weighted token count
    max: int


@dataclass(frozen=True, slots=True)
class QueueFigures:
    place: str
    leases: int
    wait_ms: Summary
    held_ms: Summary
    turnaround_ms: Summary
    first_start_ms: int | None  # when the first effect began (lease or planned start)


@dataclass(frozen=True, slots=True)
class SeedFigures:
    """What one seed's run measured (see the module docstring)."""

    seed: int
    failure: str  # "" when the run's own checks (ledger, invariants) passed
    virtual_ms: int
    started_ms: int  # the cluster's start-up: when the first firing or lease came
    quiesced: bool
    makespan_ms: int | None
    window_ms: int  # what throughput and occupancy are over
    firings: int
    per_s: float
    transitions: tuple[TransitionFigures, ...]
    places: tuple[PlaceFigures, ...]
    queues: tuple[QueueFigures, ...]
    handoffs: int
    events: int
    workers: tuple[tuple[str, int], ...]  # simulated workers per work-queue place

    @property
    def ok(self) -> bool:
        return not self.failure


# -- over seeds --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WhatIfReport:
    """The figures of every seed of one configuration, and their means and spreads."""

    config: SimConfig
    seeds: tuple[SeedFigures, ...]
    workers: Mapping[str, int]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.seeds)

    @property
    def quiesced(self) -> int:
        return sum(s.quiesced for s in self.seeds)

    def makespan_ms(self) -> Spread:
        """Over the seeds that quiesced (NaN when none did)."""
        return Spread.of([s.makespan_ms for s in self.seeds if s.makespan_ms is not None])

    def throughput_per_s(self) -> Spread:
        return Spread.of([s.per_s for s in self.seeds])

    def transitions(self) -> list[tuple[str, Spread, Spread, Spread, Spread]]:
        """Per transition that fired: (name, firings, per s, latency mean, latency p95)."""
        rows = []
        for index, name in enumerate(t.name for t in self.seeds[0].transitions):
            per_seed = [s.transitions[index] for s in self.seeds]
            if not any(t.firings for t in per_seed):
                continue
            rows.append(
                (
                    name,
                    Spread.of([t.firings for t in per_seed]),
                    Spread.of([t.per_s for t in per_seed]),
                    Spread.of([t.latency_ms.mean for t in per_seed if t.firings]),
                    Spread.of([t.latency_ms.p95 for t in per_seed if t.firings]),
                )
            )
        return rows

    def places(self) -> list[tuple[str, Spread, Spread]]:
        """Per place that ever held a token: (name, time-weighted mean, max).

        The lease timers (``<q>__timer``) are left out: one per lease until it would
        expire, they count leases, not work (``<q>__held`` is the work leased).
        """
        rows = []
        for index, name in enumerate(p.name for p in self.seeds[0].places):
            per_seed = [s.places[index] for s in self.seeds]
            if not any(p.max for p in per_seed) or name.endswith(TIMER_SUFFIX):
                continue
            rows.append(
                (name, Spread.of([p.mean for p in per_seed]), Spread.of([p.max for p in per_seed]))
            )
        return rows

    def queues(self) -> list[tuple[str, Spread, Spread, Spread, Spread]]:
        """Per work queue: (place, leases, wait mean, held mean, turnaround p95)."""
        rows = []
        for index, place in enumerate(q.place for q in self.seeds[0].queues):
            per_seed = [s.queues[index] for s in self.seeds]
            rows.append(
                (
                    place,
                    Spread.of([q.leases for q in per_seed]),
                    Spread.of([q.wait_ms.mean for q in per_seed]),
                    Spread.of([q.held_ms.mean for q in per_seed]),
                    Spread.of([q.turnaround_ms.p95 for q in per_seed]),
                )
            )
        return rows

    def render(self) -> str:
        """The report as text: the headline, then transitions, places and queues."""
        c = self.config
        params = " ".join(f"{k}={v}" for k, v in sorted(c.params.items())) or "(defaults)"
        seeds = [s.seed for s in self.seeds]
        lines = [
            f"what-if: {c.net_path} {params}",
            f"  {c.shards} shards, workers {_workers_text(self.workers)}, no faults, "
            f"{len(seeds)} seeds ({_seeds_text(seeds)}), until {c.until_ms / 1000:g} s",
        ]
        lines += [
            f"  seed {s.seed} FAILED its checks: {s.failure.splitlines()[0]}"
            for s in self.seeds
            if not s.ok
        ]
        span = self.makespan_ms()
        if self.quiesced:
            lines.append(
                f"  makespan:   {_ms(span)}  ({self.quiesced}/{len(seeds)} seeds quiesced)"
            )
        else:
            lines.append(
                f"  makespan:   not reached: no seed quiesced within {c.until_ms / 1000:g} s "
                "(try a longer --until)"
            )
        lines.append(f"  throughput: {_num(self.throughput_per_s(), 1)} firings/s")
        lines.append("")
        lines.append(
            f"  {'transition':<26}{'firings':>20}{'per s':>22}{'latency mean ms':>24}{'p95 ms':>18}"
        )
        for name, firings, per_s, mean, p95 in self.transitions():
            lines.append(
                f"  {name:<26}{_num(firings, 0):>20}{_num(per_s, 1):>22}"
                f"{_num(mean, 1):>24}{_num(p95, 0):>18}"
            )
        lines.append("")
        lines.append(f"  {'place (tokens, cluster)':<26}{'mean':>24}{'max':>18}")
        for name, mean, peak in self.places():
            lines.append(f"  {name:<26}{_num(mean, 2):>24}{_num(peak, 0):>18}")
        if self.seeds[0].queues:
            lines.append("")
            lines.append(
                f"  {'work queue':<26}{'leases':>20}{'wait mean ms':>22}"
                f"{'held mean ms':>22}{'turnaround p95 ms':>20}"
            )
            for place, leases, wait, held, turnaround in self.queues():
                lines.append(
                    f"  {place:<26}{_num(leases, 0):>20}{_num(wait, 1):>22}"
                    f"{_num(held, 1):>22}{_num(turnaround, 0):>20}"
                )
        lines.append("")
        lines.append("  (mean over seeds, [min..max] when the seeds differ; times are virtual)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Everything, per seed and aggregated, as plain JSON values."""
        c = self.config
        return {
            "net_path": c.net_path,
            "params": dict(c.params),
            "shards": c.shards,
            "until_ms": c.until_ms,
            "workers": dict(self.workers),
            "seeds": [s.seed for s in self.seeds],
            "ok": self.ok,
            "quiesced": self.quiesced,
            "makespan_ms": self.makespan_ms().to_json(),
            "throughput_per_s": self.throughput_per_s().to_json(),
            "transitions": {
                name: {
                    "firings": f.to_json(),
                    "per_s": r.to_json(),
                    "latency_ms_mean": m.to_json(),
                    "latency_ms_p95": p.to_json(),
                }
                for name, f, r, m, p in self.transitions()
            },
            "places": {
                name: {"mean": m.to_json(), "max": x.to_json()} for name, m, x in self.places()
            },
            "queues": {
                place: {
                    "leases": n.to_json(),
                    "wait_ms_mean": w.to_json(),
                    "held_ms_mean": h.to_json(),
                    "turnaround_ms_p95": t.to_json(),
                }
                for place, n, w, h, t in self.queues()
            },
            "per_seed": [_seed_json(s) for s in self.seeds],
        }


def _seed_json(s: SeedFigures) -> dict[str, Any]:
    return {
        "seed": s.seed,
        "failure": s.failure,
        "virtual_ms": s.virtual_ms,
        "quiesced": s.quiesced,
        "makespan_ms": s.makespan_ms,
        "firings": s.firings,
        "per_s": round(s.per_s, 3),
        "handoffs": s.handoffs,
        "transitions": {
            t.name: {"firings": t.firings, "latency_ms": t.latency_ms.to_json()}
            for t in s.transitions
            if t.firings
        },
        "places": {p.name: {"mean": round(p.mean, 3), "max": p.max} for p in s.places if p.max},
        "queues": {
            q.place: {
                "leases": q.leases,
                "wait_ms": q.wait_ms.to_json(),
                "held_ms": q.held_ms.to_json(),
                "turnaround_ms": q.turnaround_ms.to_json(),
                "first_start_ms": q.first_start_ms,
            }
            for q in s.queues
        },
    }


def _num(spread: Spread, digits: int) -> str:
    if math.isnan(spread.mean):
        return "-"
    text = f"{spread.mean:,.{digits}f}"
    if spread.high - spread.low >= 10 ** (-digits):
        text += f" [{spread.low:,.{digits}f}..{spread.high:,.{digits}f}]"
    return text


def _ms(spread: Spread) -> str:
    text = f"{spread.mean / 1000:.2f} s"
    if spread.high > spread.low:
        text += f" [{spread.low / 1000:.2f}..{spread.high / 1000:.2f}]"
    return text


def _seeds_text(seeds: Sequence[int]) -> str:
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}..{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


def _workers_text(workers: Mapping[str, int]) -> str:
    return ", ".join(f"{place} {count}" for place, count in workers.items()) or "none"
