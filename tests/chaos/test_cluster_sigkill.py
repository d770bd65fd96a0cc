"""SIGKILL shards (senders and receivers) and the router during heavy cross-shard traffic.

A real router and real shards (``cpn router``, ``cpn shard``, durability ``fsync``) run
``tests.nets_for_tests:hopping``: every hop of a ``Hopper`` changes its partition key,
so most hops hand the hopper to another shard, and every hop takes and gives back a
``Ticket`` from a pool place, so tickets move between shards on demand.

The test puts hoppers in waves through the cluster client (the log of *acknowledged*
puts is the injection log) and, on a seeded schedule (``CPN_SEED`` replays it),
SIGKILLs a shard or the router while tokens are in flight, restarts it on the same
data directory and endpoint, and kills again only once the victim is back. Then it
drains and runs the invariant checker on every shard's marking and outbox: every
acknowledged hopper landed exactly once, nothing is left hopping, no token is on a
shard that does not own its slot, every outbox drained, the tickets are conserved and
their ``uses`` add up to exactly the number of hops made (a hop applied twice or lost
would show there too).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.client import ClusterClient, ShardClient
from cluster.invariants import ShardSnapshot
from cluster.processes import ShardProcess, start_router, start_shard, stop_all
from router.table import PartitionTable
from tests.hopping_check import hopping_problems
from tests.nets_for_tests import hopper

pytestmark = [pytest.mark.serial, pytest.mark.integration]

NET = "tests.nets_for_tests:hopping"
SHARDS = 2
WAVES = 8
HOPPERS_PER_WAVE = 200
HOPS = (5, 10, 20, 40, 80)
KILL_AFTER_MS = (0, 5, 20, 50, 120, 250)
ROUTER_KILL_P = 0.2
DRAIN_S_MAX = 120.0
PLACES = ("hops", "arrived", "tickets")


class Cluster:
    """A router and shards this test started, restarted in place after each kill."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.router = start_router(NET, root / "router", shards=SHARDS)
        self.shards = [self._start_shard(k) for k in range(SHARDS)]
        self.epochs_seen: dict[str, list[int]] = {}

    def _start_shard(self, shard_id: int, bind: str = "tcp://127.0.0.1:0") -> ShardProcess:
        return start_shard(
            NET,
            self.root / f"shard-{shard_id}",
            bind=bind,
            extra_args=(
                "--shard-id",
                str(shard_id),
                "--shards",
                str(SHARDS),
                "--router",
                self.router.endpoint,
            ),
        )

    def kill_and_restart(self, victim: int | None) -> None:
        """SIGKILL a shard (or the router, ``None``) and start it again where it was."""
        if victim is None:
            endpoint = self.router.endpoint
            self.router.kill()
            self.router = start_router(NET, self.root / "router", shards=SHARDS, bind=endpoint)
            return
        endpoint = self.shards[victim].endpoint
        self.shards[victim].kill()
        self.shards[victim] = self._start_shard(victim, bind=endpoint)

    def handles(self) -> list[ShardProcess]:
        return [self.router, *self.shards]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    try:
        yield made
    finally:
        stop_all(made.handles())


def _wait_known(client: ClusterClient) -> None:
    """Until the router knows where every shard listens (their first heartbeats)."""
    deadline = time.monotonic() + 30
    while not all(client.table(refresh=True).endpoints):
        assert time.monotonic() < deadline, "the shards never reported to the router"
        time.sleep(0.02)


def _statistics(cluster: Cluster) -> list[dict[str, object]]:
    stats = []
    for handle in cluster.shards:
        with ShardClient(handle.endpoint) as client:
            stats.append(client.stats())
    return stats


def _drained(cluster: Cluster, client: ClusterClient, hoppers: int) -> bool:
    counts = client.counts()
    if counts.get("arrived", 0) < hoppers or counts.get("hops", 0) > 0:
        return False
    # A restarted shard is fenced at a new epoch: every shard must have caught up.
    epoch = client.table(refresh=True).epoch
    return all(s["outbox_tokens"] == 0 and s["epoch"] == epoch for s in _statistics(cluster))


def _drain(
    cluster: Cluster, client: ClusterClient, hoppers: int, context: str
) -> list[ShardSnapshot]:
    """Wait (bounded) until every hopper landed and every outbox drained; snapshot."""
    deadline = time.monotonic() + DRAIN_S_MAX
    while not _drained(cluster, client, hoppers):
        assert time.monotonic() < deadline, (
            f"{context}: not drained in {DRAIN_S_MAX} s: {client.counts()}, outboxes "
            f"{[s['outbox_tokens'] for s in _statistics(cluster)]}"
        )
        time.sleep(0.05)
    return [_snapshot(handle) for handle in cluster.shards]


def _table(client: ClusterClient) -> PartitionTable:
    table = client.table(refresh=True)
    return PartitionTable(table.epoch, table.shard_count, table.owners, table.slot_epochs)


def _snapshot(handle: ShardProcess) -> ShardSnapshot:
    with ShardClient(handle.endpoint) as client:
        stats = client.stats()
        marking = {place: client.all_tokens(place) for place in PLACES}
    return ShardSnapshot.from_statistics(stats, marking)


def test_hoppers_cross_shards_exactly_once_through_sigkills(cluster: Cluster, seed: int) -> None:
    rng = random.Random(seed)
    client = ClusterClient(cluster.router.endpoint, timeout_ms=2_000, retries=5)
    injected: list[tuple[int, int]] = []  # (hopper id, hops) of acknowledged puts
    kills: list[str] = []
    try:
        _wait_known(client)
        for wave in range(WAVES):
            batch = [
                (wave * HOPPERS_PER_WAVE + i, rng.choice(HOPS)) for i in range(HOPPERS_PER_WAVE)
            ]
            client.put("hops", [hopper(h, n) for h, n in batch])
            injected.extend(batch)
            # Kill while this wave's hoppers cross between the shards.
            time.sleep(rng.choice(KILL_AFTER_MS) / 1000)
            victim = None if rng.random() < ROUTER_KILL_P else rng.randrange(SHARDS)
            kills.append("router" if victim is None else f"shard-{victim}")
            cluster.kill_and_restart(victim)
        snapshots = _drain(cluster, client, len(injected), f"seed {seed}, kills {kills}")
        table = _table(client)
    finally:
        client.close()

    problems = hopping_problems(snapshots, table, injected)
    assert not problems, f"seed {seed}, kills {kills}:\n{problems}"


def test_a_shard_restarted_on_another_port_is_found_by_its_peers(cluster: Cluster) -> None:
    """Sends to a peer's old address neither fail nor arrive; the table says where it is."""
    client = ClusterClient(cluster.router.endpoint, timeout_ms=2_000, retries=5)
    try:
        _wait_known(client)
        old = cluster.shards[1].endpoint
        cluster.shards[1].kill()
        # Hoppers whose later hops belong to shard 1 pile up in shard 0's outbox.
        starts = [h for h in range(2_000) if client.owner("hops", hopper(h, 6)) == 0][:200]
        client.put("hops", [hopper(h, 6) for h in starts])
        cluster.shards[1] = cluster._start_shard(1)  # port 0: another port
        assert cluster.shards[1].endpoint != old
        injected = [(h, 6) for h in starts]
        moved = f"shard 1 moved from {old} to {cluster.shards[1].endpoint}"
        snapshots = _drain(cluster, client, len(injected), moved)
        table = _table(client)
    finally:
        client.close()
    problems = hopping_problems(snapshots, table, injected)
    assert not problems, problems
