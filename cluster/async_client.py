"""One shard's requests from asyncio code (SHELL): what the crawl workers lease through.

:class:`AsyncShardClient` is :class:`cluster.client.ShardClient` for an event loop: the
same frames, the same client id and request sequence (so a repeat is answered from the
shard's client table, never applied twice), the same Lazy Pirate retries (no reply
within the timeout: a new socket, the *same* frame again), the same errors. It awaits
its socket (:mod:`zmq.asyncio`) instead of blocking a thread, so a worker keeps dozens
of requests in flight on one thread, and cancelling one (a worker stopping) closes its
socket at once: a long poll the shard answers afterwards cannot be delivered, and the
shard puts that lease's tokens back (``shard/parked.py``).

One request at a time per client: a shard orders a client's requests by their
sequence numbers, so concurrent requests need clients of their own.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from cluster.client import (
    RETRIES_DEFAULT,
    TIMEOUT_MS_DEFAULT,
    ShardError,
    client_socket,
    default_curve,
    expected_reply,
    unanswered,
)
from router.shell.curve import CurveKeys
from router.wire import (
    Complete,
    Completed,
    Lease,
    Leased,
    Message,
    Release,
    Released,
    Renew,
    Renewed,
    WireFormatError,
    decode,
    encode,
)

R = TypeVar("R", bound=Message)


class AsyncShardClient:
    """Talks to one shard at ``endpoint`` from a coroutine (see the module docstring)."""

    def __init__(
        self,
        endpoint: str,
        context: zmq.asyncio.Context,
        *,
        client_id: str | None = None,
        timeout_ms: int = TIMEOUT_MS_DEFAULT,
        retries: int = RETRIES_DEFAULT,
        curve: CurveKeys | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.client_id = client_id or os.urandom(8).hex()
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.curve = curve if curve is not None else default_curve()
        self._context = context
        self._socket: zmq.asyncio.Socket | None = None
        self._seq = itertools.count(1)
        self._message_ids = itertools.count(1)

    def reconnect(self, endpoint: str) -> None:
        """Talk to ``endpoint`` from now on; the client id and sequence carry on."""
        self.close()
        self.endpoint = endpoint

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    async def request(self, message: Message, expect: type[R], *, wait_ms: int = 0) -> R:
        """Send ``message`` and await its reply, ``wait_ms`` longer than the timeout for
        a request the shard may hold that long (a long poll).

        Raises:
            ShardUnavailable: no reply after all retries.
            ShardError, Redirected: as :meth:`cluster.client.ShardClient.request`.
        """
        message_id = next(self._message_ids)
        frame = encode(message, message_id=message_id)
        for _attempt in range(self.retries + 1):
            if self._socket is None:
                self._socket = client_socket(self._context, self.endpoint, self.curve)
            try:
                await self._socket.send(frame)
                reply = await self._wait(self._socket, message_id, self.timeout_ms + wait_ms)
            except BaseException:
                self.close()  # cancelled or broken mid-request: this socket is done
                raise
            if reply is not None:
                return expected_reply(reply, expect, self.endpoint)
            self.close()
        raise unanswered("shard", self.endpoint, message, self.timeout_ms + wait_ms, self.retries)

    @staticmethod
    async def _wait(socket: zmq.asyncio.Socket, message_id: int, timeout_ms: int) -> Message | None:
        deadline = time.monotonic() + timeout_ms / 1000
        while (remaining := int((deadline - time.monotonic()) * 1000)) > 0:
            # One awaited receive with a timeout (RCVTIMEO, which zmq.asyncio honours),
            # not a poll and then a receive: each await of a pyzmq future costs a trip
            # through the event loop, and two of them doubled a request's CPU.
            socket.rcvtimeo = remaining
            try:
                frame = await socket.recv()
            except zmq.Again:
                return None
            try:
                envelope = decode(frame)
            except WireFormatError as exc:
                raise ShardError("malformed_reply", str(exc)) from exc
            if envelope.message_id == message_id:
                return envelope.message
            # A late reply to an earlier, already retried request: ignore it.
        return None

    async def lease(
        self, place: str, *, max_tokens: int, lease_ms: int, wait_ms: int = 0
    ) -> Leased:
        """As :meth:`cluster.client.ShardClient.lease`."""
        message = Lease(self.client_id, next(self._seq), place, max_tokens, lease_ms, wait_ms)
        return await self.request(message, Leased, wait_ms=wait_ms)

    async def complete(
        self,
        lease_id: str,
        results: Iterable[tuple[str, Sequence[Any]]] = (),
        *,
        indexes: Iterable[int] = (),
    ) -> Completed:
        """As :meth:`cluster.client.ShardClient.complete` (same errors)."""
        fields = tuple((place, tuple(token)) for place, token in results)
        message = Complete(self.client_id, next(self._seq), lease_id, fields, tuple(indexes))
        return await self.request(message, Completed)

    async def renew(self, lease_id: str, *, lease_ms: int, progress: str = "") -> Renewed:
        """As :meth:`cluster.client.ShardClient.renew` (same errors)."""
        message = Renew(self.client_id, next(self._seq), lease_id, lease_ms, progress)
        return await self.request(message, Renewed)

    async def release(self, lease_id: str, *, indexes: Iterable[int] = ()) -> Released:
        """As :meth:`cluster.client.ShardClient.release` (same errors)."""
        message = Release(self.client_id, next(self._seq), lease_id, tuple(indexes))
        return await self.request(message, Released)
