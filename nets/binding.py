"""Finding bindings: transitions compiled into indexed join plans.

Theory of operation:

* A transition's arcs are split into *components*: arcs connected by a shared
  variable, a shared place or the guard. Components share nothing, so the transition's
  preferred binding is the combination of each component's preferred binding, and
  each component can be cached and re-examined on its own.
* The component holding the keyed arcs is searched *per key value*: the partition
  rule guarantees that all its keyed arcs bind the key to one variable, so a change to
  a token with key ``k`` can only change that component's bindings for ``k``. This is
  what keeps enabling incremental: one key is re-examined, not the whole place.
* A component's search is a depth-first walk over its arcs in binding order
  (consume arcs, then read arcs, each in declaration order). Every arc looks its
  candidates up in an index on exactly the fields already bound (an equi-join through
  an index, never a cartesian product), in the order of the marking's entries
  (earliest time, then smallest token). The first complete binding found is therefore
  the least in the lexicographic order of its entries: the binding the engine's
  conflict resolution prefers. Guards run as soon as their variables are bound and
  inhibitor arcs are tested as soon as theirs are, to prune early.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Final

from nets.errors import CpnError
from nets.marking import Entry, Index, PlaceStore
from nets.model import Pattern, Transition, Var

COMPILED_KEPT_MAX: Final = 4_096  # generated functions kept compiled (a few per transition)

CONSUME, READ, INHIBIT = 0, 1, 2


class InscriptionError(CpnError):
    """A guard, output or delay function of a net raised an exception or returned garbage."""


@dataclass(eq=False, slots=True)
class ArcStep:
    """One arc of a component's search plan, with everything precomputed."""

    kind: int
    arc_position: int  # position in the transition's binding order (-1 for inhibitors)
    store: PlaceStore
    index: Index
    sources: tuple[tuple[str, object], ...]  # how the index value is built (_lookup_source)
    binds: tuple[tuple[int, str], ...]  # field position -> variable bound here
    checks: tuple[tuple[int, str], ...]  # field position -> variable it must equal
    const_checks: tuple[tuple[int, object], ...]  # field position -> constant it must equal
    whole: str | None
    count: int
    shares_place: bool
    guard: Callable[..., bool] | None = None
    guard_params: tuple[str, ...] = ()


@dataclass(eq=False, slots=True)
class Component:
    """Arcs of one transition that share variables, places or the guard."""

    steps: tuple[ArcStep, ...]
    stores: tuple[PlaceStore, ...]
    per_key: bool  # searched once per value of the key variable
    key_var: str | None
    key_stores: tuple[PlaceStore, ...] = field(default=())


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def compile_components(
    transition: Transition, stores: dict[str, PlaceStore]
) -> tuple[Component, ...]:
    """Split ``transition`` into components and build each one's search plan."""
    patterns: list[tuple[int, Pattern]] = (
        [(CONSUME, p) for p in transition.consume]
        + [(READ, p) for p in transition.read]
        + [(INHIBIT, p) for p in transition.inhibit]
    )
    guard_params = transition.guard_variables()
    uf = _UnionFind(len(patterns))
    first_with: dict[str, int] = {}
    for i, (_, pattern) in enumerate(patterns):
        links = {f"var:{v}" for v in pattern.variables()} | {f"place:{pattern.place.name}"}
        if set(guard_params) & pattern.variables():
            links.add("guard")
        for link in links:
            if link in first_with:
                uf.union(i, first_with[link])
            else:
                first_with[link] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(patterns)):
        groups.setdefault(uf.find(i), []).append(i)
    key_var = _key_variable(transition)
    components = []
    for members in sorted(groups.values()):
        per_key = key_var is not None and any(
            patterns[i][0] != INHIBIT and patterns[i][1].place.keyed for i in members
        )
        components.append(
            _plan(
                transition,
                [patterns[i] for i in members],
                members,
                stores,
                key_var if per_key else None,
            )
        )
    return tuple(components)


