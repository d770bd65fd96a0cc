"""The wire format: a closed set of messages as msgpack frames.

Every frame is the msgpack array ``[version, type, message_id, incarnation, body]``:

* ``version``: :data:`PROTOCOL_VERSION`; a frame of another version is refused;
* ``type``: the message type's code (the ``TYPE`` of one of the classes below);
* ``message_id``: chosen by the requester, echoed in the reply (correlation);
* ``incarnation``: the sender's incarnation (a shard's start count; 0 for clients),
  so that a receiver can tell an old incarnation's messages from the current one's;
* ``body``: the message's fields, in declaration order, every one of them: a field
  with a default (``Lease.wait_ms``) is a default of the Python constructor only, so
  a frame of another field count is malformed (adding a field bumps the version).

Theory of operation: :func:`encode` and :func:`decode` are the only way in and out.
:func:`decode` validates everything (sizes via :func:`nets.codec.unpack`'s limits, the
envelope's shape, the type code, the number and the type of every field) and raises
:class:`WireFormatError` naming the problem, never anything else, so a shell can answer
garbage with an :class:`Error` reply and carry on. Tokens travel as tuples of field
values (arrays decode as tuples, so tuple-typed fields survive); turning them back into
typed tokens is the receiver's job, because only it knows the place's colour set.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from nets.codec import CodecError, pack, unpack
from nets.errors import CpnError

# 2: Lease.wait_ms (long polls).
# 3: Renew and Release (worker heartbeats and hand-backs), Complete.indexes (token by
#    token). A version-2 peer would read a 5-field Complete as malformed, and a Renew
#    as an unknown type: refusing its frames by version says why in one place.
PROTOCOL_VERSION: Final = 4
FRAME_BYTES_MAX: Final = 4 * 1024 * 1024
TOKENS_PER_MESSAGE_MAX: Final = 100_000
PLACE_FIXED: Final = -1  # Table.places: a place with neither key nor pool (fixed slot)
PLACE_POOL: Final = -2  # Table.places: a pool place

Fields = tuple[Any, ...]  # a token on the wire: its field values
TimedFields = tuple[int, Fields]  # (time in ms, field values)


class WireFormatError(CpnError):
    """A frame that is not a valid message (malformed, oversized, unknown type...).

    ``message_id`` is the frame's id when the envelope was readable (0 otherwise), so
    that the error reply can still be matched to the request by its sender.
    """

    def __init__(self, message: str, *, message_id: int = 0) -> None:
        super().__init__(message)
        self.message_id = message_id


@dataclass(frozen=True, slots=True)
class Message:
    """Base of all messages; ``TYPE`` is the code on the wire."""

    TYPE: ClassVar[int] = 0


# -- requests ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Put(Message):
    """Put tokens into a place; applied once per (client_id, request_seq)."""

    TYPE: ClassVar[int] = 1
    client_id: str
    request_seq: int
    place: str
    tokens: tuple[Fields, ...]
    delay_ms: int = 0


@dataclass(frozen=True, slots=True)
class QueryCounts(Message):
    """How many tokens each place holds."""

    TYPE: ClassVar[int] = 2


@dataclass(frozen=True, slots=True)
class QueryTokens(Message):
    """One page of a place's entries, in marking order."""

    TYPE: ClassVar[int] = 3
    place: str
    offset: int
    limit: int


@dataclass(frozen=True, slots=True)
class Lease(Message):
    """Take up to ``max_tokens`` available tokens of a work-queue place for ``lease_ms``.

    With ``wait_ms`` > 0 and nothing available, the shard answers when tokens arrive or
    after ``wait_ms`` (then with no entries): a long poll, instead of asking again.
    """

    TYPE: ClassVar[int] = 4
    client_id: str
    request_seq: int
    place: str
    max_tokens: int
    lease_ms: int
    wait_ms: int = 0


@dataclass(frozen=True, slots=True)
class Complete(Message):
    """Finish a lease, putting result tokens ``(place, fields)`` in one atomic step.

    ``indexes``: the lease indexes (positions in :class:`Leased`'s ``entries``) that
    this completion finishes; empty, every token the lease still holds. The others
    stay leased. Results may go only into the places the queue declares.
    """

    TYPE: ClassVar[int] = 5
    client_id: str
    request_seq: int
    lease_id: str
    results: tuple[tuple[str, Fields], ...]
    indexes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Renew(Message):
    """A worker's heartbeat: the lease now expires ``lease_ms`` from the shard's now.

    ``progress`` (at most 200 characters) is what the worker says it is doing; the
    shard shows the latest of each live lease in its statistics.
    """

    TYPE: ClassVar[int] = 17
    client_id: str
    request_seq: int
    lease_id: str
    lease_ms: int
    progress: str = ""


