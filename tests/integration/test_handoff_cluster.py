"""A router and two real shards: handoff, redirects, pool moves and bad peers.

Every test starts its own ``cpn router`` and ``cpn shard`` processes (port 0, its own
data directories) and stops them by pid, so the tests run in parallel.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from cluster.client import ClusterClient, Redirected, ShardClient
from cluster.processes import ShardProcess, start_router, start_shard, stop_all
from nets.codec import pack
from router.slots import slot_of_key
from router.table import PartitionTable
from router.wire import Error, Handoff, HandoffAck, Message, PoolAnswer, PoolWanted, decode, encode
from tests.nets_for_tests import STAGE_CAPACITY, Job, hopper, landed

pytestmark = pytest.mark.integration

WAIT_S_MAX = 60.0
TABLE = PartitionTable.initial(2)


def _cluster(root: Path, net: str) -> list[ShardProcess]:
    handles: list[ShardProcess] = []
    try:
        router = start_router(net, root / "router", shards=2)
        handles.append(router)
        for k in range(2):
            extra = ("--shard-id", str(k), "--shards", "2", "--router", router.endpoint)
            handles.append(start_shard(net, root / f"shard-{k}", extra_args=extra))
    except BaseException:
        stop_all(handles)
        raise
    return handles


@pytest.fixture
def cluster_of(tmp_path: Path) -> Iterator[Callable[[str], list[ShardProcess]]]:
    """``cluster_of(net)`` starts a router and two shards; all are stopped at the end."""
    started: list[ShardProcess] = []

    def start(net: str) -> list[ShardProcess]:
        handles = _cluster(tmp_path / str(len(started)), net)
        started.extend(handles)
        return handles

    try:
        yield start
    finally:
        stop_all(started)


@pytest.fixture
def hopping(cluster_of: Callable[[str], list[ShardProcess]]) -> list[ShardProcess]:
    return cluster_of("tests.nets_for_tests:hopping")


@pytest.fixture
def one_ticket(cluster_of: Callable[[str], list[ShardProcess]]) -> list[ShardProcess]:
    return cluster_of("tests.nets_for_tests:hopping_one_ticket")


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S_MAX
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen in {WAIT_S_MAX} s"
        time.sleep(0.02)


def _key_of(shard: int, start: int = 0) -> int:
    """A hopper id whose first key lives on ``shard`` (hops=3)."""
    hopper_id = start
    while TABLE.owner(slot_of_key(hopper(hopper_id, 3).key)) != shard:
        hopper_id += 1
    return hopper_id


def _request(endpoint: str, message: Message, *, incarnation: int = 1) -> Message:
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    try:
        socket.send(encode(message, message_id=7, incarnation=incarnation))
        assert socket.poll(10_000), f"no reply to {message!r}"
        return decode(socket.recv()).message
    finally:
        socket.close(linger=0)
        context.term()


def test_hoppers_cross_partitions_and_land_once(hopping: list[ShardProcess]) -> None:
    with ClusterClient(hopping[0].endpoint) as client:
        _wait(lambda: all(client.table(refresh=True).endpoints), "the shards reporting")
        client.put("hops", [hopper(i, 7) for i in range(300)])
        _wait(lambda: client.counts()["arrived"] == 300, "every hopper landing")
        arrived = sorted(fields for _shard, _time, fields in client.tokens("arrived"))
        assert arrived == sorted(tuple(landed(i)) for i in range(300))
        stats = [client.shard(k).stats() for k in range(2)]
    received = [s["counters"].get("handoff_tokens_received", 0) for s in stats]
    assert all(n > 0 for n in received), f"no handoff in one direction: {received}"
    assert [s["outbox_tokens"] for s in stats] == [0, 0]


def test_a_put_to_a_shard_that_does_not_own_the_slot_is_redirected(
    hopping: list[ShardProcess],
) -> None:
    hopper_id = _key_of(1)
    with ShardClient(hopping[1].endpoint) as shard0:
        with pytest.raises(Redirected) as raised:
            shard0.put("hops", [hopper(hopper_id, 3)])
        assert raised.value.owner == 1
        assert raised.value.slot == slot_of_key(hopper(hopper_id, 3).key)
        assert shard0.counts()["hops"] == 0  # nothing applied
        assert shard0.ping() >= 0  # and the shard is still up


def test_tokens_that_do_not_belong_to_their_lane_are_refused_whole(
    hopping: list[ShardProcess],
) -> None:
    owned_by_0 = hopper(_key_of(0), 3)
    lane = slot_of_key(owned_by_0.key)
    # Another token shard 0 owns, in another slot: it does not belong to this run's lane.
    start = _key_of(0) + 1
    while slot_of_key(hopper(_key_of(0, start=start), 3).key) == lane:
        start = _key_of(0, start=start) + 1
    other = hopper(_key_of(0, start=start), 3)
    entries = [("hops", 0, tuple(owned_by_0)), ("hops", 0, tuple(other))]
    runs: Any = ((lane, 1, 2, pack(entries)),)
    reply = _request(hopping[1].endpoint, Handoff(1, 1, runs))
    assert isinstance(reply, Error)
    assert reply.code == "handoff_refused"
    assert "belongs to lane" in reply.message
    garbage = _request(hopping[1].endpoint, Handoff(1, 1, ((lane, 1, 1, b"\xc1"),)))
    assert isinstance(garbage, Error)
    assert garbage.code == "handoff_refused"
    with ShardClient(hopping[1].endpoint) as shard0:
        assert shard0.counts()["hops"] == 0
    # A well-formed run for a lane shard 0 does not own is redirected, not applied.
    foreign = hopper(_key_of(1), 3)
    runs = ((slot_of_key(foreign.key), 1, 1, pack([("hops", 0, tuple(foreign))])),)
    redirected = _request(hopping[1].endpoint, Handoff(1, 1, runs))
    assert isinstance(redirected, HandoffAck)
    assert redirected.redirects == ((slot_of_key(foreign.key), 1, 1),)
    assert redirected.acks == ()


def test_a_stale_epoch_is_answered_by_a_redirect_and_a_newer_one_is_deferred(
    hopping: list[ShardProcess],
) -> None:
    token = hopper(_key_of(0), 3)
    lane = slot_of_key(token.key)
    runs: Any = ((lane, 1, 1, pack([("hops", 0, tuple(token))])),)
    stale = _request(hopping[1].endpoint, Handoff(1, 0, runs))  # slot changed at epoch 1
    assert isinstance(stale, HandoffAck)
    assert stale.redirects == ((lane, 0, 1),)
    ahead = _request(hopping[1].endpoint, Handoff(1, 99, runs))
    assert isinstance(ahead, HandoffAck)
    assert ahead.deferred == (lane,)
    applied = _request(hopping[1].endpoint, Handoff(1, 1, runs))
    assert isinstance(applied, HandoffAck)
    assert applied.acks == ((lane, 1),)
    again = _request(hopping[1].endpoint, Handoff(1, 1, runs))
    assert isinstance(again, HandoffAck)
    assert again.acks == ((lane, 1),)  # a duplicate: acknowledged, not applied twice
    with ShardClient(hopping[1].endpoint) as shard0:
        stats = shard0.stats()
    assert stats["counters"]["handoff_tokens_received"] == 1


def test_a_pool_token_moves_to_the_shard_whose_work_lacks_it(
    one_ticket: list[ShardProcess],
) -> None:
    with ClusterClient(one_ticket[0].endpoint) as client:
        _wait(lambda: all(client.table(refresh=True).endpoints), "the shards reporting")
        counts = client.shard_counts()
        assert counts[0]["tickets"] == 1  # the one ticket starts at shard 0 (index 0 % 2)
        assert counts[1]["tickets"] == 0
        # Work only shard 1 owns: it must ask shard 0 for the ticket.
        hopper_id = _key_of(1)
        client.put("hops", [hopper(hopper_id, 3)])
        _wait(lambda: client.counts()["arrived"] == 1, "the hopper landing")
        given = client.shard(0).stats()["counters"].get("pool_tokens_given", 0)
        tickets = client.tokens("tickets")
    assert given >= 1
    assert [fields for _shard, _time, fields in tickets] == [("t0", 3)]


def test_pool_requests_for_a_place_that_is_not_a_pool_are_refused(
    hopping: list[ShardProcess],
) -> None:
    reply = _request(hopping[1].endpoint, PoolWanted(1, "hops", 1))
    assert isinstance(reply, Error)
    assert reply.code == "not_a_pool"
    answer = _request(hopping[1].endpoint, PoolWanted(1, "tickets", 0))
    assert isinstance(answer, PoolAnswer)
    assert answer.given == 0


def test_a_capacity_holds_per_shard(cluster_of: Callable[[str], list[ShardProcess]]) -> None:
    handles = cluster_of("tests.nets_for_tests:staged")
    with ClusterClient(handles[0].endpoint) as client:
        _wait(lambda: all(client.table(refresh=True).endpoints), "the shards reporting")
        jobs = [Job(f"q{i}", f"j{i}", i) for i in range(40)]
        owners = {client.owner("inbox", tuple(job)) for job in jobs}
        assert owners == {0, 1}, "the jobs must span both shards"
        client.put("inbox", jobs)
        _wait(
            lambda: all(c["stage"] == STAGE_CAPACITY for c in client.shard_counts().values()),
            "each shard filling its share of the stage",
        )
        counts = client.shard_counts()
    assert sum(c["inbox"] for c in counts.values()) == 40 - 2 * STAGE_CAPACITY
