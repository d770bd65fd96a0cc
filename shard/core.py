"""One shard as a sans-IO core: requests and peer messages in, a batch and sends out.

:class:`ShardCore` holds what one shard owns: the engine (its marking), the batch of
changes since the last commit (in its recorder), the client table, the lease desk, the
partition exchange, slot moves (:mod:`shard.mover`), long polls (:mod:`shard.parked`)
and the conversation with peers and the router (:mod:`shard.link`). It reads no clock,
opens no file and touches no socket: every input carries ``now_ms``, and the shell
(:mod:`shard.shell.serve`, or a simulator) owns the clock, the LMDB store and the
sockets.

Theory of operation, one turn of the shell's loop:

1. ``peer_message(now_ms, source, envelope)`` for every reply from peers and the
   router, then ``handle(now_ms, envelope)`` for each request: the marking changes go
   into the batch, and the reply is returned (``None``: a lease parked until work comes).
2. ``fire(now_ms, budget)`` fires what is enabled, until nothing is or the shell's
   :class:`FiringBudget` says the batch has run long enough; ``answer_parked`` grants
   the long polls that have work now.
3. ``take_batch()`` hands the batch to the shell, which commits it in one write
   transaction. Only then does the shell send the replies and ``sends(now_ms)``:
   handoff runs, pool requests, the heartbeat, move reports, table requests. Nothing
   leaves before the commit that made it true.
4. A commit that fails (a full disk) makes the shell recover the store again and build
   a new core from it with :meth:`ShardCore.after_failed_commit`: read-only from then on.

A retried request carries the same client id and sequence number and is answered from
the client table, never applied twice. Requests are dispatched by a table from message
type to handler (:data:`_REQUEST_HANDLERS`); a client's write goes on to
:mod:`shard.client_writes`.

What lives apart, each built here with the parts of the core it needs passed in
explicitly (never the core itself), and each for a reason given in its own docstring:

* :mod:`shard.recorder`: the current batch, its exports, the firings recorded into it
  and the committed firing totals (what committing a batch means);
* :mod:`shard.start_marking`: the marking a core starts from (recovered, or its share);
* :mod:`shard.client_writes`: a client's write, from the client table to its reply;
* :mod:`shard.lease_desk`: grants, completions, renewals, hand-backs and the index of
  live leases (state rebuilt from the marking, its id sequence carried on);
* :mod:`shard.clients`: the client table, which every client write passes first;
* :mod:`shard.intake`: handoffs received, with the senders' incarnations and latencies;
* :mod:`shard.request_checks`: the checks a request must pass against the net;
* :mod:`shard.reading`: the read side (statistics, counts, token pages, metrics);
* :mod:`shard.move_host`: what slot moves may do to the engine;
* :mod:`shard.shard_setup`: what a core is built from and what a rebuilt one carries.

What stays here is what every turn runs through: dispatch, the engine's loop
(:meth:`ShardCore.fire`), the peers' requests and the shell's interface. The firing
path (:meth:`ShardCore.fire`, :meth:`shard.recorder.BatchRecorder.record_steps`,
:meth:`take_batch`, :meth:`committed`) calls no other method per firing or per entry:
the engine calls the recorder's bound method once per run of steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from nets.engine import Engine
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
    Release,
    Released,
    Renew,
    Renewed,
    Shutdown,
    ShuttingDown,
    Statistics,
    Stats,
)
from shard.batch import Batch, Recovered
from shard.client_writes import ClientWrite, ClientWrites
from shard.clients import ClientTable
from shard.deferred import DeferredLoad
from shard.exchange import Exchange
from shard.intake import HandoffIntake
from shard.lease_desk import LeaseDesk
from shard.link import Send
from shard.move_host import EngineMoveHost
from shard.parked import Reply
from shard.reading import CoreReading, core_reading, shard_statistics, token_counts, tokens_page
from shard.recorder import BatchRecorder
from shard.request_checks import RequestError, place_of
from shard.shard_setup import Carried, FaultPoint, FiringBudget, ShardSetup, StoredSlots, no_fault
from shard.start_marking import initial_share, restore_marking

FIRINGS_PER_BATCH_MAX: Final = 100_000
FIRINGS_PER_BUDGET_CHECK: Final = 16  # one firing can take a millisecond (robots.txt)
log = logging.getLogger("cpn.shard")

# The replies that change the marking: a failed commit turns them into errors.
WRITING_REPLIES: Final = (PutAck, Leased, Completed, Renewed, Released, HandoffAck, PoolAnswer)


class ShardCore:
    """The shard's state and its handlers (see the module docstring).

    Args:
        setup: the net and the shard's identity.
        recovered: what the store held when opened; a store never initialised gets
            this shard's share of the initial marking, in the first batch (the shell
            commits it as the store's initialisation).
        incarnation: this process's incarnation (the store counts them).
        now_ms: the time recovery finished (the engine starts there).
        slots: reads of sealed slots' entries (the store).
        fault: called at each named fault point (chaos tests end the process there).
        shell_statistics: the shell's own figures (commit latencies, recovery steps),
            added to the core's in :meth:`statistics` (a ``counters`` entry is merged).
    """

    def __init__(
        self,
        setup: ShardSetup,
        recovered: Recovered,
        *,
        incarnation: int,
        now_ms: int,
        slots: StoredSlots,
        fault: FaultPoint = no_fault,
        shell_statistics: Callable[[], Mapping[str, Any]] = dict,
        read_only_reason: str | None = None,
        carried: Carried | None = None,
    ) -> None:
        self.setup = setup
        self.net = setup.net
        self.queues = setup.queues
        self.companions = setup.companions
        self.deferred_places = setup.deferred_places
        self.incarnation = incarnation
        self._slots = slots
        self._fault = fault
        self._shell_statistics = shell_statistics
        self.read_only_reason = read_only_reason
        self.stopping = False
        if carried is None:
            carried = Carried.fresh(setup, incarnation=incarnation, fault=fault)
        self.counters = carried.counters
        self.polls = carried.polls  # lease requests waiting for work (shard/parked.py)
        self.mover = carried.mover  # slot moves and fencing (shard/mover.py)
        self.link = carried.link  # heartbeats, tables, handoff sends (shard/link.py)
        # Each client's newest write and its reply (shard/clients.py).
        self.client_table = ClientTable(
            recovered.clients, incarnation=incarnation, counters=self.counters
        )
        self.exchange = Exchange(
            self.net,
            shard_id=setup.shard_id,
            shard_count=setup.shard_count,
            recovered=recovered,
            reserved=self.companions,
            incarnation=incarnation,
        )
        self.engine = Engine(
            self.net,
            initial_marking=False,
            watch=list(self.queues),
            locality=self.exchange if self.exchange.clustered else None,
        )
        self.engine.advance(max(now_ms, recovered.clock_ms))
        # Handoffs received, and the newest incarnation each peer spoke as (shard/intake.py).
        self.intake = HandoffIntake(self.engine, self.exchange, carried.sender_incarnations)
        self.more_enabled = True  # until a batch shows otherwise
        self.deferred = DeferredLoad(recovered.deferred, recovered.deferred_counts)
        self.initialised = recovered.initialised
        self.commits = 0  # batches committed by this core
        if recovered.initialised:
            restore_marking(
                self.engine, self.exchange, recovered, slots, self.deferred, self.deferred_places
            )
            first_batch = Batch()
        else:
            # The first batch is the store's initialisation (take_batch marks it).
            first_batch = initial_share(setup, self.exchange, self.engine)
        # What each lease still holds, rebuilt from the marking (shard/lease_desk.py).
        self.lease_desk = LeaseDesk(
            self.net,
            self.queues,
            self.companions,
            self.engine,
            shard_id=setup.shard_id,
            incarnation=incarnation,
            lease_seq=carried.lease_seq,
            counters=self.counters,
        )
        # What the current batch holds and what committing it means (shard/recorder.py).
        self.recorder = BatchRecorder(
            self.net,
            self.engine,
            self.exchange,
            recovered,
            first_batch=first_batch,
            counters=self.counters,
            lease_expired=self.lease_desk.expired,
        )
        # What slot moves may do to the engine and read of the store (shard/move_host.py).
        self.move_host = EngineMoveHost(
            self.net, self.engine, self.deferred, slots, self.recorder.committed_firings
        )
        # A client's writes, from the client table's check to the reply (shard/client_writes.py).
        self.client_writes = ClientWrites(
            setup,
            self.engine,
            self.exchange,
            self.recorder,
            self.lease_desk,
            self.client_table,
            self.polls,
            counters=self.counters,
            writable=self._writable,
            work_returned=self._work_returned,
        )

    def after_failed_commit(self, recovered: Recovered, reason: str, now_ms: int) -> ShardCore:
        """The core rebuilt from what is committed after a commit failed: it refuses
        writes from now on (queries keep working); counters and conversations go on."""
        self.deferred.close()
        carried = Carried(
            self.counters,
            self.lease_desk.lease_seq,
            self.intake.sender_incarnations,
            self.polls,
            self.mover,
            self.link,
        )
        return ShardCore(
            self.setup,
            recovered,
            incarnation=self.incarnation,
            now_ms=now_ms,
            slots=self._slots,
            fault=self._fault,
            shell_statistics=self._shell_statistics,
            read_only_reason=reason,
            carried=carried,
        )

    # -- requests ---------------------------------------------------------------------

    def handle(self, now_ms: int, envelope: Envelope) -> Message | None:
        """Apply one request to the engine and the batch at ``now_ms``; return its reply
        (None: a lease that waits for work, see :meth:`park`).

        Raises:
            RequestError: the request cannot be served; nothing of it is applied.
            nets.errors.CpnError: a token or place in it is wrong (answered as ``bad_request``).
        """
        self.engine.advance(now_ms)
        message = envelope.message
        self.counters[f"requests_{type(message).__name__}"] += 1
        handler = _REQUEST_HANDLERS.get(type(message))
        if handler is None:
            raise RequestError(
                "not_a_request", f"{type(message).__name__} is a reply, not a request"
            )
        return handler(self, envelope)

    def _writable(self) -> None:
        if self.read_only_reason is not None:
            raise RequestError("store_unavailable", self.read_only_reason)

    def _on_client_request(self, envelope: Envelope) -> Message | None:
        message = envelope.message
        assert isinstance(message, ClientWrite)
        return self.client_writes.apply(message)

    def _on_handoff(self, envelope: Envelope) -> Message | None:
        assert isinstance(envelope.message, Handoff)
        self._writable()
        return self.intake.receive(envelope.message, envelope.incarnation, self.recorder.batch)

    def _on_pool_wanted(self, envelope: Envelope) -> Message | None:
        assert isinstance(envelope.message, PoolWanted)
        self._writable()
        return self._give_pool(envelope.message)

    def _on_fetch_slot(self, envelope: Envelope) -> Message | None:
        message = envelope.message
        assert isinstance(message, FetchSlot)
        shipment = self.mover.shipment_for(message, self.exchange, self._slots)
        if shipment is None:
            raise RequestError(
                "not_sealed", f"slot {message.slot} is not sealed here for move {message.move_id}"
            )
        return shipment

    def _on_query_counts(self, _envelope: Envelope) -> Message | None:
        return Counts(
            token_counts(self.net, self.engine, self.deferred),
            self.engine.now,
            self.exchange.in_flight(),
            self.deferred.pending_total(),
        )

    def _on_query_tokens(self, envelope: Envelope) -> Message | None:
        assert isinstance(envelope.message, QueryTokens)
        return tokens_page(
            self.net, self.engine, self.deferred, self.deferred_places, envelope.message
        )

    def _on_stats(self, _envelope: Envelope) -> Message | None:
        return Statistics(self.statistics())

    def _on_ping(self, _envelope: Envelope) -> Message | None:
        return Pong(self.engine.now)

    def _on_shutdown(self, _envelope: Envelope) -> Message | None:
        self.stopping = True
        return ShuttingDown()

    def _give_pool(self, message: PoolWanted) -> Message:
        place = place_of(self.net, message.place)
        if not place.pool:
            raise RequestError("not_a_pool", f"place {message.place!r} is not a pool place")
        if not 0 <= message.sender < self.exchange.table.shard_count or (
            message.sender == self.setup.shard_id
        ):
            raise RequestError("bad_request", f"no peer shard {message.sender} to give tokens to")
        if message.sender >= self.exchange.members:
            raise RequestError("leaving", f"shard {message.sender} is leaving the cluster")
        count = self.exchange.pool_to_give(self.engine, place, max(0, message.count))
        given = []
        for time_ms, token in self.engine.available(place.name, count):
            self.recorder.remove(place.name, token, time_ms)
            given.append((place.name, time_ms, token))
        self.exchange.export_pool(given, message.sender, self.recorder.batch)
        self.counters["pool_tokens_given"] += len(given)
        return PoolAnswer(place.name, len(given))

    def statistics(self) -> dict[str, Any]:
        """The core's figures; the shell adds its own (commit latencies, recovery steps)."""
        return shard_statistics(
            self.net,
            self.engine,
            self.deferred,
            self.exchange,
            self.mover,
            self.lease_desk,
            incarnation=self.incarnation,
            counters=self.counters
            + self.polls.counters
            + self.exchange.counters
            + self.link.counters,
            firings_total=self.recorder.firings_total,
            firings_since_ms=self.recorder.firings_since_ms,
            firings_since=self.recorder.firings_since,
            firings_committed_ms=self.recorder.firings_committed_ms,
            handoff_latencies_ms=self.intake.latencies_ms,
            read_only_reason=self.read_only_reason,
            shell=self._shell_statistics(),
        )

    # -- the batch ----------------------------------------------------------------------

    def fire(self, now_ms: int, budget: FiringBudget) -> int:
        """Fire what is enabled at ``now_ms`` (bounded) and record the steps in the
        batch. Stops when nothing is enabled, after ``FIRINGS_PER_BATCH_MAX``, or when
        ``budget`` is exhausted (asked every ``FIRINGS_PER_BUDGET_CHECK`` firings): a
        longer batch lets more tokens be produced and consumed within it, which never
        reach the store, but requests wait for its commit.
        """
        self.engine.advance(now_ms)
        if self.read_only_reason is not None or not self.mover.may_fire(self.exchange, now_ms):
            return 0
        counts_before = self.engine.firing_counts()
        try:
            self.more_enabled = self.engine.fire_batch(
                now_ms,
                FIRINGS_PER_BATCH_MAX,
                record=self.recorder.record_steps,
                stop=budget.exhausted,
                stop_every=FIRINGS_PER_BUDGET_CHECK,
            )
        finally:
            # Also when a firing raised: the firings before it are applied, and are the
            # batch's as much as if nothing had.
            fired = self.recorder.count_firings(counts_before)
        self.mover.fired(fired, now_ms)
        return fired

    def loop_back(self) -> None:
        """Deliver the runs this shard's outbox holds for its own lanes (a slot that moved
        here, or is sealed here), as a peer's would be, in the current batch."""
        for message in self.exchange.take_loopback():
            try:
                reply = self.intake.receive(message, self.incarnation, self.recorder.batch)
            except RequestError as exc:
                log.error("loopback handoff refused: %s", exc)
                continue
            self.exchange.acknowledged(reply, self.engine.now, self.recorder.batch)

    def answer_parked(self, now_ms: int) -> list[Reply]:
        """Replies to the parked leases that have work now or waited long enough
        (granted in the current batch)."""
        self.engine.advance(now_ms)
        return self.polls.answer(
            now_ms,
            self.engine.has_available,
            self.client_writes.grant,
            refusal=self.read_only_reason,
            stopping=self.stopping,
        )

    def park(self, now_ms: int, peer: bytes, lease: Lease, message_id: int) -> None:
        """Let ``lease`` (which :meth:`handle` answered with None) wait for work."""
        self.polls.park(peer, lease, message_id, now_ms)

    def work_waits(self) -> bool:
        """Whether a parked lease's queue has work (the batch should end soon)."""
        return self.polls.work_waits(self.engine.has_available)

    def replies_sent(self, outcomes: list[tuple[Reply, bool]]) -> None:
        """After the batch's replies went out (each with whether it was sent): take back
        the leases none of whose replies reached their client (the next batch)."""
        for lease_id in self.polls.undelivered(outcomes):
            self.take_back(lease_id)

    def take_back(self, lease_id: str) -> None:
        """Put a lease's tokens back in their queue (committed with the next batch)."""
        if self.lease_desk.take_back(lease_id, self.recorder.batch):
            self._work_returned()

    def _work_returned(self) -> None:
        """Work went back to its queue (a lease taken back or handed back)."""
        self.more_enabled = True  # offer the work again at once

    def take_batch(self) -> Batch:
        """The batch to commit now (this batch's exports moved into outbox runs), and a
        new one begun. The shell commits it, then calls :meth:`committed`."""
        self.intake.batch_taken()
        return self.recorder.take_batch()

    def committed(self, now_ms: int) -> None:
        """The batch taken last is durable: the store was initialised with it, and its
        handoff tokens count from the firing that produced them (the sender's clock)."""
        self.initialised = True
        self.commits += 1
        self.recorder.committed(now_ms)
        self.intake.committed(now_ms)

    def load_deferred(self, now_ms: int) -> None:
        """One chunk of the deferred places' tokens (the loop calls this every turn)."""
        if self.deferred.active:
            self.deferred.step(self.engine, now_ms)

    # -- peers and the router ---------------------------------------------------------

    def peer_message(self, now_ms: int, source: int, envelope: Envelope) -> None:
        """A reply from a peer shard or the router (``source`` :data:`shard.link.ROUTER`),
        applied to the current batch."""
        self.engine.advance(now_ms)
        self.link.take(
            now_ms,
            source,
            envelope.message,
            self.exchange,
            self.mover,
            self.recorder.batch,
            self.move_host,
        )

    def sends(self, now_ms: int) -> list[Send]:
        """What to send now that the batch is committed: handoff runs, pool requests,
        the heartbeat, move reports, table and shipment requests."""
        return self.link.sends(
            now_ms, self.exchange, self.mover, self.engine, self.progress, self.move_host
        )

    def send_failed(self, send: Send) -> None:
        """``send`` could not go now (the peer is down, slow or unknown)."""
        self.link.send_failed(send, self.exchange)

    def peer_endpoints(self) -> tuple[str, ...]:
        """Where each shard is, as the newest table says (the shell connects to them)."""
        return self.exchange.endpoints

    def handed_in(self) -> int:
        """Tokens received from peers into the current batch (the shell bounds a turn's)."""
        return self.intake.handed_in

    def newest_handoff_latencies(self, count: int) -> tuple[int, ...]:
        """The latencies of the newest ``count`` handoffs received, newest first (ms)."""
        return self.intake.newest_latencies(count)

    def progress(self) -> dict[str, int]:
        """Counters that grow while the loop turns (for the router's heartbeat view)."""
        return {"firings": self.engine.steps, "commits": self.commits}

    def next_deadline_ms(self) -> int | None:
        """When the core must run again at the latest with nothing arriving (None: only
        an arrival wakes it); a time at or before ``now`` means at once."""
        # The last batch stopped at a bound, or tokens are still to load: at once. A shard
        # that may not fire (not fenced yet, or read-only) waits for a message instead.
        may_fire = self.read_only_reason is None and self.mover.fenced(self.exchange)
        if (self.more_enabled and may_fire) or self.deferred.active:
            return self.engine.now
        deadlines = [
            d
            for d in (
                self.engine.next_deadline(),
                self.polls.next_deadline_ms(),
                self.link.next_deadline(self.exchange, self.mover),
            )
            if d is not None
        ]
        return min(deadlines, default=None)

    # -- the read side (shard/reading.py) ------------------------------------------------

    def reading(self) -> CoreReading:
        """The figures the shard's metrics show (:func:`shard.reading.core_reading`)."""
        return core_reading(
            self.net,
            self.engine,
            self.deferred,
            self.exchange,
            self.lease_desk,
            queues=self.queues,
            incarnation=self.incarnation,
            read_only=self.read_only_reason is not None,
            enabled_left=self.more_enabled,
            leases_parked=len(self.polls.parked),
            counters=self.counters
            + self.polls.counters
            + self.exchange.counters
            + self.link.counters
            + self.mover.counters,
            handoffs_timed=self.intake.handoffs_timed,
        )


_REQUEST_HANDLERS: Final[dict[type[Message], Callable[[ShardCore, Envelope], Message | None]]] = {
    Put: ShardCore._on_client_request,
    Lease: ShardCore._on_client_request,
    Complete: ShardCore._on_client_request,
    Renew: ShardCore._on_client_request,
    Release: ShardCore._on_client_request,
    Handoff: ShardCore._on_handoff,
    FetchSlot: ShardCore._on_fetch_slot,
    PoolWanted: ShardCore._on_pool_wanted,
    QueryCounts: ShardCore._on_query_counts,
    QueryTokens: ShardCore._on_query_tokens,
    Stats: ShardCore._on_stats,
    Ping: ShardCore._on_ping,
    Shutdown: ShardCore._on_shutdown,
}


def writes(reply: Message) -> bool:
    """Whether ``reply`` reports a change to the marking (a failed commit undoes it)."""
    return isinstance(reply, WRITING_REPLIES)
