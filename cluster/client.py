"""Python clients: one shard (:class:`ShardClient`) and a whole cluster (:class:`ClusterClient`).

(SHELL.) A :class:`ShardClient` talks to one shard: put, query, lease, renew, release,
complete, statistics.

Requests that change the marking carry ``(client_id, request_seq)``; the shard applies
each once and answers a repeat from its client table. So the client can follow the
Lazy Pirate pattern safely: wait for the reply up to ``timeout_ms``; if none comes,
drop the socket (a ZeroMQ DEALER socket cannot be reused after a lost request), open
a new one and send the *same* frame again, up to ``retries`` times; then raise
:class:`ShardUnavailable`. A client object is not thread-safe; use one per thread.

A :class:`ClusterClient` asks the router for the partition table once, caches it, and
then talks to each shard directly (the router forwards no tokens): a put is split by
owner (a token's slot is the hash of its key field, see :mod:`router.slots`), each part
goes to its owner through that shard's :class:`ShardClient`, and a shard that does not
own a slot (any more) answers with a :class:`~router.wire.Redirect`; the client then
refreshes the table and sends that part again, to the new owner.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import zmq

from cluster.layout import router_endpoint
from nets.errors import CpnError
from router.shell.curve import CurveKeys, connect_securely
from router.slots import FIXED_SLOT, slot_of_key
from router.wire import (
    FRAME_BYTES_MAX,
    PLACE_FIXED,
    PLACE_POOL,
    ClusterState,
    ClusterStatus,
    Complete,
    Completed,
    Counts,
    Error,
    Fields,
    GetTable,
    Lease,
    Leased,
    Message,
    Ping,
    Pong,
    Put,
    PutAck,
    QueryCounts,
    QueryTokens,
    Redirect,
    Release,
    Released,
    Renew,
    Renewed,
    Scale,
    Scaled,
    Shutdown,
    ShuttingDown,
    Statistics,
    Stats,
    Table,
    Tokens,
    WireFormatError,
    decode,
    encode,
)

TIMEOUT_MS_DEFAULT: Final = 3_000
RETRIES_DEFAULT: Final = 3
PUT_TOKENS_PER_REQUEST_MAX: Final = 10_000  # a part's tokens travel in requests of this size
REDIRECTS_MAX: Final = 8  # per put: more means the table keeps changing under us
REDIRECT_WAIT_S: Final = 0.05  # times the attempt, after a redirect from a shard behind
REDIRECT_WAIT_S_MAX: Final = 0.5
TOKENS_PAGE: Final = 5_000

R = TypeVar("R", bound=Message)

# The CURVE keys clients of this process present when none are given: set once by the
# CLI from a cluster file (`--config`), so that every client it makes (the supervisor's
# too) authenticates without each call site passing keys.
_default_curve: list[CurveKeys | None] = [None]


def use_client_keys(keys: CurveKeys | None) -> None:
    """Make ``keys`` the CURVE keys of every client this process makes from now on."""
    _default_curve[0] = keys


class ShardUnavailable(CpnError):
    """No reply from the shard after every retry."""


class ShardError(CpnError):
    """The shard answered with an error; ``code`` says which (e.g. ``unknown_place``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Redirected(CpnError):
    """The shard does not own ``slot``: shard ``owner`` does, as of the shard's ``epoch``.

    Nothing of the request was applied, and the shard did not remember it: the same
    tokens may be sent to the owner (a :class:`ClusterClient` does so by itself).
    """

    def __init__(self, slot: int, owner: int, epoch: int, *, endpoint: str) -> None:
        super().__init__(
            f"the shard at {endpoint} does not own slot {slot}: shard {owner} does (epoch {epoch})"
        )
        self.slot = slot
        self.owner = owner
        self.epoch = epoch


class PartialPut(CpnError):
    """A cluster put failed after some of its parts were committed (see ``summary``)."""

    def __init__(self, cause: CpnError, summary: PutSummary, total: int) -> None:
        done = ", ".join(f"shard {k}: {n}" for k, n in sorted(summary.by_shard.items()))
        super().__init__(
            f"{cause}; {summary.accepted} of {total} tokens were put before that ({done}), "
            "the others were not"
        )
        self.summary = summary


def expected_reply(reply: Message, expect: type[R], endpoint: str) -> R:
    """``reply`` if it is an ``expect``; else the error it stands for.

    Raises:
        ShardError: the shard answered with an error, or with another kind of reply.
        Redirected: the shard does not own a slot the request touches.
    """
    if isinstance(reply, Error):
        raise ShardError(reply.code, reply.message)
    if isinstance(reply, Redirect):
        raise Redirected(reply.slot, reply.owner, reply.epoch, endpoint=endpoint)
    if not isinstance(reply, expect):
        raise ShardError("unexpected_reply", f"expected {expect.__name__}, got {reply!r}")
    return reply


def unanswered(
    role: str, endpoint: str, message: Message, timeout_ms: int, retries: int
) -> ShardUnavailable:
    """The error for a request that got no reply after all its tries."""
    return ShardUnavailable(
        f"{role} at {endpoint} did not answer {type(message).__name__} within "
        f"{timeout_ms} ms, {retries + 1} times; is it running?"
    )


def client_socket(context: zmq.Context[Any], endpoint: str, curve: CurveKeys | None) -> Any:
    """A DEALER socket connected to ``endpoint`` (with CURVE when ``curve`` is given);
    ``context`` may be an asyncio one (:mod:`zmq.asyncio`)."""
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, FRAME_BYTES_MAX + 1024)
    if curve is not None:
        connect_securely(socket, curve)
    socket.connect(endpoint)
    return socket


