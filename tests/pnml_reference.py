"""A naive breadth-first state-space counter over the net semantics, for PNML conformance.

It is the reference the conformance test checks the published answers with, on this
branch, independently of ``nets.explore``: untimed (every token is available), no
priorities, no capacities, no inhibitor arcs (PNML has none of them). A marking is a
tuple, per place, of sorted ``(token, count)`` pairs. A binding element is a transition
with an assignment of its variables (and, for ``many`` arcs, of the tokens taken);
enabled binding elements are enumerated by backtracking over the consume and read
patterns, trying every distinct token value of the place that is not yet claimed by an
earlier arc of the same binding. Its edge count is the MCC's ``TRANSITIONS``.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from nets.model import Net, OutputArc, Pattern, Transition, Var, parameters

Marking = tuple[tuple[tuple[Any, int], ...], ...]


@dataclass
class ReferenceSpace:
    """What the reference counter found."""

    state_count: int = 0
    edge_count: int = 0
    dead_markings: int = 0
    place_bounds: dict[str, int] = field(default_factory=dict)
    max_tokens_per_marking: int = 0
    # The largest multiplicity of one token value in one place: the MCC's
    # MAX_TOKEN_IN_PLACE for a coloured net (a place of its unfolding).
    max_tokens_per_colour: int = 0
    upper_bounds: list[int] = field(default_factory=list)
    partial: bool = False


def _match(pattern: Pattern, token: Any, env: dict[str, Any]) -> dict[str, Any] | None:
    fields = pattern.place.colour_set.fields
    new = env
    for name, want in pattern.fields:
        got = token[fields.index(name)]
        if isinstance(want, Var):
            if want.name in new:
                if new[want.name] != got:
                    return None
            else:
                new = {**new, want.name: got}
        elif got != want:
            return None
    return new


def _bindings(
    t: Transition, marking: dict[str, Counter[Any]]
) -> Iterator[tuple[dict[str, Any], Counter[tuple[str, Any]]]]:
    patterns = [*t.consume, *t.read]
    guard_names = parameters(t.guard, "guard") if t.guard is not None else ()

    def search(
        i: int, env: dict[str, Any], claimed: Counter[tuple[str, Any]]
    ) -> Iterator[tuple[dict[str, Any], Counter[tuple[str, Any]]]]:
        if i == len(patterns):
            if t.guard is None or t.guard(*[env[n] for n in guard_names]):
                yield env, claimed
            return
        p = patterns[i]
        assert p.var is None, "imported nets never bind whole tokens"
        place = p.place.name
        tokens = marking[place]
        free = [tok for tok in sorted(tokens) if tokens[tok] - claimed[(place, tok)] > 0]
        for chosen in itertools.combinations_with_replacement(free, p.count):
            need = Counter(chosen)
            if any(tokens[tok] - claimed[(place, tok)] < n for tok, n in need.items()):
                continue
            new: dict[str, Any] | None = env
            for tok in chosen:
                assert new is not None
                new = _match(p, tok, new)
                if new is None:
                    break
            if new is None:
                continue
            more = claimed.copy()
            for tok, n in need.items():
                more[(place, tok)] += n
            yield from search(i + 1, new, more)

    yield from search(0, {}, Counter())


def _output(out: OutputArc, env: dict[str, Any]) -> Any:
    expr = out.expr
    if isinstance(expr, Var):
        return env[expr.name]
    if callable(expr):
        return expr(*[env[n] for n in parameters(expr, "output")])
    return expr


def explore_reference(
    net: Net, *, max_states: int = 200_000, bounds: list[list[str]] | None = None
) -> ReferenceSpace:
    """Explore ``net`` breadth first; ``bounds`` are UpperBounds queries (place lists)."""
    names = [p.name for p in net.places]
    index = {n: i for i, n in enumerate(names)}
    queries = [[index[p] for p in query] for query in bounds or []]

    def freeze(marking: dict[str, Counter[Any]]) -> Marking:
        return tuple(tuple(sorted((+marking[n]).items())) for n in names)

    def thaw(state: Marking) -> dict[str, Counter[Any]]:
        return {n: Counter(dict(state[i])) for i, n in enumerate(names)}

    result = ReferenceSpace(place_bounds=dict.fromkeys(names, 0))
    result.upper_bounds = [0] * len(queries)
    initial = freeze({p.name: Counter(p.initial) for p in net.places})
    seen = {initial}
    queue = deque([initial])
    while queue:
        state = queue.popleft()
        counts = [sum(n for _, n in tokens) for tokens in state]
        for name, n in zip(names, counts, strict=True):
            result.place_bounds[name] = max(result.place_bounds[name], n)
        result.max_tokens_per_marking = max(result.max_tokens_per_marking, sum(counts))
        result.max_tokens_per_colour = max(
            [result.max_tokens_per_colour] + [n for tokens in state for _, n in tokens]
        )
        for q, query in enumerate(queries):
            result.upper_bounds[q] = max(result.upper_bounds[q], sum(counts[i] for i in query))
        marking = thaw(state)
        enabled = 0
        for t in net.transitions:
            seen_bindings = set()
            for env, claimed in _bindings(t, marking):
                key = (tuple(sorted(env.items())), tuple(sorted(claimed.items())))
                if key in seen_bindings:
                    continue
                seen_bindings.add(key)
                enabled += 1
                after = {n: c.copy() for n, c in marking.items()}
                read_places = {p.place.name for p in t.read}
                for (place, tok), n in claimed.items():
                    # Tokens claimed by read arcs stay (a consume and a read arc on one
                    # place never occur in imported nets).
                    if place not in read_places:
                        after[place][tok] -= n
                for out in t.produce:
                    after[out.place.name][_output(out, env)] += 1
                succ = freeze(after)
                if succ not in seen:
                    if len(seen) >= max_states:
                        result.partial = True
                        continue
                    seen.add(succ)
                    queue.append(succ)
        result.edge_count += enabled
        if enabled == 0:
            result.dead_markings += 1
    result.state_count = len(seen)
    return result
