"""`cpn scale` on a running cluster: 2 -> 3 -> 2 shards while hoppers cross partitions.

A real supervisor (``cpn up``, detached) runs a router and shards of
``tests.nets_for_tests:hopping`` under ``tmp_path``; the test keeps putting hoppers
while the slots move, and at the end every acknowledged hopper landed exactly once,
the tickets (a pool place) are conserved (the leaving shard handed its on), each slot
has one owner at the router's epoch, no move is left half-done and every outbox drained.
"""

from __future__ import annotations

import pytest

from cluster.layout import live_endpoint
from cluster.pids import pid_running
from cluster.processes import wait_for
from tests.hopping_cluster import HoppingCluster, wait_scaled

pytestmark = pytest.mark.integration

SCALE_TIMEOUT_S = 60.0
WAVE = 20


def test_scale_out_and_in_under_load_loses_and_doubles_nothing(
    hopping_cluster: HoppingCluster,
) -> None:
    cluster = hopping_cluster
    cluster.up(2)
    cluster.put_wave(200)
    result = cluster.cpn("scale", "--shards", "3", "--no-wait")
    assert result.returncode == 0, result.stderr
    assert "scaling the cluster" in result.stdout
    wait_scaled(cluster, 3, timeout_s=SCALE_TIMEOUT_S, wave=WAVE)
    cluster.record_pids()
    problems = cluster.check()
    assert not problems, f"seed {cluster.seed}, after 2 -> 3:\n{problems}"
    status = cluster.cpn("status", "--sample", "0")
    assert "slot moves: 0 in progress" in status.stdout, status.stdout
    stats = cluster.statistics()
    assert sorted(stats) == [0, 1, 2]
    assert {k: s["owned_slots"] for k, s in stats.items()} == {0: 341, 1: 342, 2: 341}

    leaving = live_endpoint(cluster.layout.shard_dir(2))
    assert leaving is not None
    result = cluster.cpn("scale", "--shards", "2", "--no-wait")
    assert result.returncode == 0, result.stderr
    wait_scaled(cluster, 2, timeout_s=SCALE_TIMEOUT_S, wave=WAVE)
    wait_for(
        lambda: pid_running(leaving[1]), lambda running: not running, what="shard 2 stopped",
        timeout_s=10,
    )  # fmt: skip
    problems = cluster.check()
    assert not problems, f"seed {cluster.seed}, after 3 -> 2:\n{problems}"
    assert sorted(cluster.statistics()) == [0, 1]
    log = cluster.layout.supervisor_log.read_text()
    assert "shard 2 is retired: stopping it" in log


def test_cpn_scale_waits_and_reports(hopping_cluster: HoppingCluster) -> None:
    cluster = hopping_cluster
    cluster.up(2)
    cluster.put_wave(100)
    result = cluster.cpn("scale", "--shards", "3", "--timeout", "60s")
    assert result.returncode == 0, result.stderr
    assert "scaled to 3 shards" in result.stdout, result.stdout
    assert "slots per shard [341, 342, 341]" in result.stdout, result.stdout
    assert not cluster.check()
    bad = cluster.cpn("scale", "--shards", "0")
    assert bad.returncode == 2 and "0" in bad.stderr
