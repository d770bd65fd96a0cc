"""The router daemon: the cluster's control plane (SHELL).

The router holds the authoritative partition table and tells everyone where the shards
listen. It forwards no token data: clients and shards fetch the table with
:class:`~router.wire.GetTable` and talk to the owners directly, so the shards keep
firing (and serving clients with a cached table) while the router is down.

Everything the router decides is in its pure core, :class:`router.control.ControlPlane`
(requests, heartbeats, liveness, and through the coordinator the table, moves, scaling
and fencing). This daemon only owns what is not pure: the socket, the LMDB file, the
signals and the clock. One loop, one thread; each turn:

1. Wait on the socket for at most ``POLL_MS`` (so that a SIGTERM is seen promptly), or
   less if the core's next deadline comes sooner.
2. Read the monotonic clock once: that ``now_ms`` is the turn's time for every input.
3. Tick the core, then take up to ``REQUESTS_PER_TURN_MAX`` messages and pass each to
   :meth:`~router.control.ControlPlane.receive` with its peer's routing id.
4. For every :class:`~router.control.Outcome`: write its durable state in **one** LMDB
   write transaction, fire its fault points, and only then send its reply.

State on disk (``DATA/lmdb``, one small LMDB environment): the net's name, the shard
count, the encoded :class:`~router.table.PartitionTable`, the coordinator's records
(moves, scaling, fences), the shards' last known endpoints and the router's
incarnation (its start count, stamped on every reply). ``DATA/lock`` is held
exclusively while the router runs; ``DATA/endpoint`` holds ``endpoint\\npid\\n`` once
it serves; ``DATA/router.log`` is its log. A restarted router builds a new core from
what it reads back (:class:`~router.control.Recovered`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import lmdb
import zmq

from nets.codec import CodecError, pack, unpack
from nets.errors import CpnError
from nets.loader import load_net
from router.control import (
    HEARTBEAT_TIMEOUT_MS,
    ControlPlane,
    Outcome,
    Recovered,
    RouterWrite,
    places_of,
)
from router.endpoints import listen_address
from router.shell.curve import CurveKeys, Gatekeeper, check_exposure, serve_securely
from router.shell.datadir import fault_point, lock_directory, publish_endpoint, unpublish_endpoint
from router.shell.logsetup import configure_logging
from router.shell.metrics import METRICS_DEFAULT, MetricsServer, metrics_address, serve_metrics
from router.table import PartitionTable, TableError
from router.wire import FRAME_BYTES_MAX

LOG_FILE: Final = "router.log"
POLL_MS: Final = 200
REQUESTS_PER_TURN_MAX: Final = 1_000
MAP_SIZE_BYTES: Final = 16 * 1024 * 1024  # the table is a few KiB; this never fills
SCHEMA_VERSION: Final = 1
SOCKET_OPTIONS: Final = (
    (zmq.ROUTER_MANDATORY, 1),
    (zmq.LINGER, 0),
    (zmq.MAXMSGSIZE, FRAME_BYTES_MAX + 1024),
)

if TYPE_CHECKING:
    from router.shell.router_metrics import RouterMetrics

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
    log_json: bool = False  # `--log-json`: router.log as JSON lines
    metrics: str = METRICS_DEFAULT  # HOST:PORT of /metrics (router/shell/router_metrics.py)


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
            # What a new core starts from: the state read back as the store opened.
            self.recovered = self._start(net, shard_count)
        except BaseException:
            self.close()
            raise

    def _start(self, net: str, shard_count: int) -> Recovered:
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
            control = None if raw_control is None else bytes(raw_control)
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
        return Recovered(table, endpoints, control, incarnation)

    def write(self, write: RouterWrite) -> None:
        """Write the core's durable state in one (durable) transaction.

        Raises:
            lmdb.Error: the write failed; nothing of it is stored.
        """
        with self._env.begin(write=True, db=self._meta) as txn:
            txn.put(b"table", write.table.encode())
            txn.put(b"control", write.control)
            txn.put(b"endpoints", pack(write.endpoints))

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


# -- the loop -----------------------------------------------------------------------------


def serve(config: RouterConfig) -> None:
    """Run the router until it is asked to stop (Shutdown, SIGTERM or SIGINT).

    Raises:
        CpnError: the net does not load, the data directory is locked or holds another
            cluster's state, or the endpoint cannot be bound.
    """
    address = listen_address(config.bind, allow_remote=config.allow_remote)
    check_exposure(config.bind, address.removeprefix("tcp://").rsplit(":", 1)[0], config.curve)
    metrics_at = metrics_address(config.metrics, allow_remote=config.allow_remote)
    net = load_net(config.net_path, seed=config.seed, params=config.params)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    configure_logging(config.data_dir / LOG_FILE, json_lines=config.log_json)
    store = RouterStore(config.data_dir, net=net.name, shard_count=config.shard_count)
    core = ControlPlane(
        net.name,
        places_of(net),
        store.recovered,
        heartbeat_timeout_ms=config.heartbeat_timeout_ms,
        cluster_id=config.cluster_id,
        rate_limit=config.rate_limit,
    )
    context = zmq.Context()
    # The ZAP handler must run before the socket binds: it vets every CURVE handshake.
    gatekeeper = None if config.curve is None else Gatekeeper.open(context, config.curve)
    socket = context.socket(zmq.ROUTER)
    if config.curve is not None:
        serve_securely(socket, config.curve)
    server: MetricsServer | None = None
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
        stop = _stop_on_signals()
        metrics = None
        if metrics_at is not None:  # served from a thread; the loop swaps in a sample per turn
            # Imported here: `cpn` commands other than the router's need no prometheus_client.
            from router.shell.router_metrics import RouterMetrics  # noqa: PLC0415

            metrics = RouterMetrics(core, time.monotonic_ns() // 1_000_000)
            server = serve_metrics(metrics_at, metrics.collect, data_dir=config.data_dir)
        publish_endpoint(config.data_dir, endpoint)
        log.info(
            "router of net %r (%d shards, epoch %d, incarnation %d) serving on %s, pid %d",
            net.name,
            config.shard_count,
            core.table.epoch,
            core.incarnation,
            endpoint,
            os.getpid(),
        )
        _loop(core, store, socket, stop, metrics)
    finally:
        unpublish_endpoint(config.data_dir)
        if server is not None:
            server.stop()
        socket.close(linger=0)
        if gatekeeper is not None:
            gatekeeper.stop()
        context.term()
        store.close()
        log.info("router stopped")


class _Stop:
    """Set by SIGTERM or SIGINT: the loop ends after its current turn (a graceful stop).
    A signal also writes a byte to ``wake_read``'s pipe, which wakes the loop's poll at
    once instead of at its next timeout (up to ``POLL_MS``: a cluster stops sooner)."""

    def __init__(self, wake_read: int, wake_write: int) -> None:
        self.requested = False
        self.wake_read = wake_read
        self.wake_write = wake_write

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        os.close(self.wake_read)
        os.close(self.wake_write)


def _stop_on_signals() -> _Stop:
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    stop = _Stop(wake_read, wake_write)

    def on_signal(_signum: int, _frame: object) -> None:
        stop.requested = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def _loop(
    core: ControlPlane,
    store: RouterStore,
    socket: zmq.Socket[bytes],
    stop: _Stop,
    metrics: RouterMetrics | None,
) -> None:
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    poller.register(stop.wake_read, zmq.POLLIN)
    try:
        _turns(core, store, socket, stop, metrics, poller)
    finally:
        stop.close()


def _turns(
    core: ControlPlane,
    store: RouterStore,
    socket: zmq.Socket[bytes],
    stop: _Stop,
    metrics: RouterMetrics | None,
    poller: zmq.Poller,
) -> None:
    wait_ms = 0
    while not (core.stopping or stop.requested):
        events = dict(poller.poll(wait_ms))
        if stop.wake_read in events:
            with contextlib.suppress(BlockingIOError):
                os.read(stop.wake_read, 512)
        ready = socket in events
        now_ms = time.monotonic_ns() // 1_000_000  # the turn's one clock reading
        _carry_out(core, store, socket, core.tick(now_ms), route=None)
        for _ in range(REQUESTS_PER_TURN_MAX if ready else 0):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            peer = frames[0]
            # A REQ peer adds an empty delimiter frame and needs it back; a DEALER sent none.
            delimited = len(frames) == 3 and not frames[1]
            route = [peer, b""] if delimited else [peer]
            body = frames[2:] if delimited else frames[1:]
            try:
                outcome = core.receive(now_ms, body, peer=peer)
            except Exception as exc:  # the loop must survive any single request
                log.exception("request failed")
                outcome = core.crashed(exc)
            _carry_out(core, store, socket, outcome, route=route)
        if metrics is not None:
            metrics.after_turn(core, now_ms)
        wait_ms = max(0, min(POLL_MS, core.next_deadline_ms() - now_ms))


def _carry_out(
    core: ControlPlane,
    store: RouterStore,
    socket: zmq.Socket[bytes],
    outcome: Outcome,
    *,
    route: list[bytes] | None,
) -> None:
    """Write the outcome's state in one transaction, fire its fault points, then reply."""
    if outcome.write is not None:
        try:
            store.write(outcome.write)
        except lmdb.Error as exc:
            log.error("the router's store failed: %s", exc)
            outcome = core.write_failed(str(exc))
        else:
            for state in outcome.reached:
                fault_point(store.data_dir, f"router-{state}")
    if route is None or not outcome.frame:
        return
    try:
        socket.send_multipart([*route, outcome.frame], zmq.NOBLOCK)
    except zmq.ZMQError as exc:
        # The peer went away (or is slow); its Lazy Pirate client retries.
        core.counters["replies_dropped"] += 1
        log.info("reply to %s dropped: %s", route[0].hex(), exc)
