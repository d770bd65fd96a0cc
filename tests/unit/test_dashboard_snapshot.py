"""cluster/dashboard: firing rates across restarts, the snapshot's JSON, the Host check."""

from __future__ import annotations

import json

import pytest

from cluster.dashboard.server import _loopback_host
from cluster.dashboard.snapshot import (
    RATE_WINDOW_MS,
    FiringRates,
    ShardReading,
    ShardView,
    Snapshot,
    empty_snapshot,
    firing_counts,
)


def _rates(*samples: tuple[int, dict[int, ShardReading]]) -> FiringRates:
    rates = FiringRates()
    for now_ms, readings in samples:
        rates = rates.add(now_ms, readings)
    return rates


def test_rates_are_increases_per_second_summed_over_shards() -> None:
    rates = _rates(
        (0, {0: ShardReading(1, {"hop": 0}), 1: ShardReading(1, {"hop": 10})}),
        (500, {0: ShardReading(1, {"hop": 50}), 1: ShardReading(1, {"hop": 20, "land": 5})}),
    )
    assert rates.per_transition() == {"hop": 120.0, "land": 10.0}
    assert rates.per_shard() == {0: 100.0, 1: 30.0}


def test_a_restart_adds_nothing_for_its_interval_instead_of_a_negative_rate() -> None:
    new_incarnation = _rates(
        (0, {0: ShardReading(1, {"hop": 900})}),
        (250, {0: ShardReading(2, {"hop": 3})}),
        (500, {0: ShardReading(2, {"hop": 53})}),
    )
    assert new_incarnation.per_transition() == {"hop": 100.0}  # 50 firings in 0.5 s
    counts_dropped = _rates(
        (0, {0: ShardReading(1, {"hop": 900})}), (250, {0: ShardReading(1, {"hop": 3})})
    )
    assert counts_dropped.per_transition() == {}


def test_the_window_keeps_one_sample_before_it_and_rates_need_two_samples() -> None:
    assert _rates((0, {})).per_transition() == {}
    rates = _rates(*((t, {0: ShardReading(1, {"hop": t})}) for t in range(0, 5_000, 250)))
    assert rates.samples[-1][0] - rates.samples[0][0] == RATE_WINDOW_MS
    assert rates.per_transition() == {"hop": pytest.approx(1000.0)}


def test_persisted_totals_are_preferred_when_a_shard_reports_them() -> None:
    assert firing_counts({"firings": {"hop": 2}}) == {"hop": 2}
    assert firing_counts({"firings": {"hop": 2}, "firings_total": {"hop": 7}}) == {"hop": 7}
    assert firing_counts({}) == {}


def test_a_snapshot_is_plain_json_and_restarts_are_starts_after_the_first() -> None:
    shard = ShardView(0, True, True, "tcp://127.0.0.1:1", 42, 1024, 3, 4, 9, 1.5, 0, None, "")
    snapshot = Snapshot(7, 1, "net", 3, {"p": 1}, {"t": 9}, {"t": 1.234}, (shard,), (0,), (), 0, 0)
    data = snapshot.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["shards"][0]["restarts"] == 3
    assert data["rates"] == {"t": 1.23}
    assert empty_snapshot("net", "no sample yet").to_json()["seq"] == 0


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:8765", True),
        ("localhost:1", True),
        ("[::1]:8765", True),
        ("127.1.2.3", True),
        ("evil.example:8765", False),
        ("10.0.0.1:8765", False),
        ("", False),
    ],
)
def test_only_a_loopback_host_header_is_served_on_loopback(host: str, allowed: bool) -> None:
    assert _loopback_host(host) is allowed