@dataclass(frozen=True, slots=True)
class Release(Message):
    """Hand a lease's tokens back to their queue at once (a worker stopping).

    ``indexes``: the lease indexes to hand back; empty, every token it still holds.
    """

    TYPE: ClassVar[int] = 18
    client_id: str
    request_seq: int
    lease_id: str
    indexes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Stats(Message):
    """The shard's statistics."""

    TYPE: ClassVar[int] = 6


@dataclass(frozen=True, slots=True)
class Shutdown(Message):
    """Stop gracefully: finish the current batch, commit, close."""

    TYPE: ClassVar[int] = 7


@dataclass(frozen=True, slots=True)
class Ping(Message):
    """Liveness check."""

    TYPE: ClassVar[int] = 8


@dataclass(frozen=True, slots=True)
class GetTable(Message):
    """Ask the router for the partition table and where each shard listens."""

    TYPE: ClassVar[int] = 9


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """A shard tells the router it is alive and making progress (sent from its loop).

    ``progress`` holds counters that only grow while the shard's loop turns (loop
    iterations, firings, commits), so that a shard that is alive but stuck shows.
    """

    TYPE: ClassVar[int] = 10
    shard_id: int
    endpoint: str
    epoch: int
    progress: dict[str, int]
    cluster_id: str = ""  # the cluster file's id; the router refuses another cluster's


@dataclass(frozen=True, slots=True)
class ClusterStatus(Message):
    """Ask the router for the cluster's shards and their last heartbeats."""

    TYPE: ClassVar[int] = 11


@dataclass(frozen=True, slots=True)
class Handoff(Message):
    """Tokens from shard ``sender``, in runs ``(lane, first_seq, count, entries)``.

    ``entries`` is the msgpack encoding of a list of ``count`` ``(place, time,
    fields)``; the run covers sequence numbers ``first_seq .. first_seq + count - 1``
    of its lane (see docs/handoff.md). The count is outside the encoding so that a
    receiver judges a run (a duplicate?) before it decodes it. ``epoch`` is the
    sender's partition table epoch.
    """

    TYPE: ClassVar[int] = 12
    sender: int
    epoch: int
    runs: tuple[tuple[int, int, int, bytes], ...]


@dataclass(frozen=True, slots=True)
class PoolWanted(Message):
    """Shard ``sender`` has work that lacks only tokens of pool place ``place``."""

    TYPE: ClassVar[int] = 13
    sender: int
    place: str
    count: int


@dataclass(frozen=True, slots=True)
class MoveReport(Message):
    """A shard's answers to the router's move orders, and what a scale-in waits for.

    ``answers``: ``(move_id, event, count, digest)`` with ``event`` a
    :class:`router.moves.MoveEvent` value (count and digest with ``sealed`` and
    ``staged``). ``outbox_tokens``: tokens not yet acknowledged; ``pool_tokens``: pool
    tokens the shard holds; ``owed``: shards whose pool lanes this shard's outbox still
    holds tokens for (a leaving shard retires only once none is owed anything).
    ``firings_total``: the shard's committed firings per transition over its store's
    life; the router keeps a retired shard's last ones (they count in ``cpn status``).
    """

    TYPE: ClassVar[int] = 14
    shard_id: int
    epoch: int
    answers: tuple[tuple[int, str, int, bytes], ...]
    outbox_tokens: int
    pool_tokens: int
    owed: tuple[int, ...]
    firings_total: dict[str, int]


@dataclass(frozen=True, slots=True)
class FetchSlot(Message):
    """A move's target asks the source for the shipment of a slot sealed for ``move_id``."""

    TYPE: ClassVar[int] = 15
    sender: int
    move_id: int
    slot: int


@dataclass(frozen=True, slots=True)
class Scale(Message):
    """Ask the router to spread the slots over ``shard_count`` shards (``cpn scale``)."""

    TYPE: ClassVar[int] = 16
    shard_count: int


