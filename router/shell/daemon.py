"""The router daemon: the cluster's control plane (SHELL).

The router holds the authoritative partition table and tells everyone where the shards
listen. It forwards no token data: clients and shards fetch the table with
:class:`~router.wire.GetTable` and talk to the owners directly, so the shards keep
firing (and serving clients with a cached table) while the router is down.

Theory of operation (one loop, one thread):

1. Wait on the socket for at most ``POLL_MS`` (so that a SIGTERM is seen promptly).
2. Take up to ``REQUESTS_PER_TURN_MAX`` messages; decode each (garbage gets an
   :class:`~router.wire.Error` reply and is counted, never a crash) and answer it:
   ``GetTable`` -> ``Table``, ``Heartbeat`` -> ``HeartbeatAck`` (recording the shard's
   endpoint, incarnation, epoch and progress counters), ``ClusterStatus`` ->
   ``ClusterState``, ``Stats`` -> ``Statistics``, ``Ping`` -> ``Pong``, ``Shutdown`` ->
   ``ShuttingDown`` and exit.
3. A changed shard endpoint is written to the router's LMDB before the heartbeat is
   acknowledged, so a restarted router hands out the last known endpoints at once.

State on disk (``DATA/lmdb``, one small LMDB environment): the net's name, the shard
count, the encoded :class:`~router.table.PartitionTable`, the shards' last known
endpoints and the router's incarnation (its start count, stamped on every reply).
``DATA/lock`` is held exclusively while the router runs; ``DATA/endpoint`` holds
``endpoint\\npid\\n`` once it serves; ``DATA/router.log`` is its log.

Liveness is judged on the monotonic clock: a shard is *alive* if its last heartbeat
came less than the heartbeat timeout ago, and *progressing* if its progress counters
changed within that time (an alive but stuck loop shows as alive, not progressing).
A heartbeat from an older incarnation of a shard than one already seen is refused:
an old incarnation can neither write nor be believed.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import lmdb
import zmq

from nets.codec import CodecError, pack, unpack
from nets.errors import CpnError
from nets.loader import load_net
from nets.model import Net
from router.coordinator import Coordinator, CoordinatorError
from router.endpoints import listen_address
from router.limits import PeerRateLimits
from router.shell.curve import CurveKeys, Gatekeeper, check_exposure, serve_securely
from router.shell.datadir import fault_point, lock_directory, publish_endpoint, unpublish_endpoint
from router.table import PartitionTable, TableError
from router.wire import (
    FRAME_BYTES_MAX,
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

LOG_FILE: Final = "router.log"
HEARTBEAT_TIMEOUT_MS: Final = 3_000
POLL_MS: Final = 200
REQUESTS_PER_TURN_MAX: Final = 1_000
ENDPOINT_CHARS_MAX: Final = 256
MAP_SIZE_BYTES: Final = 16 * 1024 * 1024  # the table is a few KiB; this never fills
SCHEMA_VERSION: Final = 1
SERVED: Final = (GetTable, Heartbeat, ClusterStatus, Stats, Ping, Shutdown)
SOCKET_OPTIONS: Final = (
    (zmq.ROUTER_MANDATORY, 1),
    (zmq.LINGER, 0),
    (zmq.MAXMSGSIZE, FRAME_BYTES_MAX + 1024),
)

log = logging.getLogger("cpn.router")


@dataclass(frozen=True, slots=True)
class RouterConfig:
    net_path: str
    data_dir: Path
    shard_count: int
    bind: str = "tcp://127.0.0.1:0"
    allow_remote: bool = False
    seed: int = 0
    heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS
    # Net parameters for the net's builder (`--net-param`), as the shards get them.
    params: Mapping[str, Any] = field(default_factory=dict)
    cluster_id: str = ""  # from a cluster file: heartbeats of another cluster are refused
    curve: CurveKeys | None = None  # CURVE keys: clients and shards must be allowed
    rate_limit: tuple[int, int] | None = None  # (requests per s, burst) per peer


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


# -- the router's store -------------------------------------------------------------------


class RouterStore:
    """The router's small LMDB environment (see the module docstring), opened once.

    Raises:
        CpnError: the directory is in use by another router, or holds the state of
            another net or of another shard count (the message says how to fix it).
    """

    def __init__(self, data_dir: Path, *, net: str, shard_count: int) -> None:
        self.data_dir = data_dir
        self._lock_fd = lock_directory(data_dir)
        try:
            self._env = lmdb.open(
                str(data_dir / "lmdb"),
                map_size=MAP_SIZE_BYTES,
                max_dbs=1,
                subdir=True,
                sync=True,  # rare, small writes: always durable
                metasync=True,
                writemap=False,
            )
        except lmdb.Error as exc:
            os.close(self._lock_fd)
            raise CpnError(f"cannot open the router's store in {data_dir}: {exc}") from exc
        self._env.reader_check()
        self._meta = self._env.open_db(b"meta")
        try:
            self.table, self.endpoints, self.incarnation = self._start(net, shard_count)
        except BaseException:
            self.close()
            raise

    def _start(self, net: str, shard_count: int) -> tuple[PartitionTable, tuple[str, ...], int]:
        with self._env.begin(write=True, db=self._meta) as txn:
            stored_net = _text(txn.get(b"net"))
            if stored_net is not None and stored_net != net:
                raise CpnError(
                    f"{self.data_dir} holds the router state of net {stored_net!r}, not "
                    f"{net!r}; start the router with that net or use another --data directory"
                )
            stored_count = _text(txn.get(b"shard_count"))
            if stored_count is not None and int(stored_count) != shard_count:
                raise CpnError(
                    f"{self.data_dir} holds a cluster of {stored_count} shards, not "
                    f"{shard_count}; pass --shards {stored_count} or use another --data "
                    "directory"
                )
            raw_control = txn.get(b"control")  # moves, scaling, fences (coordinator)
            self.control_blob = None if raw_control is None else bytes(raw_control)
            raw_table = txn.get(b"table")
            try:
                table = (
                    PartitionTable.initial(shard_count)
                    if raw_table is None
                    else PartitionTable.decode(bytes(raw_table))
                )
                endpoints = _decode_endpoints(txn.get(b"endpoints"), table.shard_count)
            except (TableError, CodecError) as exc:
                raise CpnError(f"the router's store in {self.data_dir} is damaged: {exc}") from exc
            incarnation = int(_text(txn.get(b"incarnation")) or "0") + 1
            txn.put(b"net", net.encode())
            txn.put(b"shard_count", str(shard_count).encode())
            txn.put(b"schema", str(SCHEMA_VERSION).encode())
            txn.put(b"table", table.encode())
            txn.put(b"endpoints", pack(endpoints))
            txn.put(b"incarnation", str(incarnation).encode())
        return table, endpoints, incarnation

    def save(self, items: dict[bytes, bytes]) -> None:
        """Write ``items`` into the meta database in one (durable) transaction."""
        with self._env.begin(write=True, db=self._meta) as txn:
            for key, value in items.items():
                txn.put(key, value)

    def save_endpoints(self, endpoints: tuple[str, ...]) -> None:
        with self._env.begin(write=True, db=self._meta) as txn:
            txn.put(b"endpoints", pack(endpoints))
        self.endpoints = endpoints

    def close(self) -> None:
        self._env.close()
        os.close(self._lock_fd)


def _text(value: bytes | None) -> str | None:
    return None if value is None else bytes(value).decode()


def _decode_endpoints(raw: bytes | None, shard_count: int) -> tuple[str, ...]:
    if raw is None:
        return ("",) * shard_count
    endpoints = unpack(bytes(raw))
    if type(endpoints) is not tuple or not all(type(e) is str for e in endpoints):
        raise CodecError(f"expected {shard_count} endpoints, got {endpoints!r:.200}")
    # The cluster may have grown or shrunk (cpn scale) since they were written.
    return (*endpoints, *("",) * (shard_count - len(endpoints)))


# -- the router's state -------------------------------------------------------------------


@dataclass(slots=True)
class ShardView:
    """What the router knows of one shard from its heartbeats (times: monotonic ms)."""

    incarnation: int = 0
    last_seen_ms: int | None = None
    epoch: int = 0
    progress: dict[str, int] = field(default_factory=dict)
    progress_changed_ms: int | None = None


class Router:
    """The router's request handlers (see the module docstring)."""

    def __init__(
        self, net: Net, store: RouterStore, *, heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS
    ) -> None:
        self.net_name = net.name
        self.places = places_of(net)
        self.store = store
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.coordinator = Coordinator.decode(store.table, store.control_blob)
        self.shards = [ShardView() for _ in range(self.coordinator.span())]
        self.counters: Counter[str] = Counter()
        self.stopping = False
        self.cluster_id = ""

    @property
    def table(self) -> PartitionTable:
        return self.store.table

    def handle(self, envelope: Envelope, now_ms: int) -> Message:
        """The reply to one decoded request (``now_ms``: the monotonic clock)."""
        message = envelope.message
        self.counters[f"requests_{type(message).__name__}"] += 1
        if isinstance(message, GetTable):
            return self._table()
        if isinstance(message, Heartbeat):
            return self._heartbeat(message, envelope.incarnation, now_ms)
        if isinstance(message, MoveReport):
            return self._report(message, envelope.incarnation, now_ms)
        if isinstance(message, Scale):
            return self._scale(message)
        if isinstance(message, ClusterStatus):
            return ClusterState(self.net_name, self.table.epoch, self._states(now_ms))
        if isinstance(message, Stats):
            return Statistics(self.statistics())
        if isinstance(message, Ping):
            return Pong(time.time_ns() // 1_000_000)
        if isinstance(message, Shutdown):
            self.stopping = True
            return ShuttingDown()
        if isinstance(message, REQUESTS):
            raise RouterRequestError(
                "not_served",
                f"the router does not serve {type(message).__name__} (it serves "
                f"{', '.join(cls.__name__ for cls in SERVED)}); send token requests to the "
                "shard that owns their slot (see GetTable)",
            )
        raise RouterRequestError(
            "not_a_request", f"{type(message).__name__} is a reply, not a request"
        )

    def _table(self) -> Table:
        table = self.table
        return Table(
            self.net_name,
            table.epoch,
            table.shard_count,
            table.owners,
            table.slot_epochs,
            self.store.endpoints,
            self.places,
            self.cluster_id,
        )

    def _heartbeat(self, beat: Heartbeat, incarnation: int, now_ms: int) -> HeartbeatAck:
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
        endpoints = self.store.endpoints
        if endpoints[beat.shard_id] != beat.endpoint:
            changed = list(endpoints)
            changed[beat.shard_id] = beat.endpoint
            self.store.save_endpoints(tuple(changed))
        if view.progress_changed_ms is None or beat.progress != view.progress:
            view.progress_changed_ms = now_ms
        self.coordinator.incarnation(beat.shard_id, incarnation)
        self._persist()
        view.incarnation = incarnation
        view.last_seen_ms = now_ms
        view.epoch = beat.epoch
        view.progress = dict(beat.progress)
        return HeartbeatAck(self.table.epoch)

    # -- moves, scaling and fencing (router/coordinator.py decides, this persists) --------

    def _persist(self) -> None:
        """Write the coordinator's table and records if they changed (before any reply)."""
        coordinator = self.coordinator
        if not coordinator.changed:
            return
        self.store.save({b"table": coordinator.table.encode(), b"control": coordinator.encode()})
        coordinator.changed = False
        self.store.table = coordinator.table
        span = coordinator.span()
        self.shards += [ShardView() for _ in range(span - len(self.shards))]
        endpoints = self.store.endpoints
        if len(endpoints) < span:
            self.store.save_endpoints((*endpoints, *("",) * (span - len(endpoints))))
        for state in coordinator.take_transitions():
            fault_point(self.store.data_dir, f"router-{state}")

    def _report(self, report: MoveReport, incarnation: int, now_ms: int) -> MoveOrders:
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
        )
        self._persist()
        return MoveOrders(
            coordinator.table.epoch,
            coordinator.members,
            coordinator.fence_epoch(report.shard_id, incarnation),
            coordinator.orders_for(report.shard_id),
        )

    def _scale(self, message: Scale) -> Scaled:
        try:
            self.coordinator.scale(message.shard_count)
        except CoordinatorError as exc:
            raise RouterRequestError("bad_request", str(exc)) from exc
        log.info("scaling to %d shards (epoch %d)", message.shard_count, self.table.epoch)
        self._persist()
        return Scaled(self.coordinator.members, self.table.epoch)

    def tick(self, now_ms: int) -> None:
        """Commit, retire and plan moves (called from the loop, idle or not)."""
        timeout_ms = self.heartbeat_timeout_ms
        alive = {
            k
            for k, view in enumerate(self.shards)
            if view.last_seen_ms is not None and now_ms - view.last_seen_ms < timeout_ms
        }
        self.coordinator.tick(now_ms, alive)
        self._persist()

    def _states(self, now_ms: int) -> tuple[dict[str, Any], ...]:
        timeout_ms = self.heartbeat_timeout_ms
        states = []
        for shard_id, view in enumerate(self.shards[: self.coordinator.span()]):
            ago_ms = -1 if view.last_seen_ms is None else now_ms - view.last_seen_ms
            changed_ms = view.progress_changed_ms
            states.append(
                {
                    "endpoint": self.store.endpoints[shard_id],
                    "incarnation": view.incarnation,
                    "alive": 0 <= ago_ms < timeout_ms,
                    "last_seen_ms_ago": ago_ms,
                    "epoch": view.epoch,
                    "progress": dict(view.progress),
                    "progressing": changed_ms is not None and now_ms - changed_ms < timeout_ms,
                    "slots": self.table.owners.count(shard_id),
                    "member": shard_id < self.coordinator.members,
                    "retired": shard_id >= max(self.coordinator.members, self.table.shard_count),
                }
            )
        return tuple(states)

    def statistics(self) -> dict[str, Any]:
        return {
            "net": self.net_name,
            "epoch": self.table.epoch,
            "shard_count": self.table.shard_count,
            "incarnation": self.store.incarnation,
            "counters": dict(self.counters),
            **self.coordinator.summary(),
        }


