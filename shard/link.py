"""A clustered shard's conversations with its peers and the router (SHELL).

Each turn of the shard's loop calls :meth:`Link.take_replies` before its batch (peer
acknowledgements free outbox runs in this batch; a newer table from the router is
adopted in it) and :meth:`Link.send_after_commit` after the commit (handoff runs, pool
requests, the heartbeat, table requests). Nothing is sent before the commit that
made it true. Heartbeats go out from the loop itself, idle or not, so the router sees
a shard that is alive *and* turning; the router being down only delays them.
"""

from __future__ import annotations

import logging
from typing import Final

from nets.engine import Engine
from router.wire import (
    Error,
    GetTable,
    HandoffAck,
    Heartbeat,
    HeartbeatAck,
    MoveOrders,
    PoolAnswer,
    SlotShipment,
    Table,
    encode,
)
from shard.exchange import Exchange
from shard.mover import Mover
from shard.shell.peers import ROUTER, Peers
from shard.shell.store import Batch

HEARTBEAT_MS: Final = 250
TABLE_REQUEST_MS: Final = 250  # at most one table request per this interval
# While tokens wait in the outbox, the table (with the peers' endpoints) is asked for
# again this often: a peer restarted on another port is found there, while sends to
# its old address neither fail nor arrive (ZeroMQ keeps them for a reconnection).
TABLE_REFRESH_PENDING_MS: Final = 2_000

log = logging.getLogger("cpn.shard.link")


class Link:
    """Heartbeats, table refreshes, handoff sends and acknowledgements for one shard."""

    def __init__(self, exchange: Exchange, peers: Peers, *, endpoint: str) -> None:
        self.exchange = exchange
        self.peers = peers
        self.endpoint = endpoint
        self.next_heartbeat_ms = 0
        self.table_wanted = True  # learn the peers' endpoints at start
        self.last_table_request_ms = -TABLE_REQUEST_MS
        # The newest epoch the router said exists, and the one the last table request
        # went out knowing: a request for a newer epoch goes at once (a restarted shard
        # fires only once its table reaches the epoch the router fenced it at).
        self.epoch_heard = 0
        self.epoch_asked = 0
        self.last_table_ms = 0  # when the last table arrived
        self.loops = 0
        self.router_epoch = 0
        self.cluster_id = ""  # a table from another cluster's (or net's) router is refused
        self.mover: Mover | None = None  # slot moves and fencing (set by the shard's loop)
        peers.update(exchange.endpoints)

    def take_replies(self, now_ms: int, batch: Batch) -> None:
        """Apply every reply waiting from peers and the router to ``batch``."""
        received = self.peers.receive()
        self.exchange.counters["peer_replies_malformed"] = self.peers.malformed
        for source, envelope in received:
            message = envelope.message
            if isinstance(message, HandoffAck):
                if self.exchange.acknowledged(message, now_ms, batch):
                    self.table_wanted = True
            elif isinstance(message, HeartbeatAck):
                self.router_epoch = message.epoch
                if message.epoch > self.exchange.table.epoch:
                    self.table_wanted = True
                    self.epoch_heard = max(self.epoch_heard, message.epoch)
            elif isinstance(message, Table) and not self._same_cluster(message):
                self.exchange.counters["tables_refused"] += 1
            elif isinstance(message, Table):
                self.last_table_ms = now_ms
                if self.exchange.table_received(message, batch):
                    self.peers.update(self.exchange.endpoints)
                    if self.mover is not None:
                        self.mover.table_adopted()
                self.table_wanted = any(
                    not e for i, e in enumerate(self.exchange.endpoints) if i != self.exchange.me
                )
            elif isinstance(message, MoveOrders) and self.mover is not None:
                if self.mover.orders(message, now_ms):
                    self.table_wanted = True
                    self.epoch_heard = max(self.epoch_heard, message.epoch)
            elif isinstance(message, SlotShipment) and self.mover is not None:
                self.mover.shipment(message)
            elif isinstance(message, PoolAnswer):
                self.exchange.counters["pool_tokens_promised"] += message.given
            elif isinstance(message, Error):
                self.exchange.counters[f"peer_errors_{message.code}"] += 1
                log.warning(
                    "%s answered with %s: %s",
                    "the router" if source == ROUTER else f"shard {source}",
                    message.code,
                    message.message,
                )
            else:
                self.exchange.counters["peer_replies_unexpected"] += 1

    def send_after_commit(self, now_ms: int, engine: Engine, progress: dict[str, int]) -> None:
        """Send what the last commit made true, plus heartbeat and table requests."""
        self.loops += 1
        for shard_id, frame in self.exchange.outgoing(now_ms):
            if not self.peers.send(shard_id, frame):
                # The run stays in the outbox and goes again after the resend time.
                self.exchange.counters["handoff_sends_failed"] += 1
                if not self.peers.knows(shard_id):
                    self.table_wanted = True
        for shard_id, frame in self.exchange.pool_requests(engine, now_ms):
            self.peers.send(shard_id, frame)
        if not self.peers.has_router:
            return
        me = self.exchange.me
        if now_ms >= self.next_heartbeat_ms:
            self.next_heartbeat_ms = now_ms + HEARTBEAT_MS
            beat = Heartbeat(
                me,
                self.endpoint,
                self.exchange.table.epoch,
                {**progress, "loops": self.loops},
                self.cluster_id,
            )
            self.peers.send(ROUTER, encode(beat, message_id=0, incarnation=self.incarnation))
        report = None if self.mover is None else self.mover.report(now_ms)
        if report is not None:
            self.peers.send(ROUTER, report)
        if (
            now_ms >= self.last_table_ms + TABLE_REFRESH_PENDING_MS
            and self.exchange.outbox.pending_tokens()
        ):
            self.table_wanted = True
        newer = self.epoch_heard > self.epoch_asked
        if self.table_wanted and (newer or now_ms >= self.last_table_request_ms + TABLE_REQUEST_MS):
            self.last_table_request_ms = now_ms
            self.epoch_asked = self.epoch_heard
            self.peers.send(ROUTER, encode(GetTable(), message_id=0, incarnation=self.incarnation))

    def _same_cluster(self, table: Table) -> bool:
        if table.net == self.exchange.net.name and table.cluster_id == self.cluster_id:
            return True
        log.error(
            "refusing the table of the router at %s: it serves net %r of cluster %r, this shard "
            "runs net %r of cluster %r; check the --router address and the cluster file",
            self.peers.router_endpoint,
            table.net,
            table.cluster_id,
            self.exchange.net.name,
            self.cluster_id,
        )
        return False

    @property
    def incarnation(self) -> int:
        return self.exchange.incarnation

    def next_deadline(self) -> int:
        """The latest time the loop must wake for this link (heartbeat or resend)."""
        deadlines = [self.next_heartbeat_ms] if self.peers.has_router else []
        resend = self.exchange.outbox.next_deadline()
        if resend is not None:
            deadlines.append(resend)
        if self.table_wanted and self.peers.has_router:
            deadlines.append(self.last_table_request_ms + TABLE_REQUEST_MS)
        if self.mover is not None and self.peers.has_router:
            deadlines.append(self.mover.next_deadline())
        return min(deadlines, default=1 << 62)
