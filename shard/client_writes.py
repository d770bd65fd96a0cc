"""A client's writes, from the client table's check to the reply remembered with the batch.

A client writes with ``Put``, ``Lease``, ``Complete``, ``Renew`` and ``Release``, each
carrying its client id and a sequence number. :class:`ClientWrites` applies one:

1. The client table (:mod:`shard.clients`) answers a repeat from what it remembered,
   and refuses an older request than the newest; nothing is applied again.
2. A new request drops the client's parked lease, if any (it gave up waiting: only its
   newest request is answered), and is refused while the store is read-only.
3. It is applied to the engine and the current batch: a put's tokens stay here, go
   through the outbox (a slot sealed for a move goes to its next owner that way), or the
   whole put is redirected to the owner the table names; the lease family goes through
   the lease desk (:mod:`shard.lease_desk`).
4. The reply is remembered in the client table and in the batch, so it is committed with
   the change it reports (docs/shard.md, "Requests").

It is apart from the core because it is the whole of one path, a client's write, with
no state of its own: the core keeps the dispatch of every message type and hands a
client's write here. Its collaborators are passed in explicitly, never the core: the
shard's setup, the engine, the exchange (ownership), the batch recorder, the lease desk,
the client table, the long polls, the counter table, whether the store is read-only,
and ``work_returned``, which tells the core that work was handed back and may be offered
again at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from nets.engine import Engine
from router.wire import Complete, Lease, Message, Put, PutAck, Redirect, Release, Renew
from shard.clients import ClientTable
from shard.exchange import Exchange
from shard.lease_desk import LeaseDesk
from shard.parked import LongPolls
from shard.recorder import BatchRecorder
from shard.request_checks import DURATION_MS_MAX, RequestError, tokens_of
from shard.shard_setup import ShardSetup

# A client's writes: each carries (client_id, request_seq) and goes through the client table.
ClientWrite = Put | Lease | Complete | Renew | Release


class ClientWrites:
    """The client writes of one core (module docstring).

    Args:
        setup: the net and the lease machinery's places (no client writes into them).
        engine, exchange, recorder, lease_desk, client_table, polls: the core's.
        counters: the core's counter table, counted into (``puts_redirected``).
        writable: raises :class:`RequestError` while the store refuses writes (the core's
            check: the core alone knows why it is read-only).
        work_returned: called when a hand-back made work available again.
    """

    def __init__(
        self,
        setup: ShardSetup,
        engine: Engine,
        exchange: Exchange,
        recorder: BatchRecorder,
        lease_desk: LeaseDesk,
        client_table: ClientTable,
        polls: LongPolls,
        *,
        counters: Counter[str],
        writable: Callable[[], None],
        work_returned: Callable[[], None],
    ) -> None:
        self._net = setup.net
        self._companions = setup.companions
        self._engine = engine
        self._exchange = exchange
        self._recorder = recorder
        self._lease_desk = lease_desk
        self._client_table = client_table
        self._polls = polls
        self._counters = counters
        self._writable = writable
        self._work_returned = work_returned

    def apply(self, message: ClientWrite) -> Message | None:
        """The reply to a client's write, applied to the engine and the batch unless it
        is a repeat (None: a lease that waits for work, parked by the shell).

        Raises:
            RequestError: the request cannot be served; nothing of it is applied.
            nets.errors.CpnError: a token or place in it is wrong.
        """
        duplicate = self._client_table.repeat(
            message.client_id, message.request_seq, self._lease_desk.untouched
        )
        if duplicate is not None:
            return duplicate
        # The client asked again (it gave up waiting): only its newest request is
        # answered, so the client table never goes back to an older one.
        self._polls.drop(message.client_id)
        self._writable()
        return _WRITES[type(message)](self, message)

    def grant(self, lease: Lease) -> Message:
        """Lease up to ``max_tokens`` available tokens (maybe none) in this batch."""
        reply = self._lease_desk.grant(lease, self._recorder.batch)
        return self._remember(lease.client_id, lease.request_seq, reply)

    def _remember(self, client_id: str, seq: int, reply: Message) -> Message:
        return self._client_table.remember(client_id, seq, reply, self._recorder.batch)

    def _put(self, put: Put) -> Message:
        tokens = tokens_of(self._net, self._companions, put.place, put.tokens)
        if not 0 <= put.delay_ms <= DURATION_MS_MAX:
            raise RequestError(
                "bad_request", f"delay_ms must be in 0..{DURATION_MS_MAX}, got {put.delay_ms}"
            )
        place = self._net.place(put.place)
        exchange = self._exchange
        sealed = exchange.sealed
        for token in tokens:
            if not exchange.owns(place, token):
                slot = exchange.lane_of(place, token)
                assert slot is not None
                if slot in sealed:
                    continue  # moving: it goes through the outbox to the slot's next owner
                self._counters["puts_redirected"] += 1
                table = exchange.table
                return Redirect(slot, table.owner(slot), table.epoch)
        at = self._engine.now + put.delay_ms
        for token in tokens:
            self._recorder.emit(put.place, token, at)  # here, or on to a sealed slot's owner
        return self._remember(
            put.client_id, put.request_seq, PutAck(put.request_seq, len(tokens), False)
        )

    def _lease(self, lease: Lease) -> Message | None:
        """Grant ``lease``; None when it waits for work (parked, answered later)."""
        self._lease_desk.check(lease)
        if lease.wait_ms and self._polls.can_park() and not self._engine.has_available(lease.place):
            return None
        return self.grant(lease)

    def _complete(self, complete: Complete) -> Message:
        recorder = self._recorder
        reply = self._lease_desk.complete(complete, recorder.batch, recorder.emit)
        return self._remember(complete.client_id, complete.request_seq, reply)

    def _renew(self, renew: Renew) -> Message:
        reply = self._lease_desk.renew(renew, self._recorder.batch)
        return self._remember(renew.client_id, renew.request_seq, reply)

    def _release(self, release: Release) -> Message:
        reply = self._lease_desk.release(release, self._recorder.batch)
        self._work_returned()  # offer the work again at once
        return self._remember(release.client_id, release.request_seq, reply)


# The client writes by type, once the client table found them new (see apply).
_WRITES: Final[dict[type[Message], Callable[[ClientWrites, Any], Message | None]]] = {
    Put: ClientWrites._put,
    Lease: ClientWrites._lease,
    Complete: ClientWrites._complete,
    Renew: ClientWrites._renew,
    Release: ClientWrites._release,
}
