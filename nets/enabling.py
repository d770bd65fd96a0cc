"""Incremental enabling: each component's cached preferred binding, and each transition's.

Theory of operation (docs/engine.md, "Components and per-key incremental enabling"):

* A component searched as a whole caches one result, searched again when a place it
  reads changes (``all_dirty``).
* A per-key component keeps, for each key with a binding, one item in a heap. The item
  is the compiled search's flat result (nets/binding.py, ``Searcher``): the chosen
  entries and the key (the variables are read from the entries when the transition
  fires). Its entries come first, so the heap's top is the component's preferred
  binding. ``current`` maps each key to its live item; an item that is not its key's
  live one is stale and is dropped when it reaches the top, and the heap is rebuilt
  from the live items when it grows past twice their number. The refresh of the dirty
  keys is generated per component and inlined into the chooser (``_keyed_top_lines``).
* Places mark what a change dirties: one key of a per-key component (``dirty_keys``)
  or a whole component (``all_dirty``). Only that is searched again, when the engine
  next asks.
* A transition's preferred binding is its components' preferred bindings together:
  components share nothing, so each is least on its own. For a transition of one
  component the binding found is that component's item itself, for several a tuple
  of their items (what the transition's compiled firing takes, nets/firing.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from heapq import heapify, heappop, heappush
from typing import Any

from nets.binding import (
    INHIBIT,
    Component,
    InscriptionError,
    compile_components,
    compile_search,
    compiled,
    variable_values,
)
from nets.firing import FireFn, Step
from nets.marking import PlaceStore
from nets.model import Transition

HEAP_SLACK = 64  # stale heap items tolerated above twice the live ones before a rebuild


def _guard_failed(tname: str, exc: Exception) -> InscriptionError:
    """The error for an exception raised inside a compiled search: the guard's."""
    return InscriptionError(f"guard of transition {tname!r} raised {type(exc).__name__}: {exc}")


class WholeComponentState:
    """A component without keyed consume or read arcs: one cached result."""

    __slots__ = ("all_dirty", "best", "component", "search", "tname")

    def __init__(self, component: Component, tname: str) -> None:
        self.component = component
        self.tname = tname
        self.search = compile_search(component, tname)
        self.all_dirty = True
        self.best: tuple[Any, ...] | None = None

    def known_disabled(self) -> bool:
        """Whether the component is clean and known to have no binding (no search)."""
        return not self.all_dirty and self.best is None

    def preferred(self) -> tuple[Any, ...] | None:
        """The component's preferred binding, searched again only if a place changed."""
        if self.all_dirty:
            try:
                self.best = self.search()
            except InscriptionError:
                raise
            except Exception as exc:
                raise _guard_failed(self.tname, exc) from exc
            self.all_dirty = False
        return self.best


class KeyedComponentState:
    """A component searched per key: a heap of each key's preferred binding."""

    __slots__ = (
        "all_dirty",
        "component",
        "current",
        "dirty_keys",
        "heap",
        "required",
        "search",
        "tname",
        "top",
    )

    def __init__(self, component: Component, tname: str) -> None:
        self.component = component
        self.tname = tname
        self.search = compile_search(component, tname)
        self.all_dirty = True
        # Cleared in place, never replaced: compiled firings and places hold this set.
        self.dirty_keys: set[Any] = set()
        self.heap: list[tuple[Any, ...]] = []
        self.current: dict[Any, tuple[Any, ...]] = {}
        # The primary buckets of the keyed consume and read places: a key missing from
        # one of them has no binding, whatever the rest of the search would find.
        self.required = tuple(
            store.primary.buckets
            for store in dict.fromkeys(
                st.store
                for st in component.steps
                if st.kind != INHIBIT and st.store.place.key is not None
            )
        )
        self.top = _compile_top(self)

    def known_disabled(self) -> bool:
        """Whether the component is clean and known to have no binding (no search)."""
        return not self.all_dirty and not self.heap and not self.dirty_keys

    def preferred(self) -> tuple[Any, ...] | None:
        """The least live item of the heap, after searching the dirty keys again."""
        dirty = self.dirty_keys
        if self.all_dirty:
            # A change to a non-keyed place of this component can affect every key.
            for store in self.component.key_stores:
                dirty.update(store.primary.buckets)
            dirty.update(self.current)
            self.all_dirty = False
        return self.top()

    def compact(self) -> None:
        """Drop the stale items (the heap grew past twice its live ones)."""
        current = self.current
        self.heap[:] = [item for item in self.heap if current.get(item[-1]) is item]
        heapify(self.heap)