def _key_variable(transition: Transition) -> str | None:
    for pattern in (*transition.consume, *transition.read, *transition.inhibit):
        place = pattern.place
        if place.key is not None:
            value = dict(pattern.fields)[place.key]
            assert isinstance(value, Var)
            return value.name
    return None


def _plan(
    transition: Transition,
    patterns: list[tuple[int, Pattern]],
    positions: list[int],
    stores: dict[str, PlaceStore],
    key_var: str | None,
) -> Component:
    guard_params = transition.guard_variables()
    bound: set[str] = {key_var} if key_var is not None else set()
    seen_places: set[str] = set()
    steps: list[ArcStep] = []
    inhibitors = [(k, p) for k, p in patterns if k == INHIBIT]
    guard_pending = transition.guard is not None and any(
        set(guard_params) & p.variables() for _, p in patterns
    )
    for (kind, pattern), arc_position in zip(patterns, positions, strict=True):
        if kind == INHIBIT:
            continue
        step = _arc_step(kind, arc_position, pattern, stores, bound, seen_places)
        steps.append(step)
        bound |= pattern.variables()
        seen_places.add(pattern.place.name)
        if guard_pending and set(guard_params) <= bound:
            step.guard, step.guard_params = transition.guard, guard_params
            guard_pending = False
        for inhibitor in list(inhibitors):
            if inhibitor[1].variables() <= bound:
                steps.append(_arc_step(INHIBIT, -1, inhibitor[1], stores, bound, seen_places))
                inhibitors.remove(inhibitor)
    # Inhibitors whose variables are all free of this component's arcs (constants only).
    steps.extend(_arc_step(INHIBIT, -1, p, stores, bound, seen_places) for _, p in inhibitors)
    component_stores = tuple(dict.fromkeys(stores[p.place.name] for _, p in patterns))
    key_stores = tuple(stores[p.place.name] for k, p in patterns if k != INHIBIT and p.place.keyed)
    return Component(
        steps=tuple(steps),
        stores=component_stores,
        per_key=key_var is not None,
        key_var=key_var,
        key_stores=tuple(dict.fromkeys(key_stores)),
    )


def _arc_step(
    kind: int,
    arc_position: int,
    pattern: Pattern,
    stores: dict[str, PlaceStore],
    bound: set[str],
    seen_places: set[str],
) -> ArcStep:
    colour = pattern.place.colour_set
    index_fields: dict[int, tuple[str, object]] = {}
    binds: list[tuple[int, str]] = []
    checks: list[tuple[int, str]] = []
    bound_here: set[str] = set()
    whole_bound = pattern.var is not None and pattern.var.name in bound
    if whole_bound:
        assert pattern.var is not None
        for pos in range(len(colour.fields)):
            index_fields[pos] = ("field", (pattern.var.name, pos))
    const_checks: list[tuple[int, object]] = []
    for fname, value in pattern.fields:
        pos = colour.field_index(fname)
        if whole_bound:
            # The index already matches every field against the bound token, so each
            # pattern field must agree with it: a constant or bound variable is checked.
            if not isinstance(value, Var):
                const_checks.append((pos, value))
            elif value.name in bound or value.name in bound_here:
                checks.append((pos, value.name))
            else:
                binds.append((pos, value.name))
                bound_here.add(value.name)
        elif not isinstance(value, Var):
            index_fields[pos] = ("const", value)
        elif value.name in bound:
            index_fields[pos] = ("var", value.name)
        elif value.name in bound_here:
            checks.append((pos, value.name))
        else:
            binds.append((pos, value.name))
            bound_here.add(value.name)
    ordered = sorted(index_fields)
    store = stores[pattern.place.name]
    whole = None if pattern.var is None or whole_bound else pattern.var.name
    return ArcStep(
        kind=kind,
        arc_position=arc_position,
        store=store,
        index=store.index(tuple(ordered)),
        sources=tuple(index_fields[p] for p in ordered),
        binds=tuple(binds),
        checks=tuple(checks),
        const_checks=tuple(const_checks),
        whole=whole,
        count=pattern.count,
        shares_place=pattern.place.name in seen_places,
    )