# -- the loop -----------------------------------------------------------------------------


def serve(config: RouterConfig) -> None:
    """Run the router until it is asked to stop (Shutdown, SIGTERM or SIGINT).

    Raises:
        CpnError: the net does not load, the data directory is locked or holds another
            cluster's state, or the endpoint cannot be bound.
    """
    address = listen_address(config.bind, allow_remote=config.allow_remote)
    check_exposure(config.bind, address.removeprefix("tcp://").rsplit(":", 1)[0], config.curve)
    net = load_net(config.net_path, seed=config.seed, params=config.params)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    _log_to(config.data_dir / LOG_FILE)
    store = RouterStore(config.data_dir, net=net.name, shard_count=config.shard_count)
    router = Router(net, store, heartbeat_timeout_ms=config.heartbeat_timeout_ms)
    router.cluster_id = config.cluster_id
    context = zmq.Context()
    # The ZAP handler must run before the socket binds: it vets every CURVE handshake.
    gatekeeper = None if config.curve is None else Gatekeeper.open(context, config.curve)
    socket = context.socket(zmq.ROUTER)
    if config.curve is not None:
        serve_securely(socket, config.curve)
    # ROUTER_MANDATORY: a reply to a vanished peer fails loudly instead of vanishing;
    # LINGER 0: closing never waits on unsent replies; MAXMSGSIZE: huge frames are cut.
    for option, value in SOCKET_OPTIONS:
        socket.setsockopt(option, value)
    try:
        try:
            socket.bind(address)
        except zmq.ZMQError as exc:
            raise CpnError(
                f"cannot bind {config.bind}: {exc.strerror}; is the port in use?"
            ) from exc
        endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if gatekeeper is not None:
            gatekeeper.watch(socket)
        # Before the endpoint is published: whoever reads it may stop the router at once.
        _stop_on_signals(router)
        publish_endpoint(config.data_dir, endpoint)
        log.info(
            "router of net %r (%d shards, epoch %d, incarnation %d) serving on %s, pid %d",
            net.name,
            config.shard_count,
            store.table.epoch,
            store.incarnation,
            endpoint,
            os.getpid(),
        )
        limits = (
            None
            if config.rate_limit is None
            else PeerRateLimits(per_s=config.rate_limit[0], burst=config.rate_limit[1])
        )
        _loop(router, socket, limits)
    finally:
        unpublish_endpoint(config.data_dir)
        socket.close(linger=0)
        if gatekeeper is not None:
            gatekeeper.stop()
        context.term()
        store.close()
        log.info("router stopped")


