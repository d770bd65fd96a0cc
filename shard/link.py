"""A shard's conversations with its peers and the router: what to send, and when (core).

The core hands every reply from a peer or the router to :meth:`Link.take` before its
batch is committed (peer acknowledgements free outbox runs in this batch; a newer
table from the router is adopted in it), and asks :meth:`Link.sends` after the commit
for what to send: handoff runs, pool requests, the heartbeat, move reports, shipment
and table requests. Nothing is sent before the commit that made it true. Heartbeats
go out from the loop itself, idle or not, so the router sees a shard that is alive
*and* turning; the router being down only delays them.

The link decides; the shell only carries frames (:mod:`shard.shell.peers`). Where a
peer is comes from the newest table's endpoints; when to ask the router for a table
again is decided here: at start, when a peer's endpoint is unknown or a send to it
fails, when the router or a move order names a newer epoch (asked at once: a
restarted shard fires only once its table reaches the epoch the router fenced it at),
and, while tokens wait in the outbox or a move's shipment is being fetched, every
:data:`TABLE_REFRESH_PENDING_MS` (a peer restarted on another port is found there,
while sends to its old address neither fail nor arrive: ZeroMQ keeps them for a
reconnection). The simulator found the shipment case: a move's target fetched from
its source's old port until the end of time.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from nets.engine import Engine
from router.wire import (
    Error,
    GetTable,
    HandoffAck,
    Heartbeat,
    HeartbeatAck,
    Message,
    MoveOrders,
    PoolAnswer,
    SlotShipment,
    Table,
    encode,
)
from shard.batch import Batch
from shard.exchange import Exchange
from shard.mover import MoveHost, Mover

HEARTBEAT_MS: Final = 250
# A heartbeat that could not go (the router's connection is not up yet: a shard's first
# heartbeat, right after it connects, or a router that is down) goes again this soon,
# not a whole HEARTBEAT_MS later: the router learns a new shard's endpoint, and the
# cluster serves, that much sooner.
HEARTBEAT_RETRY_MS: Final = 10
TABLE_REQUEST_MS: Final = 250  # at most one table request per this interval
TABLE_REFRESH_PENDING_MS: Final = 2_000
ROUTER: Final = -1  # the target (and source) id of the router
NEVER_MS: Final = 1 << 62

log = logging.getLogger("cpn.shard.link")


@dataclass(frozen=True, slots=True)
class Send:
    """One frame to send after the commit: to a shard id or :data:`ROUTER`.

    ``kind`` says what the core does if it cannot go now: a ``handoff`` run stays in
    the outbox (resent later; an unknown peer makes the shard ask for the table), a
    ``fetch`` of a shipment makes it ask for the table too; the rest are sent again
    in their own time."""

    target: int
    frame: bytes
    kind: str


class Link:
    """Heartbeats, table refreshes, handoff sends and acknowledgements for one shard."""

    def __init__(
        self, *, me: int, incarnation: int, endpoint: str, cluster_id: str, router: str
    ) -> None:
        self.me = me
        self.incarnation = incarnation
        self.endpoint = endpoint  # where the others reach this shard (the heartbeat says)
        self.cluster_id = cluster_id  # a table from another cluster's router is refused
        self.router = router  # the router's endpoint; "" for a standalone shard
        self.next_heartbeat_ms = 0
        self.table_wanted = True  # learn the peers' endpoints at start
        self.last_table_request_ms = -TABLE_REQUEST_MS
        # The newest epoch the router said exists, and the one the last table request
        # went out knowing: a request for a newer epoch goes at once.
        self.epoch_heard = 0
        self.epoch_asked = 0
        self.last_table_ms = 0  # when the last table arrived
        self.loops = 0
        self.router_epoch = 0
        self.counters: Counter[str] = Counter()

    def take(
        self,
        now_ms: int,
        source: int,
        message: Message,
        exchange: Exchange,
        mover: Mover,
        batch: Batch,
        host: MoveHost,
    ) -> None:
        """Apply one reply from a peer or the router (``source``) to ``batch``."""
        if isinstance(message, HandoffAck):
            if exchange.acknowledged(message, now_ms, batch):
                self.table_wanted = True
        elif isinstance(message, HeartbeatAck):
            self.router_epoch = message.epoch
            if message.epoch > exchange.table.epoch:
                self.table_wanted = True
                self.epoch_heard = max(self.epoch_heard, message.epoch)
        elif isinstance(message, Table) and not self._same_cluster(message, exchange):
            self.counters["tables_refused"] += 1
        elif isinstance(message, Table):
            self.last_table_ms = now_ms
            if exchange.table_received(message, batch):
                mover.table_adopted(exchange, batch, host)
            self.table_wanted = any(
                not e for i, e in enumerate(exchange.endpoints) if i != exchange.me
            )
        elif isinstance(message, MoveOrders):
            if mover.orders(message, now_ms, exchange, batch, host):
                self.table_wanted = True
                self.epoch_heard = max(self.epoch_heard, message.epoch)
        elif isinstance(message, SlotShipment):
            mover.shipment(message, exchange, batch)
        elif isinstance(message, PoolAnswer):
            self.counters["pool_tokens_promised"] += message.given
        elif isinstance(message, Error):
            self.counters[f"peer_errors_{message.code}"] += 1
            log.warning(
                "%s answered with %s: %s",
                "the router" if source == ROUTER else f"shard {source}",
                message.code,
                message.message,
            )
        else:
            self.counters["peer_replies_unexpected"] += 1

    def sends(
        self,
        now_ms: int,
        exchange: Exchange,
        mover: Mover,
        engine: Engine,
        progress: Callable[[], dict[str, int]],
        host: MoveHost,
    ) -> list[Send]:
        """What the last commit made true, plus heartbeat, reports and requests."""
        self.loops += 1
        sends = [Send(target, frame, "handoff") for target, frame in exchange.outgoing(now_ms)]
        sends += [Send(target, frame, "fetch") for target, frame in mover.take_fetches()]
        sends += [Send(t, frame, "pool") for t, frame in exchange.pool_requests(engine, now_ms)]
        if not self.router:
            return sends
        if now_ms >= self.next_heartbeat_ms:
            self.next_heartbeat_ms = now_ms + HEARTBEAT_MS
            beat = Heartbeat(
                exchange.me,
                self.endpoint,
                exchange.table.epoch,
                {**progress(), "loops": self.loops},
                self.cluster_id,
            )
            sends.append(Send(ROUTER, self._encode(beat), "heartbeat"))
        report = mover.report(now_ms, exchange, host)
        if report is not None:
            sends.append(Send(ROUTER, report, "report"))
        if now_ms >= self.last_table_ms + TABLE_REFRESH_PENDING_MS and self.waiting_on_peers(
            exchange, mover
        ):
            self.table_wanted = True
        newer = self.epoch_heard > self.epoch_asked
        if self.table_wanted and (newer or now_ms >= self.last_table_request_ms + TABLE_REQUEST_MS):
            self.last_table_request_ms = now_ms
            self.epoch_asked = self.epoch_heard
            sends.append(Send(ROUTER, self._encode(GetTable()), "table"))
        return sends

    @staticmethod
    def waiting_on_peers(exchange: Exchange, mover: Mover) -> bool:
        """Whether this shard waits on a peer: tokens in its outbox, or a move's shipment
        being fetched. Sends to a peer restarted on another port neither fail nor arrive,
        so while it waits, the table (with the peers' endpoints) is asked for again."""
        return bool(exchange.outbox.pending_tokens() or mover.stage_orders)

    def send_failed(self, send: Send, exchange: Exchange) -> None:
        """``send`` could not go now; see :class:`Send` for what follows."""
        if send.kind == "handoff":
            # The run stays in the outbox and goes again after the resend time.
            self.counters["handoff_sends_failed"] += 1
            endpoints = exchange.endpoints
            if not (0 <= send.target < len(endpoints) and endpoints[send.target]):
                self.table_wanted = True
        elif send.kind == "fetch":
            self.table_wanted = True  # the source may have moved: learn its endpoint
        elif send.kind == "heartbeat":
            self.counters["heartbeat_sends_failed"] += 1
            self.next_heartbeat_ms -= HEARTBEAT_MS - HEARTBEAT_RETRY_MS

    def _encode(self, message: Message) -> bytes:
        return encode(message, message_id=0, incarnation=self.incarnation)

    def _same_cluster(self, table: Table, exchange: Exchange) -> bool:
        if table.net == exchange.net.name and table.cluster_id == self.cluster_id:
            return True
        log.error(
            "refusing the table of the router at %s: it serves net %r of cluster %r, this shard "
            "runs net %r of cluster %r; check the --router address and the cluster file",
            self.router,
            table.net,
            table.cluster_id,
            exchange.net.name,
            self.cluster_id,
        )
        return False

    def next_deadline(self, exchange: Exchange, mover: Mover) -> int | None:
        """The latest time the loop must wake for this link (heartbeat or resend)."""
        deadlines = [self.next_heartbeat_ms] if self.router else []
        resend = exchange.outbox.next_deadline()
        if resend is not None:
            deadlines.append(resend)
        if self.router and self.table_wanted:
            deadlines.append(self.last_table_request_ms + TABLE_REQUEST_MS)
        if self.router:
            deadlines.append(mover.next_deadline())
        return min(deadlines, default=None)