def _keyed_top_lines(
    cs: KeyedComponentState, name: str, result: str, ns: dict[str, Any]
) -> list[str]:
    """Lines that search ``cs``'s dirty keys again and set ``result`` to its least live
    item (or ``None``), with the component's objects bound into ``ns`` under ``name``.

    The one implementation of a per-key refresh: :meth:`KeyedComponentState.preferred`
    runs it as a function, the generated chooser inlines it (no call per firing). A key
    missing from a keyed consume or read place has no binding: it is dropped without a
    search (one ``in`` per such place, written out).
    """
    ns[name], ns[f"S_{name}"], ns[f"T_{name}"] = cs, cs.search, cs.tname
    ns[f"DK_{name}"], ns[f"H_{name}"], ns[f"CUR_{name}"] = cs.dirty_keys, cs.heap, cs.current
    ns.update(heappush=heappush, heappop=heappop, IE=InscriptionError, GF=_guard_failed)
    present = []
    for j, buckets in enumerate(cs.required):
        ns[f"RB_{name}_{j}"] = buckets
        present.append(f"k in RB_{name}_{j}")
    return [
        f"if DK_{name}:",
        "    try:",
        f"        for k in DK_{name}:",
        f"            if {' and '.join(present)}:",
        f"                it = S_{name}(k)",
        "                if it is None:",
        f"                    CUR_{name}.pop(k, None)",
        "                else:",
        f"                    CUR_{name}[k] = it",
        f"                    heappush(H_{name}, it)",
        # Only a push can make the heap outgrow its live items.
        f"                    if len(H_{name}) > 2 * len(CUR_{name}) + {HEAP_SLACK}:",
        f"                        {name}.compact()",
        "            else:",
        f"                CUR_{name}.pop(k, None)",
        "    except IE:",
        "        raise",
        "    except Exception as exc:",
        f"        raise GF(T_{name}, exc) from exc",
        f"    DK_{name}.clear()",
        f"while H_{name}:",
        f"    {result} = H_{name}[0]",
        f"    if CUR_{name}.get({result}[-1]) is {result}:",
        "        break",
        f"    heappop(H_{name})",
        "else:",
        f"    {result} = None",
    ]


def _compile_top(cs: KeyedComponentState) -> Callable[[], tuple[Any, ...] | None]:
    """``top()``: the component's least live item after searching its dirty keys again."""
    ns: dict[str, Any] = {}
    lines = ["def top():", *(f"    {line}" for line in _keyed_top_lines(cs, "C", "f", ns))]
    lines.append("    return f")
    source = "\n".join(lines) + "\n"
    code = compiled(source, f"<cpn refresh of a per-key component of {cs.tname!r}>")
    exec(code, ns)  # noqa: S102 - source built above from the net's structure only
    top: Callable[[], tuple[Any, ...] | None] = ns["top"]
    return top


ComponentState = WholeComponentState | KeyedComponentState


class TransitionState:
    """A transition's components, its capacity checks and its compiled firing."""

    __slots__ = (
        "blocked",
        "capacity",
        "components",
        "const_guard",
        "fire",
        "index",
        "single",
        "transition",
    )

    def __init__(
        self,
        index: int,
        transition: Transition,
        stores: dict[str, PlaceStore],
    ) -> None:
        self.index = index
        self.transition = transition
        self.components: list[ComponentState] = [
            KeyedComponentState(c, transition.name)
            if c.key_var is not None
            else WholeComponentState(c, transition.name)
            for c in compile_components(transition, stores)
        ]
        # The one component of most transitions: its item is the binding itself.
        self.single = self.components[0] if len(self.components) == 1 else None
        self.fire: FireFn | None = None  # compiled once the engine's heap exists
        delta: dict[str, int] = {}
        for out in transition.produce:
            delta[out.place.name] = delta.get(out.place.name, 0) + 1
        for pattern in transition.consume:
            delta[pattern.place.name] = delta.get(pattern.place.name, 0) - pattern.count
        self.capacity = [
            (stores[name], d, cap)
            for name, d in delta.items()
            if (cap := stores[name].place.capacity) is not None and d > 0
        ]
        self.blocked: PlaceStore | None = None
        self.const_guard = transition.guard is not None and not transition.guard_variables()

    def preferred(self) -> Any:
        """The transition's preferred binding, or ``None``: for a transition of one
        component that component's item, otherwise a tuple of one item per component."""
        if self.blocked is not None:
            return None
        if self.const_guard and not guard_holds(self.transition):
            return None
        single = self.single
        found: Any
        if single is not None:
            if single.known_disabled():
                return None
            found = single.preferred()
            if found is None:
                return None
        else:
            for cs in self.components:
                if cs.known_disabled():
                    return None
            items = []
            for cs in self.components:
                item = cs.preferred()
                if item is None:
                    return None
                items.append(item)
            found = tuple(items)
        for store, delta, cap in self.capacity:
            if store.count + delta > cap:
                self.blocked = store
                return None
        return found

    def values(self, found: Any) -> dict[str, Any]:
        """Every variable's value in ``found`` (a result of :meth:`preferred`)."""
        if self.single is not None:
            return variable_values(self.single.component, found)
        merged: dict[str, Any] = {}
        for cs, item in zip(self.components, found, strict=True):
            merged.update(variable_values(cs.component, item))
        return merged


