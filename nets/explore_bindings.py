"""Every enabled binding of a transition in an untimed marking, and its firing.

The engine (nets/engine.py) only ever looks for the *preferred* binding of each
transition; a state-space explorer needs all of them. This module enumerates them with
the engine's own rules, written out plainly:

* arcs bind in the engine's order: consume arcs, then read arcs, each in declaration
  order; a pattern field that is a constant or an already bound variable must equal
  the token's field, an unbound one binds it; a whole-token variable binds the token;
* two arcs of one binding never take the same token (read arcs included, as in the
  engine's search, which excludes entries taken by earlier arcs of the same place);
* a ``many(n)`` arc takes ``n`` distinct tokens (a sub-multiset, bound as a tuple in
  marking order);
* the guard must hold once every variable is bound; an inhibitor arc disables the
  binding if any token of the marking (before the firing) matches it;
* a place with a capacity must not hold more than it after the firing (the engine's
  per-transition count check);
* outputs are evaluated with the binding (``now`` is the explorer's time, 0 untimed);
  their delays are ignored in the untimed semantics.

A marking here is a tuple with one sorted tuple of tokens per place (a multiset, in the
net's place order). Identical tokens are one candidate per distinct value, so a binding
element (transition, binding) is enumerated once however many copies a place holds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from nets.binding import InscriptionError
from nets.explore_search import Enumerator, compile_enumerator
from nets.model import NOW, Net, OutputArc, Pattern, Token, Transition, Var, parameters

Marking = tuple[tuple[Token, ...], ...]
Binding = dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Arc:
    place: int
    pattern: Pattern
    fields: tuple[tuple[int, object], ...]  # field position -> Var or constant


@dataclass(frozen=True, slots=True)
class _Output:
    place: int
    arc: OutputArc
    params: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CompiledTransition:
    """A transition's arcs resolved to place positions, ready to enumerate."""

    transition: Transition
    takes: tuple[_Arc, ...]  # consume arcs, then read arcs
    consumes: int  # the first ``consumes`` entries of ``takes`` are consume arcs
    inhibits: tuple[_Arc, ...]
    outputs: tuple[_Output, ...]
    guard_params: tuple[str, ...]
    capacity: tuple[tuple[int, int, int], ...]  # (place, delta, capacity) with delta > 0
    needs: tuple[tuple[int, int], ...]  # (place, tokens the consume and read arcs take)
    search: Enumerator | None  # generated (nets/explore_search.py), or None: the generic walk


def compile_transition(net: Net, transition: Transition) -> CompiledTransition:
    """Resolve ``transition``'s arcs to place positions of ``net``."""
    position = {p.name: i for i, p in enumerate(net.places)}

    def arc(pattern: Pattern) -> _Arc:
        colour = pattern.place.colour_set
        return _Arc(
            position[pattern.place.name],
            pattern,
            tuple((colour.field_index(f), v) for f, v in pattern.fields),
        )

    delta: dict[int, int] = {}
    for out in transition.produce:
        delta[position[out.place.name]] = delta.get(position[out.place.name], 0) + 1
    for pattern in transition.consume:
        p = position[pattern.place.name]
        delta[p] = delta.get(p, 0) - pattern.count
    capacity = tuple(
        (p, d, cap)
        for p, d in delta.items()
        if (cap := net.places[p].capacity) is not None and d > 0
    )
    outputs = []
    for out in transition.produce:
        params: tuple[str, ...] = ()
        if callable(out.expr) and not isinstance(out.expr, Var):
            params = parameters(out.expr, f"output of {transition.name!r}")
        outputs.append(_Output(position[out.place.name], out, params))
    needs: dict[int, int] = {}
    for pattern in (*transition.consume, *transition.read):
        p = position[pattern.place.name]
        needs[p] = needs.get(p, 0) + pattern.count
    takes = tuple(arc(p) for p in (*transition.consume, *transition.read))
    inhibits = tuple(arc(p) for p in transition.inhibit)
    return CompiledTransition(
        needs=tuple(sorted(needs.items())),
        search=compile_enumerator(
            transition,
            [(a.place, a.pattern) for a in takes],
            len(transition.consume),
            [(a.place, a.pattern) for a in inhibits],
            transition.guard_variables(),
        ),
        transition=transition,
        takes=takes,
        consumes=len(transition.consume),
        inhibits=inhibits,
        outputs=tuple(outputs),
        guard_params=transition.guard_variables(),
        capacity=capacity,
    )


