"""The router's pure core (:class:`router.control.ControlPlane`), driven without a socket.

Every request goes in as an encoded wire frame at a virtual ``now_ms``, every reply
comes out as one, and every durable change is written to an in-memory store before the
reply is read, as the daemon does with LMDB. Fake shards answer move orders from their
durable slot phases (router.moves.SLOT_TRANSITIONS). The router may be "restarted"
(a new core built from what the store holds) between any two inputs.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.control import (
    HEARTBEAT_TIMEOUT_MS,
    TICK_MS,
    ControlPlane,
    Outcome,
    Recovered,
    RouterWrite,
)
from router.moves import SlotPhase, shipment_digest, slot_step
from router.table import PartitionTable
from router.wire import (
    ClusterState,
    ClusterStatus,
    Error,
    GetTable,
    Heartbeat,
    HeartbeatAck,
    Message,
    MoveOrders,
    MoveReport,
    Ping,
    Pong,
    Put,
    QueryCounts,
    Scale,
    Scaled,
    Shutdown,
    ShuttingDown,
    Statistics,
    Stats,
    Table,
    decode,
    encode,
)

NET = "jobs"
PLACES = {"inbox": 0, "work": 0, "results": 0, "notes": 0}
SHIPMENT = shipment_digest([("inbox", 1, ("a", 1))], {0: 3})
ROUNDS_MAX = 2_000
STEP_MS = 50


class Store:
    """The daemon's LMDB file, in memory: the last write, and how many there were."""

    def __init__(self, shard_count: int) -> None:
        self.table = PartitionTable.initial(shard_count)
        self.endpoints: tuple[str, ...] = ("",) * shard_count
        self.control: bytes | None = None
        self.incarnation = 0
        self.writes = 0

    def write(self, write: RouterWrite) -> None:
        self.table, self.control, self.endpoints = write.table, write.control, write.endpoints
        self.writes += 1

    def start(self, **options: object) -> ControlPlane:
        """A router (re)started on this store: a new core from what it read back."""
        self.incarnation += 1
        recovered = Recovered(self.table, self.endpoints, self.control, self.incarnation)
        return ControlPlane(NET, PLACES, recovered, **options)  # type: ignore[arg-type]


class Router:
    """A core and its store; ``ask`` does what the daemon's loop does for one frame."""

    def __init__(self, shard_count: int, **options: object) -> None:
        self.store = Store(shard_count)
        self.options = options
        self.core = self.store.start(**options)
        self.message_id = 0

    def restart(self) -> None:
        self.core = self.store.start(**self.options)

    def carry_out(self, outcome: Outcome) -> None:
        if outcome.write is not None:
            self.store.write(outcome.write)

    def send(
        self, now_ms: int, frames: Sequence[bytes], *, peer: bytes = b"p"
    ) -> tuple[int, Message]:
        outcome = self.core.receive(now_ms, frames, peer=peer)
        self.carry_out(outcome)  # written before the reply is read
        assert outcome.reply is not None
        envelope = decode(outcome.frame)
        assert type(envelope.message) is type(outcome.reply)  # (lists come back as tuples)
        assert envelope.incarnation == self.store.incarnation
        return envelope.message_id, envelope.message

    def ask(self, now_ms: int, message: Message, *, incarnation: int = 0) -> Message:
        self.message_id += 1
        frame = encode(message, message_id=self.message_id, incarnation=incarnation)
        message_id, reply = self.send(now_ms, [frame])
        assert message_id == self.message_id
        # Nothing a reply says runs ahead of the store: a crash cannot take it back.
        if isinstance(reply, (HeartbeatAck, MoveOrders, Scaled)):
            assert reply.epoch <= self.store.table.epoch
        return reply

    def tick(self, now_ms: int) -> None:
        outcome = self.core.tick(now_ms)
        assert outcome.reply is None and outcome.frame == b""
        self.carry_out(outcome)


class FakeShards:
    """Shards that answer orders from their durable slot phases, and heartbeat."""

    def __init__(self, table: PartitionTable) -> None:
        self.phases: dict[tuple[int, int], SlotPhase] = {
            (owner, slot): SlotPhase.OWNED for slot, owner in enumerate(table.owners)
        }
        self.pending: dict[int, list[tuple[int, str, int, bytes]]] = {}
        self.epochs: Counter[int] = Counter()

    def take(self, shard: int, orders: MoveOrders) -> None:
        self.epochs[shard] = max(self.epochs[shard], orders.epoch)
        for move_id, kind, slot, _source, _target, _count, _digest, _epoch in orders.orders:
            phase = self.phases.get((shard, slot), SlotPhase.ABSENT)
            if phase is SlotPhase.ACTIVE and kind == "seal":
                phase = SlotPhase.OWNED  # an active slot is an owned one, moving on again
            phase, event = slot_step(phase, kind)
            self.phases[(shard, slot)] = phase
            count, digest = SHIPMENT if event.value in ("sealed", "staged") else (-1, b"")
            self.pending.setdefault(shard, []).append((move_id, event.value, count, digest))

    def round(self, router: Router, shard: int, now_ms: int) -> None:
        endpoint = f"tcp://127.0.0.1:{7000 + shard}"
        beat = Heartbeat(shard, endpoint, self.epochs[shard], {"fired": now_ms})
        assert isinstance(router.ask(now_ms, beat, incarnation=1), HeartbeatAck)
        answers = tuple(self.pending.pop(shard, []))
        report = MoveReport(shard, self.epochs[shard], answers, 0, 0, (), {})
        orders = router.ask(now_ms, report, incarnation=1)
        assert isinstance(orders, MoveOrders), orders
        self.take(shard, orders)


