"""The nemesis: episodes at seeded moments, victims among the nodes up, partitions lifted."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from cluster.sim.faults import FaultCounts, parse_faults
from cluster.sim.nemesis import (
    SKEW_MS_MAX,
    Crash,
    Nemesis,
    PartitionEnds,
    Scale,
    Skew,
)
from cluster.sim.network import InFlight, LinkChange, Network
from cluster.sim.schedule import Schedule

pytestmark = pytest.mark.simulation

SHARDS = ["shard-0", "shard-1", "shard-2"]
ROUTERS = ["router"]


def _nemesis(faults: str, seed: int = 1) -> tuple[Nemesis, Network, Schedule[Any], FaultCounts]:
    schedule: Schedule[Any] = Schedule()
    network = Network(schedule, random.Random(seed))
    for node in [*ROUTERS, *SHARDS]:
        network.start(node)
    counts = FaultCounts()
    nemesis = Nemesis(parse_faults(faults), random.Random(seed), network, schedule, counts)
    return nemesis, network, schedule, counts


def _ticks(nemesis: Nemesis, count: int) -> list[Any]:
    return [a for _ in range(count) for a in nemesis.tick(shards=SHARDS, routers=ROUTERS)]


def test_the_same_seed_strikes_the_same_way() -> None:
    faults = "crash_shard=5,crash_router=2,clock_skew=3,scale_out=1,scale_in=1"
    assert _ticks(_nemesis(faults)[0], 100) == _ticks(_nemesis(faults)[0], 100)
    assert _ticks(_nemesis(faults)[0], 100) != _ticks(_nemesis(faults, seed=2)[0], 100)


def test_crashes_pick_their_victims_among_the_right_nodes_once_per_tick() -> None:
    nemesis, _, _, counts = _nemesis("crash_shard=8,crash_router=8,crash_between_commit_and_send=8")
    for _ in range(200):
        actions = nemesis.tick(shards=SHARDS, routers=ROUTERS)
        crashed = [a.node for a in actions if isinstance(a, Crash)]
        assert len(crashed) == len(set(crashed))
    by_kind = counts.by_kind()
    assert by_kind["crash_shard"] > 50
    assert by_kind["crash_router"] > 50
    assert {a.node for a in _ticks(_nemesis("crash_shard=10")[0], 50)} == set(SHARDS)
    assert {a.node for a in _ticks(_nemesis("crash_router=10")[0], 50)} == set(ROUTERS)
    after_commit = _ticks(_nemesis("crash_between_commit_and_send=10")[0], 50)
    assert all(a.after_commit for a in after_commit)
    assert {a.node for a in after_commit} == {*SHARDS, *ROUTERS}


def test_a_fault_with_no_victim_is_not_counted() -> None:
    nemesis, _, _, counts = _nemesis("crash_shard=10,clock_skew=10")
    for _ in range(20):
        assert nemesis.tick(shards=[], routers=ROUTERS) == []
    assert counts.total() == 0


def test_skews_and_scaling() -> None:
    nemesis, *_ = _nemesis("clock_skew=10,scale_out=5,scale_in=5")
    actions = _ticks(nemesis, 30)
    skews = [a for a in actions if isinstance(a, Skew)]
    assert skews
    assert all(abs(a.skew_ms) <= SKEW_MS_MAX and a.node in SHARDS for a in skews)
    assert {a.delta for a in actions if isinstance(a, Scale)} == {1, -1}


def test_partitions_split_the_nodes_up_and_each_is_lifted_by_its_own_end() -> None:
    nemesis, network, schedule, counts = _nemesis("partition=10,one_way_partition=10")
    for _ in range(3):
        assert _ticks(nemesis, 1) == []
    assert counts.by_kind()
    assert network.blocked()
    for link in network.blocked():
        assert link[0] != link[1]
    ends = 0
    for taken in schedule.run_until(10_000):
        if isinstance(taken.event, PartitionEnds):
            nemesis.partition_ends(taken.event)
            ends += 1
    assert ends == counts.total()
    assert network.blocked() == ()


def test_a_swizzle_is_scheduled_on_the_network() -> None:
    nemesis, network, schedule, _ = _nemesis("swizzle_clog=10")
    _ticks(nemesis, 1)
    changes = []
    for taken in schedule.run_until(20_000):
        assert not isinstance(taken.event, InFlight)
        assert isinstance(taken.event, LinkChange)
        network.apply(taken.event)
        changes.append(taken.event.clogged)
    assert changes
    assert changes.count(True) == changes.count(False)
    assert network.clogged() == ()


def test_lease_faults_by_their_rates() -> None:
    nemesis, _, _, counts = _nemesis("stall_worker=0.1,expire_lease=0.2")
    fates = Counter(nemesis.lease_fault() for _ in range(5_000))
    assert 400 < fates["stall_worker"] < 600
    assert 800 < fates["expire_lease"] < 1_000  # 0.2 of the leases that did not stall
    assert counts.by_kind() == {
        "stall_worker": fates["stall_worker"],
        "expire_lease": fates["expire_lease"],
    }


def test_every_episode_fault_of_the_plan_strikes_once_within_the_fault_phase() -> None:
    faults = (
        "partition=0.0001,swizzle_clog=0.0001,crash_shard=0.0001,clock_skew=0.0001,scale_in=0.0001"
    )
    for seed in range(20):
        schedule: Schedule[Any] = Schedule()
        network = Network(schedule, random.Random(seed))
        for node in [*ROUTERS, *SHARDS]:
            network.start(node)
        counts = FaultCounts()
        nemesis = Nemesis(
            parse_faults(faults), random.Random(seed), network, schedule, counts, ticks=30
        )
        for _ in range(30):
            for action in nemesis.tick(shards=SHARDS, routers=ROUTERS):
                if isinstance(action, Scale):
                    nemesis.carried_out(action)  # the operator scales; the nemesis counts it
        assert set(counts.by_kind()) == {n.split("=")[0] for n in faults.split(",")}, seed
        assert sum(counts.by_kind().values()) == 5, seed  # the rates alone would give none


def _forcing(faults: str) -> tuple[Nemesis, FaultCounts]:
    schedule: Schedule[Any] = Schedule()
    network = Network(schedule, random.Random(1))
    for node in [*ROUTERS, *SHARDS]:
        network.start(node)
    counts = FaultCounts()
    return Nemesis(
        parse_faults(faults), random.Random(1), network, schedule, counts, ticks=5
    ), counts


def test_a_fault_at_rate_0_is_never_forced() -> None:
    nemesis, counts = _forcing("crash_shard=0,clock_skew=0.0001")
    assert not [a for a in _ticks(nemesis, 30) if isinstance(a, Crash)]
    assert counts.by_kind() == {"clock_skew": 1}


def test_a_scale_is_counted_only_when_the_run_carries_it_out() -> None:
    nemesis, counts = _forcing("scale_out=0.0001")
    asked = [a for a in _ticks(nemesis, 10) if isinstance(a, Scale)]
    assert len(asked) == 1  # asked for at its forced tick, once
    assert not counts.by_kind()
    nemesis.carried_out(asked[0])
    assert counts.by_kind() == {"scale_out": 1}