# -- replies -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PutAck(Message):
    """The put is committed (``duplicate``: it had been applied before)."""

    TYPE: ClassVar[int] = 101
    request_seq: int
    accepted: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Counts(Message):
    """Tokens per place (available and future) at the shard's time ``now_ms``.

    ``in_flight``: tokens per place the shard handed off and no receiver acknowledged
    yet (in no marking until one commits them); ``tokens_loading``: tokens of deferred
    places not loaded yet after a restart (counted in ``counts`` from the store).
    """

    TYPE: ClassVar[int] = 102
    counts: dict[str, int]
    now_ms: int
    in_flight: dict[str, int]
    tokens_loading: int


@dataclass(frozen=True, slots=True)
class Tokens(Message):
    """A page of a place's entries; ``total`` is the place's token count."""

    TYPE: ClassVar[int] = 103
    place: str
    offset: int
    total: int
    entries: tuple[TimedFields, ...]


@dataclass(frozen=True, slots=True)
class Leased(Message):
    """The tokens now leased (possibly none) and when the lease expires."""

    TYPE: ClassVar[int] = 104
    request_seq: int
    lease_id: str
    expires_at_ms: int
    entries: tuple[TimedFields, ...]


@dataclass(frozen=True, slots=True)
class Completed(Message):
    """The lease's results are committed (``duplicate``: they had been before)."""

    TYPE: ClassVar[int] = 105
    request_seq: int
    lease_id: str
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Renewed(Message):
    """The lease's tokens are held until ``expires_at_ms`` now."""

    TYPE: ClassVar[int] = 118
    request_seq: int
    lease_id: str
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class Released(Message):
    """``returned`` tokens of the lease are back in their queue."""

    TYPE: ClassVar[int] = 119
    request_seq: int
    lease_id: str
    returned: int


@dataclass(frozen=True, slots=True)
class Statistics(Message):
    """Counters and gauges, by name (see the shard's documentation)."""

    TYPE: ClassVar[int] = 106
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ShuttingDown(Message):
    TYPE: ClassVar[int] = 107


@dataclass(frozen=True, slots=True)
class Pong(Message):
    TYPE: ClassVar[int] = 108
    now_ms: int


@dataclass(frozen=True, slots=True)
class Table(Message):
    """The partition table, the shards' endpoints, and how each place is partitioned.

    ``endpoints[i]`` is where shard ``i`` listens (``""`` until it has reported).
    ``places`` maps a place to its key field's index, ``-1`` for a place in the fixed
    slot and ``-2`` for a pool place, so that a client can route tokens without
    loading the net.
    """

    TYPE: ClassVar[int] = 109
    net: str
    epoch: int
    shard_count: int
    owners: tuple[int, ...]
    slot_epochs: tuple[int, ...]
    endpoints: tuple[str, ...]
    places: dict[str, int]
    cluster_id: str = ""  # the router's cluster id; a shard refuses another cluster's table


@dataclass(frozen=True, slots=True)
class HeartbeatAck(Message):
    """The router's table epoch (a shard that is behind asks for the table)."""

    TYPE: ClassVar[int] = 110
    epoch: int


@dataclass(frozen=True, slots=True)
class ClusterState(Message):
    """Each shard as the router sees it (``shards[i]`` for shard ``i``): endpoint,
    alive, milliseconds since its last heartbeat, its epoch and progress counters."""

    TYPE: ClassVar[int] = 111
    net: str
    epoch: int
    shards: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class HandoffAck(Message):
    """The receiver's answer to a :class:`Handoff` (sent after its commit).

    ``acks``: ``(lane, hwm)``, every sequence number up to ``hwm`` of the lane is
    applied. ``redirects``: ``(lane, owner, epoch)``, the receiver does not own the
    lane (or the sender's epoch is older than the lane's last change); nothing of it
    was applied. ``deferred``: lanes the receiver cannot judge yet (its table is
    older than the sender's); nothing of them was applied, send again later.
    """

    TYPE: ClassVar[int] = 112
    acks: tuple[tuple[int, int], ...]
    redirects: tuple[tuple[int, int, int], ...]
    deferred: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PoolAnswer(Message):
    """How many pool tokens the peer put into its outbox for the asker."""

    TYPE: ClassVar[int] = 113
    place: str
    given: int


@dataclass(frozen=True, slots=True)
class Redirect(Message):
    """The request touches a slot this shard does not own: ask ``owner`` instead.

    Nothing of the request was applied. ``epoch`` is this shard's table epoch; a
    client whose table is older refreshes it from the router first.
    """

    TYPE: ClassVar[int] = 114
    slot: int
    owner: int
    epoch: int


