"""A shard's Prometheus metrics, read from what its core already counts (SHELL).

At most every ``METRICS_SAMPLE_MS`` (:mod:`shard.shell.serve`), after a commit, the
loop asks the runtime for a :class:`shard.reading.ShardReading` (the core's
:class:`~shard.reading.CoreReading`: firings, token counts, counters, outbox, leases;
plus the shell's commit figures) and
:meth:`ShardMetrics.after_batch` swaps in a frozen :class:`ShardSample` made from it.
Neither walks a marking or sorts anything: its cost is proportional to the net's size (places,
transitions, queues), not to its tokens, plus one bucket look-up per distinct handoff
time. ``/metrics`` renders the current sample on the HTTP server's thread
(:mod:`router.shell.metrics`; docs/observability.md lists the names).

Token high-water marks are as seen at samples: tokens produced and consumed between
two samples are not seen here.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric

from router.shell.metrics import (
    LATENCY_BUCKETS_S,
    SIZE_BUCKETS,
    Histogram,
    HistogramValue,
    MetricsServer,
    metrics_address,
    serve_metrics,
)
from shard.reading import ReadingMark, ShardReading

# Counter keys of the core and the shell, as (metric, label value): a fixed set, so the
# series per shard stay bounded whatever the traffic.
_HANDOFF_TOKENS = (
    ("handoff_tokens_offered", "offered"),
    ("handoff_tokens_acknowledged", "acknowledged"),
    ("handoff_tokens_received", "received"),
)
_LEASES = (
    ("leases_granted", "cpn_leases_granted", "Leases granted"),
    ("leases_completed", "cpn_leases_completed", "Leases completed (every token done)"),
    ("leases_released", "cpn_leases_released", "Leases handed back by their worker"),
    ("leases_renewed", "cpn_lease_renewals", "Lease renewals (worker heartbeats)"),
    ("leased_tokens_expired", "cpn_leased_tokens_expired", "Leased tokens whose lease expired"),
)
_SLOT_EVENTS = ("slots_sealed", "slots_unsealed", "slots_staged", "slots_activated",
                "slots_forgotten", "shipments_sent")  # fmt: skip
_REFUSED_PREFIX = "errors_"
SWITCH_INTERVAL_S = 0.0005
_REQUESTS_PREFIX = "requests_"


@dataclass(frozen=True, slots=True)
class ShardSample:
    """What one scrape shows: the shard as of its last commit."""

    net: str
    incarnation: int
    recovery_s: float
    read_only: bool
    firings: Mapping[str, int]
    tokens: Mapping[str, int]
    tokens_max: Mapping[str, int]
    queue_tokens: Mapping[str, int]
    pending_tokens: int
    enabled_left: bool
    leases_live: int
    lease_age_s_max: float
    leases_parked: int
    outbox_tokens: int
    counters: Mapping[str, int]
    requests: Mapping[str, int]
    refused: Mapping[str, int]
    commit_latency: HistogramValue
    batch_entries: HistogramValue
    handoff_latency: HistogramValue


@dataclass(frozen=True, slots=True)
class ServedMetrics:
    """A shard's metrics and the server that serves them (what the loop holds)."""

    metrics: ShardMetrics
    server: MetricsServer

    @property
    def mark(self) -> ReadingMark:
        """Where the next reading starts (what the metrics have taken)."""
        return self.metrics.mark

    def after_batch(self, reading: ShardReading) -> None:
        self.metrics.after_batch(reading)

    def stop(self) -> None:
        self.server.stop()


def start_shard_metrics(
    address_text: str, *, allow_remote: bool, data_dir: Path, first: ShardReading
) -> ServedMetrics | None:
    """Serve the shard's metrics at ``address_text`` (None when they are off), and
    publish their URL in ``data_dir``; ``first`` is the reading they start from.

    Raises:
        CpnError: the metrics address is not valid, not allowed or cannot be bound.
    """
    address = metrics_address(address_text, allow_remote=allow_remote)
    if address is None:
        return None
    metrics = ShardMetrics(first)
    # A scrape's thread waits for the GIL at each step (accept, read, render, write), and
    # a busy loop hands it over only at the switch interval (5 ms by default): a scrape
    # would take tens of milliseconds. The interval matters only while another thread
    # wants the GIL, which here is only during a scrape, so a shorter one costs the loop
    # nothing the rest of the time (docs/observability.md, "Serving /metrics").
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return ServedMetrics(metrics, serve_metrics(address, metrics.collect, data_dir=data_dir))


