"""The modelling language: variables, places, arcs, transitions and nets.

A net is plain, immutable data built from ordinary Python objects, so it can be
validated, drawn, explored and diffed. Arc inscriptions are patterns
(``targets(t, domain=d)``: bind the whole token to ``t``, require or bind its field
``domain`` to ``d``) and output inscriptions are ordinary functions whose parameter
names are the variables they read (``lambda t: t._replace(attempt=t.attempt + 1)``).
Nothing is evaluated from strings and nothing is registered globally.

Theory of operation (validation): :class:`Net` checks everything that can be checked
without running the net, and raises :class:`NetDefinitionError` naming the net,
transition, arc and variable at fault:

* names are unique; every arc's place belongs to the net;
* patterns name fields the colour set has, constants have the field's type;
* variables read by guards, inhibitor arcs, outputs and delays are bound by a
  consume or read arc; ``many`` arcs only match on variables bound before them;
* the partition rule: every consume, read and inhibitor arc on a keyed place binds
  the key field, and all of them bind it to the same variable (so every firing, and
  every absence check, is local to one partition); pool and fixed places are exempt;
* initial tokens belong to their place's colour set and fit its capacity; a place
  with a capacity only receives a fixed number of tokens per firing;
* a work queue declares the places its completions produce into (``results``), and
  they are places of the net; ``failures`` is one of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nets.colour import ColourSet, check_token, describe
from nets.effects import EffectModel, validate_effects
from nets.errors import NetDefinitionError, TokenError

Token = tuple[Any, ...]
# A marking as properties see it: each place's tokens, sorted (a multiset), untimed.
MarkingView = Mapping[str, tuple[Token, ...]]
# An invariant (AG): a pure predicate that must hold in every reachable marking.
Invariant = Callable[[MarkingView], bool]

# The firing time, in ms: a parameter of this name in an output's expression or delay
# receives it. Reserved, so no arc can bind it; guards cannot use it (enabledness must
# not change with time alone except through token times).
NOW: str = "now"


@dataclass(frozen=True, slots=True)
class Var:
    """A variable of an arc inscription; bound to a token or to a field value."""

    name: str

    def __post_init__(self) -> None:
        # Generated searches use the name as part of a local variable (v_<name>).
        if not (isinstance(self.name, str) and self.name.isidentifier()):
            raise NetDefinitionError(f"variable name {self.name!r} is not a Python identifier")
        if self.name == NOW:
            raise NetDefinitionError(
                f"variable name {NOW!r} is reserved: an output's function receives the "
                "firing time through a parameter of that name"
            )

    def __repr__(self) -> str:
        return self.name


def variables(names: str) -> tuple[Var, ...]:
    """``d, t = variables("d t")``: one :class:`Var` per whitespace-separated name."""
    return tuple(Var(n) for n in names.split())


@dataclass(frozen=True, slots=True)
class Pattern:
    """What an arc matches in its place: ``place(var, field=var_or_constant, ...)``.

    ``var`` binds the whole token (a tuple of ``count`` tokens for a ``many`` arc);
    each field entry either binds a variable, joins on an already bound one, or
    requires a constant.
    """

    place: Place
    var: Var | None
    fields: tuple[tuple[str, object], ...]
    count: int = 1

    def variables(self) -> set[str]:
        names = {v.name for _, v in self.fields if isinstance(v, Var)}
        if self.var is not None:
            names.add(self.var.name)
        return names

    def describe(self) -> str:
        parts = [] if self.var is None else [self.var.name]
        parts += [f"{f}={v!r}" for f, v in self.fields]
        head = (
            f"{self.place.name}.many({self.count}, " if self.count != 1 else f"{self.place.name}("
        )
        return head + ", ".join(parts) + ")"


@dataclass(frozen=True, slots=True)
class ConsumeArc:
    """An input arc: the matched tokens are removed when the transition fires."""

    pattern: Pattern


@dataclass(frozen=True, slots=True)
class ReadArc:
    """A read (test) arc: a matching token must be present; it is not consumed."""

    pattern: Pattern


@dataclass(frozen=True, slots=True)
class InhibitorArc:
    """An inhibitor arc: the transition is enabled only if no available token matches."""

    pattern: Pattern


Inscription = Callable[..., Any]


def parameters(fn: Callable[..., Any], what: str) -> tuple[str, ...]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError) as exc:
        raise NetDefinitionError(f"{what}: cannot read the parameters of {fn!r}") from exc
    names = []
    for p in params:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY):
            raise NetDefinitionError(
                f"{what}: parameter {p.name!r} of {fn!r} is variadic; name each variable"
            )
        names.append(p.name)
    return tuple(names)


@dataclass(frozen=True, slots=True)
class OutputArc:
    """An output arc: tokens computed from the binding, available after ``delay`` ms.

    ``expr`` is a :class:`Var` (produce the bound value), a token (produce a
    constant) or a function whose parameter names are variables. ``delay`` is an
    ``int`` of milliseconds or such a function. With ``many=True`` the expression
    returns an iterable of tokens (zero or more).
    """

    place: Place
    expr: object
    delay: object = 0
    many: bool = False

    def variables(self) -> set[str]:
        names: set[str] = set()
        for part in (self.expr, self.delay):
            if isinstance(part, Var):
                names.add(part.name)
            elif callable(part):
                names.update(parameters(part, f"output to {self.place.name}"))
        return names


@dataclass(frozen=True, eq=False)
class Place:
    """A place: a colour set, an optional capacity, a partition key or ``pool=True``.

    Args:
        name: unique within the net.
        colour: a ``typing.NamedTuple`` class; its instances are the tokens.
        key: the field that partitions the place (e.g. ``"domain"``).
        pool: the tokens have no home partition and move between shards on demand
            (e.g. proxies). A place with neither ``key`` nor ``pool`` lives in one
            fixed partition.
        capacity: at most this many tokens (available or not); a transition that
            would overfill the place is not enabled (back pressure). In a cluster the
            capacity applies per shard.
        initial: the initial marking, tokens available at time 0.
        work_queue: workers may lease this place's tokens (see shard/leases.py): a
            leased token is held for the lease time and comes back if the lease
            expires before the worker completes it.
        results: a work queue's declared results: the places its completions may
            produce into (``()``: completions produce nothing). Required with
            ``work_queue=True`` and refused without it: a shard refuses a completion
            into any other place (``wrong_place``), so a worker cannot put tokens
            where the net does not expect them (docs/language.md, "Work queues").
        failures: the one of ``results`` that receives a worker's failure tokens
            (optional; only with ``work_queue=True``).

    Calling the place builds an arc pattern; ``produce`` builds an output arc.
    """

    name: str
    colour: type
    key: str | None = None
    pool: bool = False
    capacity: int | None = None
    initial: Sequence[Token] = ()
    work_queue: bool = False
    results: tuple[str, ...] | None = None
    failures: str | None = None
    colour_set: ColourSet = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise NetDefinitionError(f"place name {self.name!r} is not an identifier")
        colour = describe(self.colour)
        object.__setattr__(self, "colour_set", colour)
        object.__setattr__(self, "initial", tuple(self.initial))
        where = f"place {self.name!r}"
        if self.key is not None and self.pool:
            raise NetDefinitionError(f"{where} has both key={self.key!r} and pool=True; pick one")
        if self.key is not None and self.key not in colour.fields:
            raise NetDefinitionError(
                f"{where}: key {self.key!r} is not a field of {colour.name} "
                f"(fields: {', '.join(colour.fields)})"
            )
        if self.capacity is not None and (type(self.capacity) is not int or self.capacity < 1):
            raise NetDefinitionError(
                f"{where}: capacity must be a positive int, got {self.capacity!r}"
            )
        for token in self.initial:
            try:
                check_token(colour, token, where=f"initial marking of {where}")
            except TokenError as exc:
                raise NetDefinitionError(str(exc)) from exc
        if self.capacity is not None and len(self.initial) > self.capacity:
            raise NetDefinitionError(
                f"{where}: initial marking has {len(self.initial)} tokens, "
                f"capacity is {self.capacity}"
            )
        self._check_declared_results(where)

    def _check_declared_results(self, where: str) -> None:
        """``results`` and ``failures`` belong to work queues, and a work queue says
        where its completions go (the names are checked against the net by :class:`Net`)."""
        if not self.work_queue:
            for name, value in (("results", self.results), ("failures", self.failures)):
                if value is not None:
                    raise NetDefinitionError(
                        f"{where}: {name}= is only for work queues (work_queue=True); "
                        "an ordinary place's tokens are produced by transitions"
                    )
            return
        if self.results is None:
            raise NetDefinitionError(
                f"{where}: a work queue must declare the places its completions produce "
                "into, e.g. results=('done',) (results=() if completions produce nothing)"
            )
        if isinstance(self.results, str) or not all(isinstance(r, str) for r in self.results):
            raise NetDefinitionError(
                f"{where}: results must be a tuple of place names, got {self.results!r}"
            )
        results = tuple(self.results)
        object.__setattr__(self, "results", results)
        duplicates = sorted({r for r in results if results.count(r) > 1})
        if duplicates:
            raise NetDefinitionError(f"{where}: results names {duplicates[0]!r} twice")
        if self.failures is not None and self.failures not in results:
            raise NetDefinitionError(
                f"{where}: failures={self.failures!r} must be one of its results "
                f"({', '.join(results) or 'none declared'})"
            )

    @property
    def keyed(self) -> bool:
        return self.key is not None

    @property
    def key_index(self) -> int | None:
        """The position of the partition-key field in a token (``None`` if unkeyed)."""
        return None if self.key is None else self.colour_set.field_index(self.key)

    def __call__(self, var: Var | None = None, /, **fields: object) -> Pattern:
        """``place(t, domain=d)``: a pattern binding the token to ``t`` and its domain to ``d``."""
        return Pattern(self, var, tuple(fields.items()))

    def many(self, count: int, var: Var | None = None, /, **fields: object) -> Pattern:
        """A multi-token pattern: ``count`` matching tokens, bound to ``var`` as a tuple."""
        if type(count) is not int or count < 1:
            raise NetDefinitionError(
                f"{self.name}.many: count must be a positive int, got {count!r}"
            )
        return Pattern(self, var, tuple(fields.items()), count)

    def produce(self, expr: object, *, delay: object = 0) -> OutputArc:
        """An output arc producing one token per firing (see :class:`OutputArc`)."""
        return OutputArc(self, expr, delay)

    def produce_all(self, expr: Inscription, *, delay: object = 0) -> OutputArc:
        """An output arc whose function returns any number of tokens."""
        return OutputArc(self, expr, delay, many=True)

    def __repr__(self) -> str:
        return f"Place({self.name!r})"


@dataclass(frozen=True, eq=False)
class Transition:
    """A transition: arcs, a guard and a priority.

    Args:
        name: unique within the net.
        consume: input arc patterns; their tokens are removed when it fires.
        read: read arc patterns (tested, not consumed).
        inhibit: inhibitor patterns (no available token may match).
        produce: output arcs (``place.produce(...)``).
        guard: a pure predicate whose parameter names are bound variables.
        priority: higher fires first when several transitions are enabled.
    """

    name: str
    consume: Sequence[Pattern]
    read: Sequence[Pattern] = ()
    inhibit: Sequence[Pattern] = ()
    produce: Sequence[OutputArc] = ()
    guard: Callable[..., bool] | None = None
    priority: int = 0

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise NetDefinitionError(f"transition name {self.name!r} is not an identifier")
        for attr in ("consume", "read", "inhibit", "produce"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))

    @property
    def arcs(self) -> tuple[ConsumeArc | ReadArc | InhibitorArc, ...]:
        """Input-side arcs in binding order: consume arcs, then read arcs, then inhibitors."""
        return (
            tuple(ConsumeArc(p) for p in self.consume)
            + tuple(ReadArc(p) for p in self.read)
            + tuple(InhibitorArc(p) for p in self.inhibit)
        )

    def guard_variables(self) -> tuple[str, ...]:
        if self.guard is None:
            return ()
        return parameters(self.guard, f"guard of transition {self.name!r}")

    def __repr__(self) -> str:
        return f"Transition({self.name!r})"


_Named = TypeVar("_Named", Place, Transition)


class Net:
    """A validated net: places, transitions and their initial marking.

    Args:
        name: the net's name.
        places, transitions: its structure.
        invariants: named predicates over a marking (:data:`MarkingView`) that must hold
            in every reachable marking; ``cpn verify`` checks them (docs/verify.md).
        effects: an :class:`~nets.effects.EffectModel` per work-queue place, by place
            name: the finite environment that closes the queue for verification and
            simulation.

    Raises:
        NetDefinitionError: on the first problem found (see the module docstring).
    """

    def __init__(
        self,
        name: str,
        *,
        places: Iterable[Place],
        transitions: Iterable[Transition],
        invariants: Mapping[str, Invariant] | None = None,
        effects: Mapping[str, EffectModel] | None = None,
    ) -> None:
        self.name = name
        self.places: tuple[Place, ...] = tuple(places)
        self.transitions: tuple[Transition, ...] = tuple(transitions)
        self._places = _unique(name, "place", self.places)
        self._transitions = _unique(name, "transition", self.transitions)
        for transition in self.transitions:
            _validate_transition(self, transition)
        self.invariants: dict[str, Invariant] = _validate_invariants(name, invariants or {})
        queues = {p.name: p for p in self.places if p.work_queue}
        for queue in queues.values():
            _validate_results(self, queue)
        self.effects: dict[str, EffectModel] = validate_effects(name, effects or {}, queues)

    def place(self, name: str) -> Place:
        """The place called ``name``.

        Raises:
            KeyError: with a message listing the places the net has.
        """
        try:
            return self._places[name]
        except KeyError:
            raise KeyError(
                f"net {self.name!r} has no place {name!r} (places: {', '.join(self._places)})"
            ) from None

    def transition(self, name: str) -> Transition:
        """The transition called ``name`` (``KeyError`` naming the known ones otherwise)."""
        try:
            return self._transitions[name]
        except KeyError:
            raise KeyError(
                f"net {self.name!r} has no transition {name!r} "
                f"(transitions: {', '.join(self._transitions)})"
            ) from None

    def has_place(self, name: str) -> bool:
        return name in self._places

    def __repr__(self) -> str:
        return f"Net({self.name!r}, {len(self.places)} places, {len(self.transitions)} transitions)"


def _validate_invariants(net: str, invariants: Mapping[str, Invariant]) -> dict[str, Invariant]:
    checked: dict[str, Invariant] = {}
    for name, predicate in invariants.items():
        if not (isinstance(name, str) and name):
            raise NetDefinitionError(f"net {net!r}: invariant name {name!r} is not a string")
        if not callable(predicate):
            raise NetDefinitionError(f"net {net!r}: invariant {name!r} is not callable")
        if len(parameters(predicate, f"invariant {name!r}")) != 1:
            raise NetDefinitionError(
                f"net {net!r}: invariant {name!r} must take one argument, the marking"
            )
        checked[name] = predicate
    return checked


def _unique(net: str, kind: str, items: Sequence[_Named]) -> dict[str, _Named]:
    seen: dict[str, _Named] = {}
    for item in items:
        if item.name in seen:
            raise NetDefinitionError(f"net {net!r}: duplicate {kind} name {item.name!r}")
        seen[item.name] = item
    return seen


def _validate_results(net: Net, queue: Place) -> None:
    """A work queue's declared results name places of this net."""
    assert queue.results is not None, "Place checks that a work queue declares results"
    missing = [r for r in queue.results if r not in net._places]
    if missing:
        raise NetDefinitionError(
            f"net {net.name!r}, work queue {queue.name!r}: declared result place "
            f"{missing[0]!r} is not part of the net (places: {', '.join(net._places)})"
        )