# A compiled search returns the component's preferred binding as one flat tuple, or
# ``None``: the chosen entries in binding order (an entry, or a tuple of entries for a
# many-token arc), then, for a per-key component, the key. Its prefix of entries orders
# bindings as conflict resolution does, so the tuple itself is the item of the
# component's per-key heap: no second tuple, and one nesting level less to compare (see
# docs/engine.md). Two items compare equal only if their entries are equal, and then
# their keys are too (a per-key component has a keyed consume or read arc, whose token
# holds the key), so a comparison never needs a tie breaker past the entries. It used
# to carry a sequence number for that, when a dictionary followed (an int allocated
# per search). It holds no dictionary of the variables: every variable is a field
# of a chosen token, the token itself or the key, so whoever needs the values reads
# them from the entries (see :func:`variable_sources`), and a search that is done again
# before its transition fires never builds one.
Searcher = Callable[..., "tuple[Any, ...] | None"]


def compile_search(component: Component, transition_name: str) -> Searcher:
    """Generate the search of ``component`` as straight-line Python.

    Returns ``search(key)`` for a per-key component, ``search()`` otherwise; each
    returns the preferred binding as a flat tuple (see :data:`Searcher`), or ``None``.
    The result is the one
    :func:`search` finds: the same walk in binding order, one nested ``for`` loop per
    arc over its index bucket, binds as local variables, the guard and inhibitors
    inlined where their variables become bound. A many-token arc loops over the
    ``combinations`` of its bucket (in order, so the least group comes first), and an
    arc on a place that an earlier arc of the search reads skips the entries taken
    already (as a multiset). The source is built from the net's structure only (user
    inscriptions are passed in as objects, never as text).
    """
    steps = component.steps
    namespace: dict[str, Any] = {
        "EMPTY": (),
        "combinations": combinations,
        "untaken": _untaken,
    }
    key_var = component.key_var
    lines = [f"def search(v_{key_var}):" if key_var is not None else "def search():"]
    entries: list[str] = []
    probes = _probe_plan(component)
    lines += _probe_lines(probes.get(-1, ()), steps, namespace, "    ", "return None")
    chosen: list[tuple[PlaceStore, str, int]] = []  # (store, entry local, count) so far
    depth = 1
    for i, step in enumerate(steps):
        pad = "    " * depth
        lookup = _lookup_source(step.sources, namespace, i)
        namespace[f"B{i}"] = step.index.buckets
        fail = "continue" if depth > 1 else "return None"
        if step.kind == INHIBIT:
            lines.append(f"{pad}if B{i}.get({lookup}, EMPTY): {fail}")
            continue
        bucket = f"B{i}.get({lookup}, EMPTY)"
        taken = [(name, count) for store, name, count in chosen if store is step.store]
        if step.shares_place and taken:
            # Two arcs on one place never take the same token instance: drop, as a
            # multiset, what the earlier arcs took (equal entries sit side by side).
            parts = "".join(f"{name}, " if count == 1 else f"*{name}, " for name, count in taken)
            lines.append(f"{pad}c{i} = untaken({bucket}, [{parts}])")
            bucket = f"c{i}"
        if step.count != 1:
            lines.append(f"{pad}for e{i} in combinations({bucket}, {step.count}):")
        else:
            lines.append(f"{pad}for e{i} in {bucket}:")
        depth += 1
        pad = "    " * depth
        if step.count != 1:
            # A many-token arc matches only on variables bound before it (nets/model.py).
            assert not step.binds
            assert not step.checks
            assert not step.const_checks
            if step.whole is not None:
                lines.append(f"{pad}v_{step.whole} = tuple([e[1] for e in e{i}])")
        else:
            lines.append(f"{pad}t{i} = e{i}[1]")
            for pos, name in step.binds:
                lines.append(f"{pad}v_{name} = t{i}[{pos}]")
            for pos, name in step.checks:
                lines.append(f"{pad}if t{i}[{pos}] != v_{name}: continue")
            for j, (pos, value) in enumerate(step.const_checks):
                namespace[f"K{i}_{j}"] = value
                lines.append(f"{pad}if t{i}[{pos}] != K{i}_{j}: continue")
            if step.whole is not None:
                lines.append(f"{pad}v_{step.whole} = t{i}")
        lines += _probe_lines(probes.get(i, ()), steps, namespace, pad, "continue")
        if step.guard is not None:
            namespace[f"G{i}"] = step.guard
            args = ", ".join(f"v_{p}" for p in step.guard_params)
            lines.append(f"{pad}if not G{i}({args}): continue")
        entries.append(f"e{i}")
        chosen.append((step.store, f"e{i}", step.count))
    pad = "    " * depth
    tail = f"v_{key_var}, " if key_var is not None else ""
    lines.append(f"{pad}return ({''.join(e + ', ' for e in entries)}{tail})")
    if depth > 1:
        lines.append("    return None")
    source = "\n".join(lines) + "\n"
    code = compiled(source, f"<cpn search for transition {transition_name!r}>")
    exec(code, namespace)  # noqa: S102 - source built above from the net's structure only
    fn: Searcher = namespace["search"]
    return fn


