"""The simulated network: endpoints per incarnation, faults per frame, partitions, clogs."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.sim.network import (
    Delivered,
    InFlight,
    LinkChange,
    LinkModel,
    Network,
    NetworkError,
)
from cluster.sim.schedule import Schedule

pytestmark = pytest.mark.simulation


def _world(seed: int = 0, **model: Any) -> tuple[Schedule[Any], Network]:
    schedule: Schedule[Any] = Schedule()
    return schedule, Network(schedule, random.Random(seed), model=LinkModel(**model))


def _run(schedule: Schedule[Any], network: Network, for_ms: int = 100_000) -> list[Delivered]:
    delivered = []
    for taken in schedule.run_until(schedule.now_ms + for_ms):
        if isinstance(taken.event, InFlight):
            frame = network.arrive(taken.event)
            if frame is not None:
                delivered.append(frame)
        elif isinstance(taken.event, LinkChange):
            network.apply(taken.event)
    return delivered


def test_a_calm_link_delivers_every_frame_in_order_with_the_reply_endpoint() -> None:
    schedule, network = _world(latency_ms_min=1, latency_ms_max=50)
    a = network.start("a")
    b = network.start("b")
    for i in range(100):
        network.send("a", b, bytes([i]))
    delivered = _run(schedule, network)
    assert [d.payload[0] for d in delivered] == list(range(100))  # FIFO despite jitter
    assert {(d.src, d.reply_to, d.dst) for d in delivered} == {("a", a, "b")}


def test_a_restarted_node_never_gets_frames_sent_to_its_old_endpoint() -> None:
    schedule, network = _world()
    network.start("a")
    old = network.start("b")
    network.send("a", old, b"in flight when b crashes")
    network.stop("b")
    network.send("a", old, b"sent while b is down")
    new = network.start("b")
    assert new != old
    assert network.endpoint("b") == new
    assert network.incarnation("b") == 2
    network.send("a", old, b"sent to the old endpoint after the restart")
    network.send("a", new, b"sent to the new endpoint")
    assert [d.payload for d in _run(schedule, network)] == [b"sent to the new endpoint"]
    assert dict(network.statistics().lost) == {"no_listener": 2, "stale_endpoint": 1}


def test_a_symmetric_partition_cuts_both_ways_and_heals() -> None:
    schedule, network = _world()
    ends = {node: network.start(node) for node in ("a", "b", "c")}
    network.partition(["a"], ["b"])
    for src, dst in [("a", "b"), ("b", "a"), ("a", "c"), ("c", "b")]:
        network.send(src, ends[dst], f"{src}{dst}".encode())
    assert sorted(d.payload for d in _run(schedule, network)) == [b"ac", b"cb"]
    network.heal()
    network.send("a", ends["b"], b"healed")
    assert [d.payload for d in _run(schedule, network)] == [b"healed"]


def test_a_one_way_partition_cuts_one_direction_also_for_frames_already_sent() -> None:
    schedule, network = _world()
    a, b = network.start("a"), network.start("b")
    network.send("a", b, b"sent before the cut")
    network.one_way_partition(["a"], ["b"])
    network.send("b", a, b"the other way")
    assert [d.payload for d in _run(schedule, network)] == [b"the other way"]
    assert network.blocked() == (("a", "b"),)


def test_a_clogged_link_holds_frames_and_delivers_them_in_order_when_unclogged() -> None:
    schedule, network = _world()
    network.start("a")
    b = network.start("b")
    network.apply(LinkChange("a", "b", clogged=True))
    for i in range(5):
        network.send("a", b, bytes([i]))
    assert _run(schedule, network, for_ms=1_000) == []
    assert network.held() == 5
    network.apply(LinkChange("a", "b", clogged=False))
    assert [d.payload[0] for d in _run(schedule, network)] == [0, 1, 2, 3, 4]


def test_a_swizzle_clogs_links_one_by_one_then_restores_them_all() -> None:
    schedule, network = _world()
    nodes = ["a", "b", "c"]
    for node in nodes:
        network.start(node)
    planned = network.swizzle(random.Random(7), nodes, step_ms=10, hold_ms=100)
    clogs = [c for _, c in planned if c.clogged]
    unclogs = [c for _, c in planned if not c.clogged]
    assert clogs
    assert sorted((c.src, c.dst) for c in clogs) == sorted((c.src, c.dst) for c in unclogs)
    assert [t for t, _ in planned] == sorted(t for t, _ in planned)
    _run(schedule, network, for_ms=planned[len(clogs) - 1][0])
    assert len(network.clogged()) == len(clogs)
    _run(schedule, network)
    assert network.clogged() == ()


def test_faults_are_counted() -> None:
    schedule, network = _world(
        seed=3, drop_rate=0.2, duplicate_rate=0.2, reorder_rate=0.2, delay_rate=0.2
    )
    network.start("a")
    b = network.start("b")
    for i in range(500):
        network.send("a", b, i.to_bytes(2, "big"))
    delivered = _run(schedule, network)
    stats = network.statistics()
    assert stats.sent == 500
    dropped = dict(stats.lost)["dropped"]
    assert len(delivered) == 500 - dropped + stats.duplicated
    assert min(stats.duplicated, stats.reordered, stats.delayed, dropped) > 50
    order = [int.from_bytes(d.payload, "big") for d in delivered]
    assert order != sorted(order)  # reordering happened


def test_an_endpoint_that_is_not_simulated_is_named() -> None:
    _, network = _world()
    network.start("a")
    with pytest.raises(NetworkError, match=r"127\.0\.0\.1:5555' is not a simulated"):
        network.send("a", "tcp://127.0.0.1:5555", b"")


def test_a_bad_link_model_is_refused() -> None:
    with pytest.raises(NetworkError, match=r"drop_rate 1\.5"):
        LinkModel(drop_rate=1.5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), rates=st.lists(st.floats(0, 0.5), min_size=4, max_size=4))
def test_the_same_seed_gives_the_same_deliveries(seed: int, rates: list[float]) -> None:
    def run() -> list[tuple[int, int, bytes]]:
        schedule, network = _world(
            seed,
            drop_rate=rates[0],
            duplicate_rate=rates[1],
            reorder_rate=rates[2],
            delay_rate=rates[3],
        )
        ends = [network.start(node) for node in ("a", "b", "c")]
        for i in range(60):
            network.send("abc"[i % 3], ends[(i + 1) % 3], bytes([i]))
        return [(schedule.now_ms, d.frame_id, d.payload) for d in _run(schedule, network)]

    assert run() == run()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    duplicate_rate=st.floats(0, 0.5),
    reorder_rate=st.floats(0, 0.5),
    delay_rate=st.floats(0, 0.5),
    sends=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), max_size=80),
)
def test_without_drops_every_frame_arrives_and_links_stay_fifo_but_for_reordered_ones(
    seed: int,
    duplicate_rate: float,
    reorder_rate: float,
    delay_rate: float,
    sends: list[tuple[int, int]],
) -> None:
    schedule, network = _world(
        seed, duplicate_rate=duplicate_rate, reorder_rate=reorder_rate, delay_rate=delay_rate
    )
    nodes = ("a", "b", "c")
    ends = [network.start(node) for node in nodes]
    sent = [network.send(nodes[src], ends[dst], b"") for src, dst in sends if src != dst]
    link_of = {
        frame_id: (src, dst)
        for frame_id, (src, dst) in zip(sent, [s for s in sends if s[0] != s[1]], strict=True)
    }
    arrivals = []
    for taken in schedule.run_until(1_000_000):
        frame = network.arrive(taken.event)
        assert frame is not None
        arrivals.append(taken.event)
    stats = network.statistics()
    assert Counter(f.frame_id for f in arrivals) == Counter(sent) + Counter(
        f.frame_id for f in arrivals if f.copy == 1
    )
    assert stats.duplicated == sum(1 for f in arrivals if f.copy == 1)
    if stats.reordered == 0:
        for link in set(link_of.values()):
            firsts = [f.frame_id for f in arrivals if f.copy == 0 and link_of[f.frame_id] == link]
            assert firsts == sorted(firsts), f"link {link} is not FIFO"


def test_a_restart_on_the_same_endpoint_loses_only_what_was_in_flight() -> None:
    schedule, network = _world()
    network.start("a")
    old = network.start("router")
    network.send("a", old, b"in flight when the router crashes")
    network.stop("router")
    assert network.start("router", same_endpoint=True) == old
    assert network.incarnation("router") == 2
    network.send("a", old, b"after the restart")
    assert [d.payload for d in _run(schedule, network)] == [b"after the restart"]
    assert dict(network.statistics().lost) == {"stale_endpoint": 1}
