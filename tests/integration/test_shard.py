"""`cpn shard` as real processes: the wire, the LMDB store, leases, errors and restarts.

Every shard is a real ``cpn shard`` process (started with :func:`cluster.processes.start_shard`)
on a data directory under ``tmp_path``, bound to port 0 on loopback; the fixtures kill
every process they started by pid and destroy every ZeroMQ socket, even when a test
fails. Waiting is always for a condition, by bounded polling (:func:`wait_until`).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest
import zmq

from cluster.client import ShardClient, ShardError
from cluster.processes import ShardProcess, start_shard
from router.shell.datadir import ENDPOINT_FILE
from router.wire import (
    FRAME_BYTES_MAX,
    PROTOCOL_VERSION,
    Complete,
    Completed,
    Envelope,
    Error,
    Lease,
    Leased,
    Ping,
    Pong,
    Put,
    PutAck,
    decode,
    encode,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
JOBS = "tests.nets_for_tests:jobs"
JOB_PLACES = ("inbox", "work", "results", "notes", "work__held", "work__timer")
REPLY_TIMEOUT_MS = 10_000
WAIT_TIMEOUT_S = 15.0
CLI_TIMEOUT_S = 60.0

T = TypeVar("T")


def _env() -> dict[str, str]:
    """The environment a `cpn shard` subprocess needs to import ``tests.nets_for_tests``."""
    parts = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in parts if p)}


def wait_until(
    probe: Callable[[], T],
    condition: Callable[[T], bool],
    *,
    what: str,
    timeout_s: float = WAIT_TIMEOUT_S,
    interval_s: float = 0.02,
) -> T:
    """Poll ``probe`` until ``condition`` holds on its value; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    value = probe()
    while not condition(value):
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}; last value: {value!r}")
        time.sleep(interval_s)
        value = probe()
    return value


class RawPeer:
    """A bare DEALER socket: sends exactly the bytes given, reads whatever comes back."""

    def __init__(self, context: zmq.Context[Any], endpoint: str) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def send(self, *frames: bytes) -> None:
        self.socket.send_multipart(list(frames))

    def receive(self, timeout_ms: int = REPLY_TIMEOUT_MS) -> Envelope | None:
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            return None
        return decode(self.socket.recv())

    def close(self) -> None:
        self.socket.close(linger=0)


class Shards:
    """Starts shards and ZeroMQ peers for one test; :meth:`close` stops them all by pid."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.context: zmq.Context[Any] = zmq.Context()
        self.processes: list[ShardProcess] = []
        self.clients: list[ShardClient] = []
        self.peers: list[RawPeer] = []

    def start(
        self,
        name: str = "shard",
        *,
        net: str = JOBS,
        durability: str = "process",
        extra_args: tuple[str, ...] = (),
    ) -> ShardProcess:
        handle = start_shard(
            net, self.tmp_path / name, durability=durability, extra_args=extra_args, env=_env()
        )
        self.processes.append(handle)
        return handle

    def client(self, handle: ShardProcess, *, client_id: str | None = None) -> ShardClient:
        client = ShardClient(
            handle.endpoint,
            client_id=client_id,
            timeout_ms=REPLY_TIMEOUT_MS,
            retries=1,
            context=self.context,
        )
        self.clients.append(client)
        return client

    def peer(self, handle: ShardProcess) -> RawPeer:
        peer = RawPeer(self.context, handle.endpoint)
        self.peers.append(peer)
        return peer

    def close(self) -> None:
        try:
            for handle in self.processes:
                handle.kill()  # SIGKILL by pid if still running; reaps it either way
        finally:
            for client in self.clients:
                client.close()
            for peer in self.peers:
                peer.close()
            self.context.destroy(linger=0)  # closes every socket still open


@pytest.fixture
def shards(tmp_path: Path) -> Iterator[Shards]:
    launcher = Shards(tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


def _cpn_shard(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `cpn shard` to completion (for the starts that must fail)."""
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", "shard", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env={**os.environ, **_env()},
        check=False,
    )


