"""The store's crash point in the simulator: shards die while folding their batch log.

With ``store_crash_rate`` on, a shard dies at ``store_catch_up`` (docs/simulation.md):
the slice is lost, the log and the marking table still add up to every committed batch
(``MemoryShardStore.recover`` asserts it at each restart), and the token ledger finds no
token lost or duplicated, on both the in-memory model and real LMDB stores.
"""

from pathlib import Path

import pytest

from cluster.sim.cluster_run import ClusterSim, SimConfig

pytestmark = pytest.mark.simulation

SEEDS = range(3)


@pytest.mark.parametrize("store", ["memory", "lmdb"])
def test_shards_killed_while_folding_their_log_lose_nothing(store: str, tmp_path: Path) -> None:
    config = SimConfig(
        "nets.scraper:net",
        params={"site_domains": 4},
        shards=2,
        until_ms=8_000,
        faults="drop=0.01",
        store=store,
        lmdb_dir=str(tmp_path),
        store_crash_rate=0.5,
    )
    crashes = 0
    for seed in SEEDS:
        sim = ClusterSim(seed, config, None)
        result = sim.run()
        assert result.ok, f"seed {seed}: {result.failure}"
        assert result.firings > 0, f"seed {seed} did nothing"
        crashes += sum(a.fault_points_hit["store_catch_up"] for a in sim.shard_actors.values())
    assert crashes > 0, "no shard died at its store's crash point"