def _stop_on_signals(router: Router) -> None:
    """SIGTERM and SIGINT end the loop after its current turn (a graceful stop)."""

    def stop(_signum: int, _frame: object) -> None:
        router.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _loop(router: Router, socket: zmq.Socket[bytes], limits: PeerRateLimits | None = None) -> None:
    while not router.stopping:
        ready = socket.poll(POLL_MS, zmq.POLLIN)
        router.tick(time.monotonic_ns() // 1_000_000)
        if not ready:
            continue
        for _ in range(REQUESTS_PER_TURN_MAX):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if limits is not None and not limits.allow(frames[0], time.monotonic_ns() // 1_000_000):
                # Refused before decoding: a flooding peer costs little and others get turns.
                router.counters["requests_rate_limited"] += 1
                refusal: Message = Error("rate_limited", "too many requests")
                peer, reply, message_id = frames[0], refusal, 0
            else:
                peer, reply, message_id = _answer(router, frames)
            frame = encode(reply, message_id=message_id, incarnation=router.store.incarnation)
            # A REQ peer needs its empty delimiter frame back; a DEALER sent none.
            route = [peer, b""] if len(frames) == 3 and not frames[1] else [peer]
            try:
                socket.send_multipart([*route, frame], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                # The peer went away (or is slow); its Lazy Pirate client retries.
                router.counters["replies_dropped"] += 1
                log.info("reply to %s dropped: %s", peer.hex(), exc)


def _answer(router: Router, frames: list[bytes]) -> tuple[bytes, Message, int]:
    """The reply to one multipart message from ``frames[0]`` (never raises)."""
    peer, message_id = frames[0], 0
    try:
        # A DEALER sends [message]; a REQ socket adds an empty delimiter frame.
        if len(frames) == 3 and not frames[1]:
            frames = [peer, frames[2]]
        if len(frames) != 2:
            raise WireFormatError(f"expected one message frame, got {len(frames) - 1}")
        envelope = decode(frames[1])
        message_id = envelope.message_id
        reply = router.handle(envelope, time.monotonic_ns() // 1_000_000)
    except WireFormatError as exc:
        router.counters["frames_malformed"] += 1
        log.warning("malformed frame from %s: %s", peer.hex(), exc)
        return peer, Error("malformed_frame", str(exc)), exc.message_id
    except RouterRequestError as exc:
        router.counters[f"errors_{exc.code}"] += 1
        log.info("refused a request from %s: %s", peer.hex(), exc)
        return peer, Error(exc.code, str(exc)), message_id
    except CpnError as exc:
        router.counters["errors_request"] += 1
        return peer, Error("bad_request", str(exc)), message_id
    except Exception as exc:  # the loop must survive any single request
        router.counters["errors_internal"] += 1
        log.exception("request failed")
        return peer, Error("internal", f"{type(exc).__name__}: {exc}"), message_id
    return peer, reply, message_id


# -- edges: the endpoint, files, logging --------------------------------------------------


def _log_to(path: Path) -> None:
    logging.basicConfig(
        filename=path,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO,
        force=True,
    )