def _job(n: int, queue: str = "q") -> tuple[str, str, int]:
    return (queue, f"job{n:05d}", n)


def _marking(client: ShardClient) -> dict[str, list[tuple[int, tuple[Any, ...]]]]:
    return {place: client.all_tokens(place) for place in JOB_PLACES}


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    return lines[0]


# -- put and query ------------------------------------------------------------------------


def test_put_then_counts_and_paged_tokens(shards: Shards) -> None:
    client = shards.client(shards.start())
    assert client.counts() == dict.fromkeys(JOB_PLACES, 0)
    tokens = [_job(n, queue=f"q{n % 3}") for n in range(25)]
    ack = client.put("notes", tokens)
    assert ack == PutAck(request_seq=1, accepted=25, duplicate=False)
    assert client.counts()["notes"] == 25

    pages = [client.tokens("notes", offset=offset, limit=10) for offset in (0, 10, 20, 30)]
    assert [len(p.entries) for p in pages] == [10, 10, 5, 0]
    assert {p.total for p in pages} == {25}
    paged = [entry for p in pages for entry in p.entries]
    assert paged == sorted(paged), "pages come in marking order"
    assert sorted(fields for _t, fields in paged) == sorted(tokens)
    assert client.all_tokens("notes", page=7) == paged


def test_put_into_inbox_is_dispatched_to_the_work_queue(shards: Shards) -> None:
    client = shards.client(shards.start())
    client.put("inbox", [_job(n) for n in range(5)])
    counts = wait_until(
        client.counts, lambda c: c["work"] == 5, what="dispatch to move 5 jobs into work"
    )
    assert counts["inbox"] == 0
    assert sorted(f for _t, f in client.all_tokens("work")) == [_job(n) for n in range(5)]
    assert client.stats()["firings"]["dispatch"] == 5


def test_a_resent_put_frame_is_applied_once(shards: Shards) -> None:
    handle = shards.start()
    frame = encode(Put("resender", 1, "notes", (_job(1), _job(2)), 0), message_id=11)
    peer = shards.peer(handle)
    peer.send(frame)
    first = peer.receive()
    peer.send(frame)
    second = peer.receive()
    # A new connection (another ZeroMQ identity) with the same request is still a repeat:
    # deduplication is by (client_id, request_seq), not by socket.
    other = shards.peer(handle)
    other.send(frame)
    third = other.receive()
    assert first is not None and second is not None and third is not None
    assert first.message == PutAck(1, 2, False)
    assert second.message == PutAck(1, 2, True)
    assert third.message == PutAck(1, 2, True)
    assert first.message_id == second.message_id == third.message_id == 11
    client = shards.client(handle)
    assert sorted(f for _t, f in client.all_tokens("notes")) == [_job(1), _job(2)]


def test_a_request_older_than_the_last_one_is_stale(shards: Shards) -> None:
    handle = shards.start()
    peer = shards.peer(handle)
    older = encode(Put("stale", 1, "notes", (_job(1),), 0), message_id=1)
    newer = encode(Put("stale", 2, "notes", (_job(2),), 0), message_id=2)
    for frame in (older, newer, older):
        peer.send(frame)
    replies = [peer.receive() for _ in range(3)]
    assert [r.message_id if r else None for r in replies] == [1, 2, 1]
    assert replies[0] is not None and replies[0].message == PutAck(1, 1, False)
    assert replies[1] is not None and replies[1].message == PutAck(2, 1, False)
    assert replies[2] is not None and isinstance(replies[2].message, Error)
    assert replies[2].message.code == "stale_request"
    client = shards.client(handle)
    assert sorted(f for _t, f in client.all_tokens("notes")) == [_job(1), _job(2)]


