"""Workers in the simulated world: they lease from work-queue places and complete.

Theory of operation. A worker is a node on the simulated network like the shards, but
it is never crashed (it may be partitioned). Each of its lanes keeps one request
outstanding under its own client id, as the real clients do, and sends it again with
the same sequence number when no answer came in time: the shard answers a repeat from
its client table, never applying it twice.

* :class:`Worker` leases one token at a time from a work-queue place, a long poll per
  shard, and completes the lease with the outcome the place's effect model
  gives for (token, attempt), drawn by a generator seeded from the run's seed, the
  place, the token and the attempt (cluster/sim/effects_run.py): the same token on the
  same attempt meets the same fate whatever the order of events. The outcome's latency
  passes before the worker answers. A ``stall`` (or the ``stall_worker`` fault) never
  answers, so the lease expires and the token goes back to its queue; the
  ``expire_lease`` fault answers only after the lease expired.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from cluster.sim.effects_run import EffectModelLike, OutcomeLike, draw_outcome
from cluster.sim.faults import FaultCounts, FaultPlan
from cluster.sim.ledger import LedgerEvent
from cluster.sim.network import Delivered
from cluster.sim.world import NOTHING, Directory, Send, Step
from nets.model import Token
from router.wire import (
    Complete,
    Completed,
    Error,
    Lease,
    Leased,
    Message,
    WireFormatError,
    decode,
    encode,
)

REQUEST_TIMEOUT_MS: Final = 600
LEASE_WAIT_MS: Final = 1_000  # a worker's long poll waits this long in the shard
LEASE_TIMEOUT_MS: Final = LEASE_WAIT_MS + REQUEST_TIMEOUT_MS
IDLE_MS: Final = 20  # after an empty answer to a long poll, the lane asks again after this
BACKOFF_MS: Final = 200  # after an error reply
LEASE_MS: Final = 3_000
EXPIRED_EXTRA_MS: Final = 50  # an expire_lease answer comes this long after the expiry
NEVER_MS: Final = 1 << 62


@dataclass(slots=True)
class _Request:
    seq: int
    node: str  # the shard it goes to
    payload: bytes
    sent_ms: int


@dataclass(slots=True)
class _Work:
    lease_id: str
    token: Token
    outcome: OutcomeLike
    due_ms: int


@dataclass(slots=True)
class _Lane:
    """A worker's conversation with one shard: its own client id, one request at a time."""

    shard: str
    client_id: str
    seq: int = 0
    pending: _Request | None = None
    work: _Work | None = None
    idle_until_ms: int = 0


