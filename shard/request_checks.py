"""What a request may ask of a shard's net: the error a refusal raises, and the checks.

A shard validates a request fully before it changes anything (docs/shard.md, "Errors"):
the place must be the net's, a client may not write into the lease machinery's companion
places, a token must be of its place's colour set, a lease must name a work queue, and a
completion may produce only into the places its queue declares. These checks are pure
functions of the net (and of the companions the lease machinery added to it), shared by
the client writes' puts (:mod:`shard.client_writes`) and the lease desk's completions
(:mod:`shard.lease_desk`); each raises :class:`RequestError` with the code that goes on
the wire, and nothing of the request is applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from nets.codec import token_from_fields
from nets.errors import CpnError, TokenError
from nets.model import Net, Place, Token
from shard.leases import WorkQueue

# Times are stored as msgpack integers; a delay or lease beyond ten years is a mistake.
DURATION_MS_MAX: Final = 10 * 365 * 24 * 3_600_000


class RequestError(CpnError):
    """A request the shard understood but cannot serve; ``code`` goes on the wire."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def place_of(net: Net, name: str) -> Place:
    """The net's place ``name``.

    Raises:
        RequestError: ``unknown_place``, naming the net's places.
    """
    if not net.has_place(name):
        raise RequestError(
            "unknown_place",
            f"net {net.name!r} has no place {name!r} "
            f"(places: {', '.join(p.name for p in net.places)})",
        )
    return net.place(name)


def _not_reserved(companions: frozenset[str], name: str) -> None:
    if name in companions:
        raise RequestError(
            "reserved_place",
            f"place {name!r} belongs to the lease machinery; only leases and completions change it",
        )


def tokens_of(
    net: Net, companions: frozenset[str], place_name: str, items: tuple[Any, ...]
) -> list[Token]:
    """The tokens a client names by their fields, for the place ``place_name``.

    Raises:
        RequestError: ``unknown_place``, ``reserved_place`` (a lease companion), or
            ``wrong_colour`` (a token that is not of the place's colour set).
    """
    place = place_of(net, place_name)
    _not_reserved(companions, place_name)
    key_index = place.key_index
    try:
        return [
            token_from_fields(
                place.colour_set, fields, where=f"place {place_name!r}", key_index=key_index
            )
            for fields in items
        ]
    except TokenError as exc:
        raise RequestError("wrong_colour", str(exc)) from exc


def work_queue_of(net: Net, queues: Mapping[str, WorkQueue], name: str) -> WorkQueue:
    """The work queue of the place ``name``.

    Raises:
        RequestError: ``unknown_place``, or ``not_a_work_queue`` (naming the queues).
    """
    place_of(net, name)
    queue = queues.get(name)
    if queue is None:
        raise RequestError(
            "not_a_work_queue",
            f"place {name!r} is not a work queue (declare it with work_queue=True); "
            f"work queues: {', '.join(queues) or 'none'}",
        )
    return queue


def declared_result(
    net: Net, companions: frozenset[str], lease_id: str, queue: WorkQueue, place: str
) -> None:
    """Refuse a result that ``queue`` does not declare (Place(results=...)).

    Raises:
        RequestError: ``unknown_place``, ``reserved_place`` (the lease machinery's),
            or ``wrong_place``: a place of the net the queue's completions may not
            produce into.
    """
    place_of(net, place)
    _not_reserved(companions, place)
    declared = queue.queue.results or ()
    if place not in declared:
        raise RequestError(
            "wrong_place",
            f"lease {lease_id!r} of work queue {queue.queue.name!r} cannot produce into "
            f"place {place!r}: the queue declares results "
            f"({', '.join(declared) or 'none'}); nothing of the completion was applied",
        )
