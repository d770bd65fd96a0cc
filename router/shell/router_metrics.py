"""The router's Prometheus metrics, read from its control plane once per turn (SHELL).

The daemon's loop calls :meth:`RouterMetrics.after_turn`, which copies a handful of
counters and counts the active slot moves by state (a few at a time; never a table
walk) into a frozen :class:`RouterSample`; ``/metrics`` renders the current sample on
the HTTP server's thread (:mod:`router.shell.metrics`, docs/observability.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from router.control import ControlPlane
from router.moves import MoveState

_REQUESTS_PREFIX = "requests_"
_REFUSED_PREFIX = "errors_"


@dataclass(frozen=True, slots=True)
class RouterSample:
    """What one scrape of the router shows: its state as of its last turn."""

    net: str
    epoch: int
    shard_count: int
    incarnation: int
    shards_alive: int
    moves_by_state: Mapping[str, int]
    moves_done: int
    moves_aborted: int
    counters: Mapping[str, int]


class RouterMetrics:
    """The loop's side: one :class:`RouterSample` per turn."""

    def __init__(self, core: ControlPlane, now_ms: int) -> None:
        self.sample = self._sample(core, now_ms)

    def after_turn(self, core: ControlPlane, now_ms: int) -> None:
        self.sample = self._sample(core, now_ms)

    @staticmethod
    def _sample(core: ControlPlane, now_ms: int) -> RouterSample:
        coordinator = core.coordinator
        by_state = Counter(move.state.value for move in coordinator.moves.values())
        return RouterSample(
            net=core.net_name,
            epoch=core.table.epoch,
            shard_count=core.table.shard_count,
            incarnation=core.incarnation,
            shards_alive=len(core.alive(now_ms)),
            moves_by_state={state.value: by_state.get(state.value, 0) for state in MoveState},
            moves_done=coordinator.counters["moves_done"],
            moves_aborted=coordinator.counters["moves_aborted"],
            counters=dict(core.counters),
        )

    def collect(self) -> Iterable[Metric]:
        """The families of the current sample (on the HTTP server's thread)."""
        return router_families(self.sample)


def router_families(s: RouterSample) -> list[Metric]:
    """Prometheus families for one :class:`RouterSample`."""
    info = GaugeMetricFamily("cpn_router_info", "The router's net", labels=["net"])
    info.add_metric([s.net], 1)
    moves = GaugeMetricFamily("cpn_slot_moves", "Active slot moves by state", labels=["state"])
    for state, count in s.moves_by_state.items():
        moves.add_metric([state], count)
    finished = CounterMetricFamily(
        "cpn_slot_moves_finished", "Slot moves finished, by outcome", labels=["outcome"]
    )
    finished.add_metric(["done"], s.moves_done)
    finished.add_metric(["aborted"], s.moves_aborted)
    requests = CounterMetricFamily("cpn_requests", "Requests by message type", labels=["type"])
    refused = CounterMetricFamily("cpn_requests_refused", "Requests refused", labels=["code"])
    for key, value in sorted(s.counters.items()):
        if key.startswith(_REFUSED_PREFIX):
            refused.add_metric([key.removeprefix(_REFUSED_PREFIX)], value)
        elif key.startswith(_REQUESTS_PREFIX) and key != "requests_rate_limited":
            requests.add_metric([key.removeprefix(_REQUESTS_PREFIX)], value)
    c = s.counters
    return [
        info,
        GaugeMetricFamily("cpn_table_epoch", "The partition table's epoch", value=s.epoch),
        GaugeMetricFamily("cpn_table_shards", "Shards in the table", value=s.shard_count),
        GaugeMetricFamily("cpn_shards_alive", "Shards heard from lately", value=s.shards_alive),
        GaugeMetricFamily("cpn_incarnation", "The router's start count", value=s.incarnation),
        CounterMetricFamily("cpn_recoveries", "Recoveries (one per start)", value=s.incarnation),
        moves,
        finished,
        requests,
        refused,
        CounterMetricFamily(
            "cpn_requests_rate_limited",
            "Requests refused by the rate limit",
            value=c.get("requests_rate_limited", 0),
        ),
        CounterMetricFamily(
            "cpn_frames_malformed", "Frames that did not decode", value=c.get("frames_malformed", 0)
        ),
    ]