def default_curve() -> CurveKeys | None:
    """The keys set by :func:`use_client_keys`, if any."""
    return _default_curve[0]


class ClosedOnExit:
    """A client used as a context manager: ``with`` closes it at the end of the block."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ShardClient(ClosedOnExit):
    """Talks to one shard at ``endpoint`` (e.g. ``tcp://127.0.0.1:5555``).

    ``role`` names the peer in error messages (the cluster client talks to the router
    through a ``ShardClient`` with ``role="router"``).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        client_id: str | None = None,
        timeout_ms: int = TIMEOUT_MS_DEFAULT,
        retries: int = RETRIES_DEFAULT,
        context: zmq.Context[Any] | None = None,
        role: str = "shard",
        curve: CurveKeys | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.role = role
        self.curve = curve if curve is not None else _default_curve[0]
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
        return client_socket(self._context, self.endpoint, self.curve)  # type: ignore[no-any-return]

    def _drop_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def reconnect(self, endpoint: str) -> None:
        """Talk to ``endpoint`` from now on (the shard restarted elsewhere).

        The client id and the request sequence carry on, so a request sent again
        after the move is still recognised as a repeat.
        """
        self._drop_socket()
        self.endpoint = endpoint

    def next_request_seq(self) -> int:
        """A new request sequence number (for a request built by the caller)."""
        return next(self._seq)

    def request(self, message: Message, expect: type[R], *, wait_ms: int = 0) -> R:
        """Send ``message`` and wait for its reply (retrying, see the module docstring),
        ``wait_ms`` longer than the timeout for a request the shard may hold that long
        (a lease that waits for work).

        Raises:
            ShardUnavailable: no reply after all retries.
            ShardError: the shard answered with an error.
            Redirected: the shard does not own a slot the request touches.
        """
        message_id = next(self._message_ids)
        frame = encode(message, message_id=message_id)
        for _attempt in range(self.retries + 1):
            if self._socket is None:
                self._socket = self._connect()
            self._socket.send(frame)
            reply = self._wait(message_id, self.timeout_ms + wait_ms)
            if reply is None:
                self._drop_socket()
                continue
            return expected_reply(reply, expect, self.endpoint)
        raise unanswered(self.role, self.endpoint, message, self.timeout_ms + wait_ms, self.retries)

    def _wait(self, message_id: int, timeout_ms: int) -> Message | None:
        assert self._socket is not None
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        deadline = time.monotonic() + timeout_ms / 1000
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

    # -- the API ------------------------------------------------------------------------

    def put(self, place: str, tokens: Iterable[Sequence[Any]], *, delay_ms: int = 0) -> PutAck:
        """Put tokens (NamedTuples or tuples of field values) into ``place``."""
        fields = tuple(tuple(t) for t in tokens)
        return self.request(
            Put(self.client_id, self.next_request_seq(), place, fields, delay_ms), PutAck
        )

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

    def lease(self, place: str, *, max_tokens: int, lease_ms: int, wait_ms: int = 0) -> Leased:
        """Lease up to ``max_tokens`` tokens of ``place``; with ``wait_ms``, wait up to
        that long for work when there is none (a long poll)."""
        message = Lease(self.client_id, next(self._seq), place, max_tokens, lease_ms, wait_ms)
        return self.request(message, Leased, wait_ms=wait_ms)

    def complete(
        self,
        lease_id: str,
        results: Iterable[tuple[str, Sequence[Any]]] = (),
        *,
        indexes: Iterable[int] = (),
    ) -> Completed:
        """Complete a lease, adding ``results`` ``(place, token)`` in one step.

        ``indexes``: the lease indexes (positions in the lease's ``entries``) this
        completes; the others stay leased. Empty: every token the lease still holds.

        Raises:
            ShardError: ``lease_expired`` (unknown, expired, or completed or handed
                back in full), ``unknown_index`` (an index the lease no longer holds),
                ``wrong_place`` (a place the queue does not declare in ``results=``),
                ``wrong_colour``, ``unknown_place``; nothing of the completion is
                applied and the lease stays as it was.
            ShardUnavailable: no reply after all retries.
        """
        fields = tuple((place, tuple(token)) for place, token in results)
        message = Complete(self.client_id, next(self._seq), lease_id, fields, tuple(indexes))
        return self.request(message, Completed)

    def renew(self, lease_id: str, *, lease_ms: int, progress: str = "") -> Renewed:
        """Keep a lease: its tokens are now held until ``lease_ms`` from the shard's now
        (a worker's heartbeat). ``progress`` (at most 200 characters) shows in the
        shard's statistics.

        Raises:
            ShardError: ``lease_expired`` (too late: its tokens went back to the queue,
                or it was completed or handed back), ``bad_request`` (``lease_ms`` or
                ``progress`` out of bounds).
            ShardUnavailable: no reply after all retries.
        """
        message = Renew(self.client_id, next(self._seq), lease_id, lease_ms, progress)
        return self.request(message, Renewed)

    def release(self, lease_id: str, *, indexes: Iterable[int] = ()) -> Released:
        """Hand a lease's tokens (those with ``indexes``; by default all it still holds)
        back to their queue at once, e.g. when a worker is told to stop.

        Raises:
            ShardError: ``lease_expired``, ``unknown_index``, as for :meth:`complete`.
            ShardUnavailable: no reply after all retries.
        """
        message = Release(self.client_id, next(self._seq), lease_id, tuple(indexes))
        return self.request(message, Released)

    def stats(self) -> dict[str, Any]:
        return self.request(Stats(), Statistics).values

    def ping(self) -> int:
        return self.request(Ping(), Pong).now_ms

    def shutdown(self) -> None:
        self.request(Shutdown(), ShuttingDown)


# -- the whole cluster --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PutSummary:
    """What a cluster put did: tokens accepted in all, per shard, and redirects followed."""

    accepted: int
    by_shard: dict[int, int]
    redirects: int


class ClusterClient(ClosedOnExit):
    """Talks to a cluster: the router for the table, each shard for its tokens.

    Args:
        router_endpoint: where the router listens (:meth:`for_data_dir` finds it).
        client_id: this client's id; each shard sees ``"<client_id>/<shard id>"``, with
            its own request sequence, so that requests are deduplicated per shard.
        timeout_ms, retries: per request, as for :class:`ShardClient`.
        curve: the CURVE keys to present to the router and the shards (default: those
            set by :func:`use_client_keys`, if any; see docs/operations.md, "Keys").

    Not thread-safe; use one per thread.
    """

    def __init__(
        self,
        router_endpoint: str,
        *,
        client_id: str | None = None,
        timeout_ms: int = TIMEOUT_MS_DEFAULT,
        retries: int = RETRIES_DEFAULT,
        context: zmq.Context[Any] | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        self._owns_context = context is None
        self._context = zmq.Context() if context is None else context
        # Every shard client (and the router's) shares this client's context and limits.
        self._options: dict[str, Any] = {
            "timeout_ms": timeout_ms,
            "retries": retries,
            "context": self._context,
            "curve": curve,
        }
        self.client_id = client_id or os.urandom(8).hex()
        self._router = ShardClient(
            router_endpoint, client_id=self.client_id, role="router", **self._options
        )
        self._shards: dict[int, ShardClient] = {}
        self._table: Table | None = None
        self._moved: dict[int, tuple[int, int]] = {}  # slot -> (owner, epoch), newer than table
        self._pool_turn = itertools.count()

    @classmethod
    def for_data_dir(cls, data_dir: Path, **options: Any) -> ClusterClient:
        """A client for the cluster running in ``data_dir`` (``cpn up --data DIR``).

        Raises:
            CpnError: no cluster there, or it is not running.
        """
        return cls(router_endpoint(data_dir), **options)

    @property
    def router_endpoint(self) -> str:
        return self._router.endpoint

    # -- the control plane --------------------------------------------------------------

    def table(self, *, refresh: bool = False) -> Table:
        """The partition table (cached; ``refresh`` asks the router again)."""
        if self._table is None or refresh:
            self._table = self._router.request(GetTable(), Table)
            epoch = self._table.epoch
            self._moved = {s: (o, e) for s, (o, e) in self._moved.items() if e > epoch}
        return self._table

    def status(self) -> ClusterState:
        """Each shard as the router sees it (endpoint, alive, epoch, progress...)."""
        return self._router.request(ClusterStatus(), ClusterState)

    def router_statistics(self) -> dict[str, Any]:
        return self._router.request(Stats(), Statistics).values

    def scale(self, shard_count: int) -> Scaled:
        """Ask the router to spread the slots over ``shard_count`` shards (``cpn scale``)."""
        return self._router.request(Scale(shard_count), Scaled)

    def shard(self, shard_id: int) -> ShardClient:
        """The client of shard ``shard_id``, connected to its endpoint in the table.

        Raises:
            ShardUnavailable: the shard has not told the router where it listens.
        """
        table = self.table()
        if not 0 <= shard_id < table.shard_count:
            raise CpnError(f"shard id {shard_id} is not one of 0..{table.shard_count - 1}")
        endpoint = table.endpoints[shard_id] or self.table(refresh=True).endpoints[shard_id]
        if not endpoint:
            raise ShardUnavailable(
                f"shard {shard_id} has not told the router where it listens; is it running?"
            )
        client = self._shards.get(shard_id)
        if client is None:
            client = self._shards[shard_id] = ShardClient(
                endpoint, client_id=f"{self.client_id}/{shard_id}", **self._options
            )
        elif client.endpoint != endpoint:
            client.reconnect(endpoint)
        return client

    def _request(self, shard_id: int, message: Message, expect: type[R], *, wait_ms: int = 0) -> R:
        """Send ``message`` to a shard; if it is unreachable, look it up again, once.

        A shard restarted on another port is found through the router; the very same
        message is sent again, so a put that the old incarnation did commit is
        answered as a repeat rather than applied twice.
        """
        client = self.shard(shard_id)
        try:
            return client.request(message, expect, wait_ms=wait_ms)
        except ShardUnavailable as unavailable:
            try:
                endpoint = self.table(refresh=True).endpoints[shard_id]
            except ShardUnavailable:
                raise unavailable from None  # the router is down too: report the shard
            if endpoint in ("", client.endpoint):
                raise
            client.reconnect(endpoint)
            return client.request(message, expect, wait_ms=wait_ms)

    # -- routing ------------------------------------------------------------------------

    def owner(self, place: str, fields: Sequence[Any]) -> int:
        """The shard that owns a token of ``place`` (for a pool place: the next in turn)."""
        table = self.table()
        where = table.places.get(place)
        if where is None:
            raise ShardError(
                "unknown_place",
                f"net {table.net!r} has no place {place!r} (places: {', '.join(table.places)})",
            )
        if where == PLACE_POOL:
            return next(self._pool_turn) % table.shard_count
        if where == PLACE_FIXED:
            slot = FIXED_SLOT
        elif where < len(fields):
            slot = slot_of_key(fields[where])
        else:
            raise ShardError(
                "wrong_colour",
                f"a token of place {place!r} needs its key in field {where}, got {tuple(fields)!r}",
            )
        moved = self._moved.get(slot)
        return moved[0] if moved is not None else table.owners[slot]

    def _split(self, place: str, tokens: Iterable[Fields]) -> deque[tuple[int, list[Fields]]]:
        parts: dict[int, list[Fields]] = {}
        for fields in tokens:
            parts.setdefault(self.owner(place, fields), []).append(fields)
        step = PUT_TOKENS_PER_REQUEST_MAX
        return deque(
            (shard_id, part[i : i + step])
            for shard_id, part in sorted(parts.items())
            for i in range(0, len(part), step)
        )

    def _follow(self, redirect: Redirected, attempt: int = 1) -> None:
        table = self.table(refresh=True)
        if redirect.epoch > table.epoch:  # the shard knows of a move the router has not told
            self._moved[redirect.slot] = (redirect.owner, redirect.epoch)
        elif table.owners[redirect.slot] != redirect.owner and redirect.epoch < table.epoch:
            # A slot's new owner whose table is behind the router's points back at the
            # old one: give it a moment to learn the table (it asks within 250 ms).
            time.sleep(min(REDIRECT_WAIT_S_MAX, REDIRECT_WAIT_S * attempt))

    # -- the data plane -----------------------------------------------------------------

    def put(self, place: str, tokens: Iterable[Sequence[Any]], *, delay_ms: int = 0) -> PutSummary:
        """Put tokens (tuples of field values) into ``place``, each on its owner shard.

        Each shard's part is committed atomically (in requests of at most
        ``PUT_TOKENS_PER_REQUEST_MAX`` tokens); the put as a whole is not atomic
        across shards. A redirected part is sent again to the new owner.

        Raises:
            ShardError: a shard refused a part (unknown place, wrong colour...), or a
                token cannot be routed; nothing of that part was applied.
            ShardUnavailable: a shard did not answer.
            PartialPut: one of the above after other parts were committed.
        """
        fields = [tuple(t) for t in tokens]
        pending = self._split(place, fields)
        accepted: Counter[int] = Counter()
        redirects = 0
        while pending:
            shard_id, part = pending.popleft()
            try:
                client = self.shard(shard_id)
                message = Put(
                    client.client_id, client.next_request_seq(), place, tuple(part), delay_ms
                )
                accepted[shard_id] += self._request(shard_id, message, PutAck).accepted
            except Redirected as redirect:
                redirects += 1
                if redirects > REDIRECTS_MAX:
                    raise self._partial(redirect, accepted, redirects, len(fields)) from redirect
                self._follow(redirect, redirects)
                pending.extend(self._split(place, part))
            except CpnError as exc:
                if not accepted:
                    raise
                raise self._partial(exc, accepted, redirects, len(fields)) from exc
        return PutSummary(sum(accepted.values()), dict(sorted(accepted.items())), redirects)

    @staticmethod
    def _partial(cause: CpnError, accepted: Counter[int], redirects: int, total: int) -> CpnError:
        summary = PutSummary(sum(accepted.values()), dict(sorted(accepted.items())), redirects)
        return PartialPut(cause, summary, total) if accepted else cause

    def lease(
        self, shard_id: int, place: str, *, max_tokens: int, lease_ms: int, wait_ms: int = 0
    ) -> Leased:
        """Lease up to ``max_tokens`` tokens of the work queue ``place`` held by ``shard_id``;
        with ``wait_ms``, the shard waits up to that long for work when it has none.

        Workers lease from every shard in turn (each holds its own slots' part of the
        queue); a lease is completed on the shard that granted it (:meth:`complete`).
        A shard restarted elsewhere is found through the router, as for every request.

        Raises:
            ShardError, ShardUnavailable: as :meth:`ShardClient.request`.
        """
        client = self.shard(shard_id)
        message = Lease(
            client.client_id, client.next_request_seq(), place, max_tokens, lease_ms, wait_ms
        )
        return self._request(shard_id, message, Leased, wait_ms=wait_ms)

    def complete(
        self,
        shard_id: int,
        lease_id: str,
        results: Iterable[tuple[str, Sequence[Any]]] = (),
        *,
        indexes: Iterable[int] = (),
    ) -> Completed:
        """Complete a lease that ``shard_id`` granted, adding ``results`` in one step;
        ``indexes`` as for :meth:`ShardClient.complete`.

        Raises:
            ShardError: ``lease_expired`` when the lease is unknown or expired (its
                tokens went back to the queue, or an earlier try of this very
                completion was committed); ``unknown_index``, ``wrong_place`` and the
                others as :meth:`ShardClient.complete`.
            ShardUnavailable: the shard did not answer.
        """
        client = self.shard(shard_id)
        fields = tuple((place, tuple(token)) for place, token in results)
        message = Complete(
            client.client_id, client.next_request_seq(), lease_id, fields, tuple(indexes)
        )
        return self._request(shard_id, message, Completed)

    def renew(self, shard_id: int, lease_id: str, *, lease_ms: int, progress: str = "") -> Renewed:
        """Keep a lease that ``shard_id`` granted (as :meth:`ShardClient.renew`).

        Raises:
            ShardError: ``lease_expired``, ``bad_request``, as :meth:`ShardClient.renew`.
            ShardUnavailable: the shard did not answer.
        """
        client = self.shard(shard_id)
        message = Renew(client.client_id, client.next_request_seq(), lease_id, lease_ms, progress)
        return self._request(shard_id, message, Renewed)

    def release(self, shard_id: int, lease_id: str, *, indexes: Iterable[int] = ()) -> Released:
        """Hand back tokens of a lease that ``shard_id`` granted (as
        :meth:`ShardClient.release`).

        Raises:
            ShardError: ``lease_expired``, ``unknown_index``, as :meth:`ShardClient.release`.
            ShardUnavailable: the shard did not answer.
        """
        client = self.shard(shard_id)
        message = Release(client.client_id, client.next_request_seq(), lease_id, tuple(indexes))
        return self._request(shard_id, message, Released)

    def shard_counts(self) -> dict[int, dict[str, int]]:
        """Tokens per place on each shard."""
        return {
            shard_id: self._request(shard_id, QueryCounts(), Counts).counts
            for shard_id in range(self.table().shard_count)
        }

    def counts(self) -> dict[str, int]:
        """Tokens per place, summed over every shard."""
        total: Counter[str] = Counter()
        for counts in self.shard_counts().values():
            total.update(counts)
        return dict(total)

    def tokens(self, place: str, *, limit: int | None = None) -> list[tuple[int, int, Fields]]:
        """Entries ``(shard id, time ms, fields)`` of ``place`` on every shard, in shard order.

        Each shard's entries come in its marking order, page by page; ``limit`` stops
        after that many entries in all.
        """
        entries: list[tuple[int, int, Fields]] = []
        for shard_id in range(self.table().shard_count):
            offset = 0
            while limit is None or len(entries) < limit:
                size = TOKENS_PAGE if limit is None else min(TOKENS_PAGE, limit - len(entries))
                reply = self._request(shard_id, QueryTokens(place, offset, size), Tokens)
                entries.extend((shard_id, time_ms, fields) for time_ms, fields in reply.entries)
                offset += len(reply.entries)
                if not reply.entries or offset >= reply.total:
                    break
        return entries

    def statistics(self, shard_ids: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
        """Each shard's statistics (of ``shard_ids``, by default every shard)."""
        chosen = range(self.table().shard_count) if shard_ids is None else shard_ids
        return {k: self._request(k, Stats(), Statistics).values for k in chosen}

    def close(self) -> None:
        for client in self._shards.values():
            client.close()
        self._router.close()
        if self._owns_context:
            self._context.term()