def test_the_same_put_twice_in_one_burst_is_applied_once(shards: Shards) -> None:
    handle = shards.start()
    frame = encode(Put("burst", 7, "notes", (_job(9),), 0), message_id=3)
    peer = shards.peer(handle)
    peer.send(frame)
    peer.send(frame)  # likely in the same batch as the first
    replies = [peer.receive(), peer.receive()]
    assert all(r is not None for r in replies)
    assert sorted(r.message.duplicate for r in replies if r is not None) == [False, True]
    assert shards.client(handle).counts()["notes"] == 1


# -- leases -------------------------------------------------------------------------------


def test_lease_then_complete_swaps_held_tokens_for_results(shards: Shards) -> None:
    handle = shards.start()
    client = shards.client(handle)
    client.put("work", [_job(n) for n in range(5)])
    leased = client.lease("work", max_tokens=3, lease_ms=60_000)
    assert len(leased.entries) == 3
    taken = [fields for _t, fields in leased.entries]
    assert taken == [_job(n) for n in range(3)], "leases take the queue's first tokens"
    counts = client.counts()
    assert (counts["work"], counts["work__held"], counts["work__timer"]) == (2, 3, 3)

    results = tuple(("results", (q, job_id, n * 10)) for q, job_id, n in taken)
    request = Complete(client.client_id, 1_000, leased.lease_id, results)
    done = client.request(request, Completed)
    assert done == Completed(1_000, leased.lease_id, False)
    assert sorted(f for _t, f in client.all_tokens("results")) == sorted(r for _p, r in results)
    assert client.all_tokens("work__held") == []
    assert sorted(f for _t, f in client.all_tokens("work")) == [_job(3), _job(4)]

    again = client.request(request, Completed)  # the same request: answered, not reapplied
    assert again == Completed(1_000, leased.lease_id, True)
    assert len(client.all_tokens("results")) == 3
    assert client.counts()["work"] == 2
    assert client.stats()["counters"]["leases_completed"] == 1


def test_a_rejected_completion_leaves_the_lease_intact(shards: Shards) -> None:
    client = shards.client(shards.start())
    client.put("work", [_job(1)])
    leased = client.lease("work", max_tokens=1, lease_ms=60_000)
    with pytest.raises(ShardError) as raised:
        client.complete(leased.lease_id, [("results", ("q", "job00001", "not an int"))])
    assert raised.value.code == "wrong_colour"
    with pytest.raises(ShardError) as raised:
        client.complete(leased.lease_id, [("nowhere", ("q", "job00001", 1))])
    assert raised.value.code == "unknown_place"
    assert client.counts()["work__held"] == 1
    client.complete(leased.lease_id, [("results", ("q", "job00001", 2))])
    assert [f for _t, f in client.all_tokens("results")] == [("q", "job00001", 2)]
    assert client.counts()["work__held"] == 0


def test_an_expired_lease_returns_its_tokens_and_cannot_be_completed(shards: Shards) -> None:
    client = shards.client(shards.start())
    jobs = [_job(n) for n in range(4)]
    client.put("work", jobs)
    leased = client.lease("work", max_tokens=10, lease_ms=300)
    assert sorted(f for _t, f in leased.entries) == jobs
    counts = wait_until(
        client.counts,
        lambda c: c["work"] == 4 and c["work__held"] == 0 and c["work__timer"] == 0,
        what="the 300 ms lease to expire and its tokens to return",
    )
    assert counts["results"] == 0
    assert sorted(f for _t, f in client.all_tokens("work")) == jobs
    with pytest.raises(ShardError) as raised:
        client.complete(leased.lease_id, [("results", ("q", "job00000", 1))])
    assert raised.value.code == "lease_expired"
    assert client.counts()["results"] == 0
    stats = client.stats()
    assert stats["firings"]["work__lease_expired"] == 4
    # The returned work can be leased again.
    assert len(client.lease("work", max_tokens=10, lease_ms=60_000).entries) == 4


