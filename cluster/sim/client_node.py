"""Clients in the simulated world: a seeder that puts tokens, and workers that lease.

Theory of operation. Clients are nodes on the simulated network like the shards, but
they are never crashed (they may be partitioned). Each keeps one request outstanding
under its client id, as the real clients do, and sends it again with the same
sequence number when no answer came within :data:`REQUEST_TIMEOUT_MS`: the shard
answers a repeat from its client table, never applying it twice.

* :class:`Seeder` puts its tokens one request each, to the shard the initial table
  names for the token's slot, following a :class:`~router.wire.Redirect` to the owner.
* :class:`Worker` leases one token at a time from a work-queue place, asking the
  shards in turn, and completes the lease with the outcome the place's effect model
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
from nets.model import Net, Token
from router.slots import slot_of_token
from router.table import PartitionTable
from router.wire import (
    Complete,
    Completed,
    Error,
    Lease,
    Leased,
    Message,
    Put,
    PutAck,
    Redirect,
    WireFormatError,
    decode,
    encode,
)

REQUEST_TIMEOUT_MS: Final = 600
IDLE_MS: Final = 100  # a worker that found no work anywhere asks again after this
BACKOFF_MS: Final = 200  # after an error reply
LEASE_MS: Final = 3_000
EXPIRED_EXTRA_MS: Final = 50  # an expire_lease answer comes this long after the expiry


@dataclass(slots=True)
class _Request:
    seq: int
    node: str  # the shard it goes to
    payload: bytes
    sent_ms: int


class _Client:
    """One outstanding request at a time, resent until answered (module docstring)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.client_id = node
        self.seq = 0
        self.pending: _Request | None = None
        self.directory: Directory = lambda _node: None
        self.counters: Counter[str] = Counter()

    def _send(self, now_ms: int, node: str, message: Message, seq: int) -> tuple[Send, ...]:
        payload = encode(message, message_id=seq)
        self.pending = _Request(seq, node, payload, now_ms)
        self.counters["requests"] += 1
        return self._resend(now_ms)

    def _resend(self, now_ms: int) -> tuple[Send, ...]:
        pending = self.pending
        assert pending is not None
        pending.sent_ms = now_ms
        endpoint = self.directory(pending.node)
        return () if endpoint is None else (Send(endpoint, pending.payload),)

    def _answer(self, frame: Delivered) -> Message | None:
        """The reply to the pending request, or None (garbage, or a late answer)."""
        try:
            envelope = decode(frame.payload)
        except WireFormatError:
            self.counters["replies_malformed"] += 1
            return None
        if self.pending is None or envelope.message_id != self.pending.seq:
            self.counters["replies_late"] += 1
            return None
        return envelope.message

    def _timed_out(self, now_ms: int) -> bool:
        return self.pending is not None and now_ms >= self.pending.sent_ms + REQUEST_TIMEOUT_MS

    def crash(self) -> None:
        raise AssertionError(f"{self.node} is a client: the nemesis never crashes it")

    def present(self) -> Iterable[LedgerEvent]:
        return ()


class Seeder(_Client):
    """Puts ``tokens`` into their places, each with its own committed request."""

    def __init__(self, node: str, net: Net, tokens: Sequence[tuple[str, Token]], shards: int):
        super().__init__(node)
        self._places = {p.name: p for p in net.places}
        self._todo = list(tokens)
        self._table = PartitionTable.initial(shards)
        self._owner: int | None = None
        self._retry_at_ms = 0

    @property
    def done(self) -> bool:
        return not self._todo and self.pending is None

    def start(self, now_ms: int, endpoint: str, directory: Directory) -> Step:
        del endpoint
        self.directory = directory
        return self._next(now_ms)

    def _next(self, now_ms: int) -> Step:
        if not self._todo:
            self.pending = None
            return NOTHING
        place, token = self._todo[0]
        if self._owner is None:
            self._owner = self._table.owner(slot_of_token(self._places[place], token))
        self.seq += 1
        put = Put(self.client_id, self.seq, place, (tuple(token),), 0)
        return Step(sends=self._send(now_ms, f"shard-{self._owner}", put, self.seq))

    def receive(self, now_ms: int, frame: Delivered) -> Step:
        reply = self._answer(frame)
        if reply is None:
            return NOTHING
        if isinstance(reply, PutAck):
            self._todo.pop(0)
            self._owner = None
            return self._next(now_ms)
        if isinstance(reply, Redirect):
            self._owner = reply.owner
            assert self.pending is not None
            self.pending.node = f"shard-{reply.owner}"
            return Step(sends=self._resend(now_ms))
        self.counters[f"errors_{reply.code if isinstance(reply, Error) else 'other'}"] += 1
        self.pending = None  # answered: asked again after the back-off, as a new request
        self._retry_at_ms = now_ms + BACKOFF_MS
        return NOTHING

    def wake(self, now_ms: int) -> Step:
        if self._timed_out(now_ms):
            self.counters["timeouts"] += 1
            return Step(sends=self._resend(now_ms))
        if self.pending is None and self._todo and now_ms >= self._retry_at_ms:
            return self._next(now_ms)
        return NOTHING

    def next_deadline_ms(self) -> int | None:
        if self.pending is not None:
            return self.pending.sent_ms + REQUEST_TIMEOUT_MS
        return self._retry_at_ms if self._todo else None


