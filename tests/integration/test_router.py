"""`cpn router` as a real process: its table, heartbeats, status, bad input and its data dir.

Every router is a real ``cpn router`` process (started with
:func:`cluster.processes.start_router`) on a data directory under ``tmp_path``, bound to
port 0 on loopback. Shards are faked: a bare DEALER socket that sends ``Heartbeat``
frames as a shard's loop would. The fixture kills every process it started by pid and
destroys every ZeroMQ socket, even when a test fails; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import pytest
import zmq

from cluster.client import ShardClient
from cluster.processes import ShardProcess, run_cpn, start_router, wait_for
from nets.model import Net, Place
from router.control import places_of
from router.shell.datadir import ENDPOINT_FILE
from router.table import PartitionTable
from router.wire import (
    PLACE_FIXED,
    PLACE_POOL,
    PROTOCOL_VERSION,
    ClusterState,
    ClusterStatus,
    Envelope,
    Error,
    GetTable,
    Heartbeat,
    HeartbeatAck,
    Message,
    Ping,
    Pong,
    Put,
    QueryCounts,
    Shutdown,
    ShuttingDown,
    Statistics,
    Stats,
    Table,
    decode,
    encode,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
JOBS = "tests.nets_for_tests:jobs"
JOB_PLACES = {"inbox": 0, "work": 0, "results": 0, "notes": 0}
REPLY_TIMEOUT_MS = 10_000
WAIT_TIMEOUT_S = 15.0
CLI_TIMEOUT_S = 60.0
FAKE_ENDPOINT = "tcp://127.0.0.1:1"  # reported by fake shards; nothing connects to it


def _env() -> dict[str, str]:
    """PYTHONPATH for a subprocess that imports ``tests.nets_for_tests``."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.getenv("PYTHONPATH")]))}


class FakeShard:
    """A DEALER socket that talks to the router as a shard of some incarnation would."""

    def __init__(self, context: zmq.Context[Any], endpoint: str, *, incarnation: int) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.incarnation = incarnation
        self.message_id = 0

    def send_frames(self, *frames: bytes) -> None:
        self.socket.send_multipart(list(frames))

    def reply(self) -> Envelope:
        assert self.socket.poll(REPLY_TIMEOUT_MS, zmq.POLLIN), "no reply from the router"
        return decode(self.socket.recv())

    def ask(self, message: Message) -> Message:
        self.message_id += 1
        self.send_frames(encode(message, message_id=self.message_id, incarnation=self.incarnation))
        envelope = self.reply()
        assert envelope.message_id == self.message_id
        return envelope.message

    def beat(self, shard_id: int, progress: dict[str, int], *, epoch: int = 1) -> Message:
        return self.ask(Heartbeat(shard_id, FAKE_ENDPOINT, epoch, progress))


class Routers:
    """Starts routers and fake shards for one test; :meth:`close` stops them all by pid."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.context: zmq.Context[Any] = zmq.Context()
        # Undone in reverse order by close(), each even if an earlier one fails.
        self.cleanup = contextlib.ExitStack()
        self.cleanup.callback(self.context.destroy, linger=0)

    def start(
        self, *, shards: int = 2, net: str = JOBS, extra_args: tuple[str, ...] = ()
    ) -> ShardProcess:
        handle = start_router(
            net, self.tmp_path / "router", shards=shards, extra_args=extra_args, env=_env()
        )
        self.cleanup.callback(handle.kill)  # SIGKILL by pid if still running; reaps it
        return handle

    def fake_shard(self, handle: ShardProcess, *, incarnation: int = 1) -> FakeShard:
        fake = FakeShard(self.context, handle.endpoint, incarnation=incarnation)
        self.cleanup.callback(fake.socket.close, linger=0)
        return fake

    def client(self, handle: ShardProcess) -> ShardClient:
        client = ShardClient(
            handle.endpoint, timeout_ms=REPLY_TIMEOUT_MS, retries=0, context=self.context
        )
        self.cleanup.callback(client.close)
        return client

    def close(self) -> None:
        self.cleanup.close()


@pytest.fixture
def routers(tmp_path: Path) -> Iterator[Routers]:
    launcher = Routers(tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


def _cpn_router(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `cpn router` to completion (for the starts that must fail)."""
    return run_cpn("router", *args, env=_env(), timeout_s=CLI_TIMEOUT_S)


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    return lines[0]


def _shards(client: ShardClient) -> tuple[dict[str, Any], ...]:
    return client.request(ClusterStatus(), ClusterState).shards


# -- the table ----------------------------------------------------------------------------


