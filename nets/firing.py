"""Firing a transition: one generated function per transition.

A firing evaluates the output inscriptions, removes the consumed entries, adds the
produced ones (available now, or pending until their time) and returns the
:class:`Step`. It is the hottest code in the engine, so it is generated per transition
as straight-line Python from the net's structure: the user's inscriptions are passed in
as objects (never as text), and the places, arc counts and delays are constants of the
generated code.

Atomicity: every output (and every delay) is computed and checked before the first
entry is removed, so an inscription that raises, returns a token of the wrong colour
or a bad delay leaves the marking untouched; the error is an :class:`InscriptionError`
naming the transition and the binding.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from sortedcontainers import SortedList

from nets.binding import (
    CONSUME,
    INHIBIT,
    Component,
    InscriptionError,
    compiled,
    result_slots,
    variable_expression,
    variable_sources,
)
from nets.marking import BUCKET_LIST_MAX, PlaceStore
from nets.model import NOW, OutputArc, Place, Token, Transition, Var, parameters

PlacedEntry = tuple[str, int, Token]  # (place name, time, token)


class Step(NamedTuple):
    """One firing: what it consumed and produced, ready to persist or ship."""

    transition: str
    time: int
    binding: Mapping[str, Any]
    consumed: tuple[PlacedEntry, ...]
    produced: tuple[PlacedEntry, ...]


# A transition's binding as nets/enabling.py finds it: for a transition of one component
# that component's search result (its entries in binding order first, then for a per-key
# component a sequence number and the key; nets/binding.py, Searcher), otherwise a tuple
# of one per component.
Found = Any
FireFn = Callable[[Found, int], Step]


def _expression(expr: object, name: str, namespace: dict[str, Any]) -> str:
    """Source evaluating ``expr`` from the ``v_*`` locals; objects go into ``namespace``."""
    if isinstance(expr, Var):
        return f"v_{expr.name}"
    namespace[name] = expr
    if callable(expr):
        args = ", ".join(f"v_{p}" for p in parameters(expr, "inscription"))
        return f"{name}({args})"
    return name


class Locality(Protocol):
    """Which produced tokens stay in this engine's marking (the rest are exported).

    A sharded runtime owns only some partitions: a token produced into a keyed place
    whose key another shard owns, or into a fixed place (no key, no pool) that another
    shard holds, leaves the marking and is appended to the engine's ``exported`` list
    for the shell to hand off. Pool tokens always stay. ``local_keys`` is a cache the
    generated code reads first (key value -> stays here?); the owner of the locality
    fills it through :meth:`is_local_key` and must ``clear()`` it (never replace it)
    when ownership changes.
    """

    local_keys: dict[Any, bool]

    def is_local_key(self, key: Any) -> bool: ...

    def is_local_fixed(self) -> bool: ...


def compile_firing(
    transition: Transition,
    components: Sequence[Component],
    stores: Mapping[str, PlaceStore],
    pending: dict[int, list[tuple[str, Token]]],
    pending_times: list[int],
    *,
    locality: Locality | None = None,
    exported: list[PlacedEntry] | None = None,
) -> FireFn:
    """Generate the firing function of ``transition`` for one engine's marking.

    ``pending`` holds the engine's future entries, each time's ``(place, token)`` pairs
    in production order, and ``pending_times`` is the heap of those times. With
    a ``locality``, produced tokens it does not keep go to ``exported`` instead of the
    marking (and are not in the step's ``produced``).
    """
    ns: dict[str, Any] = {
        "Step": Step,
        "NEW": tuple.__new__,
        "heappush": heapq.heappush,
        "PENDING": pending,
        "TIMES": pending_times,
        "NAME": transition.name,
        "failed": _failed,
        "bad_token": _bad_token,
        "bad_delay": _bad_delay,
    }
    lines = ["def fire(found, now):"]
    # Each chosen entry into a local ``a{component}_{slot}`` (and each key into
    # ``key{component}``) by unpacking: the removal, the variables and the step's
    # ``consumed`` read the locals instead of indexing the result again.
    results = ["found"] if len(components) == 1 else [f"found{c}" for c in range(len(components))]
    if len(components) > 1:
        lines.append(f"    {''.join(f'{r}, ' for r in results)}= found")
    for c, component in enumerate(components):
        unpacked = [f"a{c}_{slot}" for slot in range(result_slots(component))]
        if component.key_var is not None:
            unpacked.append(f"key{c}")
        if unpacked:
            lines.append(f"    {''.join(f'{name}, ' for name in unpacked)}= {results[c]}")
    # Every variable is read from the chosen entries (nets/binding.py, variable_sources):
    # the search builds no dictionary, so the step's binding is the one built here.
    names: list[str] = []
    for c, component in enumerate(components):
        entries = [f"a{c}_{slot}" for slot in range(result_slots(component))]
        for name, where in variable_sources(component):
            lines.append(f"    v_{name} = {variable_expression(where, entries, f'key{c}')}")
            names.append(name)
    lines.append(f"    values = {{{''.join(f'{name!r}: v_{name}, ' for name in names)}}}")
    used: dict[str, None] = {}
    for arc in transition.produce:
        used.update(dict.fromkeys(sorted(arc.variables())))
    lines += [
        "    v_now = now" if name == NOW else f"    v_{name} = values[{name!r}]"
        for name in used
        if name not in names
    ]

    # 1. Evaluate every output, checking classes and delays, before touching the marking.
    if transition.produce:
        lines.append("    try:")
        for i, arc in enumerate(transition.produce):
            lines += _output_lines(i, arc, ns)
        lines.append("    except Exception as exc:")
        lines.append("        failed(NAME, exc, values)")

    # 2. Consume.
    consumed: list[str] = []
    for c, component in enumerate(components):
        slot = 0
        for step in component.steps:
            if step.kind == INHIBIT:
                continue
            if step.kind == CONSUME:
                store = f"S_{step.store.place.name}"
                ns[store] = step.store
                picked = f"a{c}_{slot}"
                # Every keyed arc of a per-key component binds the place's key to the
                # component's key (nets/binding.py): the entry's key is that local.
                key = (
                    f"key{c}"
                    if component.key_var is not None and step.store.place.key is not None
                    else None
                )
                if step.count == 1:
                    lines.append(f"    e = {picked}")
                    lines += [f"    {line}" for line in _remove_lines(step.store, ns, key)]
                    # (place,) + (time, token): one concatenation of a constant tuple,
                    # half the cost of indexing the entry twice into a new tuple.
                    ns[f"P_{step.store.place.name}"] = (step.store.place.name,)
                    consumed.append(f"P_{step.store.place.name} + {picked}")
                else:
                    lines.append(f"    for e in {picked}:")
                    lines += [f"        {line}" for line in _remove_lines(step.store, ns, key)]
                    consumed.append(f"*[({step.store.place.name!r}, e[0], e[1]) for e in {picked}]")
            slot += 1

    # 3. Produce: available now (or into an unread place) goes straight to the index,
    #    the rest waits in the pending heap; tokens of partitions held elsewhere are
    #    exported (with a locality).
    produced: list[str] = []
    if locality is not None:
        assert exported is not None
        ns.update(LK=locality.local_keys, LKF=locality.is_local_key, LF=locality.is_local_fixed)
        ns["X"] = exported
    for i, arc in enumerate(transition.produce):
        place = arc.place.name
        store = f"S_{place}"
        ns[store] = stores[place]
        test = None if locality is None else _local_test(arc.place)
        token = "o" if arc.many else f"o{i}"
        add = _add_lines(stores[place], token, f"t{i}", _fixed_delay(arc), ns)
        if test is not None:
            kept = f"kept{i}.append(o)" if arc.many else f"kept{i} = True"
            add = [
                *test(token),
                "if local:",
                *(f"    {line}" for line in add),
                f"    {kept}",
                "else:",
                f"    X.append(({place!r}, t{i}, {token}))",
            ]
            lines.append(f"    kept{i} = []" if arc.many else f"    kept{i} = False")
        if arc.many:
            lines.append(f"    for o in o{i}:")
            lines += [f"        {line}" for line in add]
            source = f"o{i}" if test is None else f"kept{i}"
            produced.append(f"*[({place!r}, t{i}, o) for o in {source}]")
        else:
            lines += [f"    {line}" for line in add]
            if test is None:
                produced.append(f"({place!r}, t{i}, o{i})")
            else:
                produced.append(f"*((({place!r}, t{i}, o{i}),) if kept{i} else ())")
    lines.append(
        # tuple.__new__ directly: a NamedTuple's own __new__ is one more Python call.
        f"    return NEW(Step, (NAME, now, values, ({''.join(c + ', ' for c in consumed)}), "
        f"({''.join(p + ', ' for p in produced)})))"
    )
    source = "\n".join(lines) + "\n"
    code = compiled(source, f"<cpn firing of transition {transition.name!r}>")
    exec(code, ns)  # noqa: S102 - source built above from the net's structure only
    fire: FireFn = ns["fire"]
    return fire


def _local_test(place: Place) -> Callable[[str], list[str]] | None:
    """Lines setting ``local`` for a produced token, or None if it always stays."""
    if place.pool:
        return None
    if place.key is None:
        return lambda _token: ["local = LF()"]
    position = place.colour_set.field_index(place.key)
    return lambda token: [
        f"local = LK.get({token}[{position}])",
        "if local is None:",
        f"    local = LKF({token}[{position}])",
    ]


def _output_lines(i: int, arc: OutputArc, ns: dict[str, Any]) -> list[str]:
    ns[f"K{i}"] = arc.place.colour_set.cls
    place = arc.place.name
    lines = []
    if type(arc.delay) is int:
        lines.append(f"        t{i} = now + {arc.delay}")
    else:
        lines.append(f"        d{i} = {_expression(arc.delay, f'D{i}', ns)}")
        lines.append(f"        if type(d{i}) is not int or d{i} < 0: bad_delay({place!r}, d{i})")
        lines.append(f"        t{i} = now + d{i}")
    expr = _expression(arc.expr, f"E{i}", ns)
    if arc.many:
        lines.append(f"        o{i} = list({expr})")
        lines.append(f"        for o in o{i}:")
        lines.append(f"            if type(o) is not K{i}: bad_token({place!r}, o, K{i})")
    else:
        lines.append(f"        o{i} = {expr}")
        lines.append(f"        if type(o{i}) is not K{i}: bad_token({place!r}, o{i}, K{i})")
    return lines


def _fixed_delay(arc: OutputArc) -> int | None:
    return arc.delay if type(arc.delay) is int else None


def _add_lines(
    store: PlaceStore, token: str, time: str, delay: int | None, ns: dict[str, Any]
) -> list[str]:
    """Lines adding the entry ``(time, token)``: into the indexes, or pending.

    A place no arc reads (``timed`` false, fixed once the engine is wired) and an
    output without delay always index the entry; an output with a fixed positive
    delay into a timed place always waits in the pending heap.
    """
    name = store.place.name
    insert = [f"e = ({time}, {token})", *_insert_lines(store, ns)]
    pend = [
        f"w = PENDING.get({time})",
        "if w is None:",
        f"    PENDING[{time}] = [({name!r}, {token})]",
        f"    heappush(TIMES, {time})",
        "else:",
        f"    w.append(({name!r}, {token}))",
    ]
    lines = [f"S_{name}.count += 1"]
    if not store.timed or (delay is not None and delay <= 0):
        return lines + insert
    if delay is not None:
        return lines + pend
    return [
        *lines,
        f"if {time} <= now:",
        *(f"    {line}" for line in insert),
        "else:",
        *(f"    {line}" for line in pend),
    ]


def _insert_lines(store: PlaceStore, ns: dict[str, Any]) -> list[str]:
    """Inline :meth:`PlaceStore.add_available` for entry ``e`` (same effects, no call).

    Specialised as :func:`_remove_lines` is: the key field, the secondary indexes and
    the watchers of the place are fixed once the engine is wired.
    """
    name = store.place.name
    ns[f"S_{name}"] = store
    ns[f"B_{name}"] = store.primary.buckets
    ns["insort"] = insort
    ns["SortedList"] = SortedList
    key = f"e[1][{store.key_position}]" if store.key_position >= 0 else "None"
    lines = [
        f"k = {key}",
        f"b = B_{name}.get(k)",
        "if b is None:",
        f"    B_{name}[k] = [e]",
        "elif type(b) is list:",
        "    if b[-1] <= e:",
        "        b.append(e)",
        "    else:",
        "        insort(b, e)",
        f"    if len(b) > {BUCKET_LIST_MAX}:",
        f"        B_{name}[k] = SortedList(b)",
        "else:",
        "    b.add(e)",
    ]
    if store.secondary:
        lines += [f"for index in S_{name}.secondary:", "    index.add(e)"]
    return lines + _notify_lines(store, ns)


def compile_insert(store: PlaceStore) -> Callable[[tuple[int, Token]], None]:
    """The generated ``insert(e)`` of one place: :meth:`PlaceStore.add_available`
    specialised to the place (for the engine's release of pending entries)."""
    ns: dict[str, Any] = {}
    lines = ["def insert(e):", *(f"    {line}" for line in _insert_lines(store, ns))]
    source = "\n".join(lines) + "\n"
    code = compiled(source, f"<cpn insert into place {store.place.name!r}>")
    exec(code, ns)  # noqa: S102 - source built above from the net's structure only
    insert: Callable[[tuple[int, Token]], None] = ns["insert"]
    return insert


def _notify_lines(store: PlaceStore, ns: dict[str, Any], *, removal: bool = False) -> list[str]:
    """Lines telling the components that read the place about key ``k`` changing.

    A removal tells a per-key component only if it holds a binding for ``k`` (or reads
    the place through an inhibitor arc): its consume and read arcs can only lose
    candidates, so a key without a binding cannot gain one. A key dirty already is
    searched again anyway, whatever its cached binding. In the scraper, a response
    taken by ``fetched`` no longer makes ``retry`` and ``give_up`` search its domain.
    """
    name = store.place.name
    lines = []
    for j, watcher in enumerate(store.key_watchers):
        ns[f"DK_{name}_{j}"] = watcher.dirty_keys
        inhibits = any(st.kind == INHIBIT and st.store is store for st in watcher.component.steps)
        if removal and not inhibits:
            ns[f"CUR_{name}_{j}"] = watcher.current
            lines.append(f"if k in CUR_{name}_{j}: DK_{name}_{j}.add(k)")
        else:
            lines.append(f"DK_{name}_{j}.add(k)")
    for j, place_watcher in enumerate(store.place_watchers):
        ns[f"PW_{name}_{j}"] = place_watcher
        lines.append(f"PW_{name}_{j}.all_dirty = True")
    return lines


def _remove_lines(store: PlaceStore, ns: dict[str, Any], key: str | None = None) -> list[str]:
    """Inline :meth:`PlaceStore.remove_available` for entry ``e`` (same effects, no call).

    Specialised to the store's fixed shape: its key field, its secondary indexes and
    the components and transitions that watch it (their dirty-key sets and flags are
    long-lived objects, bound into the generated code). ``key`` names a local that
    holds the entry's key already (a per-key component's key), if there is one.
    """
    name = store.place.name
    ns[f"S_{name}"] = store
    ns[f"B_{name}"] = store.primary.buckets
    ns["bisect_left"] = bisect_left
    if key is None:
        key = f"e[1][{store.key_position}]" if store.key_position >= 0 else "None"
    lines = [
        f"k = {key}",
        f"b = B_{name}[k]",
        "if type(b) is list:",
        "    if b[0] is e or b[0] == e:",
        "        del b[0]",
        "    else:",
        "        i = bisect_left(b, e)",
        f"        assert b[i] == e, ('entry not in place', {name!r}, e)",
        "        del b[i]",
        "else:",
        "    b.remove(e)",
        "if not b:",
        f"    del B_{name}[k]",
        f"S_{name}.count -= 1",
    ]
    if store.secondary:
        lines += [f"for index in S_{name}.secondary:", "    index.remove(e)"]
    lines += _notify_lines(store, ns, removal=True)
    for j, capacity_watcher in enumerate(store.capacity_watchers):
        ns[f"CW_{name}_{j}"] = capacity_watcher
        lines.append(f"CW_{name}_{j}.blocked = None")
    return lines


class _BadOutputError(Exception):
    """Raised inside a generated firing for a wrong token or delay (wrapped by _failed)."""


def _failed(transition: str, exc: Exception, values: dict[str, Any]) -> None:
    if isinstance(exc, _BadOutputError):
        raise InscriptionError(f"transition {transition!r}: {exc}") from None
    raise InscriptionError(
        f"an output inscription of transition {transition!r} raised "
        f"{type(exc).__name__}: {exc} (binding {dict(values)})"
    ) from exc


def _bad_token(place: str, token: object, cls: type) -> None:
    raise _BadOutputError(
        f"produced {token!r} into place {place!r}, which holds {cls.__name__} tokens"
    )


def _bad_delay(place: str, delay: object) -> None:
    raise _BadOutputError(
        f"the delay of the output to {place!r} must be a non-negative int, got {delay!r}"
    )
