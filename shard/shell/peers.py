"""A shard's outgoing connections: one DEALER socket per peer shard and one to the router (SHELL).

They only carry frames: what to send, to whom, and what a failed send means is the
core's decision (:mod:`shard.link`).

Everything is sent with ``NOBLOCK``: a peer that is down or slow makes a send fail,
and the caller keeps the data where it was (the durable outbox resends it later), so
ZeroMQ's queues and high-water marks never decide what is delivered. Replies (handoff
acknowledgements, tables, heartbeat acknowledgements) come back on the same sockets
and are read without blocking by :meth:`Peers.receive`.

A peer's endpoint can change when it restarts on another port; :meth:`Peers.update`
replaces the socket of every peer whose endpoint changed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Final

import zmq

from router.shell.curve import CurveKeys, connect_securely
from router.wire import FRAME_BYTES_MAX, Envelope, WireFormatError, decode
from shard.link import ROUTER

SEND_QUEUE_MAX: Final = 64  # frames ZeroMQ may queue per peer before sends fail
RECEIVED_PER_CALL_MAX: Final = 1_000

log = logging.getLogger("cpn.shard.peers")


class Peers:
    """DEALER sockets to the other shards (by shard id) and to the router."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        *,
        me: int,
        router: str,
        curve: CurveKeys | None = None,
    ) -> None:
        self._context = context
        self._curve = curve  # CURVE keys: every connection authenticates with them
        self.me = me
        self._sockets: dict[int, tuple[str, zmq.Socket[bytes]]] = {}
        if router:
            self._sockets[ROUTER] = (router, self._connect(router))
        self.malformed = 0

    def _connect(self, endpoint: str) -> zmq.Socket[bytes]:
        socket = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, SEND_QUEUE_MAX)
        socket.setsockopt(zmq.RCVHWM, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, FRAME_BYTES_MAX + 1024)
        # Wait for the connection before queueing: frames for a peer that is down
        # fail at once instead of piling up for a later connection.
        socket.setsockopt(zmq.IMMEDIATE, 1)
        if self._curve is not None:
            connect_securely(socket, self._curve)
        socket.connect(endpoint)
        return socket

    @property
    def router_endpoint(self) -> str:
        known = self._sockets.get(ROUTER)
        return known[0] if known is not None else ""

    @property
    def has_router(self) -> bool:
        return ROUTER in self._sockets

    def update(self, endpoints: tuple[str, ...]) -> None:
        """Connect to each peer at its (possibly new) endpoint."""
        for shard_id, endpoint in enumerate(endpoints):
            if shard_id == self.me or not endpoint:
                continue
            known = self._sockets.get(shard_id)
            if known is not None and known[0] == endpoint:
                continue
            if known is not None:
                known[1].close(linger=0)
                log.info("peer %d moved from %s to %s", shard_id, known[0], endpoint)
            self._sockets[shard_id] = (endpoint, self._connect(endpoint))

    def send(self, target: int, frame: bytes) -> bool:
        """Send ``frame`` to a peer (or :data:`ROUTER`); ``False`` if it cannot go now."""
        known = self._sockets.get(target)
        if known is None:
            return False
        try:
            known[1].send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            log.info("send to %s failed: %s", known[0], exc)
            return False
        return True

    def sockets(self) -> Iterator[zmq.Socket[bytes]]:
        for _endpoint, socket in self._sockets.values():
            yield socket

    def readable(self) -> bool:
        """Whether a reply waits on any socket (without reading it)."""
        for _endpoint, socket in self._sockets.values():
            events = socket.getsockopt(zmq.EVENTS)
            if isinstance(events, int) and events & zmq.POLLIN:
                return True
        return False

    def receive(self) -> list[tuple[int, Envelope]]:
        """Every reply waiting on any socket, as ``(source, envelope)``; garbage is counted."""
        received: list[tuple[int, Envelope]] = []
        for source, (endpoint, socket) in list(self._sockets.items()):
            while len(received) < RECEIVED_PER_CALL_MAX:
                try:
                    frame = socket.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    received.append((source, decode(frame)))
                except WireFormatError as exc:
                    self.malformed += 1
                    log.warning("malformed reply from %s: %s", endpoint, exc)
        return received

    def close(self) -> None:
        for _endpoint, socket in self._sockets.values():
            socket.close(linger=0)
        self._sockets.clear()
