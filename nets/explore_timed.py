"""Timed-relative exploration: token times kept relative to the current step.

The untimed semantics (nets/explore.py) drops token times. This one keeps them, the
way the engine's virtual-time run (``Engine.run``) uses them, but relative to the
current time, so that two moments that look alike from where they stand are one state:

* A state holds, per place, a sorted tuple of entries ``(due_ms, token)``: ``due_ms``
  is how long until the token is available, 0 when it is (a time in the past is 0). A
  place that no arc reads keeps 0: nothing waits for its tokens (the engine indexes
  them at once), so their times would only tell apart states that behave alike.
* **Steps.** Only available tokens are consumed, read or inhibit (the engine's rules);
  a capacity counts every token, due or not. Every enabled binding element is a
  successor (with ``priorities``, those of the highest enabled priority). Outputs get
  ``now`` = 0, and a token produced with delay ``d`` is due in ``d``.
* **Time.** When no binding is enabled, time advances to the next moment a token of a
  place that some arc reads comes due (the engine's ``next_deadline``): one ``time``
  step subtracts that ``delta_ms`` from every entry's due time and from every declared
  time field. A state with nothing enabled and nothing due is dead.
* **Time fields.** A token field that holds an absolute time is declared with
  ``typing.Annotated[int, TIME_MS]`` in its colour set (the engine sees a plain ``int``).
  Shifting those fields keeps states relative. This is exact when the net treats time
  fields translation-invariantly: it adds durations to them, takes maxima, compares them
  with each other or with ``now``; a net that compares a time field with a constant (for
  example 0 meaning "never") is not, and its states drift.

Work queues are not closed in this semantics (their leases have durations of their own):
a net with effect models is refused.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from nets.binding import InscriptionError
from nets.errors import CpnError
from nets.explore_bindings import (
    Binding,
    CompiledTransition,
    Marking,
    bindings,
    compile_transition,
    evaluate,
)
from nets.model import Net, OutputArc, Token, Var, parameters

Entry = tuple[int, Token]


class TimeField:
    """The marker of a token field that holds an absolute time in milliseconds."""

    def __repr__(self) -> str:
        return "TIME_MS"


TIME_MS = TimeField()
TIME_STEP = "time"


def time_fields(cls: type) -> tuple[int, ...]:
    """Positions of the fields of colour set ``cls`` annotated with :data:`TIME_MS`."""
    hints = typing.get_type_hints(cls, include_extras=True)
    found = []
    for i, name in enumerate(getattr(cls, "_fields", ())):
        hint = hints.get(name)
        if typing.get_origin(hint) is typing.Annotated and any(
            isinstance(extra, TimeField) for extra in typing.get_args(hint)[1:]
        ):
            found.append(i)
    return tuple(found)


@dataclass(frozen=True, slots=True)
class Stepper:
    """What the breadth-first search of nets/explore.py needs for a timed semantics."""

    initial: Marking
    successors: Callable[[Marking], Iterator[tuple[str, Binding, Marking]]]
    tokens: Callable[[tuple[Any, ...]], tuple[Token, ...]]  # a slot's tokens, untimed


def shift(token: Token, fields: tuple[int, ...], delta_ms: int) -> Token:
    """``token`` with ``delta_ms`` added to its time fields (positions ``fields``)."""
    if not fields:
        return token
    parts = list(token)
    for f in fields:
        parts[f] += delta_ms
    return type(token)._make(parts)  # type: ignore[attr-defined,no-any-return]


def timed_outputs(
    ct: CompiledTransition, values: Binding, now: int
) -> list[tuple[int, int, Token]]:
    """The ``(place, delay_ms, token)`` triples the binding produces.

    Raises:
        InscriptionError: an output or delay raised, or returned a wrong token or delay.
    """
    produced: list[tuple[int, int, Token]] = []
    for out in ct.outputs:
        cls = out.arc.place.colour_set.cls
        try:
            value = evaluate(out.arc.expr, out.params, values, now)
            made = list(value) if out.arc.many else [value]
            delay = evaluate(out.arc.delay, _delay_params(out.arc, ct.transition.name), values, now)
        except Exception as exc:
            raise InscriptionError(
                f"an output inscription of transition {ct.transition.name!r} raised "
                f"{type(exc).__name__}: {exc} (binding {values})"
            ) from exc
        if type(delay) is not int or delay < 0:
            raise InscriptionError(
                f"transition {ct.transition.name!r}: the delay of the output to "
                f"{out.arc.place.name!r} must be a non-negative int, got {delay!r}"
            )
        for token in made:
            if type(token) is not cls:
                raise InscriptionError(
                    f"transition {ct.transition.name!r}: produced {token!r} into place "
                    f"{out.arc.place.name!r}, which holds {cls.__name__} tokens"
                )
            produced.append((out.place, delay, token))
    return produced


def _delay_params(arc: OutputArc, transition: str) -> tuple[str, ...]:
    delay = arc.delay
    if callable(delay) and not isinstance(delay, Var):
        return parameters(delay, f"delay of an output of {transition!r}")
    return ()


def relative_stepper(net: Net, *, priorities: bool) -> Stepper:
    """The timed-relative successor function of ``net``.

    Raises:
        CpnError: the net closes work queues with effect models.
    """
    if net.effects:
        raise CpnError(
            f"net {net.name!r}: timed-relative exploration does not model leases of work "
            f"queues ({', '.join(net.effects)}); explore it untimed"
        )
    order = sorted(net.transitions, key=lambda t: -t.priority)
    compiled = [compile_transition(net, t) for t in order]
    shifts = [time_fields(p.colour) for p in net.places]
    read = {
        i
        for i, p in enumerate(net.places)
        if any(pat.place is p for t in net.transitions for pat in (*t.consume, *t.read, *t.inhibit))
    }

    def tokens(entries: tuple[Any, ...]) -> tuple[Token, ...]:
        return tuple(sorted(token for _due, token in entries))

    def fire(ct: CompiledTransition, state: Marking, values: Binding, taken: Any) -> Marking:
        # A place no arc reads never waits for its tokens (as in the engine): when they
        # come due changes nothing, so it is not part of the state.
        produced = [
            (place, (delay if place in read else 0, token))
            for place, delay, token in timed_outputs(ct, values, 0)
        ]
        changed: dict[int, list[Entry]] = {}
        for place, token in taken:
            entries = changed.setdefault(place, list(state[place]))
            entries.remove((0, token))
        for place, entry in produced:
            changed.setdefault(place, list(state[place])).append(entry)
        result = list(state)
        for place, entries in changed.items():
            entries.sort()
            result[place] = tuple(entries)
        return tuple(result)

    def advance(state: Marking) -> tuple[int, Marking] | None:
        due = [d for p in read for d, _ in state[p] if d > 0]
        if not due:
            return None
        delta = min(due)
        result = []
        for p, entries in enumerate(state):
            fields = shifts[p]
            moved = []
            for d, token in entries:
                moved.append((max(0, d - delta), shift(token, fields, -delta)))
            moved.sort()
            result.append(tuple(moved))
        return delta, tuple(result)

    def successors(state: Marking) -> Iterator[tuple[str, Binding, Marking]]:
        available = tuple(tuple(t for d, t in entries if d == 0) for entries in state)
        fired_priority: int | None = None
        for ct in compiled:
            priority = ct.transition.priority
            if priorities and fired_priority is not None and priority < fired_priority:
                break
            if any(len(available[p]) < n for p, n in ct.needs):
                continue
            if any(len(state[p]) + d > cap for p, d, cap in ct.capacity):
                continue
            found = ct.search(available) if ct.search is not None else bindings(ct, available)
            for values, taken in found:
                fired_priority = priority
                yield ct.transition.name, values, fire(ct, state, values, taken)
        if fired_priority is None:
            moved = advance(state)
            if moved is not None:
                yield TIME_STEP, {"delta_ms": moved[0]}, moved[1]

    initial = tuple(tuple(sorted((0, t) for t in p.initial)) for p in net.places)
    return Stepper(initial=initial, successors=successors, tokens=tokens)