# Where a variable's value sits in a search result: ("key", -1, -1) the key (last item),
# ("field", slot, position) a field of the token of entry ``slot``, ("whole", slot, -1)
# that token, ("many", slot, -1) the tokens of a many-token arc's entries.
VariableSource = tuple[str, int, int]


def variable_sources(component: Component) -> tuple[tuple[str, VariableSource], ...]:
    """Each variable the component binds, with where its value sits in a search result.

    In the order the search binds them (the key first, then arc by arc in binding
    order), which is the order of a step's ``binding``.
    """
    found: dict[str, VariableSource] = {}
    if component.key_var is not None:
        found[component.key_var] = ("key", -1, -1)
    slot = 0
    for step in component.steps:
        if step.kind == INHIBIT:
            continue
        if step.count != 1:
            if step.whole is not None:
                found.setdefault(step.whole, ("many", slot, -1))
        else:
            for pos, name in step.binds:
                found.setdefault(name, ("field", slot, pos))
            if step.whole is not None:
                found.setdefault(step.whole, ("whole", slot, -1))
        slot += 1
    return tuple(found.items())


def variable_expression(source: VariableSource, entries: Sequence[str], key: str) -> str:
    """Source reading a variable's value, given the names of the locals that hold a
    search result's entries (one per slot) and its key."""
    kind, slot, position = source
    if kind == "key":
        return key
    if kind == "field":
        return f"{entries[slot]}[1][{position}]"
    if kind == "whole":
        return f"{entries[slot]}[1]"
    return f"tuple([e[1] for e in {entries[slot]}])"


def result_slots(component: Component) -> int:
    """How many entries (or tuples of entries, for many-token arcs) a result starts with."""
    return sum(1 for step in component.steps if step.kind != INHIBIT)


def variable_values(component: Component, item: tuple[Any, ...]) -> dict[str, Any]:
    """The variables of a search result, as a dictionary (for inspection)."""
    values: dict[str, Any] = {}
    for name, (kind, slot, position) in variable_sources(component):
        if kind == "key":
            values[name] = item[-1]
        elif kind == "field":
            values[name] = item[slot][1][position]
        elif kind == "whole":
            values[name] = item[slot][1]
        else:
            values[name] = tuple([e[1] for e in item[slot]])
    return values