@dataclass(frozen=True, slots=True)
class MoveOrders(Message):
    """The router's answer to a :class:`MoveReport`: what the shard must do for moves.

    ``orders``: ``(move_id, kind, slot, source, target, count, digest, epoch)`` with
    ``kind`` a :class:`router.moves.Request` kind; ``epoch`` is the table epoch the
    shard's copy must reach first (``seal``: the slot's epoch; ``activate`` and
    ``forget``: the move's commit epoch; else 0). ``members``: the shard count the
    cluster is heading for (a shard with an id at or beyond it is leaving).
    ``fence_epoch``: the epoch at which the router fenced this shard's current
    incarnation (0: not yet); the shard fires once its table reaches it.
    """

    TYPE: ClassVar[int] = 115
    epoch: int
    members: int
    fence_epoch: int
    orders: tuple[tuple[int, str, int, int, int, int, bytes, int], ...]


@dataclass(frozen=True, slots=True)
class SlotShipment(Message):
    """Everything a sealed slot holds: ``entries`` (msgpack of ``[(place, time, fields)]``)
    and the inbox hwms of its lane ``(sender, hwm)``, with the count and digest the
    source sealed (:func:`router.moves.shipment_digest`)."""

    TYPE: ClassVar[int] = 116
    move_id: int
    slot: int
    count: int
    digest: bytes
    entries: bytes
    hwms: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Scaled(Message):
    """The router took the new shard count; moves follow (``cpn status`` shows them)."""

    TYPE: ClassVar[int] = 117
    shard_count: int
    epoch: int


@dataclass(frozen=True, slots=True)
class Error(Message):
    """A request that could not be served; ``code`` is stable, ``message`` is for people."""

    TYPE: ClassVar[int] = 199
    code: str
    message: str