def test_a_lease_lasts_its_lease_time_on_an_idle_shard(shards: Shards) -> None:
    """A lease granted by a shard that has been idle still runs for ``lease_ms``.

    The shard waits up to IDLE_WAKE_MS between wake-ups; a request must be timed from
    the clock when it is applied, not from the shard's last wake-up (a 500 ms lease
    once expired before its reply was sent).
    """
    client = shards.client(shards.start())
    client.put("work", [_job(1)])
    # Let the shard sit idle (its poll waits up to IDLE_WAKE_MS = 1 s) before leasing.
    time.sleep(0.8)
    sent_ms = time.time_ns() // 1_000_000  # the shard's clock is the same system clock
    leased = client.lease("work", max_tokens=1, lease_ms=500)
    assert len(leased.entries) == 1
    assert leased.expires_at_ms >= sent_ms + 500, (
        f"a 500 ms lease requested at {sent_ms} expires at {leased.expires_at_ms}, "
        f"{sent_ms + 500 - leased.expires_at_ms} ms early"
    )
    client.complete(leased.lease_id, [("results", ("q", "job00001", 1))])


def test_a_waiting_lease_is_answered_when_work_arrives_or_its_wait_ends(shards: Shards) -> None:
    """Long polls (shard/parked.py): a lease with ``wait_ms`` on an empty queue is held
    until a put brings work (not until its wait ends), or answered empty after it."""
    handle = shards.start()
    waiting, putting = shards.client(handle), shards.client(handle)
    assert waiting.lease("work", max_tokens=1, lease_ms=60_000, wait_ms=200).entries == ()
    with ThreadPoolExecutor(1) as pool:
        # Longer than the test waits: answered at its end would fail the test.
        leased = pool.submit(waiting.lease, "work", max_tokens=2, lease_ms=60_000, wait_ms=60_000)
        wait_until(
            lambda: putting.stats()["counters"].get("leases_parked", 0),
            lambda parked: parked == 2,
            what="the second lease to be parked",
        )
        putting.put("work", [_job(7)])
        granted = leased.result(timeout=WAIT_TIMEOUT_S)
    assert [fields for _t, fields in granted.entries] == [_job(7)]
    counts = putting.counts()
    assert (counts["work"], counts["work__held"]) == (0, 1)
    waiting.complete(granted.lease_id, [("results", ("q", "job00007", 70))])
    assert putting.counts()["results"] == 1


def test_a_granted_lease_whose_worker_is_gone_goes_back_to_the_queue(shards: Shards) -> None:
    """A parked lease granted after its worker disconnected: the reply cannot be sent,
    so the tokens go back at once (not after ``lease_ms``), and a repeat of the request
    (the same client id and sequence number) gets none of them."""
    handle = shards.start()
    client = shards.client(handle)
    # A context of its own: term() returns once the socket's connection is closed, so
    # the shard hears of the disconnect before the put below (taking back is best
    # effort: a reply sent before the shard noticed the disconnect is lost).
    gone_context: zmq.Context[Any] = zmq.Context()
    gone = RawPeer(gone_context, handle.endpoint)
    request = Lease("gone-worker", 1, "work", 1, 600_000, 60_000)
    try:
        gone.send(encode(request, message_id=1))
        wait_until(
            lambda: client.stats()["counters"].get("leases_parked", 0),
            lambda parked: parked == 1,
            what="the lease to be parked",
        )
    finally:
        gone.close()
        gone_context.term()
    client.put("work", [_job(3)])
    wait_until(
        client.stats,
        lambda s: s["counters"].get("leases_taken_back", 0) == 1 and s["tokens"]["work"] == 1,
        what="the undeliverable lease's token to go back to the queue",
    )
    again = shards.peer(handle)
    again.send(encode(request, message_id=2))
    reply = again.receive()
    assert reply is not None and isinstance(reply.message, Leased), reply
    assert reply.message.entries == ()
    leased = client.lease("work", max_tokens=1, lease_ms=60_000)
    assert [fields for _t, fields in leased.entries] == [_job(3)]


