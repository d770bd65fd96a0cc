"""Worker leases through a real `cpn shard`: renewal, hand-back, token-by-token completion
and declared results, over the wire and committed in LMDB.

The shard runs ``tests.nets_for_tests:jobs`` (the work queue ``work`` declares
``results=("results",)``), started and stopped by pid as in ``test_shard.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq.asyncio

from cluster.async_client import AsyncShardClient
from cluster.client import ShardError
from tests.integration.test_shard import Shards, wait_until

pytestmark = pytest.mark.integration

LEASE_MS = 2_000  # short enough to wait past, long enough for the requests before it


@pytest.fixture
def shards(tmp_path: Path) -> Iterator[Shards]:
    launcher = Shards(tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


def _job(n: int) -> tuple[str, str, int]:
    return ("q", f"job{n}", n)


def test_renew_release_and_complete_token_by_token_over_the_wire(shards: Shards) -> None:
    client = shards.client(shards.start())
    client.put("work", [_job(n) for n in range(4)])
    leased = client.lease("work", max_tokens=4, lease_ms=LEASE_MS)
    assert [fields for _t, fields in leased.entries] == [_job(n) for n in range(4)]

    renewed = client.renew(leased.lease_id, lease_ms=60_000, progress="fetching 4 pages")
    assert renewed.expires_at_ms > leased.expires_at_ms + 50_000

    done = client.complete(leased.lease_id, [("results", ("q", "job0", 0))], indexes=[0])
    assert not done.duplicate
    with pytest.raises(ShardError) as refused:
        client.complete(leased.lease_id, [("notes", _job(1))], indexes=[1])
    assert refused.value.code == "wrong_place"
    assert "'notes'" in str(refused.value) and "'work'" in str(refused.value)
    assert client.release(leased.lease_id, indexes=[3]).returned == 1
    counts = client.counts()
    assert (counts["work"], counts["work__held"], counts["results"], counts["notes"]) == (
        1,
        2,
        1,
        0,
    )

    # Past the lease's first expiry (on the shard's clock): the renewal holds.
    wait_until(
        client.ping,
        lambda now_ms: now_ms > leased.expires_at_ms + 200,
        what="the shard's clock to pass the lease's original expiry",
    )
    counts = client.counts()
    assert (counts["work"], counts["work__held"]) == (1, 2), "nothing expired"
    stats = client.stats()
    assert stats["leases_live"] == 1
    assert [tuple(p) for p in stats["lease_progress"]] == [(leased.lease_id, "fetching 4 pages")]
    assert stats["counters"]["leases_renewed"] == 1
    assert stats["counters"]["leased_tokens_released"] == 1

    client.complete(leased.lease_id, [("results", ("q", "job1", 1)), ("results", ("q", "job2", 2))])
    counts = client.counts()
    assert (counts["work"], counts["work__held"], counts["results"]) == (1, 0, 3)
    assert [fields for _t, fields in client.all_tokens("work")] == [_job(3)]
    for late in (
        lambda: client.renew(leased.lease_id, lease_ms=1_000),
        lambda: client.release(leased.lease_id),
    ):
        with pytest.raises(ShardError) as refused:
            late()
        assert refused.value.code == "lease_expired"
    assert client.stats()["leases_live"] == 0


def test_the_async_client_renews_releases_and_completes_by_index(shards: Shards) -> None:
    handle = shards.start()
    shards.client(handle).put("work", [_job(n) for n in range(3)])

    async def work() -> tuple[int, int]:
        context = zmq.asyncio.Context()
        client = AsyncShardClient(handle.endpoint, context, timeout_ms=10_000, retries=1)
        try:
            leased = await client.lease("work", max_tokens=3, lease_ms=60_000)
            renewed = await client.renew(leased.lease_id, lease_ms=90_000, progress="half")
            await client.complete(leased.lease_id, [("results", ("q", "job1", 1))], indexes=[1])
            released = await client.release(leased.lease_id)
            return renewed.expires_at_ms - leased.expires_at_ms, released.returned
        finally:
            client.close()
            context.term()

    later_ms, returned = asyncio.run(work())
    assert later_ms >= 30_000 and returned == 2
    counts = shards.client(handle).counts()
    assert (counts["work"], counts["work__held"], counts["results"]) == (2, 0, 1)
