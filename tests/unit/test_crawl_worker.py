"""The crawl worker's pure rules (cluster/crawler/workers.py) and the SDK lane it uses."""

from __future__ import annotations

import asyncio

import pytest
import zmq.asyncio

from cluster.client import ShardUnavailable
from cluster.crawler.workers import LEASE_END_MARGIN_MS, STORE_BATCH, _within_lease
from cluster.sdk.lanes import ShardLane
from nets.scraper import CrawlPolicy

DEADLINE_MS = 20_000  # the fetch's own deadline: twice a 10 s timeout


def test_a_fetch_is_sent_only_while_its_answer_can_come_within_the_lease() -> None:
    fetch = ("d", "http://d/", "page", 0, 1, "direct000", "", 10_000, 1_000)
    roomy = 10_000 + 1_000 + DEADLINE_MS + LEASE_END_MARGIN_MS
    assert _within_lease(fetch, roomy + 60_000, DEADLINE_MS) == fetch  # as the net decided
    cut = _within_lease(fetch, roomy - 700, DEADLINE_MS)
    assert cut == (*fetch[:8], 300)  # the late limit ends 700 ms sooner
    # A lease that ends too soon after the start: the limit is before it, refused late.
    assert _within_lease(fetch, 10_000 + DEADLINE_MS + 500, DEADLINE_MS)[8] == -500


def test_a_lane_asks_the_router_afresh_after_its_shard_did_not_answer() -> None:
    """A shard restarted on another port: the next lookup refreshes the router's table
    (a cached one would send every retry to the old port)."""

    class Endpoints:
        def __init__(self) -> None:
            self.refreshes: list[bool] = []

        async def endpoint(self, shard_id: int, *, refresh: bool = False) -> str:
            self.refreshes.append(refresh)
            return f"tcp://127.0.0.1:{5000 + len(self.refreshes)}"

    async def scenario() -> tuple[list[bool], str]:
        endpoints = Endpoints()
        context = zmq.asyncio.Context()
        lane = ShardLane(endpoints, 0, context)  # type: ignore[arg-type]
        client = lane.client()

        async def unanswered() -> None:
            raise ShardUnavailable("shard 0 did not answer")

        async def answered() -> str:
            return client.endpoint

        try:
            with pytest.raises(ShardUnavailable):
                await lane._call(client, unanswered)
            found = await lane._call(client, answered)
        finally:
            lane.close()
            context.term()
        return endpoints.refreshes, found

    refreshes, endpoint = asyncio.run(scenario())
    assert refreshes == [False, True]
    assert endpoint == "tcp://127.0.0.1:5002"


def test_the_store_stage_holds_two_full_store_leases() -> None:
    """A store lease of fewer than STORE_BATCH pages is held STORE_GATHER_MS before it
    completes: with room for fewer pages than that in the stage, every lease was held,
    and the store stage's back pressure paced the whole crawl (docs/scraper.md)."""
    assert CrawlPolicy().storing_max >= 2 * STORE_BATCH
