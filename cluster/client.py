"""A Python client for a shard: put, query, lease, complete, statistics (SHELL).

Requests that change the marking carry ``(client_id, request_seq)``; the shard applies
each once and answers a repeat from its client table. So the client can follow the
Lazy Pirate pattern safely: wait for the reply up to ``timeout_ms``; if none comes,
drop the socket (a ZeroMQ DEALER socket cannot be reused after a lost request), open
a new one and send the *same* frame again, up to ``retries`` times; then raise
:class:`ShardUnavailable`. A client object is not thread-safe; use one per thread.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Final, TypeVar

import zmq

from nets.errors import CpnError
from router.wire import (
    FRAME_BYTES_MAX,
    Complete,
    Completed,
    Counts,
    Error,
    Lease,
    Leased,
    Message,
    Ping,
    Pong,
    Put,
    PutAck,
    QueryCounts,
    QueryTokens,
    Shutdown,
    ShuttingDown,
    Statistics,
    Stats,
    Tokens,
    WireFormatError,
    decode,
    encode,
)

TIMEOUT_MS_DEFAULT: Final = 3_000
RETRIES_DEFAULT: Final = 3

R = TypeVar("R", bound=Message)


class ShardUnavailable(CpnError):
    """No reply from the shard after every retry."""


class ShardError(CpnError):
    """The shard answered with an error; ``code`` says which (e.g. ``unknown_place``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class ShardClient:
    """Talks to one shard at ``endpoint`` (e.g. ``tcp://127.0.0.1:5555``)."""

    def __init__(
        self,
        endpoint: str,
        *,
        client_id: str | None = None,
        timeout_ms: int = TIMEOUT_MS_DEFAULT,
        retries: int = RETRIES_DEFAULT,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.client_id = client_id or os.urandom(8).hex()
        self.timeout_ms = timeout_ms
        self.retries = retries
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket: zmq.Socket[bytes] | None = None
        self._seq = itertools.count(1)
        self._message_ids = itertools.count(1)
        self.last_incarnation = 0

    # -- plumbing -----------------------------------------------------------------------

    def _connect(self) -> zmq.Socket[bytes]:
        socket = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, FRAME_BYTES_MAX + 1024)
        socket.connect(self.endpoint)
        return socket

    def _drop_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def request(self, message: Message, expect: type[R]) -> R:
        """Send ``message`` and wait for its reply (retrying, see the module docstring).

        Raises:
            ShardUnavailable: no reply after all retries.
            ShardError: the shard answered with an error.
        """
        message_id = next(self._message_ids)
        frame = encode(message, message_id=message_id)
        for _attempt in range(self.retries + 1):
            if self._socket is None:
                self._socket = self._connect()
            self._socket.send(frame)
            reply = self._wait(message_id)
            if reply is None:
                self._drop_socket()
                continue
            if isinstance(reply, Error):
                raise ShardError(reply.code, reply.message)
            if not isinstance(reply, expect):
                raise ShardError("unexpected_reply", f"expected {expect.__name__}, got {reply!r}")
            return reply
        raise ShardUnavailable(
            f"shard at {self.endpoint} did not answer {type(message).__name__} within "
            f"{self.timeout_ms} ms, {self.retries + 1} times; is it running?"
        )

    def _wait(self, message_id: int) -> Message | None:
        assert self._socket is not None
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        deadline = time.monotonic() + self.timeout_ms / 1000
        while (remaining := int((deadline - time.monotonic()) * 1000)) > 0:
            if not poller.poll(remaining):
                return None
            try:
                envelope = decode(self._socket.recv(zmq.NOBLOCK))
            except zmq.Again:
                continue
            except WireFormatError as exc:
                raise ShardError("malformed_reply", str(exc)) from exc
            self.last_incarnation = envelope.incarnation
            if envelope.message_id == message_id:
                return envelope.message
            # Otherwise a late reply to an earlier, already retried request: ignore it.
            # The deadline keeps a flood of them from stalling us forever.
        return None

    def close(self) -> None:
        self._drop_socket()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> ShardClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the API ------------------------------------------------------------------------

    def put(self, place: str, tokens: Iterable[Sequence[Any]], *, delay_ms: int = 0) -> PutAck:
        """Put tokens (NamedTuples or tuples of field values) into ``place``."""
        fields = tuple(tuple(t) for t in tokens)
        return self.request(Put(self.client_id, next(self._seq), place, fields, delay_ms), PutAck)

    def counts(self) -> dict[str, int]:
        return self.request(QueryCounts(), Counts).counts

    def tokens(self, place: str, *, offset: int = 0, limit: int = 1_000) -> Tokens:
        return self.request(QueryTokens(place, offset, limit), Tokens)

    def all_tokens(self, place: str, *, page: int = 5_000) -> list[tuple[int, tuple[Any, ...]]]:
        """Every entry of ``place``, fetched page by page."""
        entries: list[tuple[int, tuple[Any, ...]]] = []
        while True:
            reply = self.tokens(place, offset=len(entries), limit=page)
            entries.extend(reply.entries)
            if not reply.entries or len(entries) >= reply.total:
                return entries

    def lease(self, place: str, *, max_tokens: int, lease_ms: int) -> Leased:
        message = Lease(self.client_id, next(self._seq), place, max_tokens, lease_ms)
        return self.request(message, Leased)

    def complete(
        self, lease_id: str, results: Iterable[tuple[str, Sequence[Any]]] = ()
    ) -> Completed:
        fields = tuple((place, tuple(token)) for place, token in results)
        return self.request(Complete(self.client_id, next(self._seq), lease_id, fields), Completed)

    def stats(self) -> dict[str, Any]:
        return self.request(Stats(), Statistics).values

    def ping(self) -> int:
        return self.request(Ping(), Pong).now_ms

    def shutdown(self) -> None:
        self.request(Shutdown(), ShuttingDown)
