"""Scale 2 -> 3 -> 2 under load while a random shard or the router is SIGKILLed (serial).

A real supervisor (``cpn up``) runs ``tests.nets_for_tests:hopping``; the test keeps
putting hoppers (they cross partitions on every hop and take a pooled ticket each time)
while ``cpn scale`` grows the cluster to 3 shards and shrinks it back to 2. Meanwhile,
whenever the previous victim is back, it SIGKILLs a seeded choice among the router and
the running shards (``CPN_SEED`` replays the choices). Then it drains the cluster and
checks every invariant: each acknowledged hopper landed exactly once, tickets are
conserved and used exactly once per hop, each slot has one owner at the router's
epoch, no move is left half-done, every outbox drained.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from cluster.chaos import ChaosRun
from cluster.scaling import progress
from nets.errors import CpnError
from tests.hopping_cluster import HoppingCluster

pytestmark = [pytest.mark.serial, pytest.mark.integration]

PHASE_TIMEOUT_S = 40.0
BACK_TIMEOUT_S = 15.0
WAVE = 20
KILLS_MIN = 4


def _kill_one(cluster: HoppingCluster, chaos: ChaosRun, shards: int, kills: list[str]) -> None:
    """SIGKILL a seeded victim and wait until it is back (a leaving shard may retire)."""
    victim = cluster.rng.choice(["router", *(f"shard {k}" for k in range(shards))])
    found = chaos.current(victim)
    if found is None:
        return  # not running right now (a retired shard): pick again next turn
    with contextlib.suppress(ProcessLookupError):
        os.kill(found[1], signal.SIGKILL)  # verified ours by chaos.current
    kills.append(f"{victim} (pid {found[1]})")
    deadline = time.monotonic() + BACK_TIMEOUT_S
    while (back := chaos.current(victim)) is None or back[1] == found[1]:
        retired = victim != "router" and f"{victim} is retired" in (
            cluster.layout.supervisor_log.read_text()
        )
        if retired:
            return
        assert time.monotonic() < deadline, f"{victim} not back; kills so far {kills}"
        time.sleep(0.02)
    cluster.record_pids()


def _scale_under_chaos(
    cluster: HoppingCluster, chaos: ChaosRun, shards: int, span: int, kills: list[str]
) -> None:
    result = cluster.cpn("scale", "--shards", str(shards), "--no-wait")
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while True:
        with contextlib.suppress(CpnError):
            cluster.put_wave(WAVE)
        _kill_one(cluster, chaos, span, kills)
        time.sleep(cluster.rng.uniform(0.1, 0.4))
        try:
            now = progress(cluster.client)
        except CpnError:
            continue
        if now.finished and now.members == shards:
            return
        assert time.monotonic() < deadline, (
            f"seed {cluster.seed}: not scaled to {shards} in {PHASE_TIMEOUT_S} s: {now}; "
            f"kills {kills}"
        )


def test_scale_out_and_in_while_processes_die(hopping_cluster: HoppingCluster) -> None:
    cluster = hopping_cluster
    cluster.up(2)
    cluster.put_wave(200)
    chaos = ChaosRun(cluster.layout)
    kills: list[str] = []
    try:
        _scale_under_chaos(cluster, chaos, 3, 3, kills)
        _scale_under_chaos(cluster, chaos, 2, 3, kills)
    finally:
        chaos.close()
    assert len(kills) >= KILLS_MIN, f"seed {cluster.seed}: only {kills}"
    problems = cluster.check()
    assert not problems, f"seed {cluster.seed}, kills {kills}:\n{problems}"