class Worker:
    """Leases from ``place`` and completes what it leased (module docstring).

    Like the crawler's workers, it keeps one lane per shard, each a client id of its own
    with one request outstanding: a long poll for one token (it waits in the shard
    until work comes, up to :data:`LEASE_WAIT_MS`), then the completion.

    Args:
        roster: the shard nodes (it changes when the cluster scales).
        model: the place's effect model.
        seed: the run's seed (outcomes are drawn from it, the place, token and attempt).
        plan, rng, faults: the per-lease faults (``stall_worker``, ``expire_lease``)
            drawn for each lease, and their counts.
        leases_end_ms: from then on the worker takes no new lease and finishes those it
            holds (the run's drain: by its end every lease is completed or expired).
    """

    def __init__(
        self,
        node: str,
        place: str,
        model: EffectModelLike[OutcomeLike],
        *,
        roster: Callable[[], Sequence[str]],
        seed: int,
        plan: FaultPlan,
        rng: random.Random,
        faults: FaultCounts,
        leases_end_ms: int | None = None,
    ) -> None:
        self.node = node
        self.place = place
        self._model = model
        self._roster = roster
        self._seed = seed
        self._plan = plan
        self._rng = rng
        self._faults = faults
        self._leases_end_ms = leases_end_ms
        self._attempts: Counter[Token] = Counter()
        self._lanes: dict[str, _Lane] = {}
        self._directory: Directory = lambda _node: None
        self.completed = 0
        self.leased = 0
        self.counters: Counter[str] = Counter()

    def start(self, now_ms: int, endpoint: str, directory: Directory) -> Step:
        del endpoint
        self._directory = directory
        return self.wake(now_ms)

    def _sync_lanes(self) -> None:
        shards = list(self._roster())
        for shard in shards:
            if shard not in self._lanes:
                self._lanes[shard] = _Lane(shard, f"{self.node}/{shard}")
        for shard in [s for s in self._lanes if s not in shards]:
            del self._lanes[shard]  # retired: it holds nothing any more

    def _send(self, now_ms: int, lane: _Lane, message: Message) -> tuple[Send, ...]:
        lane.pending = _Request(lane.seq, lane.shard, encode(message, message_id=lane.seq), now_ms)
        self.counters["requests"] += 1
        return self._resend(now_ms, lane)

    def _resend(self, now_ms: int, lane: _Lane) -> tuple[Send, ...]:
        pending = lane.pending
        assert pending is not None
        pending.sent_ms = now_ms
        endpoint = self._directory(lane.shard)
        return () if endpoint is None else (Send(endpoint, pending.payload),)

    def _next(self, now_ms: int, lane: _Lane) -> tuple[Send, ...]:
        """The lane's next request: its completion once due, else a long poll."""
        work = lane.work
        if work is not None:
            if now_ms < work.due_ms:
                return ()
            lane.seq += 1
            results = tuple((place, tuple(token)) for place, token in work.outcome.results)
            return self._send(
                now_ms, lane, Complete(lane.client_id, lane.seq, work.lease_id, results)
            )
        if now_ms < lane.idle_until_ms:
            return ()
        if self._draining(now_ms):
            lane.idle_until_ms = NEVER_MS  # no new work
            return ()
        lane.seq += 1
        lease = Lease(lane.client_id, lane.seq, self.place, 1, LEASE_MS, LEASE_WAIT_MS)
        return self._send(now_ms, lane, lease)

    def _draining(self, now_ms: int) -> bool:
        return self._leases_end_ms is not None and now_ms >= self._leases_end_ms

    def receive(self, now_ms: int, frame: Delivered) -> Step:
        lane = self._lanes.get(frame.src)
        try:
            envelope = decode(frame.payload)
        except WireFormatError:
            self.counters["replies_malformed"] += 1
            return NOTHING
        if lane is None or lane.pending is None or envelope.message_id != lane.pending.seq:
            self.counters["replies_late"] += 1
            return NOTHING
        lane.pending = None
        reply = envelope.message
        if isinstance(reply, Leased):
            self._leased(now_ms, lane, reply)
        elif isinstance(reply, Completed):
            self.completed += 1
            lane.work = None
        elif isinstance(reply, Error) and reply.code == "lease_expired":
            self.counters["completions_too_late"] += 1
            lane.work = None
        else:
            code = reply.code if isinstance(reply, Error) else type(reply).__name__
            self.counters[f"errors_{code}"] += 1
            lane.idle_until_ms = now_ms + BACKOFF_MS
        return Step(sends=self._next(now_ms, lane))

    def _leased(self, now_ms: int, lane: _Lane, reply: Leased) -> None:
        if not reply.entries:
            lane.idle_until_ms = now_ms + IDLE_MS
            return
        self.leased += 1
        (_time_ms, fields), *_rest = reply.entries
        token = tuple(fields)
        self._attempts[token] += 1
        outcome = draw_outcome(
            self._model,
            seed=self._seed,
            place=self.place,
            token=token,
            attempt=self._attempts[token],
        )
        fault = self._lease_fault()
        if outcome.kind == "stall" or fault == "stall_worker":
            return  # never answered: the lease expires and the token goes back
        # A real worker starts the effect no earlier than planned (a fetch waits for the
        # politeness clock's start), then it takes its latency.
        due_ms = max(now_ms, outcome.start_ms) + outcome.latency_ms
        if fault == "expire_lease":
            due_ms = max(due_ms, reply.expires_at_ms + EXPIRED_EXTRA_MS)
        lane.work = _Work(reply.lease_id, token, outcome, due_ms)

    def _lease_fault(self) -> str | None:
        # Two draws for every lease, whatever comes of them: the stream stays aligned.
        stall = self._rng.random() < self._plan.rate("stall_worker")
        late = self._rng.random() < self._plan.rate("expire_lease")
        fault = "stall_worker" if stall else "expire_lease" if late else None
        if fault is not None:
            self._faults.record(fault)
        return fault

    def wake(self, now_ms: int) -> Step:
        self._sync_lanes()
        sends: list[Send] = []
        for lane in self._lanes.values():
            if lane.pending is not None:
                if now_ms >= lane.pending.sent_ms + LEASE_TIMEOUT_MS:
                    self.counters["timeouts"] += 1
                    if lane.work is None and self._draining(now_ms):
                        # An unanswered long poll asked again would be a new lease, taken
                        # too late to be resolved by the end: the worker gives it up (a
                        # lease the first copy got expires on its own).
                        lane.pending = None
                        lane.idle_until_ms = NEVER_MS
                        continue
                    sends += self._resend(now_ms, lane)
            else:
                sends += self._next(now_ms, lane)
        return Step(sends=tuple(sends))

    def next_deadline_ms(self) -> int | None:
        deadlines = []
        for lane in self._lanes.values():
            if lane.pending is not None:
                deadlines.append(lane.pending.sent_ms + LEASE_TIMEOUT_MS)
            elif lane.work is not None:
                deadlines.append(lane.work.due_ms)
            else:
                deadlines.append(lane.idle_until_ms)
        if len(self._lanes) != len(self._roster()):
            deadlines.append(0)  # the cluster scaled: open or close lanes now
        due = min(deadlines, default=None)
        return None if due is None or due >= NEVER_MS else due

    def crash(self) -> None:
        raise AssertionError(f"{self.node} is a client: the nemesis never crashes it")

    def present(self) -> Iterable[LedgerEvent]:
        return ()