def test_the_table_is_the_initial_one_and_survives_a_restart(routers: Routers) -> None:
    handle = routers.start(shards=3)
    client = routers.client(handle)
    table = client.request(GetTable(), Table)
    initial = PartitionTable.initial(3)
    assert (table.net, table.epoch, table.shard_count) == ("test_jobs", 1, 3)
    assert (table.owners, table.slot_epochs) == (initial.owners, initial.slot_epochs)
    assert table.endpoints == ("", "", "")
    assert table.places == JOB_PLACES
    fake = routers.fake_shard(handle)
    assert fake.beat(2, {"loops": 1}) == HeartbeatAck(1)
    incarnation = client.request(Stats(), Statistics).values["incarnation"]

    assert handle.terminate() == 0
    assert not (handle.data_dir / ENDPOINT_FILE).exists()
    restarted = routers.start(shards=3)
    client = routers.client(restarted)
    again = client.request(GetTable(), Table)
    assert again == Table("test_jobs", 1, 3, table.owners, table.slot_epochs,
                          ("", "", FAKE_ENDPOINT), JOB_PLACES)  # fmt: skip
    assert client.request(Stats(), Statistics).values["incarnation"] == incarnation + 1
    assert client.last_incarnation == incarnation + 1, "replies carry the router's incarnation"
    # The endpoint is remembered, but liveness is not: no heartbeat since the restart.
    assert _shards(client)[2]["alive"] is False


def test_places_are_described_by_key_index_fixed_or_pool() -> None:
    class Item(NamedTuple):
        name: str
        owner: str

    net = Net(
        "mixed",
        places=[
            Place("by_owner", Item, key="owner"),
            Place("shared", Item, pool=True),
            Place("single", Item),
        ],
        transitions=[],
    )
    assert places_of(net) == {"by_owner": 1, "shared": PLACE_POOL, "single": PLACE_FIXED}


# -- heartbeats and status ----------------------------------------------------------------


def test_a_heartbeat_is_recorded_and_shows_in_the_cluster_status(routers: Routers) -> None:
    handle = routers.start(shards=2)
    client = routers.client(handle)
    never = _shards(client)
    assert [s["alive"] for s in never] == [False, False]
    assert [s["last_seen_ms_ago"] for s in never] == [-1, -1]

    # Incarnation 4 has restarted before: the router fences it (its slots at epoch 2).
    fake = routers.fake_shard(handle, incarnation=4)
    assert fake.beat(1, {"loops": 10, "firings": 3}, epoch=1) == HeartbeatAck(2)
    state = client.request(ClusterStatus(), ClusterState)
    assert (state.net, state.epoch) == ("test_jobs", 2)
    shard = state.shards[1]
    assert shard["endpoint"] == FAKE_ENDPOINT
    assert shard["incarnation"] == 4
    assert shard["alive"] is True
    assert shard["progressing"] is True
    assert 0 <= shard["last_seen_ms_ago"] < 3_000
    assert shard["epoch"] == 1
    assert shard["progress"] == {"loops": 10, "firings": 3}
    assert state.shards[0]["alive"] is False
    assert client.request(GetTable(), Table).endpoints == ("", FAKE_ENDPOINT)

    # An older incarnation of the same shard is not believed; a newer one is.
    old = routers.fake_shard(handle, incarnation=3)
    refused = old.beat(1, {"loops": 11}, epoch=1)
    assert isinstance(refused, Error) and refused.code == "stale_incarnation", refused
    assert _shards(client)[1]["incarnation"] == 4
    newer = routers.fake_shard(handle, incarnation=5)
    assert newer.beat(1, {"loops": 1}) == HeartbeatAck(3)  # fenced again
    assert _shards(client)[1]["incarnation"] == 5
    table = client.request(GetTable(), Table)
    assert [table.slot_epochs[s] for s in (0, 1)] == [1, 3], "only shard 1's slots moved on"


def test_a_silent_shard_turns_dead_and_a_stuck_one_not_progressing(routers: Routers) -> None:
    handle = routers.start(shards=2, extra_args=("--heartbeat-timeout", "400ms"))
    client = routers.client(handle)
    fake = routers.fake_shard(handle)
    fake.beat(0, {"loops": 1})
    fake.beat(1, {"loops": 1})

    def beat_then_status() -> tuple[dict[str, Any], ...]:
        # Shard 0 keeps beating with the same counters (alive, stuck); shard 1 is silent.
        fake.beat(0, {"loops": 1})
        return _shards(client)

    shards = wait_for(
        beat_then_status,
        lambda s: not s[0]["progressing"] and not s[1]["alive"],
        what="shard 0 to be stuck and shard 1 dead",
        timeout_s=WAIT_TIMEOUT_S,
    )
    assert shards[0]["alive"] is True
    assert shards[1]["last_seen_ms_ago"] >= 400
    fake.beat(0, {"loops": 2})
    assert _shards(client)[0]["progressing"] is True


# -- bad input ----------------------------------------------------------------------------