def _matches(arc: _Arc, token: Token, values: Binding) -> Binding | None:
    """``values`` extended by matching ``token`` against ``arc``, or None."""
    new = values
    var = arc.pattern.var
    if var is not None and arc.pattern.count == 1:
        if var.name in new:
            if new[var.name] != token:
                return None
        else:
            new = {**new, var.name: token}
    for pos, value in arc.fields:
        field_value = token[pos]
        if isinstance(value, Var):
            bound = new.get(value.name, _UNBOUND)
            if bound is _UNBOUND:
                if new is values:
                    new = dict(values)
                new[value.name] = field_value
            elif bound != field_value:
                return None
        elif field_value != value:
            return None
    return new


_UNBOUND = object()


def bindings(
    ct: CompiledTransition, marking: Marking
) -> Iterator[tuple[Binding, tuple[tuple[int, Token], ...]]]:
    """Each enabled binding of ``ct`` in ``marking`` with the tokens it takes.

    Yields ``(values, taken)`` where ``taken`` lists ``(place, token)`` for every
    consumed token (read tokens are not listed). Capacities are not checked here
    (see :func:`fire`, which knows how many tokens the outputs add).
    """
    # How many copies of each (place, token) the binding has taken so far.
    used: dict[tuple[int, Token], int] = {}
    taken: list[tuple[int, Token]] = []
    yield from _walk(ct, marking, 0, {}, used, taken)


def _available(marking: Marking, place: int, used: dict[tuple[int, Token], int]) -> list[Token]:
    """The place's tokens minus those already taken by this binding (as a multiset)."""
    tokens = marking[place]
    if not used:
        return list(tokens)
    skip = {tok: n for (p, tok), n in used.items() if p == place}
    if not skip:
        return list(tokens)
    left = []
    for tok in tokens:
        n = skip.get(tok, 0)
        if n:
            skip[tok] = n - 1
        else:
            left.append(tok)
    return left


def _walk(
    ct: CompiledTransition,
    marking: Marking,
    i: int,
    values: Binding,
    used: dict[tuple[int, Token], int],
    taken: list[tuple[int, Token]],
) -> Iterator[tuple[Binding, tuple[tuple[int, Token], ...]]]:
    if i == len(ct.takes):
        if _complete(ct, marking, values):
            yield values, tuple(taken)
        return
    arc = ct.takes[i]
    consume = i < ct.consumes
    candidates = _available(marking, arc.place, used)
    count = arc.pattern.count
    if count == 1:
        previous = None
        for token in candidates:
            if token == previous:
                continue  # one binding per distinct token value
            previous = token
            new = _matches(arc, token, values)
            if new is None:
                continue
            key = (arc.place, token)
            used[key] = used.get(key, 0) + 1
            if consume:
                taken.append(key)
            yield from _walk(ct, marking, i + 1, new, used, taken)
            if consume:
                taken.pop()
            used[key] -= 1
            if not used[key]:
                del used[key]
        return
    # A many-token arc: every sub-multiset of ``count`` matching tokens, once each.
    matching = [t for t in candidates if _matches(arc, t, values) is not None]
    seen: set[tuple[Token, ...]] = set()
    for group in combinations(matching, count):
        if group in seen:
            continue
        seen.add(group)
        new = dict(values)
        ok = True
        for token in group:  # fields must agree across the group
            extended = _matches(arc, token, new)
            if extended is None:
                ok = False
                break
            new = dict(extended)
        if not ok:
            continue
        var = arc.pattern.var
        if var is not None:
            new[var.name] = group
        for token in group:
            key = (arc.place, token)
            used[key] = used.get(key, 0) + 1
            if consume:
                taken.append(key)
        yield from _walk(ct, marking, i + 1, new, used, taken)
        for token in group:
            key = (arc.place, token)
            if consume:
                taken.pop()
            used[key] -= 1
            if not used[key]:
                del used[key]


