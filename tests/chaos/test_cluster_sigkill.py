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
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.client import ClusterClient, ShardClient
from cluster.invariants import ShardSnapshot, check, slot_of_net
from cluster.local import ShardProcess, start_router, start_shard, stop_all
from router.table import PartitionTable
from tests.nets_for_tests import TICKETS, hopper, hopping, landed

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
    return all(s["outbox_tokens"] == 0 for s in _statistics(cluster))


def _snapshot(handle: ShardProcess) -> ShardSnapshot:
    with ShardClient(handle.endpoint) as client:
        stats = client.stats()
        marking = {place: client.all_tokens(place) for place in PLACES}
    return ShardSnapshot(
        shard_id=int(stats["shard_id"]),
        incarnation=int(stats["incarnation"]),
        epoch=int(stats["epoch"]),
        owned_slots=frozenset(stats["owned"]),
        marking=marking,
        outbox_tokens=int(stats["outbox_tokens"]),
        failed_lanes=int(stats["outbox_lanes_failed"]),
    )


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
        deadline = time.monotonic() + DRAIN_S_MAX
        while not _drained(cluster, client, len(injected)):
            assert time.monotonic() < deadline, (
                f"seed {seed}: not drained in {DRAIN_S_MAX} s after kills {kills}: "
                f"{client.counts()}, outboxes "
                f"{[s['outbox_tokens'] for s in _statistics(cluster)]}"
            )
            time.sleep(0.05)
        snapshots = [_snapshot(handle) for handle in cluster.shards]
    finally:
        client.close()

    table = PartitionTable.initial(SHARDS)
    report = check(
        snapshots,
        table,
        expected={"arrived": Counter(landed(h) for h, _n in injected), "hops": Counter()},
        conserved={"tickets": TICKETS},
        slot_of=slot_of_net(hopping()),
    )
    assert report.ok, f"seed {seed}, kills {kills}:\n{report}"
    uses = sum(fields[1] for s in snapshots for _time, fields in s.marking["tickets"])
    assert uses == sum(n for _h, n in injected), (
        f"seed {seed}, kills {kills}: tickets were used {uses} times for "
        f"{sum(n for _h, n in injected)} hops"
    )
    names = sorted(fields[0] for s in snapshots for _time, fields in s.marking["tickets"])
    assert names == sorted(f"t{i}" for i in range(TICKETS)), f"seed {seed}: tickets {names}"