REQUESTS: Final = (
    Put,
    QueryCounts,
    QueryTokens,
    Lease,
    Complete,
    Stats,
    Shutdown,
    Ping,
    GetTable,
    Heartbeat,
    ClusterStatus,
    Handoff,
    PoolWanted,
    MoveReport,
    FetchSlot,
    Scale,
    Renew,
    Release,
)
REPLIES: Final = (
    PutAck,
    Counts,
    Tokens,
    Leased,
    Completed,
    Statistics,
    ShuttingDown,
    Pong,
    Table,
    HeartbeatAck,
    ClusterState,
    HandoffAck,
    PoolAnswer,
    Redirect,
    MoveOrders,
    SlotShipment,
    Scaled,
    Renewed,
    Released,
    Error,
)
_BY_TYPE: Final[dict[int, type[Message]]] = {cls.TYPE: cls for cls in REQUESTS + REPLIES}


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded frame: the message and its envelope fields."""

    message: Message
    message_id: int
    incarnation: int


def encode(message: Message, *, message_id: int, incarnation: int = 0) -> bytes:
    """The frame for ``message`` (see the module docstring)."""
    body = tuple(getattr(message, f.name) for f in dataclasses.fields(message))
    return pack((PROTOCOL_VERSION, message.TYPE, message_id, incarnation, body))


def decode(frame: bytes) -> Envelope:
    """Decode and validate one frame.

    Raises:
        WireFormatError: naming what is wrong; nothing else escapes.
    """
    try:
        value = unpack(frame, frame_bytes_max=FRAME_BYTES_MAX)
    except CodecError as exc:
        raise WireFormatError(str(exc)) from exc
    if type(value) is not tuple or len(value) != 5:
        raise WireFormatError("a frame must be [version, type, message_id, incarnation, body]")
    version, code, message_id, incarnation, body = value
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise WireFormatError(f"protocol version {version!r} is not {PROTOCOL_VERSION}")
    if type(message_id) is not int or message_id < 0:
        raise WireFormatError(f"message id {message_id!r} is not a non-negative int")
    if type(incarnation) is not int or incarnation < 0:
        raise WireFormatError(
            f"incarnation {incarnation!r} is not a non-negative int", message_id=message_id
        )
    cls = _BY_TYPE.get(code) if type(code) is int else None
    if cls is None:
        raise WireFormatError(f"unknown message type {code!r}", message_id=message_id)
    checks = _field_checks(cls)
    if type(body) is not tuple or len(body) != len(checks):
        fields = dataclasses.fields(cls)
        raise WireFormatError(
            f"{cls.__name__} needs {len(fields)} fields "
            f"({', '.join(f.name for f in fields)}), got {body!r:.200}",
            message_id=message_id,
        )
    for (name, hint, check), item in zip(checks, body, strict=True):
        if not check(item):
            raise WireFormatError(
                f"{cls.__name__}.{name} must be {_describe(hint)}, got {item!r:.200}",
                message_id=message_id,
            )
    return Envelope(cls(*body), message_id, incarnation)


_HINTS: dict[type, dict[str, Any]] = {}
Check = Callable[[object], bool]
_CHECKS: dict[type, tuple[tuple[str, Any, Check], ...]] = {}


def _field_checks(cls: type) -> tuple[tuple[str, Any, Check], ...]:
    """Each field's (name, hint, check), built once per message class: the check is
    :func:`_conforms` for that hint, compiled into closures (decoding every frame walked
    the type hints anew, most of the cost of a frame with many entries)."""
    found = _CHECKS.get(cls)
    if found is None:
        hints = _hints(cls)
        found = _CHECKS[cls] = tuple(
            (f.name, hints[f.name], _checker(hints[f.name])) for f in dataclasses.fields(cls)
        )
    return found


def _checker_of_tuples(item: Check) -> Check:
    def conforms_to_tuples(value: object) -> bool:
        if type(value) is not tuple or len(value) > TOKENS_PER_MESSAGE_MAX:
            return False
        for element in value:  # noqa: SIM110 - a loop: all() of a generator is slower here
            if not item(element):
                return False
        return True

    return conforms_to_tuples


def _checker_of_plain_tuples(kind: type) -> Check:
    """A tuple of one plain type (a table's 1,024 owners): the types compared in C."""
    kinds = {kind}

    def conforms_to_plain_tuples(value: object) -> bool:
        return (
            type(value) is tuple
            and len(value) <= TOKENS_PER_MESSAGE_MAX
            and (not value or set(map(type, value)) == kinds)
        )

    return conforms_to_plain_tuples


def _checker_of_record(kinds: tuple[Any, ...]) -> Check:
    """A tuple of plain fields (int, str, bool, bytes): one type test per field."""
    count = len(kinds)

    def conforms_to_plain_record(value: object) -> bool:
        if type(value) is not tuple or len(value) != count:
            return False
        for kind, item in zip(kinds, value, strict=True):  # noqa: SIM110 - as above
            if type(item) is not kind:
                return False
        return True

    return conforms_to_plain_record


def _checker(hint: Any) -> Check:
    """:func:`_conforms` for one hint, as a closure (same rules, no walk per value)."""
    if hint is Any:
        return lambda _value: True
    if hint in (int, str, bool, bytes):
        return lambda value: type(value) is hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            if args[0] in (int, str, bool, bytes):
                return _checker_of_plain_tuples(args[0])
            return _checker_of_tuples(_checker(args[0]))
        if all(a in (int, str, bool, bytes) for a in args):
            return _checker_of_record(args)
        items = tuple(_checker(a) for a in args)
        count = len(items)

        def conforms_to_record(value: object) -> bool:
            if type(value) is not tuple or len(value) != count:
                return False
            for check, item in zip(items, value, strict=True):  # noqa: SIM110 - as above
                if not check(item):
                    return False
            return True

        return conforms_to_record
    if origin is dict:
        key, val = _checker(args[0]), _checker(args[1])
        return lambda value: (
            type(value) is dict and all(key(k) and val(v) for k, v in value.items())
        )
    if isinstance(hint, types.UnionType):
        options = tuple(_checker(a) for a in args)
        return lambda value: any(check(value) for check in options)
    raise AssertionError(f"unsupported message field type {hint!r}")


def _hints(cls: type) -> dict[str, Any]:
    found = _HINTS.get(cls)
    if found is None:
        found = _HINTS[cls] = typing.get_type_hints(cls)
    return found


def _conforms(value: object, hint: Any) -> bool:
    """Does a decoded value fit a field's type hint? (the few shapes messages use)"""
    if hint is Any:
        return True
    if hint in (int, str, bool, bytes):
        return type(value) is hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if type(value) is not tuple:
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return len(value) <= TOKENS_PER_MESSAGE_MAX and all(
                _conforms(item, args[0]) for item in value
            )
        return len(value) == len(args) and all(
            _conforms(item, a) for item, a in zip(value, args, strict=True)
        )
    if origin is dict:
        return type(value) is dict and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items()
        )
    if isinstance(hint, types.UnionType):
        return any(_conforms(value, a) for a in args)
    raise AssertionError(f"unsupported message field type {hint!r}")


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
