"""The router's control plane as a pure core: requests in, replies and writes out (sans-IO).

The router daemon (router/shell/daemon.py) owns the socket, the LMDB file, the signals
and the clock; everything the router *decides* is here, in :class:`ControlPlane`: which
requests it serves and how, what it knows of each shard (endpoint, incarnation,
liveness, progress), and, through its :class:`~router.coordinator.Coordinator`, the
partition table, slot moves, scaling and fencing. A simulator drives the same object
with a virtual clock and encoded frames, with no socket at all.

Theory of operation:

* **Inputs.** :meth:`ControlPlane.receive` takes one request as it came off the wire
  (its frames and the peer's routing id) at ``now_ms``; :meth:`ControlPlane.handle` a
  request already decoded; :meth:`ControlPlane.tick` only the time. ``now_ms`` is the
  caller's monotonic clock in milliseconds (virtual in a simulation); nothing here
  reads a clock.
* **Outputs.** Each input returns an :class:`Outcome`: the reply (a message and its
  encoded frame; none for a tick), the durable state to write (:class:`RouterWrite`,
  or ``None`` when nothing durable changed) and the move states reached (fault points
  hook on them). The caller writes ``write`` in **one** transaction, then fires the
  fault points, and only then sends the reply: a reply never tells anyone about state
  that a crash could take back. :meth:`ControlPlane.next_deadline_ms` says when the
  core next wants a :meth:`~ControlPlane.tick` (it may be ticked more often).
* **Dispatch** is a table from message type to handler, built in the constructor. A
  request the router does not serve, a reply sent as a request, garbage, a shard id
  outside the cluster, a heartbeat of an older incarnation than one already seen: each
  is answered with an :class:`~router.wire.Error` carrying a stable code, and counted;
  nothing raises out of :meth:`~ControlPlane.receive` but a programmer error.
* **Liveness** is judged on ``now_ms``: a shard is *alive* if its last heartbeat came
  less than ``heartbeat_timeout_ms`` ago, and *progressing* if its progress counters
  changed within that time (an alive but stuck loop shows as alive, not progressing).
  An older incarnation of a shard than one already heard is not believed.
* **Recovery.** Every attribute is set in the constructor, from a :class:`Recovered`
  record: what the daemon read back from its store. A restarted router is a new core
  built from it; liveness and progress start unknown.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from nets.errors import CpnError
from nets.model import Net
from router.coordinator import Coordinator, CoordinatorError
from router.limits import PeerRateLimits
from router.table import PartitionTable
from router.wire import (
    PLACE_FIXED,
    PLACE_POOL,
    REQUESTS,
    ClusterState,
    ClusterStatus,
    Envelope,
    Error,
    GetTable,
    Heartbeat,
    HeartbeatAck,
    Message,
    MoveOrders,
    MoveReport,
    Ping,
    Pong,
    Scale,
    Scaled,
    Shutdown,
    ShuttingDown,
    Statistics,
    Stats,
    Table,
    WireFormatError,
    decode,
    encode,
)

HEARTBEAT_TIMEOUT_MS: Final = 3_000
TICK_MS: Final = 200  # the coordinator plans, commits and retires at least this often
ENDPOINT_CHARS_MAX: Final = 256
SERVED: Final = (GetTable, Heartbeat, ClusterStatus, Stats, Ping, Shutdown)

log = logging.getLogger("cpn.router")


class RouterRequestError(CpnError):
    """A request the router understood but will not serve; ``code`` goes on the wire."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def places_of(net: Net) -> dict[str, int]:
    """How each place is partitioned, as :class:`~router.wire.Table` carries it."""
    return {
        p.name: (
            PLACE_POOL
            if p.pool
            else PLACE_FIXED
            if p.key is None
            else p.colour_set.field_index(p.key)
        )
        for p in net.places
    }


@dataclass(frozen=True, slots=True)
class Recovered:
    """The router's durable state as its store holds it (a new core starts from it).

    ``control`` is :meth:`Coordinator.encode`'s blob (``None``: no move, scale or fence
    was ever recorded); ``incarnation`` is this run's start count, stamped on replies.
    """

    table: PartitionTable
    endpoints: tuple[str, ...]
    control: bytes | None
    incarnation: int


