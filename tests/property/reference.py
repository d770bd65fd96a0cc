"""A naive reference interpreter of the net semantics, for differential testing.

It shares no code with the engine beyond the net definition itself: no indexes, no
components, no caches. Each firing enumerates *every* binding of every transition as
the cartesian product of the available entries of its consume and read arcs, then
filters. It is slow on purpose and small enough to check by reading.

Semantics implemented (from the ``nets.model`` and ``nets.engine`` docstrings):

* A marking entry is ``(time, token)``; it is available at ``now`` when
  ``time <= now``. Pending entries count towards a place's capacity.
* Multiset rule: one entry instance serves at most one consume or read arc.
* Pattern matching, in binding order (consume arcs, then read arcs): a constant must
  equal the field; a variable binds on its first occurrence and must be equal on
  later ones; the whole-token variable binds the token (for a ``many(k)`` arc the
  tuple of its k tokens, the entries chosen as combinations in sorted order).
* An inhibitor arc disables the binding if any *available* entry of its place
  matches it with the bound variables; then the guard must hold; then every place
  with a capacity must satisfy ``count - consumed + produced <= capacity``.
* Conflict order: highest priority, then the transition declared first, then the
  least binding key: the tuple over consume then read arcs of each arc's entry (or,
  for a ``many`` arc, the sorted tuple of its entries).
* Outputs are computed from the binding and become available at ``now + delay``.
* The next deadline is the earliest time a future entry becomes available in a place
  that some arc reads (consume, read or inhibitor) or that is watched: entries of other
  places cannot change what is enabled, so nothing waits for them (``Engine(watch=)``).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nets.model import Net, OutputArc, Pattern, Transition, Var

Token = tuple[Any, ...]
Entry = tuple[int, Token]
PlacedEntry = tuple[str, int, Token]


@dataclass(frozen=True)
class Binding:
    """One enabled binding: which entry instances it uses and what it binds."""

    transition: Transition
    order: int  # declaration position of the transition
    key: tuple[Any, ...]
    values: dict[str, Any]
    consumed: tuple[tuple[str, int], ...]  # (place, instance id)
    consumed_entries: tuple[PlacedEntry, ...]  # sorted

    @property
    def rank(self) -> tuple[Any, ...]:
        return (-self.transition.priority, self.order, self.key)


@dataclass(frozen=True)
class RefStep:
    """What a firing did, in a canonical (sorted) form."""

    transition: str
    time: int
    binding: dict[str, Any]
    consumed: tuple[PlacedEntry, ...]
    produced: tuple[PlacedEntry, ...]


def _call(fn: Callable[..., Any], values: dict[str, Any]) -> Any:
    names = list(inspect.signature(fn).parameters)
    return fn(*[values[name] for name in names])


def _evaluate(expr: object, values: dict[str, Any]) -> Any:
    if isinstance(expr, Var):
        return values[expr.name]
    if callable(expr) and not isinstance(expr, type):
        return _call(expr, values)
    return expr


def _bind(values: dict[str, Any], name: str, value: Any) -> bool:
    """First occurrence binds; later occurrences must be equal."""
    if name in values:
        return bool(values[name] == value)
    values[name] = value
    return True


def _match_token(pattern: Pattern, token: Token, values: dict[str, Any]) -> bool:
    fields = pattern.place.colour_set.fields
    for name, want in pattern.fields:
        got = token[fields.index(name)]
        if isinstance(want, Var):
            if not _bind(values, want.name, got):
                return False
        elif got != want:
            return False
    return True


def _match(pattern: Pattern, entries: tuple[Entry, ...], values: dict[str, Any]) -> bool:
    for _, token in entries:
        if not _match_token(pattern, token, values):
            return False
    if pattern.var is None:
        return True
    whole = entries[0][1] if pattern.count == 1 else tuple(token for _, token in entries)
    return _bind(values, pattern.var.name, whole)


class Reference:
    """The naive interpreter. Its marking is a list of entry instances per place."""

    def __init__(self, net: Net, *, watch: Iterable[str] = ()) -> None:
        self.net = net
        self._timed = set(watch) | {
            p.place.name for t in net.transitions for p in (*t.consume, *t.read, *t.inhibit)
        }
        self.now = 0
        self._next_id = 0
        # place -> {instance id: entry}
        self._marking: dict[str, dict[int, Entry]] = {p.name: {} for p in net.places}
        for place in net.places:
            for token in place.initial:
                self._put(place.name, (0, token))

    def _put(self, place: str, entry: Entry) -> None:
        self._marking[place][self._next_id] = entry
        self._next_id += 1

    # -- inspection -------------------------------------------------------------------

    def marking(self) -> dict[str, list[Entry]]:
        return {name: sorted(entries.values()) for name, entries in self._marking.items()}

    def count(self, place: str) -> int:
        return len(self._marking[place])

    def total(self) -> int:
        return sum(len(entries) for entries in self._marking.values())

    def next_deadline(self) -> int | None:
        future = [
            time
            for place, entries in self._marking.items()
            if place in self._timed
            for time, _ in entries.values()
            if time > self.now
        ]
        return min(future) if future else None

    # -- bindings ---------------------------------------------------------------------

    def _available(self, place: str) -> list[tuple[Entry, int]]:
        """(entry, instance id) of the available entries, sorted."""
        found = [(e, i) for i, e in self._marking[place].items() if e[0] <= self.now]
        found.sort()
        return found

    def _choices(self, pattern: Pattern) -> list[tuple[tuple[int, ...], tuple[Entry, ...]]]:
        available = self._available(pattern.place.name)
        return [
            (tuple(i for _, i in group), tuple(e for e, _ in group))
            for group in itertools.combinations(available, pattern.count)
        ]

    def _inhibited(self, pattern: Pattern, values: dict[str, Any]) -> bool:
        return any(
            _match_token(pattern, token, dict(values))
            for token in (e[1] for e, _ in self._available(pattern.place.name))
        )

    def _capacity_ok(self, t: Transition, consumed: tuple[tuple[str, int], ...]) -> bool:
        for place in self.net.places:
            if place.capacity is None:
                continue
            taken = sum(1 for name, _ in consumed if name == place.name)
            produced = sum(1 for out in t.produce if out.place is place)
            if self.count(place.name) - taken + produced > place.capacity:
                return False
        return True

    def bindings(self, now: int) -> list[Binding]:
        """Every enabled binding of every transition at ``now``, in conflict order."""
        assert now >= self.now
        self.now = now
        found: list[Binding] = []
        for order, t in enumerate(self.net.transitions):
            found.extend(self._transition_bindings(order, t))
        found.sort(key=lambda b: b.rank)
        return found

    def _transition_bindings(self, order: int, t: Transition) -> list[Binding]:
        arcs = [*t.consume, *t.read]
        n_consume = len(t.consume)
        found = []
        for combo in itertools.product(*(self._choices(p) for p in arcs)):
            used = [(p.place.name, i) for p, (ids, _) in zip(arcs, combo, strict=True) for i in ids]
            if len(set(used)) != len(used):
                continue  # one entry instance serving two arcs
            values: dict[str, Any] = {}
            if not all(
                _match(p, entries, values) for p, (_, entries) in zip(arcs, combo, strict=True)
            ):
                continue
            if any(self._inhibited(p, values) for p in t.inhibit):
                continue
            if t.guard is not None and not _call(t.guard, values):
                continue
            consumed = tuple(
                (p.place.name, i)
                for p, (ids, _) in zip(arcs[:n_consume], combo[:n_consume], strict=True)
                for i in ids
            )
            if not self._capacity_ok(t, consumed):
                continue
            key = tuple(
                entries[0] if p.count == 1 else entries
                for p, (_, entries) in zip(arcs, combo, strict=True)
            )
            consumed_entries = tuple(
                sorted((place, *self._marking[place][i]) for place, i in consumed)
            )
            found.append(Binding(t, order, key, values, consumed, consumed_entries))
        return found

    # -- firing -----------------------------------------------------------------------

    def fire(self, now: int) -> RefStep | None:
        """Fire the preferred binding at ``now``, or return ``None`` if none is enabled."""
        enabled = self.bindings(now)
        return self.apply(enabled[0]) if enabled else None

    def apply(self, binding: Binding) -> RefStep:
        """Fire ``binding`` (one of :meth:`bindings` at the current time)."""
        produced = [
            (out.place.name, self.now + delay, token)
            for out in binding.transition.produce
            for delay, token in self._outputs(out, binding.values)
        ]
        for place, i in binding.consumed:
            del self._marking[place][i]
        for place, time, token in produced:
            self._put(place, (time, token))
        return RefStep(
            transition=binding.transition.name,
            time=self.now,
            binding=dict(binding.values),
            consumed=binding.consumed_entries,
            produced=tuple(sorted(produced)),
        )

    def _outputs(self, out: OutputArc, values: dict[str, Any]) -> list[tuple[int, Token]]:
        values = {**values, "now": self.now}
        result = _evaluate(out.expr, values)
        delay = _evaluate(out.delay, values)
        assert type(delay) is int
        assert delay >= 0
        tokens = list(result) if out.many else [result]
        for token in tokens:
            assert type(token) is out.place.colour, (token, out.place)
        return [(delay, token) for token in tokens]
