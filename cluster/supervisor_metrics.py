"""The supervisor's Prometheus metrics: its children, their starts and stuck kills (SHELL).

The supervisor is the one process that sees restarts happen (a shard's own metrics
start again at zero with it), so it counts them: per child, how many times it was
started and whether it runs now, and how many shards it killed for making no
progress. Its loop builds a frozen :class:`SupervisorSample` each tick from
:class:`ChildReading` records; ``/metrics`` renders the current one on the HTTP
server's thread (:mod:`router.shell.metrics`, docs/observability.md). Series: two per
child (a cluster has tens of children at most) plus one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric


@dataclass(frozen=True, slots=True)
class ChildReading:
    """One supervised child as the supervisor sees it."""

    name: str  # "router" or "shard K": bounded by the cluster's size
    starts: int  # first start included
    running: bool


@dataclass(frozen=True, slots=True)
class SupervisorSample:
    """What one scrape of the supervisor shows."""

    children: tuple[ChildReading, ...] = ()
    stuck_kills: int = 0


class SupervisorMetrics:
    """The loop's side: the current sample, replaced whole each tick."""

    def __init__(self) -> None:
        self.sample = SupervisorSample()

    def collect(self) -> Iterable[Metric]:
        """The families of the current sample (on the HTTP server's thread)."""
        return supervisor_families(self.sample)


def supervisor_families(sample: SupervisorSample) -> list[Metric]:
    """Prometheus families for one :class:`SupervisorSample`."""
    # Imported here: `cpn` commands import the supervisor's module without serving.
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

    starts = CounterMetricFamily(
        "cpn_supervisor_child_starts",
        "Starts of a supervised child (restarts + 1)",
        labels=["child"],
    )
    running = GaugeMetricFamily(
        "cpn_supervisor_child_running", "1 if the child's process runs now", labels=["child"]
    )
    for child in sample.children:
        starts.add_metric([child.name], child.starts)
        running.add_metric([child.name], int(child.running))
    stuck = CounterMetricFamily(
        "cpn_supervisor_stuck_kills",
        "Shards killed for making no progress",
        value=sample.stuck_kills,
    )
    return [starts, running, stuck]
