"""Leases of work-queue tokens, modelled in the net itself.

A place marked ``work_queue=True`` gets two companion places and two transitions:

* ``<q>__held``: a leased token, as ``(lease__id, lease__index, <the token's fields>)``;
* ``<q>__timer``: ``(lease__id, lease__index[, <key field>])``, a timed token that
  becomes available when the lease expires;
* ``<q>__lease_expired`` consumes a due timer and its held token and puts the original
  token back into ``<q>``: an expired lease returns its work by an ordinary firing;
* ``<q>__timer_spent`` consumes a due timer whose held token is gone (the lease was
  completed), guarded by an inhibitor arc on ``<q>__held``.

Leasing moves tokens from ``<q>`` into ``<q>__held`` and starts their timers;
completing removes the held tokens and adds the results. Both are changes the shard
commits in one batch like any firing; the expiry is a firing. Companion places keep
the queue's partitioning (same key field, or pool), so the partition rule holds.

A lease's tokens are numbered by their position in the grant (``lease__index``), so
a worker can complete or hand back some of them and leave the rest leased. Renewing
a lease (a worker's heartbeat) moves the timers of the tokens it still holds to the
new expiry: removed at the old time, added at the new one, in the batch. A timer
whose held token was completed or handed back stays where it was and is spent when
due. :class:`LiveLease` is the shard's index of what each lease still holds; the
marking is the truth it is rebuilt from (:func:`live_leases`).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, NamedTuple

from nets.errors import NetDefinitionError
from nets.firing import PlacedEntry
from nets.model import Net, Place, Token, Transition, variables

LEASE_ID: str = "lease__id"
LEASE_INDEX: str = "lease__index"


@dataclass(frozen=True, slots=True)
class WorkQueue:
    """The companions of one work-queue place."""

    queue: Place
    held: Place
    timer: Place

    def held_token(self, lease_id: str, index: int, token: Token) -> Token:
        cls: Any = self.held.colour_set.cls
        return cls(lease_id, index, *token)  # type: ignore[no-any-return]

    def timer_token(self, lease_id: str, index: int, token: Token) -> Token:
        cls: Any = self.timer.colour_set.cls
        if self.queue.key is None:
            return cls(lease_id, index)  # type: ignore[no-any-return]
        key = token[self.queue.colour_set.field_index(self.queue.key)]
        return cls(lease_id, index, key)  # type: ignore[no-any-return]

    def original(self, held: Token) -> Token:
        cls: Any = self.queue.colour_set.cls
        return cls(*held[2:])  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class LiveLease:
    """What one granted lease still holds, as the shard's core indexes it.

    ``held``: its ``(<q>__held, time, held token)`` entries not completed or handed
    back yet, by lease index (a held token's second field); never empty.
    ``expires_at_ms``: when their timers come due (moved by each renewal).
    """

    queue: str
    expires_at_ms: int
    held: tuple[PlacedEntry, ...]

    def index_of(self, entry: PlacedEntry) -> int:
        return int(entry[2][1])

    def indexes(self) -> tuple[int, ...]:
        return tuple(self.index_of(entry) for entry in self.held)

    def without(self, gone: tuple[PlacedEntry, ...]) -> LiveLease | None:
        """This lease once ``gone`` are completed or handed back (None: nothing left)."""
        gone_indexes = {self.index_of(entry) for entry in gone}
        kept = tuple(entry for entry in self.held if self.index_of(entry) not in gone_indexes)
        if not kept:
            return None
        return LiveLease(self.queue, self.expires_at_ms, kept)


def live_leases(
    queue: WorkQueue,
    held: list[tuple[int, Token]],
    timers: list[tuple[int, Token]],
) -> dict[str, LiveLease]:
    """The leases of ``queue`` that a marking's held and timer entries make up (a
    recovered shard's index). Each held token's timer is there: only the expiry
    consumes a timer while its held token is held (``<q>__timer_spent`` is inhibited).
    """
    due = {(timer[0], timer[1]): time_ms for time_ms, timer in timers}
    entries: dict[str, list[PlacedEntry]] = {}
    for time_ms, token in held:
        entries.setdefault(token[0], []).append((queue.held.name, time_ms, token))
    leases = {}
    for lease_id, lease_entries in entries.items():
        lease_entries.sort(key=lambda entry: int(entry[2][1]))
        first = lease_entries[0][2]
        expires = due.get((lease_id, first[1]))
        assert expires is not None, f"lease {lease_id!r} index {first[1]} holds a token, no timer"
        leases[lease_id] = LiveLease(queue.queue.name, expires, tuple(lease_entries))
    return leases


def _companion_colour(name: str, fields: list[tuple[str, Any]]) -> type:
    # typing.NamedTuple's functional form: a real colour set, built from the queue's.
    return typing.cast(type, NamedTuple(name, fields))


def with_work_queues(net: Net) -> tuple[Net, dict[str, WorkQueue]]:
    """``net`` extended with the lease machinery of its work-queue places.

    Raises:
        NetDefinitionError: a companion name or field collides with the net's own.
    """
    queues: dict[str, WorkQueue] = {}
    places = list(net.places)
    transitions = list(net.transitions)
    for q in net.places:
        if not q.work_queue:
            continue
        colour = q.colour_set
        for reserved in (LEASE_ID, LEASE_INDEX):
            if reserved in colour.fields:
                raise NetDefinitionError(
                    f"net {net.name!r}, work-queue place {q.name!r}: field name {reserved!r} "
                    "is reserved for leases"
                )
        held_colour = _companion_colour(
            f"{colour.name}Held",
            [
                (LEASE_ID, str),
                (LEASE_INDEX, int),
                *zip(colour.fields, _annotations(colour.cls), strict=True),
            ],
        )
        timer_fields: list[tuple[str, Any]] = [(LEASE_ID, str), (LEASE_INDEX, int)]
        if q.key is not None:
            timer_fields.append((q.key, _annotations(colour.cls)[colour.field_index(q.key)]))
        timer_colour = _companion_colour(f"{colour.name}LeaseTimer", timer_fields)
        held = Place(f"{q.name}__held", held_colour, key=q.key, pool=q.pool)
        timer = Place(f"{q.name}__timer", timer_colour, key=q.key, pool=q.pool)
        queue = WorkQueue(q, held, timer)
        tm, h, lease, index, k = variables("tm h lease index k")
        match = {LEASE_ID: lease, LEASE_INDEX: index}
        if q.key is not None:
            match[q.key] = k
        transitions.append(
            Transition(
                f"{q.name}__lease_expired",
                consume=[timer(tm, **match), held(h, **match)],
                produce=[q.produce(_restorer(queue))],
                priority=1,
            )
        )
        transitions.append(
            Transition(
                f"{q.name}__timer_spent",
                consume=[timer(tm, **match)],
                inhibit=[held(**match)],
                priority=1,
            )
        )
        places += [held, timer]
        queues[q.name] = queue
    if not queues:
        return net, queues
    return (
        Net(
            net.name,
            places=places,
            transitions=transitions,
            invariants=net.invariants,
            effects=net.effects,
        ),
        queues,
    )


def _restorer(queue: WorkQueue) -> Any:
    def restore(h: Token) -> Token:
        return queue.original(h)

    return restore


def _annotations(cls: type) -> list[Any]:
    hints = typing.get_type_hints(cls)
    return [hints[f] for f in cls._fields]  # type: ignore[attr-defined]