@dataclass(frozen=True, slots=True)
class RouterWrite:
    """The durable state after an input, to write in one transaction before replying.

    Always the whole of it (a few KiB, written rarely): a write that failed is simply
    written again with the next input's (see :meth:`ControlPlane.write_failed`).
    """

    table: PartitionTable
    control: bytes
    endpoints: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one input asks of the daemon, in this order: write, fault points, reply.

    ``reply`` is ``None`` for a tick; ``frame`` is its encoding (``b""`` for none),
    stamped with ``message_id`` and the router's incarnation.
    """

    write: RouterWrite | None
    reached: tuple[str, ...]  # move states reached: fault points `router-<state>`
    reply: Message | None = None
    message_id: int = 0
    frame: bytes = b""


@dataclass(slots=True)
class ShardView:
    """What the router knows of one shard from its heartbeats (times: the core's ms)."""

    incarnation: int = 0
    last_seen_ms: int | None = None
    epoch: int = 0
    progress: dict[str, int] = field(default_factory=dict)
    progress_changed_ms: int | None = None


Handler = Callable[[Envelope, int], Message]


class ControlPlane:
    """The router's pure core (see the module docstring).

    Args:
        net_name: the net the cluster runs (``Table.net``).
        places: how each place is partitioned (:func:`places_of`).
        recovered: the durable state read back from the store.
        heartbeat_timeout_ms: a shard silent this long is not alive.
        cluster_id: heartbeats naming another cluster are refused.
        rate_limit: ``(requests per s, burst)`` per peer, or ``None``.
    """

    def __init__(
        self,
        net_name: str,
        places: Mapping[str, int],
        recovered: Recovered,
        *,
        heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS,
        cluster_id: str = "",
        rate_limit: tuple[int, int] | None = None,
    ) -> None:
        assert heartbeat_timeout_ms > 0, heartbeat_timeout_ms
        self.net_name = net_name
        self.places = dict(places)
        self.incarnation = recovered.incarnation
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.cluster_id = cluster_id
        self.coordinator = Coordinator(recovered.table, control=recovered.control)
        span = self.coordinator.span()
        # The cluster may have grown since the endpoints were written.
        self.endpoints = (*recovered.endpoints, *("",) * (span - len(recovered.endpoints)))
        self.shards = [ShardView() for _ in range(span)]
        self.counters: Counter[str] = Counter()
        self.limits = (
            None if rate_limit is None else PeerRateLimits(per_s=rate_limit[0], burst=rate_limit[1])
        )
        self.stopping = False  # a Shutdown was served: the daemon exits after this turn
        self.unsaved = False  # durable state the coordinator does not flag (endpoints)
        self.ticked_ms: int | None = None
        self.handling_id = 0  # the message id of the request being handled
        self._handlers: dict[type[Message], Handler] = {
            GetTable: self._table,
            Heartbeat: self._heartbeat,
            MoveReport: self._report,
            Scale: self._scale,
            ClusterStatus: self._status,
            Stats: self._stats,
            Ping: self._ping,
            Shutdown: self._shutdown,
        }

    @property
    def table(self) -> PartitionTable:
        return self.coordinator.table

    # -- inputs ---------------------------------------------------------------------------

    def receive(self, now_ms: int, frames: Sequence[bytes], *, peer: bytes = b"") -> Outcome:
        """Answer one request as it came off the wire: ``frames`` after the routing id.

        ``peer`` names the sender for rate limiting and logs. Garbage, a request that
        is not served and a refused one each get an :class:`~router.wire.Error` reply.
        """
        self.handling_id = 0
        if self.limits is not None and not self.limits.allow(peer, now_ms):
            # Refused before decoding: a flooding peer costs little and others get turns.
            self.counters["requests_rate_limited"] += 1
            return self._outcome(Error("rate_limited", "too many requests"), 0)
        try:
            if len(frames) != 1:
                raise WireFormatError(f"expected one message frame, got {len(frames)}")
            envelope = decode(frames[0])
        except WireFormatError as exc:
            self.counters["frames_malformed"] += 1
            log.warning("malformed frame from %s: %s", peer.hex(), exc)
            return self._outcome(Error("malformed_frame", str(exc)), exc.message_id)
        return self.handle(now_ms, envelope, peer=peer)

    def handle(self, now_ms: int, envelope: Envelope, *, peer: bytes = b"") -> Outcome:
        """Answer one decoded request (see :meth:`receive`)."""
        message = envelope.message
        self.handling_id = envelope.message_id
        self.counters[f"requests_{type(message).__name__}"] += 1
        try:
            handler = self._handlers.get(type(message))
            if handler is None:
                raise self._not_served(message)
            reply = handler(envelope, now_ms)
        except RouterRequestError as exc:
            self.counters[f"errors_{exc.code}"] += 1
            log.info("refused a request from %s: %s", peer.hex(), exc)
            reply = Error(exc.code, str(exc))
        except CpnError as exc:
            self.counters["errors_request"] += 1
            reply = Error("bad_request", str(exc))
        return self._outcome(reply, envelope.message_id)

    def tick(self, now_ms: int) -> Outcome:
        """Commit what staged, retire drained leaving shards, plan moves (no reply).

        Call it by :meth:`next_deadline_ms`; calling it more often is harmless.
        """
        self.ticked_ms = now_ms
        self.coordinator.tick(now_ms, self.alive(now_ms))
        return self._outcome(None, 0)

    def crashed(self, exc: Exception) -> Outcome:
        """The reply to the request whose handling raised ``exc`` (a bug: counted).

        The daemon calls it from its ``except Exception`` so that one request cannot
        stop the router; a simulation lets the exception through instead.
        """
        self.counters["errors_internal"] += 1
        return self._outcome(Error("internal", f"{type(exc).__name__}: {exc}"), self.handling_id)

    def write_failed(self, why: str) -> Outcome:
        """The daemon could not write an outcome's :class:`RouterWrite`.

        The next outcome carries the whole durable state again; meanwhile the request
        is answered with an error (its reply may describe state that is not durable).
        """
        self.counters["store_writes_failed"] += 1
        refusal = Error("internal", f"the router's store failed: {why}")
        frame = encode(refusal, message_id=self.handling_id, incarnation=self.incarnation)
        self.unsaved = True  # after the refusal, which must not carry the write itself
        return Outcome(None, (), refusal, self.handling_id, frame)

    # -- reading --------------------------------------------------------------------------

    def next_deadline_ms(self) -> int:
        """When the core next wants a :meth:`tick` (already due if never ticked)."""
        return 0 if self.ticked_ms is None else self.ticked_ms + TICK_MS

    def alive(self, now_ms: int) -> set[int]:
        """The shards heard from within the heartbeat timeout."""
        timeout_ms = self.heartbeat_timeout_ms
        return {
            k
            for k, view in enumerate(self.shards)
            if view.last_seen_ms is not None and now_ms - view.last_seen_ms < timeout_ms
        }

    def statistics(self) -> dict[str, Any]:
        return {
            "net": self.net_name,
            "epoch": self.table.epoch,
            "shard_count": self.table.shard_count,
            "incarnation": self.incarnation,
            "counters": dict(self.counters),
            **self.coordinator.summary(),
        }

    # -- the outcome ----------------------------------------------------------------------

    def _outcome(self, reply: Message | None, message_id: int) -> Outcome:
        """Gather the durable change (if any) behind ``reply``, and encode the reply."""
        coordinator = self.coordinator
        write = None
        reached: tuple[str, ...] = ()
        if coordinator.changed or self.unsaved:
            span = coordinator.span()
            self.shards += [ShardView() for _ in range(span - len(self.shards))]
            if len(self.endpoints) < span:
                self.endpoints = (*self.endpoints, *("",) * (span - len(self.endpoints)))
            write = RouterWrite(coordinator.table, coordinator.encode(), self.endpoints)
            coordinator.changed = False
            self.unsaved = False
            reached = tuple(coordinator.take_transitions())
        if reply is None:
            return Outcome(write, reached)
        frame = encode(reply, message_id=message_id, incarnation=self.incarnation)
        return Outcome(write, reached, reply, message_id, frame)

    # -- handlers (the dispatch table) ----------------------------------------------------

    def _not_served(self, message: Message) -> RouterRequestError:
        if isinstance(message, REQUESTS):
            return RouterRequestError(
                "not_served",
                f"the router does not serve {type(message).__name__} (it serves "
                f"{', '.join(cls.__name__ for cls in SERVED)}); send token requests to the "
                "shard that owns their slot (see GetTable)",
            )
        return RouterRequestError(
            "not_a_request", f"{type(message).__name__} is a reply, not a request"
        )

    def _table(self, _envelope: Envelope, _now_ms: int) -> Table:
        table = self.table
        return Table(
            self.net_name,
            table.epoch,
            table.shard_count,
            table.owners,
            table.slot_epochs,
            self.endpoints,
            self.places,
            self.cluster_id,
        )

    def _heartbeat(self, envelope: Envelope, now_ms: int) -> HeartbeatAck:
        beat = envelope.message
        assert isinstance(beat, Heartbeat)
        incarnation = envelope.incarnation
        span = self.coordinator.span()  # members, and shards still leaving
        if not 0 <= beat.shard_id < span:
            raise RouterRequestError(
                "bad_shard_id",
                f"shard id {beat.shard_id} is not one of 0..{span - 1} "
                f"(this cluster has {span} shards)",
            )
        if not beat.endpoint.startswith("tcp://") or len(beat.endpoint) > ENDPOINT_CHARS_MAX:
            raise RouterRequestError(
                "bad_request",
                f"shard {beat.shard_id} reported endpoint {beat.endpoint[:80]!r}, not "
                "tcp://HOST:PORT",
            )
        if beat.cluster_id != self.cluster_id:
            raise RouterRequestError(
                "wrong_cluster",
                f"shard {beat.shard_id} at {beat.endpoint[:80]} belongs to cluster "
                f"{beat.cluster_id!r}, this router to {self.cluster_id!r}; check its cluster file",
            )
        view = self.shards[beat.shard_id]
        if incarnation < view.incarnation:
            raise RouterRequestError(
                "stale_incarnation",
                f"shard {beat.shard_id}'s incarnation {incarnation} is older than "
                f"{view.incarnation}, which has already reported; it is not believed",
            )
        if incarnation > view.incarnation:
            log.info(
                "shard %d incarnation %d at %s (epoch %d)",
                beat.shard_id,
                incarnation,
                beat.endpoint,
                beat.epoch,
            )
        if self.endpoints[beat.shard_id] != beat.endpoint:
            # Written before the heartbeat is acknowledged, so that a restarted router
            # hands out the last known endpoints at once.
            changed = list(self.endpoints)
            changed[beat.shard_id] = beat.endpoint
            self.endpoints = tuple(changed)
            self.unsaved = True
        if view.progress_changed_ms is None or beat.progress != view.progress:
            view.progress_changed_ms = now_ms
        self.coordinator.incarnation(beat.shard_id, incarnation)
        view.incarnation = incarnation
        view.last_seen_ms = now_ms
        view.epoch = beat.epoch
        view.progress = dict(beat.progress)
        return HeartbeatAck(self.table.epoch)

    def _report(self, envelope: Envelope, now_ms: int) -> MoveOrders:
        report = envelope.message
        assert isinstance(report, MoveReport)
        incarnation = envelope.incarnation
        coordinator = self.coordinator
        if not 0 <= report.shard_id < coordinator.span():
            raise RouterRequestError(
                "bad_shard_id",
                f"shard id {report.shard_id} is not one of 0..{coordinator.span() - 1}",
            )
        view = self.shards[report.shard_id]
        if incarnation < view.incarnation:
            raise RouterRequestError(
                "stale_incarnation",
                f"shard {report.shard_id}'s incarnation {incarnation} is older than "
                f"{view.incarnation}; its report is not believed",
            )
        coordinator.incarnation(report.shard_id, incarnation)
        # Once a newer incarnation spoke (a report, or a heartbeat), the older is not
        # believed: the report may fence the new one before its first heartbeat came.
        view.incarnation = incarnation
        coordinator.report(
            report.shard_id,
            report.answers,
            now_ms=now_ms,
            outbox_tokens=report.outbox_tokens,
            pool_tokens=report.pool_tokens,
            owed=report.owed,
            firings_total=report.firings_total,
        )
        return MoveOrders(
            coordinator.table.epoch,
            coordinator.members,
            coordinator.fence_epoch(report.shard_id, incarnation),
            coordinator.orders_for(report.shard_id),
        )

    def _scale(self, envelope: Envelope, _now_ms: int) -> Scaled:
        message = envelope.message
        assert isinstance(message, Scale)
        epoch_before = self.table.epoch
        try:
            self.coordinator.scale(message.shard_count)
        except CoordinatorError as exc:
            raise RouterRequestError("bad_request", str(exc)) from exc
        log.info("scaling to %d shards (epoch %d)", message.shard_count, epoch_before)
        return Scaled(self.coordinator.members, self.table.epoch)

    def _status(self, _envelope: Envelope, now_ms: int) -> ClusterState:
        timeout_ms = self.heartbeat_timeout_ms
        coordinator = self.coordinator
        states = []
        for shard_id, view in enumerate(self.shards[: coordinator.span()]):
            ago_ms = -1 if view.last_seen_ms is None else now_ms - view.last_seen_ms
            changed_ms = view.progress_changed_ms
            states.append(
                {
                    "endpoint": self.endpoints[shard_id],
                    "incarnation": view.incarnation,
                    "alive": 0 <= ago_ms < timeout_ms,
                    "last_seen_ms_ago": ago_ms,
                    "epoch": view.epoch,
                    "progress": dict(view.progress),
                    "progressing": changed_ms is not None and now_ms - changed_ms < timeout_ms,
                    "slots": self.table.owners.count(shard_id),
                    "member": shard_id < coordinator.members,
                    "retired": shard_id >= max(coordinator.members, self.table.shard_count),
                }
            )
        return ClusterState(self.net_name, self.table.epoch, tuple(states))

    def _stats(self, _envelope: Envelope, _now_ms: int) -> Statistics:
        return Statistics(self.statistics())

    def _ping(self, _envelope: Envelope, now_ms: int) -> Pong:
        return Pong(now_ms)  # the router's clock, as a shard answers with its own

    def _shutdown(self, _envelope: Envelope, _now_ms: int) -> ShuttingDown:
        self.stopping = True
        return ShuttingDown()