# -- request errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_of", "code"),
    [
        (lambda c: c.put("nowhere", [_job(1)]), "unknown_place"),
        (lambda c: c.tokens("nowhere"), "unknown_place"),
        (lambda c: c.lease("nowhere", max_tokens=1, lease_ms=1_000), "unknown_place"),
        (lambda c: c.put("notes", [("q", "job", "not an int")]), "wrong_colour"),
        (lambda c: c.put("notes", [("q", "job")]), "wrong_colour"),
        (lambda c: c.put("notes", [("q", "job", True)]), "wrong_colour"),
        (lambda c: c.lease("results", max_tokens=1, lease_ms=1_000), "not_a_work_queue"),
        (lambda c: c.lease("notes", max_tokens=1, lease_ms=1_000), "not_a_work_queue"),
        (lambda c: c.lease("work", max_tokens=0, lease_ms=1_000), "bad_request"),
        (lambda c: c.lease("work", max_tokens=1, lease_ms=1_000, wait_ms=-1), "bad_request"),
        (lambda c: c.put("notes", [_job(1)], delay_ms=-1), "bad_request"),
        (lambda c: c.complete("1.999", []), "lease_expired"),
    ],
    ids=[
        "put-unknown-place",
        "query-unknown-place",
        "lease-unknown-place",
        "put-wrong-field-type",
        "put-wrong-arity",
        "put-bool-for-int",
        "lease-results",
        "lease-notes",
        "lease-zero-tokens",
        "lease-negative-wait",
        "put-negative-delay",
        "complete-unknown-lease",
    ],
)
def test_a_bad_request_gets_its_error_code_and_changes_nothing(
    shards: Shards, request_of: Callable[[ShardClient], object], code: str
) -> None:
    client = shards.client(shards.start())
    client.put("work", [_job(1)])
    before = _marking(client)
    with pytest.raises(ShardError) as raised:
        request_of(client)
    assert raised.value.code == code, str(raised.value)
    assert _marking(client) == before
    assert client.stats()["counters"][f"errors_{code}"] == 1
    assert client.put("notes", [_job(2)]).accepted == 1, "the shard still serves"


def test_a_put_into_a_lease_companion_place_is_refused(shards: Shards) -> None:
    """``work__held`` and ``work__timer`` belong to the lease machinery (shard/leases.py).

    A held token put from outside has no timer, so it never expires: a lease that
    was never granted, holding work that never returns to the queue.
    """
    client = shards.client(shards.start())
    with pytest.raises(ShardError):
        client.put("work__held", [("1.77", 0, "q", "job00001", 1)])
    with pytest.raises(ShardError):
        client.put("work__timer", [("1.77", 0, "q")])
    assert client.counts() == dict.fromkeys(JOB_PLACES, 0)


def _survives(shards: Shards, handle: ShardProcess, request: Put | Lease) -> None:
    """``request`` gets a reply (its ack, or a ``bad_request`` error) and the shard lives."""
    peer = shards.peer(handle)
    peer.send(encode(request, message_id=77))
    reply = peer.receive(timeout_ms=3_000)
    if reply is None:
        stderr = (handle.data_dir / "stderr.log").read_text(errors="replace").strip()
        pytest.fail(
            f"no reply to {request!r}; shard alive: {handle.alive()}, exit code "
            f"{handle.process.returncode}, stderr: {stderr!r}"
        )
    assert isinstance(reply.message, PutAck | Leased) or (
        isinstance(reply.message, Error) and reply.message.code == "bad_request"
    ), reply.message
    assert shards.client(handle).ping() > 0


@pytest.mark.parametrize("delay_ms", [2**64 - 1, 2**63], ids=["uint64-max", "beyond-int64"])
def test_a_huge_delay_does_not_take_the_shard_down(shards: Shards, delay_ms: int) -> None:
    handle = shards.start()
    _survives(shards, handle, Put("huge", 1, "notes", (_job(1),), delay_ms))


