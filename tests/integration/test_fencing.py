"""Fencing a restarted shard: its slots come back at a new epoch; its old self is not heard.

A real router and two real shards of ``tests.nets_for_tests:hopping`` (port 0, their own
data directories, stopped by pid). Shard 1 is SIGKILLed and restarted on its data
directory: the router moves its slots to a new epoch (same owners), the new incarnation
fires only once its table is there, and the old incarnation's word counts for nothing
(the router refuses its heartbeats, its peer refuses its handoffs).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from cluster.client import ClusterClient, ShardClient
from cluster.processes import ShardProcess, start_router, start_shard, stop_all, wait_for
from nets.codec import pack
from router.slots import slot_of_key
from router.table import PartitionTable
from router.wire import Error, Handoff, Heartbeat, Message, decode, encode
from tests.nets_for_tests import hopper

pytestmark = pytest.mark.integration

NET = "tests.nets_for_tests:hopping"
WAIT_S = 30.0


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.router = start_router(NET, root / "router", shards=2)
        self.shards = [self.start(k) for k in range(2)]

    def start(self, shard_id: int, bind: str = "tcp://127.0.0.1:0") -> ShardProcess:
        extra = ("--shard-id", str(shard_id), "--shards", "2", "--router", self.router.endpoint)
        return start_shard(NET, self.root / f"shard-{shard_id}", bind=bind, extra_args=extra)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    try:
        yield made
    finally:
        stop_all([made.router, *made.shards])


def _stats(endpoint: str) -> dict[str, object]:
    with ShardClient(endpoint, timeout_ms=2_000, retries=3) as shard:
        return shard.stats()


def _ask(endpoint: str, message: Message, *, incarnation: int) -> Message:
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    try:
        socket.send(encode(message, message_id=3, incarnation=incarnation))
        assert socket.poll(10_000), f"no reply to {message!r}"
        return decode(socket.recv()).message
    finally:
        socket.close(linger=0)
        context.term()


def test_a_restarted_shard_is_fenced_at_a_new_epoch(cluster: Cluster) -> None:
    with ClusterClient(cluster.router.endpoint, timeout_ms=2_000, retries=5) as client:
        wait_for(
            lambda: client.table(refresh=True), lambda t: all(t.endpoints), what="endpoints",
            timeout_s=WAIT_S,
        )  # fmt: skip
        before = client.table(refresh=True)
        # The router lists an endpoint when the shard's heartbeat arrives; the fence is in
        # the reply to it, which reaches the shard a moment later.
        old = wait_for(
            lambda: _stats(cluster.shards[1].endpoint), lambda s: s["fence_epoch"] != 0,
            what="shard 1's first fence", timeout_s=WAIT_S,
        )  # fmt: skip
        assert (old["incarnation"], old["fence_epoch"]) == (1, 1), "a first start is not fenced"

        endpoint = cluster.shards[1].endpoint
        cluster.shards[1].kill()
        cluster.shards[1] = cluster.start(1, bind=endpoint)
        stats = wait_for(
            lambda: _stats(endpoint),
            lambda s: s["fenced"] and s["epoch"] == s["fence_epoch"],
            what="shard 1 fenced",
            timeout_s=WAIT_S,
        )
        after = client.table(refresh=True)
        assert stats["incarnation"] == 2
        assert stats["fence_epoch"] == after.epoch == before.epoch + 1
        assert after.owners == before.owners, "fencing moves no slot"
        for slot, owner in enumerate(after.owners):
            moved_on = after.slot_epochs[slot] == after.epoch
            assert moved_on == (owner == 1), f"slot {slot} of shard {owner}"

        # The new incarnation fires (a hopper whose first hop is on shard 1 lands).
        first = next(h for h in range(1_000) if after.owners[slot_of_key(hopper(h, 2).key)] == 1)
        client.put("hops", [hopper(first, 2)])
        wait_for(client.counts, lambda c: c["arrived"] == 1, what="the hop", timeout_s=WAIT_S)

        # The old incarnation is believed by no one any more.
        beat = Heartbeat(1, endpoint, before.epoch, {"loops": 1})
        refused = _ask(cluster.router.endpoint, beat, incarnation=1)
        assert isinstance(refused, Error) and refused.code == "stale_incarnation", refused
        table = PartitionTable(after.epoch, after.shard_count, after.owners, after.slot_epochs)
        lane = next(s for s in range(1_024) if table.owners[s] == 0)
        entries = pack([("hops", 0, tuple(hopper(0, 1)))])
        newer = Handoff(1, after.epoch, ((lane, 10_000, 1, entries),))
        _ask(cluster.shards[0].endpoint, newer, incarnation=2)  # shard 0 hears incarnation 2
        late = _ask(cluster.shards[0].endpoint, Handoff(1, before.epoch, ()), incarnation=1)
        assert isinstance(late, Error) and late.code == "stale_incarnation", late
