"""A shard's state and its request handlers (SHELL): recovery, the engine, the batch.

:class:`Shard` holds what one shard process owns: the engine (its marking), the batch
of changes since the last commit, the LMDB store, the client table, leases, the
partition exchange and slot moves. It applies decoded requests (puts, leases,
completions, handoffs, queries), fires what is due and commits; :mod:`shard.shell.serve`
runs it in a loop behind a ZeroMQ socket (the loop's theory of operation is there).

If a commit fails (a full disk), the shard reloads its engine from what is committed
and from then on refuses writes; queries keep working. A retried request carries the
same client id and sequence number and is answered from the client table, never
applied twice.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from nets.codec import token_from_fields
from nets.engine import Engine, unread_places
from nets.errors import CpnError, TokenError
from nets.firing import Step
from nets.loader import load_net
from nets.model import Net, Token
from router.handoff import ProtocolError
from router.shell.curve import CurveKeys
from router.wire import (
    Complete,
    Completed,
    Counts,
    Envelope,
    FetchSlot,
    Handoff,
    HandoffAck,
    Lease,
    Leased,
    Message,
    Ping,
    Pong,
    PoolAnswer,
    PoolWanted,
    Put,
    PutAck,
    QueryCounts,
    QueryTokens,
    Redirect,
    Shutdown,
    ShuttingDown,
    Statistics,
    Stats,
    Tokens,
    decode,
    encode,
)
from shard.deferred import DeferredLoad
from shard.exchange import Exchange, HandoffRefused
from shard.leases import WorkQueue, with_work_queues
from shard.mover import Mover
from shard.parked import LongPolls
from shard.shell.store import MAP_SIZE_BYTES_INITIAL, Batch, Durability, Store, StoreError

IDLE_WAKE_MS: Final = 1_000
FIRINGS_PER_BATCH_MAX: Final = 100_000
BATCH_MS_MAX: Final = 20  # while requests wait for the batch's commit
BATCH_MS_MAX_IDLE: Final = 200  # while none do
TOKENS_PAGE_MAX: Final = 10_000
LEASE_TOKENS_MAX: Final = 10_000
LEASE_WAIT_MS_MAX: Final = 60_000  # a long poll waits at most this long for work
LATENCIES_KEPT_MAX: Final = 4_096
HANDOFF_LATENCIES_KEPT_MAX: Final = 20_000  # sorted for each Stats request
# Times are stored as msgpack integers; a delay or lease beyond ten years is a mistake.
DURATION_MS_MAX: Final = 10 * 365 * 24 * 3_600_000

log = logging.getLogger("cpn.shard")


class SystemClock:
    """Milliseconds since the Unix epoch, never going backwards within a process."""

    def __init__(self, floor_ms: int = 0) -> None:
        self._last_ms = floor_ms

    def now_ms(self) -> int:
        self._last_ms = max(self._last_ms, time.time_ns() // 1_000_000)
        return self._last_ms


@dataclass(frozen=True, slots=True)
class ShardConfig:
    net_path: str
    data_dir: Path
    bind: str = "tcp://127.0.0.1:0"
    durability: Durability = Durability.FSYNC
    allow_remote: bool = False
    seed: int = 0
    map_size_bytes: int = MAP_SIZE_BYTES_INITIAL
    shard_id: int = 0
    shard_count: int = 1
    router: str = ""  # the router's endpoint; "" for a standalone shard
    # Net parameters for the net's builder (`--net-param`); every shard gets the same.
    params: Mapping[str, Any] = field(default_factory=dict)
    cluster_id: str = ""  # from a cluster file: the router and peers must agree
    curve: CurveKeys | None = None  # CURVE keys for the shard's socket and its peers
    rate_limit: tuple[int, int] | None = None  # (requests per s, burst) per peer
    advertise: str = ""  # the endpoint the others reach it at, if not the bound one


class RequestError(CpnError):
    """A request the shard understood but cannot serve; ``code`` goes on the wire."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Shard:
    """The shard's state and its request handlers (see the module docstring)."""

    def __init__(self, config: ShardConfig) -> None:
        # Recovery steps, wall-clock ms (statistics): this process began building the
        # shard, read its store back (and later, in Mover, was fenced and fired).
        self.started_ms = time.time_ns() // 1_000_000
        self.config = config
        base = load_net(config.net_path, seed=config.seed, params=config.params)
        self.net: Net
        self.net, self.queues = with_work_queues(base)
        self.companions = {
            place.name for queue in self.queues.values() for place in (queue.held, queue.timer)
        }
        self.queue_of_held = {queue.held.name: queue for queue in self.queues.values()}
        self.polls = LongPolls(self)  # lease requests waiting for work (shard/parked.py)
        self.store = Store(
            config.data_dir,
            net=self.net,
            durability=config.durability,
            map_size_bytes=config.map_size_bytes,
            shard_id=config.shard_id,
            shard_count=config.shard_count,
        )
        self.incarnation = self.store.incarnation
        self.stopping = False
        self.read_only_reason: str | None = None
        self.counters: Counter[str] = Counter()
        self.commit_latencies_ms: deque[float] = deque(maxlen=LATENCIES_KEPT_MAX)
        self.batch_sizes: deque[int] = deque(maxlen=LATENCIES_KEPT_MAX)
        self.handoff_latencies_ms: deque[int] = deque(maxlen=HANDOFF_LATENCIES_KEPT_MAX)
        self._lease_seq = 0
        self.sender_incarnations: dict[int, int] = {}  # the newest each peer spoke as
        self.mover = Mover(self)  # slot moves and fencing (shard/mover.py)
        # Places whose tokens only accumulate: read after the shard starts firing.
        self.deferred_places = frozenset(
            name for name in unread_places(self.net, self.queues) if not self.net.place(name).pool
        )
        self.deferred = DeferredLoad(None, {}, self.store)  # nothing yet: _load sets it
        self._recover()
        self.recovered_ms = time.time_ns() // 1_000_000
        self.serving_ms = 0  # set once the socket is bound and the endpoint published

    # -- recovery -------------------------------------------------------------------------

    def _recover(self) -> None:
        # Recovery creates up to millions of long-lived tuples and no cycles: the cyclic
        # collector is paused meanwhile (it would run hundreds of times over the growing
        # heap) and the result is frozen out of later collections.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._load()
        finally:
            gc.freeze()
            if gc_was_enabled:
                gc.enable()

    def _load(self) -> None:
        self.deferred.close()  # recovering again (a commit failed): start over
        recovered = self.store.recover(self.deferred_places)
        self.clock = SystemClock(floor_ms=recovered.clock_ms)
        self.clients: dict[str, tuple[int, bytes]] = dict(recovered.clients)
        self.leases: dict[str, list[tuple[str, int, Token]]] = {}  # lease id -> held entries
        self.exchange = Exchange(
            self.net,
            shard_id=self.config.shard_id,
            shard_count=self.config.shard_count,
            recovered=recovered,
            reserved=frozenset(self.companions),
            incarnation=self.incarnation,
        )
        self.engine = Engine(
            self.net,
            initial_marking=False,
            watch=list(self.queues),
            locality=self.exchange if self.exchange.clustered else None,
        )
        self.engine.advance(self.clock.now_ms())
        self.batch = Batch()
        self.handed_in = 0  # tokens received from peers in this batch
        self.handed_times: list[int] = []  # their times (when the sender produced them)
        self.exports: list[tuple[str, int, Token]] = []  # tokens for other shards
        self.more_enabled = True  # until a batch shows otherwise
        self.engine.hooks.append(self._record_step)
        self.deferred = DeferredLoad(recovered.deferred, recovered.deferred_counts, self.store)
        if recovered.initialised:
            self.engine.restore(recovered.marking)
            for slot in sorted(self.exchange.sealed):
                # Sealed for a move: kept in the store for the shipment, never fired.
                entries = self.store.slot_entries(slot)
                self.engine.extract([e for e in entries if e[0] not in self.deferred_places])
                for place, _time_ms, _token in entries:
                    if place in self.deferred_places:
                        self.deferred.not_loaded(place, 1)
        else:
            self._initial_marking()
            self.flush_exports()
            self.batch.clock_ms = self.engine.now
            self.store.commit(self.batch, initialised=True)
            self.batch = Batch()
        for queue in self.queues.values():
            for time_ms, held in self.engine.tokens(queue.held.name):
                self.leases.setdefault(held[0], []).append((queue.held.name, time_ms, held))

    def _initial_marking(self) -> None:
        """This shard's share of the net's initial marking.

        Keyed and fixed tokens start at the shard that owns their slot (every shard
        computes the same initial table); pool tokens are dealt round robin, token
        ``i`` to shard ``i % shard_count``, so they start spread over the cluster.
        """
        me, count = self.config.shard_id, self.config.shard_count
        for place in self.net.places:
            for index, token in enumerate(place.initial):
                if place.pool:
                    if index % count == me:
                        self.add(place.name, token, self.engine.now)
                elif self.exchange.owns(place, token):
                    self.add(place.name, token, self.engine.now)

    def _emit(self, place: str, token: Token, time_ms: int) -> None:
        """A token the shell produces (a completion's result): here, or handed off."""
        if self.exchange.owns(self.net.place(place), token):
            self.add(place, token, time_ms)
        else:
            self.exports.append((place, time_ms, token))

    def flush_exports(self) -> None:
        """Move this batch's tokens for other shards into outbox runs (same commit)."""
        exported = self.engine.take_exported()
        if self.exports:
            exported.extend(self.exports)
            self.exports.clear()
        if exported:
            self.exchange.export(exported, self.batch)

    def _record_step(self, step: Step) -> None:
        # A step's entries are already (place, time, token) tuples: the batch's keys.
        marking = self.batch.marking
        for entry in step.consumed:
            marking[entry] = marking.get(entry, 0) - 1
        for entry in step.produced:
            marking[entry] = marking.get(entry, 0) + 1
        if step.transition.endswith("__lease_expired"):
            self.counters["leased_tokens_expired"] += 1
            for place, _time_ms, token in step.consumed:
                if place.endswith("__held"):
                    self.leases.pop(token[0], None)  # the lease id; its work is back

    def add(self, place: str, token: Token, time_ms: int) -> None:
        """Add an entry to the engine and to the batch (committed with it)."""
        self.engine.add(place, token, time=time_ms)
        self.batch.add(place, time_ms, token)

    def remove(self, place: str, token: Token, time_ms: int) -> None:
        """Take an available entry out of the engine and the batch."""
        self.engine.remove(place, token, time=time_ms)
        self.batch.remove(place, time_ms, token)

    # -- requests ---------------------------------------------------------------------

    def handle(self, envelope: Envelope) -> Message | None:
        """Apply one request to the engine and the batch; return its reply (None: a
        lease that waits for work, see :meth:`park`)."""
        message = envelope.message
        self.counters[f"requests_{type(message).__name__}"] += 1
        if isinstance(message, Handoff | PoolWanted) and self.read_only_reason is not None:
            raise RequestError("store_unavailable", self.read_only_reason)
        if isinstance(message, Put | Lease | Complete):
            duplicate = self._duplicate(message.client_id, message.request_seq)
            if duplicate is not None:
                return duplicate
            # The client asked again (it gave up waiting): only its newest request is
            # answered, so the client table never goes back to an older one.
            self.polls.drop(message.client_id)
            if self.read_only_reason is not None:
                raise RequestError("store_unavailable", self.read_only_reason)
        if isinstance(message, Handoff):
            return self._handoff(message, envelope.incarnation)
        if isinstance(message, FetchSlot):
            shipment = self.mover.shipment_for(message)
            if shipment is None:
                raise RequestError(
                    "not_sealed",
                    f"slot {message.slot} is not sealed here for move {message.move_id}",
                )
            return shipment
        if isinstance(message, PoolWanted):
            return self._give_pool(message)
        if isinstance(message, Put):
            return self._put(message)
        if isinstance(message, Lease):
            return self._lease(message)
        if isinstance(message, Complete):
            return self._complete(message)
        if isinstance(message, QueryCounts):
            return Counts(self._counts(), self.engine.now)
        if isinstance(message, QueryTokens):
            return self._tokens(message)
        if isinstance(message, Stats):
            return Statistics(self.statistics())
        if isinstance(message, Ping):
            return Pong(self.engine.now)
        if isinstance(message, Shutdown):
            self.stopping = True
            return ShuttingDown()
        raise RequestError("not_a_request", f"{type(message).__name__} is a reply, not a request")

    def _duplicate(self, client_id: str, seq: int) -> Message | None:
        known = self.clients.get(client_id)
        if known is None or seq > known[0]:
            return None
        self.counters["requests_duplicate"] += 1
        if seq == known[0]:
            # The very reply the client may have missed, marked as a repeat.
            reply = decode(known[1]).message
            if isinstance(reply, PutAck | Completed):
                reply = dataclasses.replace(reply, duplicate=True)
            elif isinstance(reply, Leased) and reply.entries and not self._live(reply.lease_id):
                # Taken back (its reply could not be delivered), expired or completed:
                # its tokens may be another lease's by now, so the repeat gets none.
                reply = dataclasses.replace(reply, entries=())
            return reply
        raise RequestError(
            "stale_request",
            f"client {client_id!r} sent request {seq}, but request {known[0]} came after it",
        )

    def _remember(self, client_id: str, seq: int, reply: Message) -> Message:
        frame = encode(reply, message_id=0, incarnation=self.incarnation)
        self.clients[client_id] = (seq, frame)
        self.batch.clients[client_id] = (seq, frame)
        return reply

    def _place(self, name: str) -> Any:
        if not self.net.has_place(name):
            raise RequestError(
                "unknown_place",
                f"net {self.net.name!r} has no place {name!r} "
                f"(places: {', '.join(p.name for p in self.net.places)})",
            )
        return self.net.place(name)

    def _tokens_of(self, place_name: str, items: tuple[Any, ...]) -> list[Token]:
        place = self._place(place_name)
        if place_name in self.companions:
            raise RequestError(
                "reserved_place",
                f"place {place_name!r} belongs to the lease machinery; only leases and "
                "completions change it",
            )
        try:
            return [
                token_from_fields(place.colour_set, fields, where=f"place {place_name!r}")
                for fields in items
            ]
        except TokenError as exc:
            raise RequestError("wrong_colour", str(exc)) from exc

    def _put(self, put: Put) -> Message:
        tokens = self._tokens_of(put.place, put.tokens)
        if not 0 <= put.delay_ms <= DURATION_MS_MAX:
            raise RequestError(
                "bad_request", f"delay_ms must be in 0..{DURATION_MS_MAX}, got {put.delay_ms}"
            )
        place = self.net.place(put.place)
        sealed = self.exchange.sealed
        for token in tokens:
            if not self.exchange.owns(place, token):
                slot = self.exchange.lane_of(place, token)
                assert slot is not None
                if slot in sealed:
                    continue  # moving: it goes through the outbox to the slot's next owner
                self.counters["puts_redirected"] += 1
                table = self.exchange.table
                return Redirect(slot, table.owner(slot), table.epoch)
        at = self.engine.now + put.delay_ms
        for token in tokens:
            if self.exchange.owns(place, token):
                self.add(put.place, token, at)
            else:
                self.exports.append((put.place, at, token))
        return self._remember(
            put.client_id, put.request_seq, PutAck(put.request_seq, len(tokens), False)
        )

    def _queue(self, name: str) -> WorkQueue:
        self._place(name)
        queue = self.queues.get(name)
        if queue is None:
            raise RequestError(
                "not_a_work_queue",
                f"place {name!r} is not a work queue (declare it with work_queue=True); "
                f"work queues: {', '.join(self.queues) or 'none'}",
            )
        return queue

    def _lease(self, lease: Lease) -> Message | None:
        """Grant ``lease``; None when it waits for work (parked, answered later)."""
        self._queue(lease.place)
        if (
            not 0 < lease.max_tokens <= LEASE_TOKENS_MAX
            or not 0 < lease.lease_ms <= DURATION_MS_MAX
            or not 0 <= lease.wait_ms <= LEASE_WAIT_MS_MAX
        ):
            raise RequestError(
                "bad_request",
                f"a lease needs 0 < max_tokens <= {LEASE_TOKENS_MAX}, "
                f"0 < lease_ms <= {DURATION_MS_MAX} and 0 <= wait_ms <= {LEASE_WAIT_MS_MAX}",
            )
        if lease.wait_ms and self.polls.can_park() and not self.engine.has_available(lease.place):
            return None
        return self.grant(lease)

    def _live(self, lease_id: str) -> bool:
        held = self.leases.get(lease_id)
        return held is not None and all(self.engine.holds(p, tok, time=t) for p, t, tok in held)

    def grant(self, lease: Lease) -> Message:
        """Lease up to ``max_tokens`` available tokens (maybe none) in this batch."""
        queue = self.queues[lease.place]
        now = self.engine.now
        self._lease_seq += 1
        lease_id = f"{self.config.shard_id}.{self.incarnation}.{self._lease_seq}"
        expires = now + lease.lease_ms
        taken = self.engine.available(lease.place, lease.max_tokens)
        held_entries = []
        for index, (time_ms, token) in enumerate(taken):
            self.remove(lease.place, token, time_ms)
            held = queue.held_token(lease_id, index, token)
            self.add(queue.held.name, held, now)
            self.add(queue.timer.name, queue.timer_token(lease_id, index, token), expires)
            held_entries.append((queue.held.name, now, held))
        if held_entries:
            self.leases[lease_id] = held_entries
            self.counters["leases_granted"] += 1
        reply = Leased(
            lease.request_seq, lease_id, expires, tuple((t, tuple(tok)) for t, tok in taken)
        )
        return self._remember(lease.client_id, lease.request_seq, reply)

    def _complete(self, complete: Complete) -> Message:
        held = self.leases.get(complete.lease_id)
        if held is None or not self._live(complete.lease_id):
            self.leases.pop(complete.lease_id, None)
            raise RequestError(
                "lease_expired",
                f"lease {complete.lease_id!r} is unknown or expired; its tokens went back "
                "to their queue",
            )
        results = [
            (place, token)
            for place, fields in complete.results
            for token in self._tokens_of(place, (fields,))
        ]
        for place, time_ms, token in held:
            self.remove(place, token, time_ms)
        for place, token in results:
            self._emit(place, token, self.engine.now)
        del self.leases[complete.lease_id]
        self.counters["leases_completed"] += 1
        reply = Completed(complete.request_seq, complete.lease_id, False)
        return self._remember(complete.client_id, complete.request_seq, reply)

    def _handoff(self, message: Handoff, incarnation: int) -> Message:
        newest = self.sender_incarnations.setdefault(message.sender, incarnation)
        if incarnation < newest:
            # An old incarnation's frame, late: its successor resends what counts.
            raise RequestError(
                "stale_incarnation",
                f"shard {message.sender}'s incarnation {incarnation} is older than {newest}",
            )
        self.sender_incarnations[message.sender] = incarnation
        try:
            entries, receipt = self.exchange.receive(message, incarnation)
        except (HandoffRefused, ProtocolError) as exc:
            log.error("handoff from shard %d refused: %s", message.sender, exc)
            raise RequestError("handoff_refused", str(exc)) from exc
        by_place: dict[str, list[tuple[int, Token]]] = {}
        for place, time_ms, token in entries:
            by_place.setdefault(place, []).append((time_ms, token))
        for place, timed_tokens in by_place.items():
            self.engine.add_checked(place, timed_tokens)
        self.batch.marking.update(entries)  # each entry +1
        self.handed_in += len(entries)
        self.handed_times.extend([time_ms for _place, time_ms, _token in entries])
        self.batch.hwms.update(receipt.hwms)
        return HandoffAck(receipt.acks, receipt.redirects, receipt.deferred)

    def _give_pool(self, message: PoolWanted) -> Message:
        place = self._place(message.place)
        if not place.pool:
            raise RequestError("not_a_pool", f"place {message.place!r} is not a pool place")
        if not 0 <= message.sender < self.exchange.table.shard_count or (
            message.sender == self.config.shard_id
        ):
            raise RequestError("bad_request", f"no peer shard {message.sender} to give tokens to")
        if message.sender >= self.exchange.members:
            raise RequestError("leaving", f"shard {message.sender} is leaving the cluster")
        count = self.exchange.pool_to_give(self.engine, place, max(0, message.count))
        given = []
        for time_ms, token in self.engine.available(place.name, count):
            self.remove(place.name, token, time_ms)
            given.append((place.name, time_ms, token))
        self.exchange.export_pool(given, message.sender, self.batch)
        self.counters["pool_tokens_given"] += len(given)
        return PoolAnswer(place.name, len(given))

    def _counts(self) -> dict[str, int]:
        return {p.name: self._count(p.name) for p in self.net.places}

    def _count(self, place: str) -> int:
        """Tokens ``place`` holds, counting those of a deferred place still to load."""
        count = self.engine.count(place)
        return count + self.deferred.pending(place)

    def _tokens(self, query: QueryTokens) -> Message:
        self._place(query.place)
        if query.offset < 0 or not 0 < query.limit <= TOKENS_PAGE_MAX:
            raise RequestError(
                "bad_request", f"need offset >= 0 and 0 < limit <= {TOKENS_PAGE_MAX}"
            )
        if query.place in self.deferred_places:
            self.deferred.complete(self.engine)
        entries = self.engine.tokens(query.place)
        page = entries[query.offset : query.offset + query.limit]
        return Tokens(
            query.place, query.offset, len(entries), tuple((t, tuple(tok)) for t, tok in page)
        )

    def statistics(self) -> dict[str, Any]:
        stats = self.engine.statistics()
        store = self.store.statistics()
        latencies = sorted(self.commit_latencies_ms)
        handoff: list[float] = sorted(self.handoff_latencies_ms)
        sizes = list(self.batch_sizes)
        return {
            "net": self.net.name,
            "incarnation": self.incarnation,
            "started_ms": self.started_ms,
            "recovered_ms": self.recovered_ms,
            "serving_ms": self.serving_ms,
            # When the deferred places' tokens were all loaded, and how many there were.
            "deferred_loaded_ms": self.deferred.loaded_ms,
            "deferred_tokens": self.deferred.loaded,
            "now_ms": self.engine.now,
            "firings": dict(stats.firings),
            "tokens": self._counts(),
            "commits": store.commits,
            "commit_entries": store.entries_written,
            "commit_batch_mean": (sum(sizes) / len(sizes)) if sizes else 0.0,
            "commit_batch_max": max(sizes, default=0),
            "commit_ms_p50": _quantile(latencies, 0.50),
            "commit_ms_p99": _quantile(latencies, 0.99),
            "handoff_ms_p50": _quantile(handoff, 0.50),
            "handoff_ms_p99": _quantile(handoff, 0.99),
            "map_size_bytes": store.map_size_bytes,
            "map_resizes": store.map_resizes,
            "read_only": self.read_only_reason or "",
            "counters": dict(self.counters + self.exchange.counters),
            **self.exchange.statistics(),
            **self.mover.statistics(),
        }

    # -- the batch ----------------------------------------------------------------------

    def tick(self) -> None:
        """Move the engine to the current time (requests then see the right ``now``)."""
        self.engine.advance(self.clock.now_ms())

    def fire_due(self, requests_waiting: Callable[[], bool] = lambda: False) -> int:
        """Fire what is enabled now (bounded); the hook records the steps in the batch.

        A batch runs up to ``BATCH_MS_MAX`` while requests are waiting (they are answered
        only after the commit) and up to ``BATCH_MS_MAX_IDLE`` otherwise: a longer batch
        lets more tokens be produced and consumed within it, which never reach LMDB.
        """
        if self.read_only_reason is not None or not self.mover.may_fire():
            return 0
        now = self.clock.now_ms()
        fired = 0
        started = time.perf_counter()
        asked_s = 0.0  # when requests_waiting was last asked (it polls sockets)
        fire = self.engine.fire
        # A batch is bounded in count and in time, so that requests wait for at most
        # about BATCH_MS_MAX of firing before their batch commits and they are answered.
        # The clock is read every few firings (one firing of a net with heavy
        # inscriptions, parsing robots.txt in a guard, can take a millisecond), the
        # sockets looked at once a millisecond at most.
        while fired < FIRINGS_PER_BATCH_MAX:
            if fire(now) is None:
                self.more_enabled = False
                return fired
            fired += 1
            if fired % 16 == 0:
                now_s = time.perf_counter()
                elapsed_ms = (now_s - started) * 1000
                if elapsed_ms > BATCH_MS_MAX_IDLE:
                    break
                if elapsed_ms > BATCH_MS_MAX and now_s - asked_s > 0.001:
                    asked_s = now_s
                    if requests_waiting():
                        break
        self.more_enabled = True  # stopped by a bound, not because nothing is enabled
        return fired

    def loop_back(self) -> None:
        """Deliver the runs this shard's outbox holds for its own lanes (a slot that moved
        here, or is sealed here), as a peer's would be, in the current batch."""
        for message in self.exchange.take_loopback():
            try:
                reply = self._handoff(message, self.incarnation)
            except RequestError as exc:
                log.error("loopback handoff refused: %s", exc)
                continue
            assert isinstance(reply, HandoffAck)
            self.exchange.acknowledged(reply, self.engine.now, self.batch)

    def commit(self) -> bool:
        """Commit the batch; on failure, fall back to the committed state, read-only."""
        self.flush_exports()
        self.handed_in = 0
        batch, self.batch = self.batch, Batch()
        batch.clock_ms = self.engine.now
        if batch.is_empty():
            return True
        started = time.perf_counter()
        try:
            self.store.commit(batch)
        except StoreError as exc:
            log.error("commit failed, the shard is now read-only: %s", exc)
            self.read_only_reason = f"the shard's store failed and refuses writes: {exc}"
            self.counters["commits_failed"] += 1
            self._recover()  # the engine must match what is on disk again
            return False
        self.commit_latencies_ms.append((time.perf_counter() - started) * 1000)
        if self.handed_times:
            # From the firing that produced a token (its time, on the sender's clock) to
            # this commit: the handoff latency, meaningful where clocks agree (one host).
            committed_ms = time.time_ns() // 1_000_000
            self.handoff_latencies_ms.extend([committed_ms - t for t in self.handed_times])
            self.handed_times = []
        self.batch_sizes.append(len(batch.marking))
        return True

    def load_deferred(self) -> None:
        """One chunk of the deferred places' tokens (the loop calls this every turn)."""
        if self.deferred.active:
            self.deferred.step(self.engine)

    def progress(self) -> dict[str, int]:
        """Counters that grow while the loop turns (for the router's heartbeat view)."""
        return {
            "firings": self.engine.statistics().steps,
            "commits": self.store.statistics().commits,
        }

    def timeout_ms(self) -> int:
        if self.more_enabled or self.deferred.active:
            return 0  # the last batch stopped at a bound, or tokens are still to load
        deadlines = [
            d for d in (self.engine.next_deadline(), self.polls.next_deadline_ms()) if d is not None
        ]
        if not deadlines:
            return IDLE_WAKE_MS
        return max(0, min(IDLE_WAKE_MS, min(deadlines) - self.clock.now_ms()))


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 3)
