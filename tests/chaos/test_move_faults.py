"""Fault points of the slot-move protocol, against real processes (serial: they die).

Every process of the cluster runs with ``CPN_FAULT_POINTS`` naming one point; the
process that reaches it SIGKILLs itself there, once per data directory
(router/shell/datadir.py, ``fault_point``), and its supervisor restarts it. The cluster is
scaled from 2 to 3 shards under load, so 341 slots move; the move that was cut must be
resumed from the durable records and every move completes, with every invariant
holding at the end. The full matrix of (step, party, fault) runs against the pure
move machine in tests/unit/test_moves.py; this is the representative subset.

* ``router-staging``: the router recorded a ``sealed`` answer, before it answered.
* ``router-activating``: the router committed new owners (the commit point).
* ``router-forgetting``: the router recorded an ``activated`` answer.
* ``shard-sealed``: a source committed a seal, before its answer left.
* ``shard-ship``: a source is asked for a sealed slot's shipment.
* ``shard-staged``: the target committed a staged shipment, before its answer left.
* ``shard-activated``: the target committed the activation.
* ``shard-forgotten``: a source committed a forget.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.shell.datadir import FAULT_ENV, FAULT_MARK_PREFIX
from tests.hopping_cluster import HoppingCluster, wait_scaled

pytestmark = [pytest.mark.serial, pytest.mark.integration]

ALL_POINTS = (
    "router-staging",
    "router-activating",
    "router-forgetting",
    "shard-sealed",
    "shard-ship",
    "shard-staged",
    "shard-activated",
    "shard-forgotten",
)
# The full matrix runs against the pure machine (tests/unit/test_moves.py); against real
# processes a representative subset keeps the serial stage short: the router at its
# commit point, the source before and after it, the target with a staged shipment.
# CPN_ALL_FAULT_POINTS=1 runs all of them.
POINTS = (
    ALL_POINTS
    if os.environ.get("CPN_ALL_FAULT_POINTS")
    else ("router-activating", "shard-sealed", "shard-staged", "shard-forgotten")
)
SCALE_TIMEOUT_S = 60.0


@pytest.fixture
def make_cluster(tmp_path: Path, seed: int) -> Iterator[list[HoppingCluster]]:
    made: list[HoppingCluster] = []
    try:
        yield made
    finally:
        for cluster in made:
            cluster.close()


@pytest.mark.parametrize("point", POINTS)
def test_a_party_killed_at_a_move_step_is_resumed(
    point: str, tmp_path: Path, seed: int, make_cluster: list[HoppingCluster]
) -> None:
    cluster = HoppingCluster(tmp_path / "cluster", seed=seed, env={FAULT_ENV: point})
    make_cluster.append(cluster)
    cluster.up(2)
    cluster.put_wave(150)
    result = cluster.cpn("scale", "--shards", "3", "--no-wait")
    assert result.returncode == 0, result.stderr
    wait_scaled(cluster, 3, timeout_s=SCALE_TIMEOUT_S, wave=10)
    cluster.record_pids()
    fired = sorted(
        str(path.relative_to(cluster.layout.root))
        for path in cluster.layout.root.glob(f"*/{FAULT_MARK_PREFIX}{point}")
    )
    assert fired, f"fault point {point} was never reached"
    log = cluster.layout.supervisor_log.read_text()
    assert "exited with code -9" in log, f"{point}: nothing was killed\n{log[-2000:]}"
    problems = cluster.check()
    assert not problems, f"seed {seed}, fault point {point} ({fired}):\n{problems}"