def guard_holds(transition: Transition) -> bool:
    """Whether the guard of a transition without variables holds now."""
    assert transition.guard is not None
    try:
        return bool(transition.guard())
    except Exception as exc:
        raise InscriptionError(
            f"guard of transition {transition.name!r} raised {type(exc).__name__}: {exc}"
        ) from exc


def compile_chooser(
    transitions: Sequence[TransitionState], counts: list[int]
) -> Callable[[int], Step | None]:
    """Generate ``fire_next(now)``: fire the first of ``transitions`` (in conflict order)
    that has a binding, count it in ``counts[transition index]`` and return its step,
    or return ``None`` if none has.

    It asks exactly what the loop over :meth:`TransitionState.preferred` asks, but a
    clean component is read where it stands, without a call: a whole component's
    cached result, or a keyed one's heap top if it is live. Only a component with
    something to search again, a transition of several components, one with a
    capacity to check or one with a guard without variables goes through the methods.
    Call it after every transition's firing is compiled.
    """
    ns: dict[str, Any] = {"N": counts}
    lines = ["def fire_next(now):"]
    for i, ts in enumerate(transitions):
        assert ts.fire is not None
        ns[f"T{i}"], ns[f"F{i}"] = ts, ts.fire
        if ts.capacity or ts.const_guard:
            lines.append(f"    f = T{i}.preferred()")
            lines.append("    if f is not None:")
            lines.append(f"        s = F{i}(f, now)")
            lines.append(f"        N[{ts.index}] += 1")
            lines.append("        return s")
            continue
        # One block per component, each nested in the one before: a component without
        # a binding skips the rest of the transition.
        pad = "    "
        for j, cs in enumerate(ts.components):
            lines += [pad + line for line in _component_lines(cs, f"C{i}_{j}", f"f{j}", ns)]
            lines.append(f"{pad}if f{j} is not None:")
            pad += "    "
        found = (
            "f0"
            if ts.single is not None
            else f"({''.join(f'f{j}, ' for j in range(len(ts.components)))})"
        )
        # Counted once fired: a firing that raises changed nothing, so it is no firing.
        lines.append(f"{pad}s = F{i}({found}, now)")
        lines.append(f"{pad}N[{ts.index}] += 1")
        lines.append(f"{pad}return s")
    lines.append("    return None")
    source = "\n".join(lines) + "\n"
    code = compile(source, "<cpn choice of the next firing>", "exec")
    exec(code, ns)  # noqa: S102 - source built above from the net's structure only
    fire_next: Callable[[int], Step | None] = ns["fire_next"]
    return fire_next


def _component_lines(cs: ComponentState, name: str, result: str, ns: dict[str, Any]) -> list[str]:
    """Lines setting ``result`` to the component's preferred binding (or ``None``)."""
    ns[name] = cs
    if isinstance(cs, WholeComponentState):
        # WholeComponentState.preferred, inlined.
        ns[f"S_{name}"], ns[f"T_{name}"] = cs.search, cs.tname
        ns.update(IE=InscriptionError, GF=_guard_failed)
        return [
            f"if {name}.all_dirty:",
            "    try:",
            f"        {result} = {name}.best = S_{name}()",
            "    except IE:",
            "        raise",
            "    except Exception as exc:",
            f"        raise GF(T_{name}, exc) from exc",
            f"    {name}.all_dirty = False",
            "else:",
            f"    {result} = {name}.best",
        ]
    return [
        f"if {name}.all_dirty:",
        f"    {result} = {name}.preferred()",
        "else:",
        *(f"    {line}" for line in _keyed_top_lines(cs, name, result, ns)),
    ]
