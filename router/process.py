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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import lmdb
import zmq

from nets.codec import CodecError, pack, unpack
from nets.errors import CpnError
from nets.loader import load_net
from nets.model import Net
from router.datadir import lock_directory, publish_endpoint, unpublish_endpoint
from router.endpoints import listen_address
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
    Ping,
    Pong,
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
            raw_table = txn.get(b"table")
            try:
                table = (
                    PartitionTable.initial(shard_count)
                    if raw_table is None
                    else PartitionTable.decode(bytes(raw_table))
                )
                endpoints = _decode_endpoints(txn.get(b"endpoints"), shard_count)
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
    if (
        type(endpoints) is not tuple
        or len(endpoints) != shard_count
        or not all(type(e) is str for e in endpoints)
    ):
        raise CodecError(f"expected {shard_count} endpoints, got {endpoints!r:.200}")
    return endpoints


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
        self.shards = [ShardView() for _ in range(store.table.shard_count)]
        self.counters: Counter[str] = Counter()
        self.stopping = False

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
        )

    def _heartbeat(self, beat: Heartbeat, incarnation: int, now_ms: int) -> HeartbeatAck:
        if not 0 <= beat.shard_id < len(self.shards):
            raise RouterRequestError(
                "bad_shard_id",
                f"shard id {beat.shard_id} is not one of 0..{len(self.shards) - 1} "
                f"(this cluster has {len(self.shards)} shards)",
            )
        if not beat.endpoint.startswith("tcp://") or len(beat.endpoint) > ENDPOINT_CHARS_MAX:
            raise RouterRequestError(
                "bad_request",
                f"shard {beat.shard_id} reported endpoint {beat.endpoint[:80]!r}, not "
                "tcp://HOST:PORT",
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
        view.incarnation = incarnation
        view.last_seen_ms = now_ms
        view.epoch = beat.epoch
        view.progress = dict(beat.progress)
        return HeartbeatAck(self.table.epoch)

    def _states(self, now_ms: int) -> tuple[dict[str, Any], ...]:
        timeout_ms = self.heartbeat_timeout_ms
        states = []
        for shard_id, view in enumerate(self.shards):
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
        }


# -- the loop -----------------------------------------------------------------------------


def serve(config: RouterConfig) -> None:
    """Run the router until it is asked to stop (Shutdown, SIGTERM or SIGINT).

    Raises:
        CpnError: the net does not load, the data directory is locked or holds another
            cluster's state, or the endpoint cannot be bound.
    """
    address = listen_address(config.bind, allow_remote=config.allow_remote)
    net = load_net(config.net_path, seed=config.seed)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    _log_to(config.data_dir / LOG_FILE)
    store = RouterStore(config.data_dir, net=net.name, shard_count=config.shard_count)
    router = Router(net, store, heartbeat_timeout_ms=config.heartbeat_timeout_ms)
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
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
        _loop(router, socket)
    finally:
        unpublish_endpoint(config.data_dir)
        socket.close(linger=0)
        context.term()
        store.close()
        log.info("router stopped")


def _loop(router: Router, socket: zmq.Socket[bytes]) -> None:
    def stop(_signum: int, _frame: object) -> None:
        router.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not router.stopping:
        if not socket.poll(POLL_MS, zmq.POLLIN):
            continue
        for _ in range(REQUESTS_PER_TURN_MAX):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
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
