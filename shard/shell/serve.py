"""One shard process: recover, then serve and fire on the real clock (SHELL).

The loop around :class:`shard.shell.runtime.ShardRuntime` (the store, the clock and the
sans-IO :class:`shard.core.ShardCore`), its sockets and signals.

Theory of operation (one loop, one thread):

1. Wait on the socket until a message arrives or the engine's next deadline comes
   (``zmq.Poller.poll`` with the time left; at most ``IDLE_WAKE_MS``).
2. Take up to ``REQUESTS_PER_BATCH_MAX`` messages. Each is decoded (garbage gets an
   :class:`~router.wire.Error` reply and is counted) and applied to the engine: puts add
   tokens, leases move tokens into held, completions swap held tokens for results.
3. Fire everything enabled at the current time, for at most ``BATCH_MS_MAX`` if
   requests are waiting for this batch's commit, else ``BATCH_MS_MAX_IDLE``. Then
   grant the parked leases (long polls, :mod:`shard.parked`) whose queue has work now.
4. Commit the batch, every marking change of steps 2 and 3 plus the per-client replies,
   in one LMDB write transaction.
5. Only then send the replies. Nothing leaves the process before it is committed.

5. Then send what the commit made true to peers and the router (``ShardCore.sends``);
   a frame that cannot go is reported back to the core, which decides what follows.
6. At most every ``METRICS_SAMPLE_MS``, if a turn did something since the last
   sample, hand a reading to the metrics (``/metrics`` serves the latest sample).

If a commit fails (a full disk), the shard rebuilds its core from what is committed,
answers the batch's requests with ``store_unavailable`` and from then on refuses
writes; queries keep working. A retried request carries the same client id and
sequence number and is answered from the client table, never applied twice.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Final

import zmq

from nets.errors import CpnError
from router.endpoints import listen_address
from router.limits import PeerRateLimits
from router.shell.curve import Gatekeeper, check_exposure, serve_securely
from router.shell.datadir import publish_endpoint, unpublish_endpoint
from router.shell.logsetup import configure_logging
from router.shell.metrics import metrics_address
from router.wire import (
    FRAME_BYTES_MAX,
    Error,
    Lease,
    Message,
    Ping,
    QueryCounts,
    QueryTokens,
    Stats,
    WireFormatError,
    decode,
    encode,
)
from shard.core import ShardCore, writes
from shard.reading import ReadingMark
from shard.request_checks import RequestError
from shard.shell.peers import Peers
from shard.shell.runtime import BatchTimer, ShardConfig, ShardRuntime, wall_ms

LOG_FILE: Final = "shard.log"
REQUESTS_PER_BATCH_MAX: Final = 1_000
# Tokens received from peers per batch: the rest wait on the socket for the next one,
# so a flood of handoffs cannot stretch a batch (and every reply) without bound.
HANDOFF_TOKENS_PER_BATCH_MAX: Final = 50_000
IDLE_WAKE_MS: Final = 1_000  # the loop turns at least this often (heartbeats, leases)
# The loop is idle, and folds a slice of the batch log, only when nothing is due sooner.
IDLE_FOLD_MS_MIN: Final = 50
# /metrics shows the shard as of a turn at most this old: the loop samples at most this
# often, not after every commit. A crawl's shard turns once or twice a request, and a
# sample per turn (the core's reading, counters merged, histograms rendered) was about
# a sixth of its CPU; a scrape every few seconds needs none of them.
METRICS_SAMPLE_MS: Final = 100

log = logging.getLogger("cpn.shard")


def serve(config: ShardConfig) -> None:
    """Run a shard until it is asked to stop (Shutdown, SIGTERM or SIGINT).

    Raises:
        CpnError: the net does not load, the data directory is locked or holds another
            net, or the endpoint cannot be bound.
    """
    address = listen_address(config.bind, allow_remote=config.allow_remote)
    metrics_address(config.metrics, allow_remote=config.allow_remote)  # refused before a bind
    check_exposure(config.bind, address.removeprefix("tcp://").rsplit(":", 1)[0], config.curve)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    _configure_logging(config.data_dir / LOG_FILE, json_lines=config.log_json)
    # The loop allocates many short-lived tuples (entries, steps); a larger first
    # generation makes young collections rarer without letting garbage pile up. A
    # batch's entries live until its commit and make no cycles: at 50,000, a busy
    # shard's collections only walked them (5-7 % of bench.shard's firing run, about
    # 15 ms each); at 200,000 a 200 ms batch of the scraper's firings sets off none.
    gc.set_threshold(200_000, 20, 100)
    context = zmq.Context()
    # The ZAP handler must run before the socket binds: it vets every CURVE handshake.
    gatekeeper = None if config.curve is None else Gatekeeper.open(context, config.curve)
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
    socket.setsockopt(zmq.MAXMSGSIZE, FRAME_BYTES_MAX + 1024)
    if config.curve is not None:
        serve_securely(socket, config.curve)

    def release() -> None:
        socket.close(linger=0)
        if gatekeeper is not None:
            gatekeeper.stop()
        context.term()

    # Bound before the store is opened: the core's heartbeat names its endpoint. The
    # endpoint is published only once the shard serves, so nobody finds it earlier.
    try:
        socket.bind(address)
    except zmq.ZMQError as exc:
        release()
        raise CpnError(f"cannot bind {config.bind}: {exc.strerror}; is the port in use?") from exc
    endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        runtime = ShardRuntime(config, endpoint=config.advertise or endpoint)
    except BaseException:
        release()
        raise
    if gatekeeper is not None:
        gatekeeper.watch(socket)

    def stop(_signum: int, _frame: object) -> None:
        runtime.core.stopping = True

    # Before the endpoint is published: whoever reads it may stop the shard at once,
    # and that stop must be graceful (exit 0, the batch committed).
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Metrics: read once per batch, served on their own thread. Imported here, as
    # prometheus_client is, so that `cpn` commands other than a shard's do not pay for it.
    from shard.shell.metrics import start_shard_metrics  # noqa: PLC0415

    try:
        metrics = start_shard_metrics(
            config.metrics,
            allow_remote=config.allow_remote,
            data_dir=config.data_dir,
            first=runtime.reading(ReadingMark()),
        )
    except BaseException:
        runtime.close()
        release()
        raise
    publish_endpoint(config.data_dir, endpoint)
    runtime.serving_ms = wall_ms()
    log.info(
        "shard of net %r serving on %s (incarnation %d, durability %s, pid %d)",
        runtime.setup.net.name,
        endpoint,
        runtime.core.incarnation,
        config.durability.value,
        os.getpid(),
    )

    # A signal writes a byte to this pipe, which wakes the poll at once (instead of at
    # the next deadline, up to IDLE_WAKE_MS later).
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    peers = Peers(context, me=config.shard_id, router=config.router, curve=config.curve)
    limits = None
    if config.rate_limit is not None:
        limits = PeerRateLimits(per_s=config.rate_limit[0], burst=config.rate_limit[1])
    held: deque[list[bytes]] = deque()  # requests read during a batch, not yet handled
    folding = False  # an idle loop has more of the batch log to fold: it does not wait
    sampled_ms = wall_ms()  # when /metrics' sample was last taken
    unsampled = False  # a turn did something since: sampled by sampled_ms + METRICS_SAMPLE_MS
    try:
        peers.update(runtime.core.peer_endpoints())
        while not runtime.core.stopping:
            timeout_ms = 0 if held or folding else _timeout_ms(runtime)
            if unsampled:  # wake for the sample it owes, even with nothing else to do
                timeout_ms = max(0, min(timeout_ms, sampled_ms + METRICS_SAMPLE_MS - wall_ms()))
            ready = _poll(socket, wake_read, peers, timeout_ms)
            now_ms = runtime.clock.now_ms()
            core = runtime.core
            for source, envelope in peers.receive():
                core.peer_message(now_ms, source, envelope)
            runtime.counters["peer_replies_malformed"] = peers.malformed
            core.loop_back()
            replies = _receive(runtime, socket, held, limits)
            waiting = _requests_waiting(socket, held, peers, core, answering=bool(replies))
            fired = core.fire(runtime.clock.now_ms(), BatchTimer(waiting))
            replies += core.answer_parked(runtime.clock.now_ms())
            # A batch that answers nothing also folds the long log's slice (one fsync).
            if not runtime.commit(fold=not replies):
                replies = [
                    (peer, Error("store_unavailable", runtime.read_only_reason or ""), mid)
                    if not isinstance(reply, Error) and writes(reply)
                    else (peer, reply, mid)
                    for peer, reply, mid in replies
                ]
            core = runtime.core  # rebuilt if the commit failed
            outcomes = [(reply, _send(runtime, socket, *reply)) for reply in replies]
            core.replies_sent(outcomes)  # undelivered leases go back (the next batch)
            peers.update(core.peer_endpoints())  # a table of this batch may move a peer
            for send in core.sends(runtime.clock.now_ms()):
                if not peers.send(send.target, send.frame):
                    core.send_failed(send)
            runtime.load_deferred()
            # One slice of the batch log, if it is long or the turn found nothing to do.
            idle = not (ready or fired or replies or held) and _idle(socket, peers, runtime)
            folding = runtime.catch_up(idle=idle)
            if metrics is not None:  # after the replies went: they never wait for it
                unsampled = unsampled or bool(ready or fired or replies or held)
                if unsampled and wall_ms() >= sampled_ms + METRICS_SAMPLE_MS:
                    # The reading takes every commit since the last one (their
                    # latencies, sizes, handoffs): none is lost by sampling less often.
                    metrics.after_batch(runtime.reading(metrics.mark))
                    sampled_ms, unsampled = wall_ms(), False
    finally:
        signal.set_wakeup_fd(-1)
        os.close(wake_read)
        os.close(wake_write)
        runtime.commit()
        unpublish_endpoint(config.data_dir)
        if metrics is not None:
            metrics.stop()
        peers.close()
        release()
        runtime.close()
        log.info("shard stopped")


def _poll(socket: zmq.Socket[bytes], wake_read: int, peers: Peers, timeout_ms: int) -> bool:
    """Wait up to ``timeout_ms`` for a socket to be readable; whether one is."""
    # The set of peer sockets changes when a peer moves, so the poller is built per
    # turn: a handful of registrations, negligible next to a batch.
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    poller.register(wake_read, zmq.POLLIN)
    for peer in peers.sockets():
        poller.register(peer, zmq.POLLIN)
    return bool(poller.poll(timeout_ms))


def _timeout_ms(runtime: ShardRuntime) -> int:
    deadline_ms = runtime.core.next_deadline_ms()
    if deadline_ms is None:
        return IDLE_WAKE_MS
    return max(0, min(IDLE_WAKE_MS, deadline_ms - runtime.clock.now_ms()))


def _idle(socket: zmq.Socket[bytes], peers: Peers, runtime: ShardRuntime) -> bool:
    """Nothing is waiting on a socket and nothing is due to fire soon (a slice of the
    batch log, up to about 25 ms, would postpone it)."""
    events = socket.getsockopt(zmq.EVENTS)
    if (isinstance(events, int) and events & zmq.POLLIN) or peers.readable():
        return False
    deadline_ms = runtime.core.next_deadline_ms()
    return deadline_ms is None or deadline_ms >= runtime.clock.now_ms() + IDLE_FOLD_MS_MIN


READ_ONLY_REQUESTS: Final = (QueryCounts, QueryTokens, Stats, Ping)


def _requests_waiting(
    socket: zmq.Socket[bytes],
    held: deque[list[bytes]],
    peers: Peers,
    core: ShardCore,
    *,
    answering: bool,
) -> Callable[[], bool]:
    """Whether a request needs the batch to end soon.

    Requests that change the marking (or that could not be read) do: they are answered
    only after the commit. Read-only ones (queries, statistics, pings) do not: they
    are taken off the socket into ``held`` and answered after the commit, whenever the
    batch ends, so the polling of a monitor does not cut batches short. A peer's
    answer does too: an acknowledgement opens the handoff window, and a receiver
    waits for what it lets this shard send. So does a parked lease whose queue has work
    now (it is granted after the batch, and a fetch's start may be near).
    """

    def waiting() -> bool:
        if answering or peers.readable() or core.work_waits():
            return True
        while len(held) < REQUESTS_PER_BATCH_MAX:
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return False
            held.append(frames)
            try:
                message = decode(frames[-1]).message
            except WireFormatError:
                return True
            if not isinstance(message, READ_ONLY_REQUESTS):
                return True
        return True

    return waiting


def _receive(
    runtime: ShardRuntime,
    socket: zmq.Socket[bytes],
    held: deque[list[bytes]],
    limits: PeerRateLimits | None = None,
) -> list[tuple[bytes, Message, int]]:
    """Handle the requests taken off the socket during the last batch, then new ones."""
    core, counters = runtime.core, runtime.counters
    replies: list[tuple[bytes, Message, int]] = []
    parked = 0  # requests that wait for work count towards the batch's requests too
    while (
        len(replies) + parked < REQUESTS_PER_BATCH_MAX
        and core.handed_in() < HANDOFF_TOKENS_PER_BATCH_MAX
    ):
        if held:
            frames = held.popleft()
        else:
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
        peer, payload = frames[0], frames[-1]
        message_id = 0
        now_ms = runtime.clock.now_ms()
        if limits is not None and not limits.allow(peer, now_ms):
            # Refused before decoding: a flooding peer costs little and others get turns.
            counters["requests_rate_limited"] += 1
            replies.append((peer, Error("rate_limited", "too many requests"), 0))
            continue
        try:
            if len(frames) not in (2, 3) or (len(frames) == 3 and frames[1]):
                raise WireFormatError(f"expected one message frame, got {len(frames) - 1}")
            envelope = decode(payload)
            message_id = envelope.message_id
            reply = core.handle(now_ms, envelope)
            if reply is None:  # a lease that waits for work: answered when it comes
                assert isinstance(envelope.message, Lease)
                core.park(now_ms, peer, envelope.message, message_id)
                parked += 1
                continue
        except WireFormatError as exc:
            message_id = exc.message_id
            counters["frames_malformed"] += 1
            log.warning("malformed frame from %s: %s", peer.hex(), exc)
            reply = Error("malformed_frame", str(exc))
        except RequestError as exc:
            counters[f"errors_{exc.code}"] += 1
            reply = Error(exc.code, str(exc))
        except CpnError as exc:
            counters["errors_request"] += 1
            reply = Error("bad_request", str(exc))
        except Exception as exc:  # the loop must survive any single request
            counters["errors_internal"] += 1
            log.exception("request failed")
            reply = Error("internal", f"{type(exc).__name__}: {exc}")
        replies.append((peer, reply, message_id))
    return replies


def _send(
    runtime: ShardRuntime, socket: zmq.Socket[bytes], peer: bytes, reply: Message, mid: int
) -> bool:
    """Send one reply; False if it was dropped (it never left: ROUTER_MANDATORY)."""
    frame = encode(reply, message_id=mid, incarnation=runtime.core.incarnation)
    try:
        socket.send_multipart([peer, frame], zmq.NOBLOCK)
    except (zmq.Again, zmq.ZMQError) as exc:
        # The peer is gone or slow; a client retries with the same request id and is
        # answered from the client table, so dropping the reply loses nothing.
        runtime.counters["replies_dropped"] += 1
        log.info("reply to %s dropped: %s", peer.hex(), exc)
        return False
    return True


def _configure_logging(path: Path, *, json_lines: bool) -> None:
    # A flood of one kind of line (garbage frames, dropped replies) is summarised there.
    configure_logging(path, json_lines=json_lines, logger="cpn")
