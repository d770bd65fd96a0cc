"""The whole cluster simulated (cluster/sim/cluster_run.py): the production router and
shard cores on one virtual clock, under the seed's faults, checked by the per-step
invariants and the token ledger.

CI runs 100 seeds of the crawler (10 s of virtual time each, at least three kinds of
fault per seed, the faults stopping half way so that the cluster must drain), in blocks
that pytest-xdist spreads over the cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.sim.cluster_run import (
    CONFIG_ENV,
    InvariantBroken,
    SimConfig,
    SimError,
    simulate,
)
from cluster.sim.trace import check_determinism
from nets.model import Net, Place, Transition, variables
from tests.nets_for_tests import Job

pytestmark = pytest.mark.simulation

SEEDS_PER_BLOCK = 10
BLOCKS = 10  # 100 seeds in CI
CRAWL = SimConfig(
    "nets.scraper:net", params={"site_domains": 6}, shards=3, until_ms=10_000, faults_min=3
)


@pytest.mark.parametrize("block", range(BLOCKS))
def test_seeds_pass_under_faults(block: int) -> None:
    for seed in range(block * SEEDS_PER_BLOCK, (block + 1) * SEEDS_PER_BLOCK):
        result = simulate(seed, CRAWL)
        assert len(result.plan.names()) >= 3, f"seed {seed}: plan {result.plan.describe()}"
        assert result.ok, f"seed {seed} ({result.plan.describe()}): {result.failure}"
        assert result.firings > 0 and result.leases > 0, f"seed {seed} did nothing"


def test_a_run_does_real_work() -> None:
    # One longer seed: the crawl hands links across partitions and leases work.
    result = simulate(1, SimConfig("nets.scraper:net", params={"site_domains": 12}))
    assert result.ok, result.failure
    assert result.firings >= 1_000 and result.handoffs >= 50 and result.leases >= 50
    assert result.virtual_ms == 60_000
    assert result.faults.total() > 0


def test_the_same_seed_gives_the_same_trace() -> None:
    first, second = simulate(4, CRAWL), simulate(4, CRAWL)
    assert first.trace.digest() == second.trace.digest()
    assert first.trace.lines() == second.trace.lines()
    assert simulate(5, CRAWL).trace.digest() != first.trace.digest()


def test_a_fresh_interpreter_with_another_hash_seed_agrees(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(CONFIG_ENV, CRAWL.to_json())
    report = check_determinism("cluster.sim.cluster_run:run", 3)
    assert report.ok, report


def test_the_shards_can_run_on_real_lmdb_files(tmp_path: Path) -> None:
    config = SimConfig(
        "nets.scraper:net",
        params={"site_domains": 4},
        until_ms=10_000,
        faults="drop=0.02,crash_shard",
        store="lmdb",
        lmdb_dir=str(tmp_path),
    )
    result = simulate(2, config)
    assert result.ok, result.failure
    assert list(tmp_path.glob("seed-2/shard-*/lmdb")), "no LMDB store was written"


def test_hoppers_cross_partitions_under_every_fault() -> None:
    config = SimConfig(
        "tests.simulation.sim_nets:hopping_seeded",
        until_ms=10_000,
        faults="drop,duplicate,reorder,delay,partition,crash_shard,crash_router",
    )
    for seed in range(3):
        result = simulate(seed, config)
        assert result.ok, f"seed {seed}: {result.failure}"
        assert result.handoffs > 0


def _open_net() -> Net:
    work = Place("work", Job, key="queue", work_queue=True, results=("done",))
    done = Place("done", Job, key="queue")
    j, q = variables("j q")
    noop = Transition("noop", consume=[done(j, queue=q)], produce=[done.produce(j)])
    return Net("open_queue", places=[work, done], transitions=[noop])


def test_a_work_queue_without_an_effect_model_is_refused_by_name() -> None:
    with pytest.raises(SimError, match=r"no effect model for its work-queue place\(s\) work"):
        simulate(0, SimConfig("unused:net"), net=_open_net())


def test_two_shards_that_may_fire_one_slot_break_an_invariant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A table copy that gives every slot to every shard: the check must say so.
    from router.table import PartitionTable

    monkeypatch.setattr(PartitionTable, "slots_of", lambda self, _shard: range(4))
    with pytest.raises(InvariantBroken, match="one owner per slot: slot 0"):
        simulate(0, CRAWL)


def test_config_round_trips_through_json() -> None:
    assert SimConfig.from_json(CRAWL.to_json()) == CRAWL
