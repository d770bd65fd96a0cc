"""A specialised explorer for place/transition nets over packed markings.

A net is a P/T net here when every place can only ever hold copies of one token value
(its initial tokens and every output arc into it are that same constant), no
transition has a guard and no variable joins two arcs. Then a marking is a vector of
token counts, and the engine's rules (nets/explore_bindings.py) reduce to integer
arithmetic: a transition is enabled when each input place holds at least its consume
plus read weight, each inhibited place is empty and no capacity would overflow, and
firing adds a constant vector.

Theory of operation: the whole breadth-first loop is generated as straight-line Python
for the net at hand (the same technique as the engine's compiled firings, and the idea
of Neco's compiled SNAKES nets): a marking is an ``int`` holding one byte per place
(place ``p`` is ``m >> 8 * p & 255``). The loop reads the bytes its tests need into
locals, tests each transition with one ``if``, and fires it with one addition of a
constant (no byte borrows or carries: the tests keep every count in 0..255, and a count
that would pass 255 raises, so the loop starts again with tuples of ints). The loop is
bounded by ``max_states`` and polls the caller's ``should_stop`` every 1,024 states.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nets.model import Net, Pattern, Token, Var

_POLL_STATES = 1_024
_VIA_MAX = 65_535


@dataclass(frozen=True, slots=True)
class PTTransition:
    name: str
    priority: int
    needs: tuple[tuple[int, int], ...]  # (place, tokens that must be present)
    empty: tuple[int, ...]  # inhibited places
    delta: tuple[tuple[int, int], ...]  # (place, change) for changes != 0
    capacity: tuple[tuple[int, int], ...]  # (place, the count it must not exceed before firing)
    binding: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PTNet:
    """A net seen as a P/T net: one token value per place, integer arcs."""

    places: tuple[str, ...]
    tokens: tuple[Token | None, ...]  # the one value each place holds (None: never any)
    initial: tuple[int, ...]
    transitions: tuple[PTTransition, ...]


def _place_token(net: Net) -> dict[str, Token | None] | None:
    values: dict[str, set[Token]] = {p.name: set(p.initial) for p in net.places}
    for t in net.transitions:
        for out in t.produce:
            if out.many or callable(out.expr) or isinstance(out.expr, Var):
                return None
            assert isinstance(out.expr, tuple)
            values[out.place.name].add(out.expr)
    result: dict[str, Token | None] = {}
    for name, found in values.items():
        if len(found) > 1:
            return None
        result[name] = next(iter(found)) if found else None
    return result


def _pattern_fits(pattern: Pattern, token: Token | None) -> bool:
    if token is None:
        return False
    colour = pattern.place.colour_set
    return all(isinstance(v, Var) or token[colour.field_index(f)] == v for f, v in pattern.fields)


def as_pt_net(net: Net) -> PTNet | None:
    """``net`` as a :class:`PTNet`, or ``None`` if some place can hold two token values,
    a transition has a guard or a variable joins two arcs (or two fields of one arc)."""
    tokens = _place_token(net)
    if tokens is None:
        return None
    position = {p.name: i for i, p in enumerate(net.places)}
    transitions = []
    for t in net.transitions:
        if t.guard is not None:
            return None
        names: list[str] = []
        for pattern in (*t.consume, *t.read, *t.inhibit):
            names += [v.name for _, v in pattern.fields if isinstance(v, Var)]
            if pattern.var is not None:
                names.append(pattern.var.name)
        if len(names) != len(set(names)):
            return None
        if not all(_pattern_fits(p, tokens[p.place.name]) for p in (*t.consume, *t.read)):
            continue  # never enabled: an arc asks for a value its place never holds
        binding: dict[str, Any] = {}
        for pattern in (*t.consume, *t.read):
            token = tokens[pattern.place.name]
            assert token is not None
            colour = pattern.place.colour_set
            for f, v in pattern.fields:
                if isinstance(v, Var):
                    binding[v.name] = token[colour.field_index(f)]
            if pattern.var is not None:
                binding[pattern.var.name] = (
                    token if pattern.count == 1 else (token,) * pattern.count
                )
        need: dict[int, int] = {}
        change: dict[int, int] = {}
        for pattern in t.consume:
            p = position[pattern.place.name]
            need[p] = need.get(p, 0) + pattern.count
            change[p] = change.get(p, 0) - pattern.count
        for pattern in t.read:
            p = position[pattern.place.name]
            need[p] = need.get(p, 0) + pattern.count
        produced: dict[int, int] = {}
        for out in t.produce:
            p = position[out.place.name]
            produced[p] = produced.get(p, 0) + 1
            change[p] = change.get(p, 0) + 1
        capacity = []
        for p, n in produced.items():
            cap = net.places[p].capacity
            engine_delta = n - sum(pat.count for pat in t.consume if position[pat.place.name] == p)
            if cap is not None and engine_delta > 0:
                capacity.append((p, cap - engine_delta))
        empty = tuple(
            sorted(
                {
                    position[p.place.name]
                    for p in t.inhibit
                    if _pattern_fits(p, tokens[p.place.name])
                }
            )
        )
        transitions.append(
            PTTransition(
                name=t.name,
                priority=t.priority,
                needs=tuple(sorted(need.items())),
                empty=empty,
                delta=tuple(sorted((p, d) for p, d in change.items() if d)),
                capacity=tuple(sorted(capacity)),
                binding=binding,
            )
        )
    return PTNet(
        places=tuple(p.name for p in net.places),
        tokens=tuple(tokens[p.name] for p in net.places),
        initial=tuple(len(p.initial) for p in net.places),
        transitions=tuple(transitions),
    )


RunFn = Callable[..., tuple[int, int, int, str]]


class _PackedOverflowError(Exception):
    """A count does not fit its byte: the caller explores again with tuples."""


def _overflow(place: int) -> None:
    raise _PackedOverflowError(place)


def compile_run(pt: PTNet, *, packed: bool, graph: bool, priorities: bool) -> RunFn:
    """Generate the breadth-first loop for ``pt``.

    The function is
    ``run(states, seen, parents, via, src, dst, lab, deads, limit, should_stop)``
    and returns ``(states expanded, edges, dead markings, why it stopped)`` where the
    reason is ``"done"``, ``"limit"`` or ``"stopped"``. ``seen`` is a set of markings, or
    with ``graph`` a dict from marking to state number (and every edge is appended to
    ``src``, ``dst`` and ``lab``); dead states are appended to ``deads``.
    """
    n = len(pt.places)
    used = sorted(
        {p for t in pt.transitions for p, _ in (*t.needs, *t.capacity)}
        | {p for t in pt.transitions for p in t.empty}
        | {p for t in pt.transitions for p, d in t.delta if d > 0}
    )
    if packed:
        # Place p is byte p of an int: read only the places some test needs.
        unpack = [
            f"        m{p} = s >> {8 * p} & 255" if p else "        m0 = s & 255" for p in used
        ]
    else:
        unpack = [
            "        " + ", ".join(f"m{p}" for p in range(n)) + ("," if n == 1 else "") + " = s"
        ]
    lines = [
        "def run(states, seen, parents, via, src, dst, lab, deads, limit, should_stop):",
        "    add_state = states.append",
        "    add_parent = parents.append",
        "    add_via = via.append",
        "    mark = seen.add" if not graph else "    find = seen.get",
        "    add_src, add_dst, add_lab = src.append, dst.append, lab.append",
        "    edges = 0",
        "    dead = 0",
        "    i = 0",
        "    count = len(states)",
        "    while i < count:",
        f"        if not (i & {_POLL_STATES - 1}) and should_stop is not None and should_stop():",
        "            return i, edges, dead, 'stopped'",
        "        s = states[i]",
        *unpack,
        "        before = edges",
    ]
    groups: list[list[int]] = []
    order = sorted(range(len(pt.transitions)), key=lambda k: -pt.transitions[k].priority)
    for k in order:
        prio = pt.transitions[k].priority
        if priorities and groups and pt.transitions[groups[-1][0]].priority == prio:
            groups[-1].append(k)
        elif priorities or not groups:
            groups.append([k])
        else:
            groups[-1].append(k)
    for g, group in enumerate(groups):
        pad = "        "
        if g > 0:
            lines.append(f"{pad}if edges == before:")
            pad += "    "
        for k in sorted(group):
            t = pt.transitions[k]
            tests = [f"m{p} >= {w}" for p, w in t.needs]
            tests += [f"m{p} == 0" for p in t.empty]
            tests += [f"m{p} <= {limit}" for p, limit in t.capacity]
            delta = dict(t.delta)
            if packed:
                # One addition moves every count: no field borrows or carries, since
                # the tests keep each count in 0..255 (an overflow raises instead).
                build = f"s + {sum(d << (8 * p) for p, d in t.delta)}"
            else:
                parts = [
                    f"m{p} {'+' if delta[p] > 0 else '-'} {abs(delta[p])}"
                    if p in delta
                    else f"m{p}"
                    for p in range(n)
                ]
                build = "(" + ", ".join(parts) + ("," if n == 1 else "") + ")"
            inner = pad
            if tests:
                lines.append(f"{pad}if {' and '.join(tests)}:")
                inner = pad + "    "
            if packed:
                for p, d in t.delta:
                    if d > 0:
                        lines.append(f"{inner}if m{p} > {255 - d}: overflow({p})")
            lines.append(f"{inner}u = {build}")
            lines.append(f"{inner}edges += 1")
            if graph:
                lines += [
                    f"{inner}j = find(u)",
                    f"{inner}if j is None:",
                    f"{inner}    if count >= limit:",
                    f"{inner}        return i, edges, dead, 'limit'",
                    f"{inner}    j = count",
                    f"{inner}    seen[u] = j",
                    f"{inner}    add_state(u)",
                    f"{inner}    add_parent(i)",
                    f"{inner}    add_via({k})",
                    f"{inner}    count += 1",
                    f"{inner}add_src(i)",
                    f"{inner}add_dst(j)",
                    f"{inner}add_lab({k})",
                ]
            else:
                lines += [
                    f"{inner}if u not in seen:",
                    f"{inner}    if count >= limit:",
                    f"{inner}        return i, edges, dead, 'limit'",
                    f"{inner}    mark(u)",
                    f"{inner}    add_state(u)",
                    f"{inner}    add_parent(i)",
                    f"{inner}    add_via({k})",
                    f"{inner}    count += 1",
                ]
    lines += [
        "        if edges == before:",
        "            dead += 1",
        "            deads.append(i)",
        "        i += 1",
        "    return i, edges, dead, 'done'",
    ]
    source = "\n".join(lines) + "\n"
    namespace: dict[str, Any] = {"overflow": _overflow}
    code = compile(source, "<cpn P/T explorer>", "exec")
    exec(code, namespace)  # noqa: S102 - source built above from the net's structure only
    run: RunFn = namespace["run"]
    return run


@dataclass(slots=True)
class PTResult:
    """The raw result of a P/T exploration (see nets/explore.py for the public record)."""

    states: list[Any]  # packed ints or tuples of counts, in breadth-first order
    parents: array[int]
    via: array[int]  # the transition (index into PTNet.transitions) that reached each state
    src: array[int]
    dst: array[int]
    lab: array[int]
    deads: array[int]
    expanded: int
    edges: int
    dead: int
    reason: str
    packed: bool


def run_pt(
    pt: PTNet,
    *,
    max_states: int,
    should_stop: Callable[[], bool] | None,
    graph: bool,
    priorities: bool,
) -> PTResult:
    """Explore ``pt`` breadth first from its initial marking."""
    for packed in (True, False):
        if packed and max(pt.initial, default=0) > 255:
            continue
        run = compile_run(pt, packed=packed, graph=graph, priorities=priorities)
        initial: Any = int.from_bytes(bytes(pt.initial), "little") if packed else tuple(pt.initial)
        states = [initial]
        seen: Any = {initial: 0} if graph else {initial}
        # Two bytes per state name the transition that found it (the initial state's
        # entry is never read).
        parents = array("i", [-1])
        via = array("H" if len(pt.transitions) <= _VIA_MAX else "i", [0])
        src, dst, lab, deads = array("i"), array("i"), array("i"), array("i")
        try:
            expanded, edges, dead, reason = run(
                states, seen, parents, via, src, dst, lab, deads, max_states, should_stop
            )
        except _PackedOverflowError:  # a count above 255 does not fit a byte: use tuples
            if not packed:
                raise
            continue
        del seen
        return PTResult(
            states, parents, via, src, dst, lab, deads, expanded, edges, dead, reason, packed
        )
    raise AssertionError("unreachable: the tuple loop always returns")