BAD_FRAMES = {
    "garbage": ((b"\xc1garbage",), "malformed_frame"),
    "empty": ((b"",), "malformed_frame"),
    "unknown-type": ((msgpack.packb([PROTOCOL_VERSION, 250, 1, 0, []]),), "malformed_frame"),
    "missing-fields": (
        (msgpack.packb([PROTOCOL_VERSION, Heartbeat.TYPE, 1, 0, [0, "x"]]),),
        "malformed_frame",
    ),
    "two-frames": ((b"one", b"two"), "malformed_frame"),
    "shard-id-too-big": (
        (encode(Heartbeat(7, FAKE_ENDPOINT, 1, {}), message_id=1),),
        "bad_shard_id",
    ),
    "shard-id-negative": (
        (encode(Heartbeat(-1, FAKE_ENDPOINT, 1, {}), message_id=1),),
        "bad_shard_id",
    ),
    "bad-endpoint": ((encode(Heartbeat(0, "nonsense", 1, {}), message_id=1),), "bad_request"),
    "put": ((encode(Put("c", 1, "notes", (("q", "j", 1),), 0), message_id=1),), "not_served"),
    "query-counts": ((encode(QueryCounts(), message_id=1),), "not_served"),
    "reply-as-request": ((encode(Pong(5), message_id=1),), "not_a_request"),
}


def test_bad_frames_get_an_error_each_and_the_router_stays_up(routers: Routers) -> None:
    handle = routers.start(shards=2)
    fake = routers.fake_shard(handle)
    client = routers.client(handle)
    expected: Counter[str] = Counter()
    for kind, (frames, code) in BAD_FRAMES.items():
        fake.send_frames(*frames)
        reply = fake.reply().message
        assert isinstance(reply, Error), (kind, reply)
        assert reply.code == code, (kind, reply)
        assert reply.message, f"the error for {kind} says what is wrong"
        assert isinstance(fake.ask(Ping()), Pong), f"the connection is still served after {kind}"
        expected["frames_malformed" if code == "malformed_frame" else f"errors_{code}"] += 1
    counters = client.request(Stats(), Statistics).values["counters"]
    assert {name: counters.get(name) for name in expected} == dict(expected), counters
    assert [s["alive"] for s in _shards(client)] == [False, False], "nothing was recorded"
    assert handle.alive()


def test_a_req_socket_is_answered_and_shutdown_by_request_exits_0(routers: Routers) -> None:
    handle = routers.start()
    req = routers.context.socket(zmq.REQ)  # sends an empty delimiter frame first
    routers.cleanup.callback(req.close, linger=0)
    req.connect(handle.endpoint)
    req.send(encode(Ping(), message_id=3))
    assert req.poll(REPLY_TIMEOUT_MS, zmq.POLLIN), "no reply to a REQ socket"
    assert isinstance(decode(req.recv()).message, Pong)
    assert routers.fake_shard(handle).ask(Shutdown()) == ShuttingDown()
    assert handle.process.wait(timeout=WAIT_TIMEOUT_S) == 0
    assert not (handle.data_dir / ENDPOINT_FILE).exists()


# -- the data directory -------------------------------------------------------------------


def test_a_data_dir_of_another_net_or_shard_count_is_refused(routers: Routers) -> None:
    handle = routers.start(shards=2)
    data = str(handle.data_dir)
    other_net = _cpn_router(
        "--net", "tests.nets_for_tests:circulation", "--data", data, "--shards", "2"
    )
    assert other_net.returncode == 2
    line = _one_line(other_net.stderr)
    assert "in use" in line and str(handle.pid) in line, "the running router holds the lock"

    assert handle.terminate() == 0
    other_net = _cpn_router(
        "--net", "tests.nets_for_tests:circulation", "--data", data, "--shards", "2"
    )
    assert other_net.returncode == 2
    line = _one_line(other_net.stderr)
    assert "'test_jobs'" in line and "'test_circulation'" in line, line
    assert "--data" in line, "the message says how to fix it"

    other_count = _cpn_router("--net", JOBS, "--data", data, "--shards", "3")
    assert other_count.returncode == 2
    line = _one_line(other_count.stderr)
    assert "2 shards, not 3" in line and "--shards 2" in line, line

    # Refused starts changed nothing: the router still starts with the right arguments.
    routers.start(shards=2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--bind", "tcp://0.0.0.0:0"), "--allow-remote"),
        (("--bind", "ipc:///tmp/router"), "must look like tcp://127.0.0.1:PORT"),
        (("--net", "tests.nets_for_tests:no_such_net"), "has no attribute 'no_such_net'"),
    ],
    ids=["not-loopback", "not-tcp", "net-does-not-load"],
)
def test_a_bad_start_exits_2_with_one_line(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    defaults = {"--net": JOBS, "--data": str(tmp_path / "router"), "--shards": "2"}
    given = dict(zip(args[::2], args[1::2], strict=True))
    result = _cpn_router(*(item for pair in {**defaults, **given}.items() for item in pair))
    assert result.returncode == 2
    assert message in _one_line(result.stderr)


def test_a_port_in_use_exits_2_with_one_line(routers: Routers, tmp_path: Path) -> None:
    handle = routers.start()
    result = _cpn_router(
        "--net", JOBS, "--data", str(tmp_path / "second"), "--shards", "2", "--bind",
        handle.endpoint,
    )  # fmt: skip
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert "cannot bind" in line and "in use" in line, line