def _complete(ct: CompiledTransition, marking: Marking, values: Binding) -> bool:
    guard = ct.transition.guard
    if guard is not None:
        try:
            if not guard(*[values[n] for n in ct.guard_params]):
                return False
        except Exception as exc:
            raise InscriptionError(
                f"guard of transition {ct.transition.name!r} raised {type(exc).__name__}: "
                f"{exc} (binding {values})"
            ) from exc
    for arc in ct.inhibits:
        if any(_matches(arc, token, values) is not None for token in marking[arc.place]):
            return False
    return True


def evaluate(part: object, params: Sequence[str], values: Binding, now: int) -> Any:
    """The value of an output expression: a variable, a constant or a function."""
    if isinstance(part, Var):
        return values[part.name]
    if callable(part):
        return part(*[now if p == NOW else values[p] for p in params])
    return part


def outputs(ct: CompiledTransition, values: Binding, now: int) -> list[tuple[int, Token]]:
    """The ``(place, token)`` pairs the binding produces (delays ignored).

    Raises:
        InscriptionError: an output raised or produced a token of the wrong colour.
    """
    produced: list[tuple[int, Token]] = []
    for out in ct.outputs:
        cls = out.arc.place.colour_set.cls
        try:
            value = evaluate(out.arc.expr, out.params, values, now)
            tokens = list(value) if out.arc.many else [value]
        except Exception as exc:
            raise InscriptionError(
                f"an output inscription of transition {ct.transition.name!r} raised "
                f"{type(exc).__name__}: {exc} (binding {values})"
            ) from exc
        for token in tokens:
            if type(token) is not cls:
                raise InscriptionError(
                    f"transition {ct.transition.name!r}: produced {token!r} into place "
                    f"{out.arc.place.name!r}, which holds {cls.__name__} tokens"
                )
            produced.append((out.place, token))
    return produced


def apply(
    marking: Marking,
    consumed: Sequence[tuple[int, Token]],
    produced: Sequence[tuple[int, Token]],
) -> Marking:
    """``marking`` minus ``consumed`` plus ``produced`` (each place stays sorted)."""
    changed: dict[int, list[Token]] = {}
    for place, token in consumed:
        tokens = changed.get(place)
        if tokens is None:
            tokens = changed[place] = list(marking[place])
        tokens.remove(token)
    for place, token in produced:
        tokens = changed.get(place)
        if tokens is None:
            tokens = changed[place] = list(marking[place])
        tokens.append(token)
    if not changed:
        return marking
    result = list(marking)
    for place, tokens in changed.items():
        tokens.sort()
        result[place] = tuple(tokens)
    return tuple(result)


def fire_all(
    ct: CompiledTransition, marking: Marking, now: int = 0
) -> Iterator[tuple[Binding, Marking]]:
    """Each enabled binding of ``ct`` in ``marking`` with the marking it leads to."""
    for place, count in ct.needs:
        if len(marking[place]) < count:
            return  # too few tokens for the arcs: skip the search (the common case)
    if ct.capacity and not _fits(ct, marking):
        return  # the engine blocks the whole transition while an output place is full
    found = ct.search(marking) if ct.search is not None else bindings(ct, marking)
    for values, taken in found:
        yield values, apply(marking, taken, outputs(ct, values, now))


def _fits(ct: CompiledTransition, marking: Marking) -> bool:
    return all(len(marking[p]) + delta <= cap for p, delta, cap in ct.capacity)