def _validate_transition(net: Net, t: Transition) -> None:
    where_t = f"net {net.name!r}, transition {t.name!r}"
    if not t.consume:
        raise NetDefinitionError(
            f"{where_t}: has no consume arc; a transition that consumes nothing could fire forever"
        )
    if type(t.priority) is not int:
        raise NetDefinitionError(f"{where_t}: priority must be an int, got {t.priority!r}")
    bound: set[str] = set()
    key_var: str | None = None
    key_arc: str | None = None
    kinds = (("consume", t.consume), ("read", t.read), ("inhibit", t.inhibit))
    for kind, patterns in kinds:
        for i, pattern in enumerate(patterns):
            where = f"{where_t}, {kind} arc {i} ({pattern.describe()})"
            if not isinstance(pattern, Pattern):
                raise NetDefinitionError(
                    f"{where_t}: {kind} arc {i} is not a place pattern: {pattern!r}"
                )
            place = pattern.place
            if net._places.get(place.name) is not place:
                raise NetDefinitionError(f"{where}: place {place.name!r} is not part of the net")
            colour = place.colour_set
            for fname, value in pattern.fields:
                if fname not in colour.fields:
                    raise NetDefinitionError(
                        f"{where}: pattern field {fname!r} is not a field of {colour.name} "
                        f"(fields: {', '.join(colour.fields)})"
                    )
                if not isinstance(value, Var):
                    ftype = colour.types[colour.field_index(fname)]
                    if not ftype.accepts(value):
                        raise NetDefinitionError(
                            f"{where}: constant {value!r} for field {fname!r} is not of type "
                            f"{ftype.describe()}"
                        )
            if place.key is not None:
                key_value = dict(pattern.fields).get(place.key)
                if not isinstance(key_value, Var):
                    raise NetDefinitionError(
                        f"{where}: place {place.name!r} is keyed by {place.key!r}, so the arc must "
                        f"bind {place.key}= to a variable (the partition rule; use pool=True for "
                        "tokens without a home partition)"
                    )
                if key_var is None:
                    key_var, key_arc = key_value.name, where
                elif key_value.name != key_var:
                    raise NetDefinitionError(
                        f"{where}: binds the partition key to variable {key_value.name!r}, but "
                        f"{key_arc} binds it to {key_var!r}; all keyed arcs of a transition "
                        "must share one key variable so that it fires within one partition"
                    )
            names = pattern.variables()
            if kind == "inhibit":
                if pattern.var is not None:
                    raise NetDefinitionError(
                        f"{where}: an inhibitor arc cannot bind the whole token (variable "
                        f"{pattern.var.name!r}); it only tests for absence"
                    )
                if pattern.count != 1:
                    raise NetDefinitionError(f"{where}: an inhibitor arc cannot take many tokens")
                unbound = sorted(names - bound)
                if unbound:
                    raise NetDefinitionError(
                        f"{where}: variable {unbound[0]!r} is not bound by a consume or read arc; "
                        "inhibitor arcs only test bound values"
                    )
            elif pattern.count != 1:
                if pattern.var is not None and pattern.var.name in bound:
                    raise NetDefinitionError(
                        f"{where}: a many-token arc binds a tuple of tokens, so its variable "
                        f"{pattern.var.name!r} must not be bound by an earlier arc"
                    )
                field_vars = {v.name for _, v in pattern.fields if isinstance(v, Var)}
                early = sorted(field_vars - bound - {key_var})
                if early:
                    raise NetDefinitionError(
                        f"{where}: a many-token arc can only match variables bound by earlier "
                        f"arcs (or the partition key); {early[0]!r} is not"
                    )
            bound |= names if kind != "inhibit" else set()
    try:
        guard_variables = t.guard_variables()
    except NetDefinitionError as exc:
        raise NetDefinitionError(f"net {net.name!r}: {exc}") from exc
    for name in guard_variables:
        if name == NOW:
            raise NetDefinitionError(
                f"{where_t}, guard: {NOW!r} (the firing time) is only available to outputs; "
                "a guard that depends on time alone would enable a transition without any "
                "token changing (compare token fields or delay a token instead)"
            )
        if name not in bound:
            raise NetDefinitionError(
                f"{where_t}, guard: variable {name!r} is not bound by any consume or read arc "
                f"(bound: {', '.join(sorted(bound)) or 'none'})"
            )
    for i, out in enumerate(t.produce):
        where = f"{where_t}, produce arc {i} (to {getattr(out.place, 'name', out.place)!r})"
        if not isinstance(out, OutputArc):
            raise NetDefinitionError(
                f"{where_t}: produce arc {i} is not place.produce(...): {out!r}"
            )
        if net._places.get(out.place.name) is not out.place:
            raise NetDefinitionError(f"{where}: place {out.place.name!r} is not part of the net")
        try:
            used = out.variables()
        except NetDefinitionError as exc:
            raise NetDefinitionError(f"{where}: {exc}") from exc
        for name in sorted(used - {NOW}):
            if name not in bound:
                raise NetDefinitionError(
                    f"{where}: uses variable {name!r} that no consume or read arc binds "
                    f"(bound: {', '.join(sorted(bound)) or 'none'})"
                )
        if not (isinstance(out.expr, Var) or callable(out.expr)):
            try:
                check_token(out.place.colour_set, out.expr, where=where)
            except TokenError as exc:
                raise NetDefinitionError(str(exc)) from exc
        if out.many and not callable(out.expr):
            raise NetDefinitionError(f"{where}: produce_all needs a function returning tokens")
        if out.many and out.place.capacity is not None:
            raise NetDefinitionError(
                f"{where}: produce_all into place {out.place.name!r} which has a capacity; "
                "capacity checks need a fixed number of tokens per firing"
            )
        delay = out.delay
        if not (isinstance(delay, Var) or callable(delay)) and (
            type(delay) is not int or delay < 0
        ):
            raise NetDefinitionError(
                f"{where}: delay must be a non-negative int of milliseconds or a function, "
                f"got {delay!r}"
            )
