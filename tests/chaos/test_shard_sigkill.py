"""SIGKILL a real shard at seeded moments during a stream of puts, leases and completions.

The test process drives one `cpn shard` (net ``tests.nets_for_tests:jobs_and_circulation``:
a work queue, and balls that circulate on the shard's clock the whole time) with raw
frames over a DEALER socket, and keeps a log of what was *acknowledged*: a put counts
once its ``PutAck`` arrived, a lease once its ``Leased`` arrived, a completion once its
``Completed`` arrived. A seeded schedule kills the shard with SIGKILL right after a
request was sent (0 to 21 ms later, so before, during or after its commit) or between
requests, restarts it on the same data directory, and kills again only once the new
incarnation has answered a ping. A request whose reply was lost is resent as the very
same frame (same client id, same request sequence number), or, by the schedule,
abandoned: its effect is then unknown and the checks allow it to have happened once
or not at all, never twice, and for a completion all of its results or none.

After every restart (the recovered marking) and at the end (once every lease that was
not completed has expired), the shard's marking must agree with the log: every
acknowledged put is there exactly once, every acknowledged completion's results are
there exactly once and its leased tokens are gone, leased but uncompleted work is back
in the queue, and the balls are conserved. ``CPN_SEED`` replays a schedule.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq

from cluster.client import ShardClient
from cluster.processes import ShardProcess, start_shard
from router.wire import (
    Complete,
    Completed,
    Counts,
    Error,
    Lease,
    Leased,
    Message,
    Ping,
    Pong,
    Put,
    PutAck,
    QueryCounts,
    QueryTokens,
    Statistics,
    Stats,
    Tokens,
    decode,
    encode,
)
from shard.leases import with_work_queues
from shard.shell.store import Durability, Store
from tests.nets_for_tests import BALLS, Ball, jobs_and_circulation

pytestmark = [pytest.mark.serial, pytest.mark.integration]

REPO_ROOT = Path(__file__).resolve().parents[2]
NET = "tests.nets_for_tests:jobs_and_circulation"
QUEUES = ("qa", "qb", "qc", "qd")
PLACES_JOBS = ("inbox", "work", "results", "notes", "work__held", "work__timer")

DRIVE_S_MAX = 15.0  # the stream of requests, per durability mode
OPS_MAX = 1_200
KILLS_MAX = 12
KILL_AFTER_REQUEST_P = 0.05
KILL_BETWEEN_REQUESTS_P = 0.01
KILL_DELAYS_MS = (0, 0, 1, 2, 3, 5, 8, 13, 21)
ABANDON_P = 0.25  # of requests whose reply a kill took away
RESEND_ACKED_P = 0.5  # resend an acknowledged request after a kill: must be a repeat
LEASE_MS_CHOICES = (300, 800, 1_500, 2_500)
PUT_DELAY_MS_CHOICES = (0, 0, 0, 0, 40, 250)
REPLY_TIMEOUT_MS = 5_000  # a live shard answers within this
RESENDS_MAX = 4
PING_TIMEOUT_S = 10.0
EXPIRY_WAIT_S_MAX = 20.0
PAGE = 10_000  # one page holds every place of this test (TOKENS_PAGE_MAX)
SNAPSHOT_ATTEMPTS_MAX = 50
RESULT_TAG = 100_000  # Result.value = payload * RESULT_TAG + lease number

BALL_TOKENS = sorted(tuple(Ball(f"ball{i:02d}", 0)) for i in range(BALLS))
Job = tuple[str, str, int]  # (queue, job_id, payload) as on the wire
Res = tuple[str, str, int]  # (queue, job_id, value)


def _env() -> dict[str, str]:
    parts = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in parts if p)}


@dataclass
class LeaseRecord:
    number: int  # our own count of acknowledged leases, tagged into result values
    lease_id: str
    jobs: tuple[Job, ...]
    expires_at_ms: int

    def results(self) -> list[Res]:
        return [(q, j, n * RESULT_TAG + self.number) for q, j, n in self.jobs]


@dataclass
class Log:
    """What the shard acknowledged (and what may or may not have happened)."""

    puts_acked: dict[str, Job] = field(default_factory=dict)
    puts_unknown: dict[str, Job] = field(default_factory=dict)
    leases: dict[str, LeaseRecord] = field(default_factory=dict)
    open_leases: list[str] = field(default_factory=list)  # no completion sent yet
    completed: dict[str, LeaseRecord] = field(default_factory=dict)
    completion_unknown: dict[str, LeaseRecord] = field(default_factory=dict)
    completion_refused: dict[str, LeaseRecord] = field(default_factory=dict)
    leases_unknown: int = 0
    repeats_checked: int = 0
    repeats_of_expired_leases: int = 0  # a lease that expired during the restart: no entries
    kills_after_request: int = 0
    kills_between_requests: int = 0

    def completed_jobs(self) -> dict[str, Res]:
        return {r[1]: r for rec in self.completed.values() for r in rec.results()}


class Chaos:
    """The driver: one shard (restarted after each kill), one DEALER, one seeded schedule."""

    def __init__(
        self, data_dir: Path, durability: str, seed: int, context: zmq.Context[Any]
    ) -> None:
        self.data_dir = data_dir
        self.durability = durability
        self.seed = seed
        self.rng = random.Random(seed)
        self.context = context
        self.processes: list[ShardProcess] = []
        self.socket: zmq.Socket[bytes] | None = None
        self.client_id = f"chaos-{seed}"
        self.request_seq = 0
        self.message_id = 0
        self.starts = 0
        self.kills = 0
        self.jobs_made = 0
        self.log = Log()
        self.handle = self._start()

    # -- processes and sockets ------------------------------------------------------------

    def _start(self) -> ShardProcess:
        handle = start_shard(NET, self.data_dir, durability=self.durability, env=_env())
        self.processes.append(handle)
        self.starts += 1
        return handle

    def _connect(self) -> zmq.Socket[bytes]:
        if self.socket is None:
            self.socket = self.context.socket(zmq.DEALER)
            self.socket.setsockopt(zmq.LINGER, 0)
            self.socket.connect(self.handle.endpoint)
        return self.socket

    def _drop_socket(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None

    def close(self) -> None:
        self._drop_socket()
        for handle in self.processes:
            handle.kill()  # by pid; reaps it

    def where(self) -> str:
        return (
            f"seed {self.seed}, durability {self.durability}, incarnation {self.starts}, "
            f"{self.kills} kills"
        )

    def _stderr_tail(self) -> str:
        text = (self.data_dir / "stderr.log").read_text(errors="replace").strip()
        return "\n".join(text.splitlines()[-5:])

    # -- requests -------------------------------------------------------------------------

    def new_frame(self, message: Message) -> tuple[bytes, int]:
        self.message_id += 1
        return encode(message, message_id=self.message_id), self.message_id

    def next_seq(self) -> int:
        self.request_seq += 1
        return self.request_seq

    def _receive(self, message_id: int, timeout_ms: int) -> Message | None:
        socket = self._connect()
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms < 0 or not socket.poll(max(left_ms, 0), zmq.POLLIN):
                return None
            envelope = decode(socket.recv())
            assert envelope.incarnation == self.starts, (
                f"{self.where()}: a reply stamped with incarnation {envelope.incarnation}"
            )
            if envelope.message_id == message_id:
                return envelope.message

    def request(self, frame: bytes, message_id: int) -> Message:
        """Send ``frame`` until it is answered (Lazy Pirate: same bytes, new socket)."""
        for _attempt in range(RESENDS_MAX):
            self._connect().send(frame)
            reply = self._receive(message_id, REPLY_TIMEOUT_MS)
            if reply is not None:
                return reply
            self._drop_socket()
        pytest.fail(
            f"{self.where()}: no reply after {RESENDS_MAX} sends of {REPLY_TIMEOUT_MS} ms; "
            f"shard alive: {self.handle.alive()}; its stderr:\n{self._stderr_tail()}"
        )

    def ask(self, message: Message) -> Message:
        """A read-only request (never killed in flight)."""
        frame, message_id = self.new_frame(message)
        return self.request(frame, message_id)

    def perform(self, frame: bytes, message_id: int) -> Message | None:
        """Send a request that changes the marking; maybe kill the shard while it is in flight.

        Returns the reply, or ``None`` when the schedule abandons a request whose reply
        a kill took away (its effect is then unknown).
        """
        self._connect().send(frame)
        if self.kills >= KILLS_MAX or self.rng.random() >= KILL_AFTER_REQUEST_P:
            reply = self._receive(message_id, REPLY_TIMEOUT_MS)
            return reply if reply is not None else self.request(frame, message_id)
        reply = self._receive(message_id, self.rng.choice(KILL_DELAYS_MS))
        self.log.kills_after_request += 1
        self.kill_and_restart()
        if reply is not None:
            if self.rng.random() < RESEND_ACKED_P:
                self._check_repeat(reply, self.request(frame, message_id))
            return reply
        if self.rng.random() < ABANDON_P:
            return None
        return self.request(frame, message_id)

    def _check_repeat(self, first: Message, again: Message) -> None:
        if isinstance(first, PutAck | Completed):
            expected: Message = dataclasses.replace(first, duplicate=True)
        elif isinstance(first, Error):  # errors are not remembered: re-evaluated
            expected = first
            assert isinstance(again, Error) and again.code == first.code, (
                f"{self.where()}: resent request answered {again!r}, first {first!r}"
            )
            self.log.repeats_checked += 1
            return
        elif (
            isinstance(first, Leased)
            and isinstance(again, Leased)
            and again.entries == ()
            and time.time_ns() // 1_000_000 >= first.expires_at_ms
        ):
            # The lease expired while the shard restarted: its tokens went back to the
            # queue (maybe to another lease by now), so its repeat rightly carries none.
            expected = dataclasses.replace(first, entries=())
            self.log.repeats_of_expired_leases += 1
        else:
            expected = first
        assert again == expected, (
            f"{self.where()}: resending an acknowledged request after a restart "
            f"got {again!r}, expected {expected!r}"
        )
        self.log.repeats_checked += 1

    # -- kills ----------------------------------------------------------------------------

    def kill_and_restart(self) -> None:
        self._drop_socket()
        self.handle.kill()
        self.kills += 1
        self.handle = self._start()
        self.wait_ping()
        self.check_recovered()

    def wait_ping(self) -> None:
        deadline = time.monotonic() + PING_TIMEOUT_S
        while time.monotonic() < deadline:
            frame, message_id = self.new_frame(Ping())
            self._connect().send(frame)
            if isinstance(self._receive(message_id, 500), Pong):
                return
            self._drop_socket()
        pytest.fail(f"{self.where()}: the restarted shard did not answer a ping")

    # -- the workload -------------------------------------------------------------------

    def step(self) -> None:
        if self.kills < KILLS_MAX and self.rng.random() < KILL_BETWEEN_REQUESTS_P:
            self.log.kills_between_requests += 1
            self.kill_and_restart()
        choice = self.rng.random()
        if choice < 0.45:
            self.put()
        elif choice < 0.7 or not self.log.open_leases:
            self.lease()
        else:
            self.complete()

    def put(self) -> None:
        jobs: list[Job] = []
        for _ in range(self.rng.randint(1, 4)):
            self.jobs_made += 1
            n = self.jobs_made
            jobs.append((self.rng.choice(QUEUES), f"s{self.seed}-j{n:05d}", n))
        place = self.rng.choice(("inbox", "inbox", "work"))
        delay_ms = self.rng.choice(PUT_DELAY_MS_CHOICES) if place == "inbox" else 0
        seq = self.next_seq()
        # Until its acknowledgement arrives, a put may or may not have happened (a kill
        # can come first, and the recovered marking is checked before the resend).
        self.log.puts_unknown.update((j[1], j) for j in jobs)
        reply = self.perform(
            *self.new_frame(Put(self.client_id, seq, place, tuple(jobs), delay_ms))
        )
        if reply is None:
            return
        assert reply in (PutAck(seq, len(jobs), False), PutAck(seq, len(jobs), True)), (
            f"{self.where()}: put {seq} answered {reply!r}"
        )
        for job in jobs:
            self.log.puts_acked[job[1]] = self.log.puts_unknown.pop(job[1])

    def lease(self) -> None:
        seq = self.next_seq()
        lease_ms = self.rng.choice(LEASE_MS_CHOICES)
        message = Lease(self.client_id, seq, "work", self.rng.randint(1, 5), lease_ms)
        sent_ms = time.time_ns() // 1_000_000  # the shard's clock is this system clock
        reply = self.perform(*self.new_frame(message))
        answered_ms = time.time_ns() // 1_000_000
        if reply is None:
            self.log.leases_unknown += 1
            return
        assert isinstance(reply, Leased) and reply.request_seq == seq, (
            f"{self.where()}: lease {seq} answered {reply!r}"
        )
        assert sent_ms + lease_ms <= reply.expires_at_ms <= answered_ms + lease_ms, (
            f"{self.where()}: a {lease_ms} ms lease sent at {sent_ms} and answered at "
            f"{answered_ms} expires at {reply.expires_at_ms}"
        )
        jobs = tuple(fields for _t, fields in reply.entries)
        completed = self.log.completed_jobs()
        for job in jobs:
            known = self.log.puts_acked.get(job[1]) or self.log.puts_unknown.get(job[1])
            assert known == job, f"{self.where()}: lease {reply.lease_id} holds unknown {job!r}"
            assert job[1] not in completed, (
                f"{self.where()}: lease {reply.lease_id} took {job!r}, already completed"
            )
        if jobs:
            record = LeaseRecord(
                len(self.log.leases) + 1, reply.lease_id, jobs, reply.expires_at_ms
            )
            assert reply.lease_id not in self.log.leases, f"{self.where()}: lease id reused"
            self.log.leases[reply.lease_id] = record
            self.log.open_leases.append(reply.lease_id)

    def complete(self) -> None:
        lease_id = self.log.open_leases.pop(self.rng.randrange(len(self.log.open_leases)))
        record = self.log.leases[lease_id]
        seq = self.next_seq()
        results = tuple(("results", r) for r in record.results())
        reply = self.perform(*self.new_frame(Complete(self.client_id, seq, lease_id, results)))
        if reply is None:
            self.log.completion_unknown[lease_id] = record
        elif isinstance(reply, Completed):
            assert (reply.request_seq, reply.lease_id) == (seq, lease_id), reply
            self.log.completed[lease_id] = record
        else:
            assert isinstance(reply, Error) and reply.code == "lease_expired", (
                f"{self.where()}: completing {lease_id} answered {reply!r}"
            )
            self.log.completion_refused[lease_id] = record

    # -- reading the marking --------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        reply = self.ask(QueryCounts())
        assert isinstance(reply, Counts), reply
        return reply.counts

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every place's tokens as of one moment, though each query reads one place.

        The shard keeps firing (balls, dispatch, lease expiry) between its batches of
        requests, so the queries go out in one burst, between two ``Stats`` requests:
        when both report the same number of commits, nothing changed the marking while
        the queries were answered (every firing is committed before the next batch is
        read). Otherwise the burst is sent again.
        """
        places = [p.name for p in with_work_queues(jobs_and_circulation())[0].places]
        for _attempt in range(SNAPSHOT_ATTEMPTS_MAX):
            messages: list[Message] = [Stats(), *(QueryTokens(p, 0, PAGE) for p in places)]
            frames = [self.new_frame(m) for m in [*messages, Stats()]]
            socket = self._connect()
            for frame, _message_id in frames:
                socket.send(frame)
            replies = [self._receive(message_id, REPLY_TIMEOUT_MS) for _f, message_id in frames]
            assert all(r is not None for r in replies), f"{self.where()}: snapshot unanswered"
            first, *pages, last = replies
            assert isinstance(first, Statistics) and isinstance(last, Statistics), replies
            if first.values["commits"] != last.values["commits"]:
                continue
            marking = {}
            for place, page in zip(places, pages, strict=True):
                assert isinstance(page, Tokens) and len(page.entries) == page.total < PAGE, page
                marking[place] = [fields for _t, fields in page.entries]
            return marking
        pytest.fail(f"{self.where()}: no quiet moment for a snapshot in {SNAPSHOT_ATTEMPTS_MAX}")

    def check_recovered(self) -> None:
        """The restarted shard holds every acknowledged effect exactly once."""
        snapshot = self.snapshot()
        balls = sorted(snapshot["left"] + snapshot["right"])
        assert balls == BALL_TOKENS, f"{self.where()}: balls not conserved: {balls}"
        seen: Counter[str] = Counter()
        for place in ("inbox", "work"):
            for q, j, n in snapshot[place]:
                seen[j] += 1
                assert self._put_of(j) == (q, j, n), f"{self.where()}: {place} holds {(q, j, n)}"
        for held in snapshot["work__held"]:
            job = tuple(held[2:])
            seen[job[1]] += 1
            assert self._put_of(job[1]) == job, f"{self.where()}: held {held!r} is unknown"
        for _q, j, _v in snapshot["results"]:
            seen[j] += 1
        assert snapshot["notes"] == []
        twice = sorted(j for j, n in seen.items() if n > 1)
        assert not twice, f"{self.where()}: jobs present more than once: {twice[:10]}"
        lost = sorted(set(self.log.puts_acked) - set(seen))
        assert not lost, f"{self.where()}: acknowledged puts lost after recovery: {lost[:10]}"
        results = Counter(snapshot["results"])
        for record in self.log.completed.values():
            for result in record.results():
                assert results[result] == 1, (
                    f"{self.where()}: completed lease {record.lease_id} lost result {result}"
                )

    def _put_of(self, job_id: str) -> Job | None:
        return self.log.puts_acked.get(job_id) or self.log.puts_unknown.get(job_id)


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)


