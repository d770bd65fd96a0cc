"""Every process's /metrics on a real local cluster, scraped over HTTP on loopback.

A router, two shards and a `cpn worker run` process run the SDK test net
(tests/sdk_app/); each publishes its metrics URL in its directory
(router/shell/metrics.py). The scrapes are parsed with prometheus_client's parser and
checked against the conventions (docs/observability.md) and against the shards' own
statistics.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from cluster.cli import cli
from cluster.processes import start_shard
from router.endpoints import is_loopback
from router.shell.metrics import METRICS_FILE, name_problem, read_metrics_url
from tests.sdk_app.net import Job

pytestmark = pytest.mark.integration

NET = "tests.sdk_app.net:net"
WAIT_S = 60.0
SERIES_MAX = 1_000
JOBS = 40


def _scrape(directory: Path) -> dict[str, Any]:
    published = read_metrics_url(directory)
    assert published is not None, f"no metrics URL published in {directory}"
    url = published[0]
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {"url": url, "families": list(text_string_to_metric_families(text))}


def _value(families: list[Any], sample_name: str, **labels: str) -> float:
    for family in families:
        for sample in family.samples:
            if sample.name == sample_name and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                return float(sample.value)
    raise AssertionError(f"no sample {sample_name}{labels}")


def _figures(families: list[Any]) -> tuple[dict[str, int], int]:
    """The firings per transition and the tokens in ``done`` a scrape shows."""
    return _firings(families), int(_value(families, "cpn_place_tokens", place="done"))


def _firings(families: list[Any]) -> dict[str, int]:
    return {
        s.labels["transition"]: int(s.value)
        for f in families
        if f.name == "cpn_firings"
        for s in f.samples
    }


def _check_conventions(scrape: dict[str, Any], token_values: set[str]) -> None:
    host = urlsplit(scrape["url"]).hostname
    assert host is not None and is_loopback(host), scrape["url"]
    samples = 0
    for family in scrape["families"]:
        assert name_problem(family.name, family.type) is None, name_problem(
            family.name, family.type
        )
        for sample in family.samples:
            samples += 1
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
            for value in sample.labels.values():
                assert value not in token_values, f"{sample.name} has a token's value {value!r}"
                assert "://" not in value, f"{sample.name} has a URL label {value!r}"
    assert 0 < samples <= SERIES_MAX, samples


def test_every_process_serves_conventional_metrics_that_agree_with_its_statistics(
    cpn_cluster, cpn_workers
) -> None:
    cluster = cpn_cluster(NET, shards=2)
    workers = cpn_workers(cluster, "tests.sdk_app.workers:double")
    jobs = [Job(f"group-{n % 7}", n, 0) for n in range(JOBS)]
    cluster.put("queue", *jobs)
    cluster.wait_until(lambda: cluster.counts().get("done", 0) == JOBS, timeout_s=WAIT_S)
    token_values = {job.group for job in jobs}

    for shard_id, shard in enumerate(cluster.shards):
        # The shard's figures move while timers fire, and a scrape shows them as of a
        # sample up to METRICS_SAMPLE_MS old: compare once a scrape and the statistics
        # between two equal scrapes agree (a condition, with a timeout).
        deadline = time.monotonic() + WAIT_S
        while True:
            before = _figures(_scrape(shard.data_dir)["families"])
            stats = cluster.client.statistics()[shard_id]
            after = _scrape(shard.data_dir)
            seen = (stats["firings"], stats["tokens"]["done"])
            if before == _figures(after["families"]) == seen:
                break
            assert time.monotonic() < deadline, (before, seen)
        _check_conventions(after, token_values)
        families = after["families"]
        assert _value(families, "cpn_place_tokens", place="done") == stats["tokens"]["done"]
        assert _value(families, "cpn_commit_latency_seconds_count") > 0
        assert _value(families, "cpn_leases_granted_total") == stats["counters"].get(
            "leases_granted", 0
        )

    router = _scrape(cluster.router.data_dir)
    _check_conventions(router, token_values)
    assert _value(router["families"], "cpn_table_shards") == 2
    assert _value(router["families"], "cpn_slot_moves", state="done") == 0

    worker_dir = workers.processes[0].data_dir
    deadline = time.monotonic() + WAIT_S
    while (
        _value(_scrape(worker_dir)["families"], "cpn_worker_events_total", event="completed") < JOBS
    ):
        assert time.monotonic() < deadline, "the worker's metrics never showed its completions"
        time.sleep(0.1)  # the worker samples every half second
    _check_conventions(_scrape(worker_dir), token_values)


def test_metrics_off_publish_nothing_and_remote_metrics_need_allow_remote(tmp_path: Path) -> None:
    refused = CliRunner().invoke(
        cli, ["shard", "--net", NET, "--data", str(tmp_path / "a"), "--metrics", "0.0.0.0:0"]
    )
    assert refused.exit_code != 0
    assert "--allow-remote" in str(refused.exception), refused.exception

    started = []
    try:
        options = {
            "off": ("--metrics", "off"),
            "remote": ("--metrics", "0.0.0.0:0", "--allow-remote"),
        }
        for name, extra in options.items():
            started.append(
                start_shard(NET, tmp_path / name, durability="process", extra_args=extra)
            )
        off, remote = started
        assert not (off.data_dir / METRICS_FILE).exists()
        published = read_metrics_url(remote.data_dir)
        assert published is not None and published[0].startswith("http://0.0.0.0:")
    finally:
        for handle in started:
            handle.terminate()
    assert not (tmp_path / "remote" / METRICS_FILE).exists()  # removed on a graceful stop
