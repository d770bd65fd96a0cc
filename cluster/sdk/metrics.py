"""A worker process's Prometheus metrics (``cpn worker run`` and the crawler's workers).

The runner's counters live on its event loop (and its call threads add to them under
its lock), so the HTTP server's thread never reads them: a task on the loop copies them
into a frozen :class:`WorkerSample` every ``SAMPLE_S``, and ``/metrics`` renders the
current sample (:mod:`router.shell.metrics`, docs/observability.md). The URL is logged
and written to ``--metrics-file`` if one is given (a worker has no data directory).

An application built on the SDK (the crawler) adds its own families with ``extra``: a
function called on the loop at each sample, returning frozen families.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

SAMPLE_S: Final = 0.5
# The runner's counters (cluster/sdk/runner.py) and what each counts: a fixed set, so a
# worker shows the same series from its first scrape on.
WORKER_EVENTS: Final = {
    "leased": "tokens leased",
    "succeeded": "calls that returned results",
    "failed": "calls that raised (completed with a failure token, if declared)",
    "completed": "tokens completed",
    "released": "tokens handed back on stopping",
    "renewed": "lease renewals sent",
    "renew_expired": "renewals refused: the lease had expired",
    "expired": "completions refused: the lease had expired",
    "late": "results dropped: the lease expired during the call",
    "redirected": "completions redirected (the slot moved)",
    "gave_up": "completions given up after retries",
    "lease_errors": "lease requests that failed",
    "work_errors": "leases not completed for a cluster error",
    "work_failed": "leases not completed for a bug",
}


@dataclass(frozen=True, slots=True)
class WorkerSample:
    """What one scrape of a worker shows, as of its last sample."""

    worker: str
    place: str
    counters: Mapping[str, int]
    leases_working: int
    sync_calls_running: int
    extra: tuple[Metric, ...] = ()


def worker_families(s: WorkerSample) -> list[Metric]:
    """Prometheus families for one :class:`WorkerSample`."""
    info = GaugeMetricFamily(
        "cpn_worker_info", "The worker function and its queue", labels=["worker", "place"]
    )
    info.add_metric([s.worker, s.place], 1)
    events = CounterMetricFamily(
        "cpn_worker_events", "What the worker did, by event", labels=["event"]
    )
    for event in WORKER_EVENTS:
        events.add_metric([event], s.counters.get(event, 0))
    return [
        info,
        events,
        GaugeMetricFamily(
            "cpn_worker_leases_working", "Leases being worked on", value=s.leases_working
        ),
        GaugeMetricFamily(
            "cpn_worker_sync_calls_running", "Calls on the thread pool", value=s.sync_calls_running
        ),
        *s.extra,
    ]


class WorkerMetrics:
    """The current :class:`WorkerSample` and the task that refreshes it."""

    def __init__(self, take: Callable[[], WorkerSample]) -> None:
        self._take = take
        self.sample = take()

    def collect(self) -> Iterable[Metric]:
        """The families of the current sample (on the HTTP server's thread)."""
        return worker_families(self.sample)

    async def refresh(self, stopping: asyncio.Event) -> None:
        """Take a sample every ``SAMPLE_S`` until ``stopping`` is set, and once more then."""
        while not stopping.is_set():
            self.sample = self._take()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), SAMPLE_S)
        self.sample = self._take()