def _spread(table: PartitionTable, shard_count: int) -> bool:
    counts = Counter(table.owners)
    return sorted(counts) == list(range(shard_count)) and (
        max(counts.values()) - min(counts.values()) <= 1
    )


@pytest.mark.parametrize("restart_p", [0.0, 0.05], ids=["steady", "router-restarts"])
def test_a_scale_out_is_coordinated_to_completion_through_frames_alone(
    seed: int, restart_p: float
) -> None:
    rng = random.Random(seed)
    router = Router(2)
    shards = FakeShards(router.store.table)
    now_ms = 0
    for shard in (0, 1):
        shards.round(router, shard, now_ms)
    table = router.ask(now_ms, GetTable())
    assert isinstance(table, Table)
    assert table.endpoints == ("tcp://127.0.0.1:7000", "tcp://127.0.0.1:7001")
    assert router.store.endpoints == table.endpoints  # written before the reply
    scaled = router.ask(now_ms, Scale(3))
    assert scaled == Scaled(3, router.store.table.epoch)
    assert router.store.table.shard_count == 3  # the new shard joins owning nothing
    for _ in range(ROUNDS_MAX):
        now_ms += STEP_MS
        for shard in (0, 1, 2):
            shards.round(router, shard, now_ms)
        if now_ms >= router.core.next_deadline_ms():
            router.tick(now_ms)
        if rng.random() < restart_p:
            router.restart()
        if not router.core.coordinator.moves and _spread(router.store.table, 3):
            break
    else:
        pytest.fail(f"seed {seed}: the scale-out did not finish in {ROUNDS_MAX} rounds")
    router.restart()  # what a restart sees: the finished scale
    assert _spread(router.core.table, 3), f"seed {seed}"
    assert router.core.coordinator.counters["moves_done"] == Counter(router.core.table.owners)[2]
    stats = router.ask(now_ms, Stats())
    assert isinstance(stats, Statistics)
    assert stats.values["moves_active"] == ()


def test_each_served_request_gets_its_reply_and_the_rest_an_error_code() -> None:
    router = Router(2)
    beat = Heartbeat(0, "tcp://127.0.0.1:7000", 1, {"fired": 1})
    assert router.ask(5, beat, incarnation=1) == HeartbeatAck(1)
    assert router.ask(5, Ping()) == Pong(5)  # the core's clock: no clock read here
    status = router.ask(5 + HEARTBEAT_TIMEOUT_MS - 1, ClusterStatus())
    assert isinstance(status, ClusterState)
    assert [s["alive"] for s in status.shards] == [True, False]
    for message, code in [
        (Put("client", 1, "inbox", ()), "not_served"),
        (QueryCounts(), "not_served"),
        (Pong(1), "not_a_request"),
        (HeartbeatAck(1), "not_a_request"),
    ]:
        reply = router.ask(6, message)
        assert isinstance(reply, Error) and reply.code == code, message
    assert router.ask(6, Shutdown()) == ShuttingDown()
    assert router.core.stopping


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([b"\xc1garbage"], "malformed_frame"),
        ([], "malformed_frame"),
        ([b"a", b"b"], "malformed_frame"),
        ([encode(Pong(5), message_id=3)], "not_a_request"),
        ([encode(Heartbeat(9, "tcp://127.0.0.1:1", 1, {}), message_id=3)], "bad_shard_id"),
        ([encode(Heartbeat(0, "udp://x", 1, {}), message_id=3)], "bad_request"),
        ([encode(Heartbeat(0, "tcp://127.0.0.1:1", 1, {}, "c"), message_id=3)], "wrong_cluster"),
        ([encode(Scale(0), message_id=3)], "bad_request"),
    ],
    ids=[
        "garbage",
        "no-frame",
        "two-frames",
        "reply",
        "shard-id",
        "endpoint",
        "cluster",
        "scale-0",
    ],
)
def test_bad_input_gets_an_error_reply_and_is_counted(frames: list[bytes], code: str) -> None:
    router = Router(2)
    _message_id, reply = router.send(0, frames)
    assert isinstance(reply, Error) and reply.code == code, reply
    assert router.store.writes == 0
    counters = router.core.counters
    assert counters["frames_malformed" if code == "malformed_frame" else f"errors_{code}"] == 1


