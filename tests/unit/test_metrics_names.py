"""Metric names and addresses (router/shell/metrics.py and each process's families).

Every family a shard, the router or a worker can show follows the conventions of
docs/observability.md (``cpn_`` names, base units, ``_total`` for counters only), and
a shard of each bundled net shows a bounded number of series whatever its traffic.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from cluster.config import ConfigError, parse_config
from cluster.crawler.metrics import CrawlCounts, status_class
from cluster.sdk.metrics import WorkerSample, worker_families
from nets.errors import CpnError
from nets.loader import load_net
from router.moves import MoveState
from router.shell.metrics import Histogram, metrics_address, name_problem
from router.shell.router_metrics import RouterSample, router_families
from shard.shard_setup import ShardSetup
from shard.shell.metrics import ShardSample, shard_families

BUNDLED_NETS = ("nets.scraper:net", "nets.jobs:net", "tests.nets_for_tests:hopping")
SERIES_PER_SHARD_MAX = 1_000
# Every code a request can be refused with today, and every request type: the most a
# shard's counters can hold, so the bound below covers a shard under any traffic.
REFUSAL_CODES = 40
REQUEST_TYPES = 20


def _shard_sample(net_path: str) -> ShardSample:
    net = ShardSetup.of(load_net(net_path)).net
    histogram = Histogram([0.001, 0.01]).value()
    places = {p.name: 3 for p in net.places}
    return ShardSample(
        net=net.name,
        incarnation=2,
        recovery_s=0.5,
        read_only=False,
        firings={t.name: 1 for t in net.transitions},
        tokens=places,
        tokens_max=places,
        queue_tokens={p.name: 1 for p in net.places if p.work_queue},
        pending_tokens=0,
        enabled_left=True,
        leases_live=1,
        lease_age_s_max=0.25,
        leases_parked=0,
        outbox_tokens=0,
        counters={},
        requests={f"Type{n}": 1 for n in range(REQUEST_TYPES)},
        refused={f"code_{n}": 1 for n in range(REFUSAL_CODES)},
        commit_latency=histogram,
        batch_entries=histogram,
        handoff_latency=histogram,
    )


def _samples(families: list[Metric]) -> int:
    return sum(len(family.samples) for family in families)


def _every_family() -> list[Metric]:
    router = RouterSample("n", 3, 2, 1, 2, {s.value: 0 for s in MoveState}, 1, 0, {})
    crawl = CrawlCounts()
    crawl.waited(0.2)
    crawl.fetched("page", 1, 200, "")
    worker = WorkerSample("w", "queue", {"leased": 3}, 1, 0, crawl.families())
    return [
        *(f for net in BUNDLED_NETS for f in shard_families(_shard_sample(net))),
        *router_families(router),
        *worker_families(worker),
    ]


def test_every_family_follows_the_naming_conventions() -> None:
    for family in _every_family():
        assert name_problem(family.name, family.type) is None, name_problem(
            family.name, family.type
        )
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name == f"{family.name}_total", sample.name
            if family.type == "histogram" and "seconds" not in family.name:
                assert family.name.endswith("_entries"), family.name


@pytest.mark.parametrize("net_path", BUNDLED_NETS)
def test_a_shard_of_a_bundled_net_shows_a_bounded_number_of_series(net_path: str) -> None:
    assert _samples(shard_families(_shard_sample(net_path))) <= SERIES_PER_SHARD_MAX


@pytest.mark.parametrize(
    ("name", "kind", "problem"),
    [
        ("cpn_commit_latency_seconds", "histogram", None),
        ("cpn_firings", "counter", None),
        ("firings", "counter", "must match"),
        ("cpn_commit_ms", "gauge", "base units"),
        ("cpn_latency_ms_p99", "gauge", "base units"),
        ("cpn_tokens_total", "gauge", "counters only"),
    ],
)
def test_name_problem_names_the_rule_broken(name: str, kind: str, problem: str | None) -> None:
    found = name_problem(name, kind)
    assert found is None if problem is None else problem in (found or "")


def test_a_counter_family_renders_total_samples() -> None:
    family = CounterMetricFamily("cpn_x", "x", value=1)
    assert [s.name for s in family.samples] == ["cpn_x_total"]


def test_metrics_addresses_follow_the_endpoint_rule() -> None:
    assert metrics_address("127.0.0.1:0", allow_remote=False) == ("127.0.0.1", 0)
    assert metrics_address("[::1]:9101", allow_remote=False) == ("::1", 9101)
    assert metrics_address("off", allow_remote=False) is None
    assert metrics_address("0.0.0.0:9101", allow_remote=True) == ("0.0.0.0", 9101)
    with pytest.raises(CpnError, match="--allow-remote"):
        metrics_address("0.0.0.0:9101", allow_remote=False)
    with pytest.raises(CpnError, match="HOST:PORT"):
        metrics_address("9101", allow_remote=False)


def test_a_histogram_keeps_cumulative_buckets() -> None:
    histogram = Histogram([0.01, 0.1])
    histogram.observe(0.005)
    histogram.observe(0.05, count=2)
    histogram.observe(5.0)
    value = histogram.value()
    assert value.buckets == (("0.01", 1.0), ("0.1", 3.0), ("+Inf", 4.0))
    assert value.sum == pytest.approx(5.105)


CONFIG = """
[cluster]
id = "c"
net = "nets.scraper:net"
data_dir = "/var/lib/cpn"

[router]
metrics = "127.0.0.1:9100"

[shards]
count = 2

[[shard]]
id = 0
metrics = "127.0.0.1:9101"

[[shard]]
id = 1
metrics = "{second}"
"""


def test_the_cluster_file_carries_each_process_metrics_address() -> None:
    config = parse_config(CONFIG.format(second="off"), source=Path("/c.toml"))
    assert [p.metrics for p in config.processes()] == ["127.0.0.1:9100", "127.0.0.1:9101", "off"]
    with pytest.raises(ConfigError, match=r"shard\[1\]\.metrics"):
        parse_config(CONFIG.format(second="localhost"), source=Path("/c.toml"))
    with pytest.raises(ConfigError, match=re.escape("both use metrics 127.0.0.1:9101")):
        parse_config(CONFIG.format(second="127.0.0.1:9101"), source=Path("/c.toml"))


def test_crawl_counts_label_fetches_by_status_class_never_by_url() -> None:
    counts = CrawlCounts()
    for kind, attempt, status, error in [
        ("page", 0, 200, ""),
        ("page", 1, 503, ""),
        ("robots", 0, 404, ""),
        ("page", 0, 0, "connect"),
        ("page", 2, 0, "late"),
    ]:
        counts.fetched(kind, attempt, status, error)
    pages, requests, retries, _wait = counts.families()
    assert pages.samples[0].value == 1
    assert retries.samples[0].value == 2
    labels = {tuple(s.labels.values()) for s in requests.samples}
    assert labels == {
        ("page", "2xx"), ("page", "5xx"), ("robots", "4xx"), ("page", "error"), ("page", "late"),
    }  # fmt: skip
    assert status_class(301, "") == "3xx"