class ShardMetrics:
    """The loop's side: per-batch bookkeeping and the current :class:`ShardSample`.

    It sees the shard only through :class:`shard.reading.ShardReading` records: the loop
    asks the runtime for one since :attr:`mark` after every commit and hands it over.
    """

    def __init__(self, first: ShardReading) -> None:
        self._commit_latency = Histogram(LATENCY_BUCKETS_S)
        self._batch_entries = Histogram(SIZE_BUCKETS)
        self._handoff_latency = Histogram(LATENCY_BUCKETS_S)
        self._tokens_max: dict[str, int] = {}
        self.mark = first.mark
        self.sample = self._sample(first)

    def after_batch(self, reading: ShardReading) -> None:
        """Take the figures of the commits since the last reading (call after each)."""
        for latency_ms in reading.commit_latencies_ms:
            self._commit_latency.observe(latency_ms / 1000)
        for size in reading.batch_entries:
            self._batch_entries.observe(size)
        for latency_ms, count in Counter(reading.handoff_latencies_ms).items():
            self._handoff_latency.observe(latency_ms / 1000, count)
        self.mark = reading.mark
        self.sample = self._sample(reading)

    def _sample(self, reading: ShardReading) -> ShardSample:
        core = reading.core
        tokens_max = self._tokens_max
        for place, count in core.tokens.items():
            if count > tokens_max.get(place, 0):
                tokens_max[place] = count
        counters = Counter(core.counters)
        counters.update(reading.shell_counters)
        return ShardSample(
            net=core.net,
            incarnation=core.incarnation,
            recovery_s=reading.recovery_ms / 1000,
            read_only=core.read_only,
            firings=core.firings,
            tokens=core.tokens,
            tokens_max=dict(tokens_max),
            queue_tokens=core.queue_tokens,
            pending_tokens=core.pending_tokens,
            enabled_left=core.enabled_left,
            leases_live=core.leases_live,
            lease_age_s_max=core.lease_age_ms_max / 1000,
            leases_parked=core.leases_parked,
            outbox_tokens=core.outbox_tokens,
            counters=counters,
            requests={
                key.removeprefix(_REQUESTS_PREFIX): value
                for key, value in counters.items()
                if key.startswith(_REQUESTS_PREFIX) and key != "requests_rate_limited"
            },
            refused={
                key.removeprefix(_REFUSED_PREFIX): value
                for key, value in counters.items()
                if key.startswith(_REFUSED_PREFIX)
            },
            commit_latency=self._commit_latency.value(),
            batch_entries=self._batch_entries.value(),
            handoff_latency=self._handoff_latency.value(),
        )

    def collect(self) -> Iterable[Metric]:
        """The families of the current sample (runs on the HTTP server's thread: it
        reads ``self.sample`` once, a frozen record the loop replaces whole)."""
        return shard_families(self.sample)


def shard_families(s: ShardSample) -> list[Metric]:
    """Prometheus families for one :class:`ShardSample`."""
    c = s.counters
    info = GaugeMetricFamily("cpn_shard_info", "The shard's net", labels=["net"])
    info.add_metric([s.net], 1)
    firings = CounterMetricFamily(
        "cpn_firings", "Firings per transition (this incarnation)", labels=["transition"]
    )
    for transition, count in s.firings.items():
        firings.add_metric([transition], count)
    tokens = GaugeMetricFamily("cpn_place_tokens", "Tokens per place", labels=["place"])
    tokens_max = GaugeMetricFamily(
        "cpn_place_tokens_max", "Most tokens a place held at a commit", labels=["place"]
    )
    for place, count in s.tokens.items():
        tokens.add_metric([place], count)
        tokens_max.add_metric([place], s.tokens_max.get(place, count))
    queue = GaugeMetricFamily(
        "cpn_queue_tokens", "Work waiting in a work queue (not leased)", labels=["queue"]
    )
    for name, count in s.queue_tokens.items():
        queue.add_metric([name], count)
    handoff = CounterMetricFamily(
        "cpn_handoff_tokens", "Tokens handed to or from other shards", labels=["direction"]
    )
    for key, direction in _HANDOFF_TOKENS:
        handoff.add_metric([direction], c.get(key, 0))
    families: list[Metric] = [info, firings, tokens, tokens_max, queue, handoff]
    families += [
        _gauge("cpn_pending_tokens", "Timed tokens not due yet", s.pending_tokens),
        _gauge(
            "cpn_enabled_left",
            "1 if the last batch stopped at a bound with work enabled",
            int(s.enabled_left),
        ),
        _gauge("cpn_outbox_tokens", "Tokens in the outbox, not acknowledged", s.outbox_tokens),
        _gauge("cpn_leases_live", "Leases granted and not done", s.leases_live),
        _gauge("cpn_lease_age_seconds_max", "Age of the oldest live lease", s.lease_age_s_max),
        _gauge("cpn_leases_parked", "Lease requests waiting for work", s.leases_parked),
        _gauge("cpn_incarnation", "This process's start count (the store's)", s.incarnation),
        _gauge(
            "cpn_recovery_duration_seconds", "How long this start's recovery took", s.recovery_s
        ),
        _gauge(
            "cpn_read_only", "1 if a failed commit made the shard refuse writes", int(s.read_only)
        ),
        _counter("cpn_recoveries", "Recoveries from the store (one per start)", s.incarnation),
        _counter("cpn_commits_failed", "Commits that failed", c.get("commits_failed", 0)),
        _counter(
            "cpn_requests_rate_limited",
            "Requests refused by the rate limit",
            c.get("requests_rate_limited", 0),
        ),
        _counter(
            "cpn_frames_malformed", "Frames that did not decode", c.get("frames_malformed", 0)
        ),
    ]
    for key, name, help_text in _LEASES:
        families.append(_counter(name, help_text, c.get(key, 0)))
    requests = CounterMetricFamily("cpn_requests", "Requests by message type", labels=["type"])
    for kind, count in sorted(s.requests.items()):
        requests.add_metric([kind], count)
    refused = CounterMetricFamily("cpn_requests_refused", "Requests refused", labels=["code"])
    for code, count in sorted(s.refused.items()):
        refused.add_metric([code], count)
    slots = CounterMetricFamily("cpn_slot_events", "Slot-move steps here", labels=["event"])
    for event in _SLOT_EVENTS:
        slots.add_metric([event], c.get(event, 0))
    families += [
        requests,
        refused,
        slots,
        _histogram("cpn_commit_latency_seconds", "LMDB commit latency", s.commit_latency),
        _histogram("cpn_commit_batch_entries", "Marking entries per commit", s.batch_entries),
        _histogram(
            "cpn_handoff_latency_seconds",
            "From the sender's firing to this shard's commit",
            s.handoff_latency,
        ),
    ]
    return families


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


def _histogram(name: str, help_text: str, value: HistogramValue) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, help_text, buckets=list(value.buckets), sum_value=value.sum)
