"""The receive path of handed-off tokens: a run decoded once, applied in bulk.

* :meth:`nets.engine.Engine.add_checked` (bulk) leaves an engine as adding each entry
  one by one does: the same marking, the same pending entries, the same firings after.
* A run's columns are checked in bulk (``Exchange._decode_columns``); any run that is
  not of the common shape, or is wrong, is decided entry by entry, so both accept and
  refuse exactly the same runs.
* Tokens a peer hands off are in the receiver's marking, indexed, and enable its
  transitions (``bench.cluster_nets:relay_consumed``, two cores without sockets).
"""

from __future__ import annotations

import random
import re
from typing import Any, NamedTuple

import msgpack
import pytest

from bench.cluster_nets import DESTINATION_KEYS, burst, relay, relay_consumed
from nets import Engine, Net, Place, Transition, variables
from nets.codec import unpack
from router.wire import Handoff, HandoffAck, Put, decode, encode
from shard.core import ShardCore
from shard.exchange import HandoffRefused
from shard.shard_setup import ShardSetup
from tests.unit.test_shard_core import T0_MS, NoSlots, Unbounded, _fresh


class Hop(NamedTuple):
    key: str
    n: int


class Mark(NamedTuple):
    key: str
    n: int


class Ticket(NamedTuple):
    name: str


def _net() -> Net:
    """Per-key watchers (``hops``), a secondary index (``marks`` matched on ``n``) and
    a place watcher (the pool ``tickets``), with guards that make the order matter."""
    hops = Place("hops", Hop, key="key")
    marks = Place("marks", Mark, key="key")
    tickets = Place("tickets", Ticket, pool=True)
    done = Place("done", Hop, key="key")
    h, k, i, m, t = variables("h k i m t")
    pair = Transition(
        "pair",
        consume=[hops(h, key=k, n=i), marks(m, key=k, n=i)],
        produce=[done.produce(h)],
    )
    ride = Transition(
        "ride",
        consume=[hops(h, key=k), tickets(t)],
        guard=lambda h: h.n % 3 == 0,
        produce=[done.produce(h), tickets.produce(t)],
    )
    return Net("bulk", places=[hops, marks, tickets, done], transitions=[pair, ride])


def _entries(rng: random.Random, place: str, count: int) -> list[tuple[int, Any]]:
    cls = {"hops": Hop, "marks": Mark}.get(place)
    if cls is None:
        return [(rng.randrange(0, 40), Ticket(f"t{rng.randrange(5)}")) for _ in range(count)]
    return [
        (rng.randrange(0, 40), cls(f"k{rng.randrange(6)}", rng.randrange(8))) for _ in range(count)
    ]


def test_bulk_add_checked_agrees_with_adding_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    bulk, single = Engine(_net()), Engine(_net())
    for engine in (bulk, single):
        engine.advance(10)  # some entries are available, some wait in the pending heap
    for _round in range(20):
        place = rng.choice(["hops", "marks", "tickets"])
        entries = _entries(rng, place, rng.randrange(0, 30))
        bulk.add_checked(place, list(entries))
        for time, token in entries:
            single.add(place, token, time=time)
        if rng.random() < 0.3:  # fire between bulk adds, so watchers matter
            now = bulk.now + rng.randrange(0, 5)
            for engine in (bulk, single):
                engine.advance(now)
            assert _fired(bulk, now) == _fired(single, now)
        assert bulk.marking() == single.marking()
    steps_bulk = [(s.transition, s.consumed) for s in bulk.run(until=100)]
    steps_single = [(s.transition, s.consumed) for s in single.run(until=100)]
    assert steps_bulk == steps_single and steps_bulk
    assert bulk.marking() == single.marking()


def _fired(engine: Engine, now: int) -> list[Any]:
    fired = []
    while (step := engine.fire(now)) is not None:
        fired.append((step.transition, step.consumed))
    return fired


# -- decoding a run -------------------------------------------------------------------


def _core(net: Net, shard_id: int) -> ShardCore:
    setup = ShardSetup.of(net, shard_id=shard_id, shard_count=2)
    core = ShardCore(setup, _fresh(), incarnation=1, now_ms=T0_MS, slots=NoSlots())
    core.take_batch()
    core.committed(T0_MS)
    return core


def _handoff_frames(net: Net, bursts: int, size: int) -> list[bytes]:
    """The Handoff frames shard 0 of a relay sends shard 1 for ``bursts`` bursts."""
    sender = _core(net, 0)
    for i in range(bursts):
        put = Put("c", i + 1, "bursts", (tuple(burst(i, size)),), 0)
        sender.handle(T0_MS, decode(encode(put, message_id=1)))
    sender.fire(T0_MS, Unbounded())
    sender.take_batch()
    sender.committed(T0_MS)
    return [send.frame for send in sender.sends(T0_MS) if send.kind == "handoff"]