def _probe_plan(component: Component) -> dict[int, list[int]]:
    """Where the search tests early that a later arc has candidates at all.

    The walk enumerates arcs in binding order, which is what makes the first complete
    binding the least one; reordering the loops would change the binding chosen. What
    can move is the *test* of an arc: as soon as the variables its index lookup needs
    are bound, one dictionary lookup tells whether its bucket holds enough entries,
    and an empty one prunes every loop in between, at no cost to the order of the
    enumeration. So each arc not searched right next gets a probe at the earliest
    point (``-1`` before the first loop, else the position of the arc whose loop binds
    the last variable it needs), placed before that arc's guard, the costlier test.
    A per-key component's keyed arcs looked up by the key alone are probed already,
    before the search (``required`` in nets/enabling.py).

    Returns:
        point -> positions of the arcs to probe there, in binding order.
    """
    steps = component.steps
    arcs = [i for i, st in enumerate(steps) if st.kind != INHIBIT]
    bound: set[str] = {component.key_var} if component.key_var is not None else set()
    plan: dict[int, list[int]] = {}
    probed: set[int] = set()
    for point in [-1, *arcs]:
        if point >= 0:
            step = steps[point]
            bound |= {name for _, name in step.binds}
            if step.whole is not None:
                bound.add(step.whole)
        later = [j for j in arcs if j > point]
        for j in later[1:]:  # the next arc's own loop looks its bucket up at once
            step = steps[j]
            if j in probed or not _lookup_variables(step) <= bound:
                continue
            keyed = step.store.place.key is not None and step.index is step.store.primary
            if component.per_key and keyed and point == -1:
                continue  # the key's presence is checked before the search
            plan.setdefault(point, []).append(j)
            probed.add(j)
    return plan


def _lookup_variables(step: ArcStep) -> set[str]:
    names = set()
    for kind, arg in step.sources:
        if kind == "var":
            assert isinstance(arg, str)
            names.add(arg)
        elif kind == "field":
            assert isinstance(arg, tuple)
            names.add(arg[0])
    return names


def _probe_lines(
    positions: Sequence[int],
    steps: Sequence[ArcStep],
    namespace: dict[str, Any],
    pad: str,
    fail: str,
) -> list[str]:
    lines = []
    for j in positions:
        step = steps[j]
        namespace[f"B{j}"] = step.index.buckets
        bucket = f"B{j}.get({_lookup_source(step.sources, namespace, j)}, EMPTY)"
        if step.count == 1:
            lines.append(f"{pad}if not {bucket}: {fail}")
        else:
            lines.append(f"{pad}if len({bucket}) < {step.count}: {fail}")
    return lines


def _untaken(bucket: Any, taken: list[Entry]) -> list[Entry]:
    """The entries of ``bucket``, in order, less the multiset ``taken``."""
    if not taken:
        return list(bucket)
    rest = list(taken)
    kept = []
    for entry in bucket:
        if rest and entry in rest:
            rest.remove(entry)
        else:
            kept.append(entry)
    return kept


@functools.lru_cache(maxsize=COMPILED_KEPT_MAX)
def compiled(source: str, filename: str) -> types.CodeType:
    """The code object of generated ``source``, compiled once per process.

    Every engine of a net generates the same source for a transition; only the
    namespace it runs in differs. A shard that restarts, a warm standby, a simulation
    restarting cores thousands of times: each would compile the net's functions anew.
    """
    return compile(source, filename, "exec")


def _lookup_source(
    sources: tuple[tuple[str, object], ...], namespace: dict[str, Any], i: int
) -> str:
    parts = []
    for j, (kind, arg) in enumerate(sources):
        if kind == "var":
            parts.append(f"v_{arg}")
        elif kind == "const":
            namespace[f"C{i}_{j}"] = arg
            parts.append(f"C{i}_{j}")
        else:
            assert isinstance(arg, tuple)
            parts.append(f"v_{arg[0]}[{arg[1]}]")
    if not parts:
        return "None"
    if len(parts) == 1:
        return parts[0]
    return "(" + ", ".join(parts) + ",)"
