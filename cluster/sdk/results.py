"""A work queue's shape, read from the net: what a worker's token is and where its
results may go (PURE).

The runner builds one :class:`QueueShape` from the net it runs against and uses it to
turn leased field values into typed tokens, and a function's return value (or its
exception) into the ``(place, fields)`` results of a completion. The shard checks the
same rules again (``wrong_place``, ``wrong_colour``); checking them here first names
the worker's mistake in its own log, before a round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cluster.sdk.spec import Output, as_outputs
from nets.codec import token_from_fields
from nets.colour import ColourSet
from nets.errors import CpnError, TokenError
from nets.model import Net

Fields = tuple[Any, ...]
Results = tuple[tuple[str, Fields], ...]


@dataclass(frozen=True, slots=True)
class QueueShape:
    """One work queue: its colour, its declared result places and its failure place."""

    place: str
    colour: ColourSet
    results: Mapping[str, ColourSet]
    failures: str | None

    @classmethod
    def of(cls, net: Net, place: str) -> QueueShape:
        """The shape of the work queue ``place`` of ``net``.

        Raises:
            CpnError: ``net`` has no such place, or it is not a work queue.
        """
        if not net.has_place(place):
            names = ", ".join(p.name for p in net.places if p.work_queue) or "none"
            raise CpnError(f"net {net.name!r} has no place {place!r} (work queues: {names})")
        queue = net.place(place)
        if not queue.work_queue:
            raise CpnError(
                f"place {place!r} of net {net.name!r} is not a work queue "
                "(declare it with work_queue=True and results=(...))"
            )
        declared = queue.results or ()
        return cls(
            place,
            queue.colour_set,
            {name: net.place(name).colour_set for name in declared},
            queue.failures,
        )

    def token(self, fields: Fields) -> tuple[Any, ...]:
        """The leased field values as a token of the queue's colour."""
        return token_from_fields(self.colour, fields, where=f"work queue {self.place!r}")

    def outputs(self, returned: object) -> Results:
        """What a function returned, as the results of its completion.

        Raises:
            CpnError: a result for a place the queue does not declare, a token whose
                colour fits no declared place or several, or a token of the wrong colour.
        """
        results: list[tuple[str, Fields]] = []
        for item in as_outputs(returned):
            place, token = (item.place, item.token) if isinstance(item, Output) else (
                self._place_of(item), item
            )  # fmt: skip
            colour = self.results.get(place)
            if colour is None:
                raise CpnError(
                    f"work queue {self.place!r} declares results {self._declared()}; "
                    f"a worker produced into {place!r}"
                )
            try:
                checked = token_from_fields(colour, tuple(token), where=f"place {place!r}")
            except TokenError as exc:
                raise CpnError(f"work queue {self.place!r}: {exc}") from exc
            results.append((place, tuple(checked)))
        return tuple(results)

    def failure(self, token: tuple[Any, ...], error: BaseException) -> Results:
        """The default failure result: the token's fields and the error, into the
        declared ``failures`` place.

        Raises:
            CpnError: no failure place is declared, or its colour is not the queue's
                fields followed by one ``str`` field (then give ``on_error=``).
        """
        if self.failures is None:
            raise CpnError(
                f"work queue {self.place!r} declares no failures place: a worker's exception "
                "leaves its token leased until the lease expires (declare failures= or give "
                "the worker on_error=)"
            )
        colour = self.results[self.failures]
        fits = (
            colour.fields[: len(self.colour.fields)] == self.colour.fields
            and len(colour.fields) == len(self.colour.fields) + 1
        )
        if not fits:
            raise CpnError(
                f"failures place {self.failures!r} has fields {colour.fields}: the default "
                f"failure token needs the queue's fields {self.colour.fields} and one error "
                "field; give the worker on_error= to build it"
            )
        text = f"{type(error).__name__}: {error}"[:ERROR_CHARS_MAX]
        return self.outputs(Output(self.failures, (*token, text)))

    def _place_of(self, token: object) -> str:
        cls = type(token)
        same = [name for name, colour in self.results.items() if colour.cls is cls]
        if not same:  # the colour class imported another way: match by name
            name = getattr(cls, "__name__", "")
            same = [p for p, colour in self.results.items() if colour.name == name]
        if len(same) == 1:
            return same[0]
        if not same:
            raise CpnError(
                f"work queue {self.place!r}: a worker returned a {cls.__name__}, which is the "
                f"colour of none of its declared results {self._declared()}"
            )
        raise CpnError(
            f"work queue {self.place!r}: {cls.__name__} is the colour of {', '.join(same)}; "
            "say which with to(place, token)"
        )

    def _declared(self) -> str:
        return "(" + ", ".join(self.results) + ")" if self.results else "none"


ERROR_CHARS_MAX = 500  # a failure token's error text: enough to read, never a whole dump
