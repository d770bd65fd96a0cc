"""A shard's link to its router: a heartbeat that could not go (the router's connection
not up yet, as for every shard's first one) goes again soon, not a whole interval later."""

from typing import cast

from shard.exchange import Exchange
from shard.link import HEARTBEAT_MS, HEARTBEAT_RETRY_MS, ROUTER, Link, Send


def test_a_heartbeat_that_could_not_go_goes_again_soon() -> None:
    link = Link(
        me=0, incarnation=1, endpoint="tcp://127.0.0.1:1", cluster_id="c",
        router="tcp://127.0.0.1:2",
    )  # fmt: skip
    link.next_heartbeat_ms = 1_000 + HEARTBEAT_MS  # as sends() leaves it after a beat at 1 s
    # The heartbeat branch reads nothing of the exchange.
    link.send_failed(Send(ROUTER, b"beat", "heartbeat"), cast(Exchange, None))
    assert link.next_heartbeat_ms == 1_000 + HEARTBEAT_RETRY_MS
    assert link.counters["heartbeat_sends_failed"] == 1