@pytest.mark.parametrize("durability", [d.value for d in Durability])
def test_sigkill_loses_and_duplicates_nothing_acknowledged(
    tmp_path: Path, seed: int, durability: str, zmq_context: zmq.Context[Any]
) -> None:
    data_dir = tmp_path / "shard"
    chaos = Chaos(data_dir, durability, seed, zmq_context)
    try:
        _drive(chaos)
        final = _settle_and_check(chaos)
        stopped = chaos.handle.terminate()
        assert stopped == 0, f"{chaos.where()}: SIGTERM exit code {stopped}"
    finally:
        chaos.close()
    _check_store(data_dir, final, chaos)


def _drive(chaos: Chaos) -> None:
    deadline = time.monotonic() + DRIVE_S_MAX
    for _op in range(OPS_MAX):
        if time.monotonic() >= deadline:
            break
        chaos.step()
    if chaos.kills == 0:  # the schedule drew no kill: one, so every run recovers once
        chaos.log.kills_between_requests += 1
        chaos.kill_and_restart()
    log = chaos.log
    assert log.kills_after_request + log.kills_between_requests == chaos.kills
    assert log.puts_acked, f"{chaos.where()}: no put was acknowledged"


def _settle_and_check(chaos: Chaos) -> dict[str, list[tuple[Any, ...]]]:
    """Wait for every lease to expire, then compare the marking with the log."""
    log = chaos.log
    deadline = time.monotonic() + EXPIRY_WAIT_S_MAX
    counts = chaos.counts()
    while counts["inbox"] or counts["work__held"] or counts["work__timer"]:
        assert time.monotonic() < deadline, (
            f"{chaos.where()}: leases and timed puts did not settle in {EXPIRY_WAIT_S_MAX} s: "
            f"{counts}"
        )
        time.sleep(0.05)
        counts = chaos.counts()
    snapshot = chaos.snapshot()
    balls = sorted(snapshot["left"] + snapshot["right"])
    assert balls == BALL_TOKENS, f"{chaos.where()}: balls not conserved: {balls}"

    client = ShardClient(chaos.handle.endpoint, timeout_ms=REPLY_TIMEOUT_MS, context=chaos.context)
    try:
        marking = {
            place: [fields for _t, fields in client.all_tokens(place)] for place in PLACES_JOBS
        }
        incarnation = client.stats()["incarnation"]
    finally:
        client.close()
    assert incarnation == chaos.starts == chaos.kills + 1, chaos.where()
    assert marking["inbox"] == marking["work__held"] == marking["work__timer"] == []
    assert marking["notes"] == []

    results = Counter(tuple(r) for r in marking["results"])
    work = Counter(tuple(j) for j in marking["work"])
    where = chaos.where()
    # Results: exactly those of acknowledged completions, plus all or none of each
    # completion whose reply was lost.
    expected_results: Counter[tuple[Any, ...]] = Counter()
    for record in log.completed.values():
        expected_results.update(record.results())
    for record in log.completion_unknown.values():
        present = [results[r] > 0 for r in record.results()]
        assert all(present) or not any(present), (
            f"{where}: completion of {record.lease_id} applied in part: {present}"
        )
        if all(present):
            expected_results.update(record.results())
    assert results == expected_results, (
        f"{where}: results differ from the log: missing "
        f"{sorted((expected_results - results).elements())[:5]}, unexpected "
        f"{sorted((results - expected_results).elements())[:5]}"
    )
    for record in log.completion_refused.values():
        assert not any(results[r] for r in record.results()), where
    # Work: every put that happened (all acknowledged ones, and the unknown ones that
    # show up), minus the completed jobs, is back in the queue exactly once.
    done = {r[1] for r in results.elements()}
    happened = dict(log.puts_acked)
    happened.update((j, job) for j, job in log.puts_unknown.items() if j in done or work[job] > 0)
    expected_work = Counter(job for j, job in happened.items() if j not in done)
    assert work == expected_work, (
        f"{where}: work queue differs from the log: missing "
        f"{sorted((expected_work - work).elements())[:5]}, unexpected "
        f"{sorted((work - expected_work).elements())[:5]}"
    )
    leased_not_completed = {
        job[1]
        for lease_id, record in log.leases.items()
        if lease_id not in log.completed
        for job in record.jobs
    }
    for job_id in leased_not_completed - done:
        assert work[happened[job_id]] == 1, f"{where}: leased work {job_id} did not come back"
    assert log.completed or log.completion_refused or log.completion_unknown, (
        f"{where}: the schedule completed no lease"
    )
    return marking


def _check_store(data_dir: Path, marking: dict[str, list[tuple[Any, ...]]], chaos: Chaos) -> None:
    """The committed store (the shard is stopped) holds what the shard served, and the balls."""
    net, _queues = with_work_queues(jobs_and_circulation())
    store = Store(data_dir, net=net, durability=Durability.PROCESS)
    try:
        stored: dict[str, list[tuple[Any, ...]]] = {p.name: [] for p in net.places}
        for place, _time, token in store.entries():
            stored[place].append(tuple(token))
    finally:
        store.close()
    for place in PLACES_JOBS:
        assert sorted(stored[place]) == sorted(marking[place]), f"{chaos.where()}: {place}"
    balls = sorted(stored["left"] + stored["right"])
    assert balls == BALL_TOKENS, f"{chaos.where()}: balls not conserved: {balls}"