def test_a_huge_lease_time_does_not_take_the_shard_down(shards: Shards) -> None:
    handle = shards.start()
    shards.client(handle).put("work", [_job(1)])
    _survives(shards, handle, Lease("huge", 1, "work", 1, 2**64 - 1))


# -- garbage on the wire ------------------------------------------------------------------

_VALID_PUT = encode(Put("garbage", 1, "notes", (_job(1),), 0), message_id=5)


def _garbage_frames(seed: int) -> dict[str, list[bytes]]:
    rng = random.Random(seed)
    return {
        "random-bytes": [rng.randbytes(64)],
        "empty": [b""],
        "truncated-msgpack": [_VALID_PUT[: len(_VALID_PUT) // 2]],
        "trailing-bytes": [_VALID_PUT + b"\x00"],
        "not-an-array": [msgpack.packb({"type": 1})],
        "short-envelope": [msgpack.packb([PROTOCOL_VERSION, Ping.TYPE, 1])],
        "unknown-type": [msgpack.packb([PROTOCOL_VERSION, 250, 1, 0, []])],
        "wrong-version": [msgpack.packb([PROTOCOL_VERSION + 1, Ping.TYPE, 1, 0, []])],
        "negative-message-id": [msgpack.packb([PROTOCOL_VERSION, Ping.TYPE, -1, 0, []])],
        "wrong-field-types": [
            msgpack.packb([PROTOCOL_VERSION, Put.TYPE, 1, 0, ["c", "1", "notes", [], 0]])
        ],
        "missing-fields": [msgpack.packb([PROTOCOL_VERSION, Lease.TYPE, 1, 0, ["c", 1]])],
        "token-not-an-array": [
            msgpack.packb([PROTOCOL_VERSION, Put.TYPE, 1, 0, ["c", 1, "notes", ["x"], 0]])
        ],
        "ext-type": [msgpack.packb(msgpack.ExtType(5, b"12345"))],
        "deep-nesting": [b"\x91" * 10_000 + b"\x00"],
        "huge-declared-length": [b"\xdd\xff\xff\xff\xff"],
        "two-frames": [b"junk", _VALID_PUT],
    }


GARBAGE_KINDS = list(_garbage_frames(0))


@pytest.mark.parametrize("kind", GARBAGE_KINDS)
def test_a_garbage_frame_gets_an_error_reply_and_the_shard_keeps_serving(
    shards: Shards, kind: str, seed: int
) -> None:
    handle = shards.start()
    peer = shards.peer(handle)
    peer.send(*_garbage_frames(seed)[kind])
    reply = peer.receive()
    assert reply is not None, f"no reply to a {kind} frame within {REPLY_TIMEOUT_MS} ms"
    assert isinstance(reply.message, Error), reply
    assert reply.message.code == "malformed_frame", reply.message
    assert reply.message.message, "the error names the problem"
    # The same connection still works, and nothing was applied.
    peer.send(encode(Ping(), message_id=2))
    pong = peer.receive()
    assert pong is not None and isinstance(pong.message, Pong) and pong.message_id == 2
    client = shards.client(handle)
    assert client.counts()["notes"] == 0
    assert client.stats()["counters"]["frames_malformed"] == 1
    assert handle.alive()


def test_a_reply_sent_as_a_request_is_refused(shards: Shards) -> None:
    handle = shards.start()
    peer = shards.peer(handle)
    peer.send(encode(Pong(5), message_id=9))
    reply = peer.receive()
    assert reply is not None and isinstance(reply.message, Error)
    assert reply.message.code == "not_a_request"
    assert reply.message_id == 9
    assert shards.client(handle).ping() > 0


def test_a_frame_just_over_the_limit_gets_an_error_reply(shards: Shards) -> None:
    handle = shards.start()
    peer = shards.peer(handle)
    peer.send(b"\x91" + b"\x00" * FRAME_BYTES_MAX)  # FRAME_BYTES_MAX + 1 bytes
    reply = peer.receive()
    assert reply is not None and isinstance(reply.message, Error)
    assert reply.message.code == "malformed_frame"
    assert str(FRAME_BYTES_MAX) in reply.message.message
    assert shards.client(handle).ping() > 0


def test_a_frame_far_over_the_limit_is_refused_and_the_shard_keeps_serving(
    shards: Shards,
) -> None:
    handle = shards.start()
    big = "x" * 1_000_000
    frame = encode(Put("big", 1, "notes", tuple(("q", big, n) for n in range(5)), 0), message_id=1)
    assert len(frame) > FRAME_BYTES_MAX + 1024  # above the socket's MAXMSGSIZE too
    peer = shards.peer(handle)
    peer.send(frame)
    # ZeroMQ drops a message above MAXMSGSIZE and the connection with it, so there may
    # be no reply at all; if there is one, it must be an error.
    reply = peer.receive(timeout_ms=1_000)
    if reply is not None:
        assert isinstance(reply.message, Error) and reply.message.code == "malformed_frame"
    client = shards.client(handle)  # the next client is served
    assert client.counts()["notes"] == 0
    assert client.put("notes", [_job(1)]).accepted == 1
    assert handle.alive()


# -- starting, stopping, restarting -------------------------------------------------------


def test_a_second_shard_on_the_same_data_dir_is_refused(shards: Shards) -> None:
    first = shards.start()
    result = _cpn_shard("--net", JOBS, "--data", str(first.data_dir))
    assert result.returncode != 0
    line = _one_line(result.stderr)
    assert "in use" in line and str(first.pid) in line, line
    assert first.alive()
    assert shards.client(first).ping() > 0
    endpoint_file = first.data_dir / ENDPOINT_FILE
    assert endpoint_file.read_text().split()[0] == first.endpoint, "the first shard's endpoint"


def test_a_data_dir_of_another_net_is_refused(shards: Shards) -> None:
    handle = shards.start()
    assert handle.terminate() == 0
    result = _cpn_shard("--net", "tests.nets_for_tests:circulation", "--data", str(handle.data_dir))
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert "test_jobs" in line and "test_circulation" in line, line


@pytest.mark.parametrize("bind", ["tcp://0.0.0.0:0", "tcp://192.0.2.1:0", "tcp://[::]:0"])
def test_binding_a_non_loopback_address_needs_allow_remote(tmp_path: Path, bind: str) -> None:
    result = _cpn_shard("--net", JOBS, "--data", str(tmp_path / "shard"), "--bind", bind)
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert "loopback" in line and "--allow-remote" in line, line


@pytest.mark.parametrize(
    ("net", "message"),
    [
        ("tests.nets_for_tests", "must look like package.module:attr"),
        ("tests.nets_for_tests:no_such_net", "has no attribute 'no_such_net'"),
        ("tests.no_such_module:net", "cannot import module 'tests.no_such_module'"),
        ("tests.nets_for_tests:BALLS", "is a int, not a Net"),
    ],
)
def test_a_net_that_does_not_load_exits_2_with_one_line(
    tmp_path: Path, net: str, message: str
) -> None:
    result = _cpn_shard("--net", net, "--data", str(tmp_path / "shard"))
    assert result.returncode == 2
    assert message in _one_line(result.stderr)


def test_the_map_grows_from_a_tiny_initial_size(shards: Shards) -> None:
    tiny = ("--map-size", "65536")
    handle = shards.start(extra_args=tiny)
    client = shards.client(handle)
    batches, per_batch = 20, 1_000
    for b in range(batches):
        tokens = [(f"q{n % 7}", f"b{b:02d}-{n:04d}", n) for n in range(per_batch)]
        assert client.put("notes", tokens).accepted == per_batch
    stats = client.stats()
    assert stats["map_resizes"] > 0
    assert stats["map_size_bytes"] > 65536
    entries = client.all_tokens("notes")
    assert len(entries) == batches * per_batch
    assert len({fields for _t, fields in entries}) == batches * per_batch

    # Reopened with the same tiny --map-size, the store keeps (and can grow) its data.
    assert handle.terminate() == 0
    client = shards.client(shards.start(extra_args=tiny))
    assert client.all_tokens("notes") == entries
    assert client.put("notes", [_job(n) for n in range(5_000)]).accepted == 5_000
    assert client.counts()["notes"] == batches * per_batch + 5_000


def test_shutdown_by_request_exits_0_and_keeps_the_marking(shards: Shards) -> None:
    handle = shards.start()
    client = shards.client(handle)
    client.put("notes", [_job(n) for n in range(10)])
    client.put("work", [_job(n) for n in range(10, 14)])
    client.lease("work", max_tokens=2, lease_ms=600_000)
    before = _marking(client)
    client.shutdown()
    assert handle.process.wait(timeout=WAIT_TIMEOUT_S) == 0
    assert not (handle.data_dir / ENDPOINT_FILE).exists()

    restarted = shards.start()
    assert _marking(shards.client(restarted)) == before


@pytest.mark.parametrize("durability", ["fsync", "process"])
def test_sigterm_exits_0_and_a_restart_keeps_the_marking_as_a_new_incarnation(
    shards: Shards, durability: str
) -> None:
    handle = shards.start(durability=durability)
    client = shards.client(handle)
    client.put("notes", [_job(n) for n in range(10)])
    client.put("notes", [_job(99)], delay_ms=600_000)  # a timed token keeps its time
    client.put("work", [_job(n) for n in range(10, 15)])
    leased = client.lease("work", max_tokens=2, lease_ms=600_000)
    before = _marking(client)
    incarnation = client.stats()["incarnation"]
    assert client.last_incarnation == incarnation

    assert handle.terminate() == 0

    restarted = shards.start(durability=durability)
    client = shards.client(restarted)
    assert _marking(client) == before
    assert client.stats()["incarnation"] == incarnation + 1
    assert client.last_incarnation == incarnation + 1, "replies carry the new incarnation"
    # The lease granted before the restart is still held and can be completed.
    done = client.complete(
        leased.lease_id, [("results", (q, j, n)) for _t, (q, j, n) in leased.entries]
    )
    assert not done.duplicate
    assert client.counts()["work__held"] == 0


def test_a_restarted_shard_serves_before_it_loads_the_places_nothing_reads(
    shards: Shards,
) -> None:
    """``notes`` and ``results`` only accumulate: the shard reads them after it starts
    (shard/deferred.py), yet every count and query sees them whole from the start."""
    handle = shards.start()
    client = shards.client(handle)
    for first in range(0, 12_000, 3_000):
        client.put("notes", [_job(n) for n in range(first, first + 3_000)])
    client.put("work", [_job(n) for n in range(20_000, 20_005)])
    before = client.counts()
    assert handle.terminate() == 0

    restarted = shards.start()
    client = shards.client(restarted)
    assert client.counts() == before, "counts include the tokens still to load"
    leased = client.lease("work", max_tokens=5, lease_ms=600_000)
    client.complete(leased.lease_id, [("results", f) for _t, f in leased.entries])
    stats = wait_until(client.stats, lambda s: s["deferred_loaded_ms"] > 0, what="the load")
    assert stats["deferred_tokens"] == 12_000
    assert stats["deferred_loaded_ms"] >= stats["serving_ms"], "loaded while serving"
    assert stats["tokens"]["notes"] == 12_000 and stats["tokens"]["results"] == 5
    notes = client.all_tokens("notes")
    assert sorted(f for _t, f in notes) == sorted(_job(n) for n in range(12_000))