@dataclass(slots=True)
class _Work:
    shard: str
    lease_id: str
    token: Token
    outcome: OutcomeLike
    due_ms: int


class Worker(_Client):
    """Leases from ``place`` one token at a time and completes it (module docstring).

    Args:
        roster: the shard nodes to ask, in turn (it changes when the cluster scales).
        model: the place's effect model.
        seed: the run's seed (outcomes are drawn from it, the place, token and attempt).
        plan, rng, faults: the per-lease faults (``stall_worker``, ``expire_lease``)
            drawn for each lease, and their counts.
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
    ) -> None:
        super().__init__(node)
        self.place = place
        self._model = model
        self._roster = roster
        self._seed = seed
        self._plan = plan
        self._rng = rng
        self._faults = faults
        self._attempts: Counter[Token] = Counter()
        self._turn = 0  # the next shard to ask, by position in the roster
        self._empty_in_a_row = 0
        self._idle_until_ms = 0
        self._work: _Work | None = None
        self.completed = 0
        self.leased = 0

    def start(self, now_ms: int, endpoint: str, directory: Directory) -> Step:
        del endpoint
        self.directory = directory
        return self._next(now_ms)

    def _next(self, now_ms: int) -> Step:
        """Send the next request: a completion that is due, else a lease."""
        work = self._work
        if work is not None:
            if now_ms < work.due_ms:
                return NOTHING
            self.seq += 1
            results = tuple((place, tuple(token)) for place, token in work.outcome.results)
            complete = Complete(self.client_id, self.seq, work.lease_id, results)
            return Step(sends=self._send(now_ms, work.shard, complete, self.seq))
        if now_ms < self._idle_until_ms:
            return NOTHING
        shards = list(self._roster())
        if not shards:
            self._idle_until_ms = now_ms + IDLE_MS
            return NOTHING
        shard = shards[self._turn % len(shards)]
        self._turn += 1
        self.seq += 1
        lease = Lease(self.client_id, self.seq, self.place, 1, LEASE_MS, 0)
        return Step(sends=self._send(now_ms, shard, lease, self.seq))

    def receive(self, now_ms: int, frame: Delivered) -> Step:
        reply = self._answer(frame)
        if reply is None:
            return NOTHING
        assert self.pending is not None
        shard = self.pending.node
        self.pending = None
        if isinstance(reply, Leased):
            self._leased(now_ms, shard, reply)
        elif isinstance(reply, Completed):
            self.completed += 1
            self._work = None
        elif isinstance(reply, Error) and reply.code == "lease_expired":
            self.counters["completions_too_late"] += 1
            self._work = None
        else:
            code = reply.code if isinstance(reply, Error) else type(reply).__name__
            self.counters[f"errors_{code}"] += 1
            self._idle_until_ms = now_ms + BACKOFF_MS
        return self._next(now_ms)

    def _leased(self, now_ms: int, shard: str, reply: Leased) -> None:
        if not reply.entries:
            self._empty_in_a_row += 1
            if self._empty_in_a_row >= max(1, len(self._roster())):
                self._empty_in_a_row = 0
                self._idle_until_ms = now_ms + IDLE_MS
            return
        self._empty_in_a_row = 0
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
        due_ms = now_ms + outcome.latency_ms
        if fault == "expire_lease":
            due_ms = max(due_ms, reply.expires_at_ms + EXPIRED_EXTRA_MS)
        self._work = _Work(shard, reply.lease_id, token, outcome, due_ms)

    def _lease_fault(self) -> str | None:
        # Two draws for every lease, whatever comes of them: the stream stays aligned.
        stall = self._rng.random() < self._plan.rate("stall_worker")
        late = self._rng.random() < self._plan.rate("expire_lease")
        fault = "stall_worker" if stall else "expire_lease" if late else None
        if fault is not None:
            self._faults.record(fault)
        return fault

    def wake(self, now_ms: int) -> Step:
        if self._timed_out(now_ms):
            self.counters["timeouts"] += 1
            return Step(sends=self._resend(now_ms))
        if self.pending is None:
            return self._next(now_ms)
        return NOTHING

    def next_deadline_ms(self) -> int | None:
        if self.pending is not None:
            return self.pending.sent_ms + REQUEST_TIMEOUT_MS
        if self._work is not None:
            return self._work.due_ms
        return self._idle_until_ms