def test_columns_and_entries_decode_a_run_alike() -> None:
    receiver = _core(relay(), 1)
    exchange = receiver.exchange
    (frame, *_rest) = _handoff_frames(relay(), 3, 200)
    message = decode(frame).message
    assert isinstance(message, Handoff)
    runs, _receipt = exchange.receive(message, 1)
    assert runs and sum(len(run.entries) for run in runs) == sum(r[2] for r in message.runs)
    for run, (lane, first_seq, _count, blob) in zip(runs, message.runs, strict=True):
        one_by_one = exchange._decode_entries(lane, unpack(blob), False, shipment=False)
        assert run.entries == one_by_one
        assert (run.lane, run.first_seq, run.skip, run.payload) == (lane, first_seq, 0, blob)
        assert run.by_place == {"arrived": [(t, token) for _p, t, token in one_by_one]}
        assert all(type(token).__name__ == "Parcel" for _p, _t, token in run.entries)
        # Both paths intern the key (nets.codec.share_key): one string per key value.
        for decoded in (run.entries, one_by_one):
            keys = {token[0]: token[0] for _p, _t, token in decoded}
            assert all(token[0] is keys[token[0]] for _p, _t, token in decoded)


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        (lambda e: [*e[:-1], ("arrived", True, e[-1][2])], "time True is not valid"),
        (lambda e: [*e[:-1], ("arrived", -1, e[-1][2])], "time -1 is not valid"),
        (lambda e: [*e[:-1], ("arrived", 1, [e[-1][2][0], 1, "x"])], "arrived"),
        (lambda e: [*e[:-1], ("arrived", 1, [e[-1][2][0], 1])], "arrived"),
        (lambda e: [*e[:-1], ("nowhere", 1, e[-1][2])], "no place 'nowhere'"),
        (lambda e: [*e[:-1], ("arrived", 1, ["other-key", 1, 2])], "belongs to lane"),
        (lambda e: [*e[:-1], ("arrived", 1)], "is not [place, time, fields]"),
    ],
)
def test_a_run_with_one_bad_entry_is_refused_whole(change: Any, refusal: str) -> None:
    exchange = _core(relay(), 1).exchange
    good = [("arrived", 1, [DESTINATION_KEYS[0], 7, n]) for n in range(50)]
    lane = exchange.slot_of_key(DESTINATION_KEYS[0])
    blob = msgpack.packb(change(good), use_bin_type=True)
    if refusal == "belongs to lane" and exchange.slot_of_key("other-key") == lane:
        pytest.skip("the other key happens to share the lane")
    hwms_before = dict(exchange.inbox.hwms)
    with pytest.raises(HandoffRefused, match=re.escape(refusal)):
        exchange.receive(Handoff(0, exchange.table.epoch, ((lane, 1, 50, blob),)), 1)
    assert exchange.inbox.hwms == hwms_before  # nothing of it applied


def test_a_run_of_mixed_places_is_judged_entry_by_entry_and_an_overlap_skipped() -> None:
    exchange = _core(relay(), 1).exchange
    key = DESTINATION_KEYS[0]
    lane = exchange.slot_of_key(key)
    entries: list[Any] = [("arrived", 1, (key, 1, n)) for n in range(4)]
    entries.insert(2, ("bursts", 1, (key, 1, 9)))  # a burst with its key in this lane
    blob = msgpack.packb(entries, use_bin_type=True)
    (mixed,), _receipt = exchange.receive(
        Handoff(0, exchange.table.epoch, ((lane, 1, 5, blob),)), 1
    )
    assert [e[0] for e in mixed.entries] == ["arrived", "arrived", "bursts", "arrived", "arrived"]
    assert {p: len(timed) for p, timed in mixed.by_place.items()} == {"arrived": 4, "bursts": 1}
    entries = [("arrived", 1, (key, 1, n)) for n in range(4)]
    blob = msgpack.packb(entries, use_bin_type=True)
    runs, receipt = exchange.receive(Handoff(0, exchange.table.epoch, ((lane, 1, 4, blob),)), 1)
    exchange.accept(receipt, 4)
    # The sender goes back: seqs 3..6, of which 3 and 4 were applied already.
    again = [("arrived", 1, (key, 1, n)) for n in range(2, 6)]
    blob = msgpack.packb(again, use_bin_type=True)
    runs, receipt = exchange.receive(Handoff(0, exchange.table.epoch, ((lane, 3, 4, blob),)), 1)
    (run,) = runs
    assert (run.first_seq, run.skip, [e[2][2] for e in run.entries]) == (5, 2, [4, 5])
    assert [token[2] for _t, token in run.by_place["arrived"]] == [4, 5]


# -- handed-off tokens enable transitions -----------------------------------------------


@pytest.mark.parametrize("consumed", [False, True])
def test_handed_off_tokens_are_indexed_and_enable_transitions(consumed: bool) -> None:
    net = relay_consumed() if consumed else relay()
    receiver = _core(net, 1)
    frames = _handoff_frames(net, 4, 300)
    for frame in frames:
        reply = receiver.handle(T0_MS, decode(frame))
        assert isinstance(reply, HandoffAck) and reply.acks
    fired = receiver.fire(T0_MS, Unbounded())
    batch = receiver.take_batch()
    if consumed:
        assert fired == 1_200 and receiver.engine.count("arrived") == 0
        assert batch.firings["absorb"] == 1_200
        assert not +batch.marking  # nothing produced; what came in went within the batch
    else:
        assert fired == 0 and receiver.engine.count("arrived") == 1_200
        available = receiver.engine.available("arrived", 2_000)
        assert len(available) == 1_200 and available == sorted(available)
    assert sum(len(run[3]) for run in batch.received) == 1_200
