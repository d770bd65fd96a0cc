"""Cluster-wide firing totals stay exact through SIGKILLs, a scale-out and a scale-in (serial).

A supervised ``tests.nets_for_tests:hopping`` cluster of 2 shards gets hoppers while a
shard is SIGKILLed and restarted, the cluster grows to 3 shards (the new shard fires
too) and shrinks back to 2 (shard 2 retires). Every hopper put with ``n`` hops fires
``hop`` exactly ``n`` times and ``land`` once, wherever it went, so once the cluster
drained, the totals `cpn status` shows must be exactly those sums: a SIGKILLed
incarnation's committed firings, and the retired shard's, still count; nothing counts
twice (docs/operations.md, "What the totals mean").
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.chaos import ChaosRun
from cluster.processes import wait_for
from cluster.totals import firing_totals
from router.shell.metrics import read_metrics_url
from tests.hopping_cluster import HoppingCluster, wait_scaled

pytestmark = [pytest.mark.serial, pytest.mark.integration]

BACK_TIMEOUT_S = 20.0
SCALE_TIMEOUT_S = 60.0
WAVE = 40


def _kill_and_wait(cluster: HoppingCluster, chaos: ChaosRun, victim: str) -> None:
    """SIGKILL ``victim`` (verified ours by chaos.current) and wait until it is back."""
    found = chaos.current(victim)
    assert found is not None, f"{victim} is not running"
    with contextlib.suppress(ProcessLookupError):
        os.kill(found[1], signal.SIGKILL)
    deadline = time.monotonic() + BACK_TIMEOUT_S
    while (back := chaos.current(victim)) is None or back[1] == found[1]:
        assert time.monotonic() < deadline, f"seed {cluster.seed}: {victim} not back"
        time.sleep(0.02)
    cluster.record_pids()


def _status_totals(cluster: HoppingCluster) -> dict[str, int]:
    """The totals `cpn status` prints (its table of transition and total)."""
    result = cluster.cpn("status", "--sample", "0")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "WITHOUT" not in text, text
    block = text.split("firings per transition", 1)[1].split("tokens per place", 1)[0]
    return {
        name: int(count.replace(",", ""))
        for name, count in re.findall(r"^  (hop|land)\s+([\d,]+)$", block, re.MULTILINE)
    }


def test_totals_exact_through_kills_and_scaling(hopping_cluster: HoppingCluster) -> None:
    cluster = hopping_cluster
    cluster.up(2)
    chaos = ChaosRun(cluster.layout)
    try:
        cluster.put_wave(WAVE)
        # Killed once it committed firings, which its next incarnation's engine lacks.
        wait_for(
            lambda: cluster.client.shard(1).stats()["firings_total"].get("hop", 0),
            bool,
            what="shard 1 fired",
            timeout_s=BACK_TIMEOUT_S,
        )
        _kill_and_wait(cluster, chaos, "shard 1")
        cluster.put_wave(WAVE)
        assert cluster.cpn("scale", "--shards", "3", "--no-wait").returncode == 0
        wait_scaled(cluster, 3, timeout_s=SCALE_TIMEOUT_S, wave=5)
        _kill_and_wait(cluster, chaos, "shard 2")
        cluster.put_wave(WAVE)
        assert cluster.cpn("scale", "--shards", "2", "--no-wait").returncode == 0
        wait_scaled(cluster, 2, timeout_s=SCALE_TIMEOUT_S, wave=5)
    finally:
        chaos.close()
    problems = cluster.check()
    assert not problems, f"seed {cluster.seed}:\n{problems}"

    expected = {"hop": sum(n for _h, n in cluster.injected), "land": len(cluster.injected)}
    router = cluster.client.router_statistics()
    retired = dict(router["firings_retired"])
    assert 2 in retired and retired[2].get("hop", 0) > 0, (
        f"seed {cluster.seed}: shard 2 retired without firings to keep: {retired}"
    )
    stats = cluster.statistics()
    totals = firing_totals(2, stats, router)
    assert totals.firings == expected, f"seed {cluster.seed}: {totals}"
    # This process's figures alone fall short: shard 1 was killed after firing.
    this_incarnation = sum(s["firings"].get("hop", 0) for s in stats.values())
    assert this_incarnation < expected["hop"] - retired[2]["hop"]
    assert _status_totals(cluster) == expected

    # The supervisor, which restarted them, counts the restarts on its /metrics.
    published = read_metrics_url(cluster.layout.supervisor_metrics_file)
    assert published is not None, "the supervisor published no metrics URL"
    with urllib.request.urlopen(published[0], timeout=10) as response:  # loopback
        text = response.read().decode()
    starts = {
        sample.labels["child"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "cpn_supervisor_child_starts"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    # Shard 2 retired: it leaves these series once the supervisor has let it go, which
    # may be after this scrape.
    assert starts["shard 1"] >= 2 and starts["shard 0"] >= 1 and starts["router"] >= 1, starts