def test_an_older_incarnation_is_not_believed_once_a_newer_spoke() -> None:
    router = Router(2)
    beat = Heartbeat(0, "tcp://127.0.0.1:7000", 1, {})
    assert router.ask(0, beat, incarnation=1) == HeartbeatAck(1)
    # A restarted shard gets its slots back at a new epoch (fenced), written first.
    assert router.ask(1, beat, incarnation=2) == HeartbeatAck(2)
    assert router.store.table.epoch == 2
    reply = router.ask(2, beat, incarnation=1)
    assert isinstance(reply, Error) and reply.code == "stale_incarnation"


def test_a_new_endpoint_is_written_before_the_heartbeat_is_acknowledged() -> None:
    router = Router(2)
    router.ask(0, Heartbeat(1, "tcp://127.0.0.1:7001", 1, {}), incarnation=1)
    assert router.store.endpoints == ("", "tcp://127.0.0.1:7001")
    writes = router.store.writes
    router.ask(1, Heartbeat(1, "tcp://127.0.0.1:7001", 1, {}), incarnation=1)
    assert router.store.writes == writes  # nothing durable changed
    router.restart()
    table = router.ask(2, GetTable())
    assert isinstance(table, Table) and table.endpoints == ("", "tcp://127.0.0.1:7001")


def test_a_failed_write_is_answered_with_an_error_and_written_again_next_time() -> None:
    router = Router(2)
    frame = encode(Heartbeat(0, "tcp://127.0.0.1:7000", 1, {}), message_id=4, incarnation=1)
    outcome = router.core.receive(0, [frame])
    assert outcome.write is not None
    failed = router.core.write_failed("disk full")
    assert isinstance(failed.reply, Error) and failed.reply.code == "internal"
    assert decode(failed.frame).message_id == 4
    again = router.core.tick(1)  # the next input carries the whole state again
    assert again.write is not None and again.write.endpoints[0] == "tcp://127.0.0.1:7000"
    assert router.core.tick(2).write is None


def test_a_crashed_handler_is_answered_with_the_request_id() -> None:
    router = Router(2)
    router.core.receive(0, [encode(Ping(), message_id=8)])
    outcome = router.core.crashed(RuntimeError("boom"))
    assert outcome.reply == Error("internal", "RuntimeError: boom")
    assert decode(outcome.frame).message_id == 8
    assert router.core.counters["errors_internal"] == 1


def test_rate_limits_refuse_a_flooding_peer_before_decoding() -> None:
    router = Router(2, rate_limit=(1, 2))
    replies = [router.send(0, [b"garbage"], peer=b"flood")[1] for _ in range(3)]
    assert [getattr(r, "code", "") for r in replies] == [
        "malformed_frame",
        "malformed_frame",
        "rate_limited",
    ]
    assert isinstance(router.send(0, [encode(Ping(), message_id=1)], peer=b"calm")[1], Pong)
    assert isinstance(router.send(1_000, [encode(Ping(), message_id=1)], peer=b"flood")[1], Pong)
    assert router.core.counters["requests_rate_limited"] == 1


def test_the_next_deadline_follows_the_ticks() -> None:
    router = Router(2)
    assert router.core.next_deadline_ms() == 0  # never ticked: due at once
    router.tick(1_000)
    assert router.core.next_deadline_ms() == 1_000 + TICK_MS


def test_a_shard_silent_for_the_timeout_is_dead_and_no_move_is_planned() -> None:
    router = Router(2)
    router.ask(0, Scale(3))
    for shard in (0, 1, 2):
        router.ask(0, Heartbeat(shard, f"tcp://127.0.0.1:{7000 + shard}", 1, {}), incarnation=1)
    router.tick(HEARTBEAT_TIMEOUT_MS)  # every heartbeat timed out: nothing is planned
    assert not router.core.coordinator.moves
    router.ask(HEARTBEAT_TIMEOUT_MS, Heartbeat(0, "tcp://127.0.0.1:7000", 1, {}), incarnation=1)
    router.ask(HEARTBEAT_TIMEOUT_MS, Heartbeat(1, "tcp://127.0.0.1:7001", 1, {}), incarnation=1)
    router.ask(HEARTBEAT_TIMEOUT_MS, Heartbeat(2, "tcp://127.0.0.1:7002", 1, {}), incarnation=1)
    router.tick(HEARTBEAT_TIMEOUT_MS + 1)
    assert router.core.coordinator.moves
    assert router.store.control is not None  # the planned moves were written


@given(frames=st.lists(st.binary(max_size=64), max_size=3), now_ms=st.integers(0, 2**40))
@settings(max_examples=300)
def test_garbage_is_answered_never_raised(frames: list[bytes], now_ms: int) -> None:
    router = Router(2)
    outcome = router.core.receive(now_ms, frames)  # raises nothing
    assert outcome.reply is not None
    assert type(decode(outcome.frame).message) is type(outcome.reply)
    if isinstance(outcome.reply, Error):  # (random bytes may, rarely, be a request)
        assert outcome.write is None
