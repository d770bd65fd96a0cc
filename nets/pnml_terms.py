"""Sorts and terms of the PNML symmetric-net subset, and their colour sets.

Theory of operation:

* A *sort* is the PNML name for a colour set. The subset read here is the one the
  Model Checking Contest uses: ``dot`` (the black token), finite and cyclic
  enumerations (values are the constants' names, ``str``), finite integer ranges
  (``int``) and products of those. Each sort of a place becomes a ``NamedTuple`` class
  (:func:`colour_class`) with one field per component: a token of a product sort
  ``Philo x Fork`` is ``PhiloxFork(philo='1', fork='2')``. The class keeps its sort in
  the attribute ``__pnml_sort__`` so that an exporter can write it back.
* The black token of every place-transition net is :data:`DOT`, an instance of the
  one shared class :class:`Dot`.
* A *term* is a small immutable tree (:class:`Var`, :class:`Const`, :class:`Succ`,
  :class:`Tuple`, :class:`All`, :class:`NumberOf`, :class:`Add`, comparisons and
  boolean connectives). :func:`evaluate` computes a value from variable values;
  :func:`multiset` expands a multiset term into ``(count, value)`` pairs. Order
  comparisons on enumerations follow the declaration order; successor and
  predecessor wrap around (cyclic enumerations, and ranges, as in the MCC's models).
"""

from __future__ import annotations

import inspect
import keyword
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Dot(NamedTuple):
    """The colour set of place-transition nets: one value, the black token."""

    dot: int = 0


DOT = Dot()


@dataclass(frozen=True, slots=True)
class DotSort:
    """PNML ``<dot/>``: one value."""

    id: str = "dot"
    name: str = "Dot"

    def values(self) -> tuple[object, ...]:
        return (0,)


@dataclass(frozen=True, slots=True)
class EnumSort:
    """A finite (``cyclic=False``) or cyclic enumeration of constants ``(id, name)``."""

    id: str
    name: str
    constants: tuple[tuple[str, str], ...]
    cyclic: bool
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({name: i for i, (_, name) in enumerate(self.constants)})

    def values(self) -> tuple[object, ...]:
        return tuple(name for _, name in self.constants)

    def index(self, value: object) -> int:
        return self._index[typing.cast(str, value)]


@dataclass(frozen=True, slots=True)
class RangeSort:
    """A finite integer range ``start..end``."""

    id: str
    name: str
    start: int
    end: int

    def values(self) -> tuple[object, ...]:
        return tuple(range(self.start, self.end + 1))

    def index(self, value: object) -> int:
        return typing.cast(int, value) - self.start


BaseSort = DotSort | EnumSort | RangeSort


@dataclass(frozen=True, slots=True)
class ProductSort:
    """A product of base sorts; its values are tuples."""

    id: str
    name: str
    components: tuple[BaseSort, ...]


Sort = BaseSort | ProductSort


def components(sort: Sort) -> tuple[BaseSort, ...]:
    """The base sorts of a place's sort: its components, or the sort itself."""
    return sort.components if isinstance(sort, ProductSort) else (sort,)


def sort_size(sort: Sort) -> int:
    size = 1
    for part in components(sort):
        size *= len(part.values())
    return size


def python_name(ident: str) -> str:
    """A Python identifier for a PNML id: kept when it is one, else made one.

    Characters outside ``[A-Za-z0-9_]`` become ``_xHH_`` (their code point in hex) and
    a leading digit gets a ``n_`` prefix, so different ids stay different.
    """
    if ident.isidentifier() and ident.isascii() and not keyword.iskeyword(ident):
        return ident
    name = re.sub(r"[^A-Za-z0-9_]", lambda m: f"_x{ord(m.group()):x}_", ident)
    if not name or name[0].isdigit() or keyword.iskeyword(name):
        name = "n_" + name
    return name


_FIELD_TYPES: dict[type, type] = {DotSort: int, EnumSort: str, RangeSort: int}
_colour_classes: dict[Sort, type] = {}


def colour_class(sort: Sort) -> type:
    """The ``NamedTuple`` class of a sort (one per distinct sort, built once)."""
    if isinstance(sort, DotSort):
        return Dot
    cached = _colour_classes.get(sort)
    if cached is not None:
        return cached
    names: list[str] = []
    for part in components(sort):
        base = python_name(part.name).lower().lstrip("_") or "value"
        name, n = base, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    fields = [(n, _FIELD_TYPES[type(p)]) for n, p in zip(names, components(sort), strict=True)]
    cls = NamedTuple(python_name(sort.name), fields)  # type: ignore[misc]
    cls.__pnml_sort__ = sort  # type: ignore[attr-defined]
    _colour_classes[sort] = cls
    return cls


def sort_of(colour: type) -> Sort | None:
    """The PNML sort a colour class was built from (``None`` for other classes)."""
    if colour is Dot:
        return DotSort()
    sort = getattr(colour, "__pnml_sort__", None)
    return sort if isinstance(sort, DotSort | EnumSort | RangeSort | ProductSort) else None


# -- terms -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Var:
    """A variable: its PNML id, its Python name and its sort.

    Two variables are the same when their names and sorts are: the PNML id only
    identifies the declaration in one document (the writer makes its own).
    """

    id: str = field(compare=False, repr=False)
    name: str
    sort: BaseSort


@dataclass(frozen=True, slots=True)
class Const:
    """A constant of a base sort (an enumeration constant's name, an int, or the dot)."""

    sort: BaseSort
    value: object


@dataclass(frozen=True, slots=True)
class Succ:
    """``successor`` (``step=1``) or ``predecessor`` (``step=-1``), wrapping around."""

    term: Term
    step: int


@dataclass(frozen=True, slots=True)
class Tuple:
    items: tuple[Term, ...]


@dataclass(frozen=True, slots=True)
class All:
    """Every value of a sort, once each (a multiset)."""

    sort: Sort


@dataclass(frozen=True, slots=True)
class NumberOf:
    """``count'term``: a multiset of ``count`` copies of one value."""

    count: int
    term: Term


@dataclass(frozen=True, slots=True)
class Add:
    """A multiset sum."""

    items: tuple[Term, ...]


@dataclass(frozen=True, slots=True)
class Compare:
    """``a op b`` with ``op`` one of ``== != < <= > >=`` (order: the sort's order)."""

    op: str
    left: Term
    right: Term


@dataclass(frozen=True, slots=True)
class Bool:
    """``and``/``or`` over items, ``not`` of one item, or a constant (``true``/``false``)."""

    op: str
    items: tuple[Term, ...] = ()


Term = Var | Const | Succ | Tuple | All | NumberOf | Add | Compare | Bool

COMPARISONS: dict[str, str] = {
    "equality": "==",
    "inequality": "!=",
    "lessthan": "<",
    "lessthanorequal": "<=",
    "greaterthan": ">",
    "greaterthanorequal": ">=",
}


def term_sort(term: Term) -> BaseSort | None:
    """The base sort of a single-value term (``None`` for tuples and booleans)."""
    if isinstance(term, Var | Const):
        return term.sort
    if isinstance(term, Succ):
        return term_sort(term.term)
    return None


def variables_of(term: Term) -> dict[str, Var]:
    """Every variable in ``term``, by Python name."""
    found: dict[str, Var] = {}

    def walk(t: Term) -> None:
        if isinstance(t, Var):
            found[t.name] = t
        elif isinstance(t, Succ | NumberOf):
            walk(t.term)
        elif isinstance(t, Tuple | Add | Bool):
            for item in t.items:
                walk(item)
        elif isinstance(t, Compare):
            walk(t.left)
            walk(t.right)

    walk(term)
    return found


def _rank(sort: BaseSort | None, value: object) -> int:
    if isinstance(sort, EnumSort | RangeSort):
        return sort.index(value)
    return 0


def evaluate(term: Term, env: Mapping[str, object]) -> object:
    """The value of a single-value or boolean term under variable values ``env``."""
    if isinstance(term, Var):
        return env[term.name]
    if isinstance(term, Const):
        return term.value
    if isinstance(term, Succ):
        sort = term_sort(term.term)
        assert isinstance(sort, EnumSort | RangeSort)
        values = sort.values()
        return values[(sort.index(evaluate(term.term, env)) + term.step) % len(values)]
    if isinstance(term, Tuple):
        return tuple(evaluate(item, env) for item in term.items)
    if isinstance(term, Compare):
        left, right = evaluate(term.left, env), evaluate(term.right, env)
        if term.op == "==":
            return left == right
        if term.op == "!=":
            return left != right
        sort = term_sort(term.left) or term_sort(term.right)
        a, b = _rank(sort, left), _rank(sort, right)
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[term.op]
    if isinstance(term, Bool):
        if term.op == "and":
            return all(evaluate(item, env) for item in term.items)
        if term.op == "or":
            return any(evaluate(item, env) for item in term.items)
        if term.op == "not":
            return not evaluate(term.items[0], env)
        return term.op == "true"
    raise AssertionError(f"not a single-value term: {term!r}")


def all_values(sort: Sort) -> list[object]:
    """Every value of ``sort`` in order (tuples for products)."""
    if isinstance(sort, ProductSort):
        result: list[tuple[object, ...]] = [()]
        for part in sort.components:
            result = [(*prefix, v) for prefix in result for v in part.values()]
        return list(result)
    return list(sort.values())


def multiset(term: Term) -> list[tuple[int, Term]]:
    """Flatten a multiset term into ``(count, single-value term)`` pairs.

    ``All`` stays one item (its expansion depends on the sort); counts multiply through
    nested ``NumberOf``.
    """
    if isinstance(term, Add):
        return [pair for item in term.items for pair in multiset(item)]
    if isinstance(term, NumberOf):
        return [(term.count * n, t) for n, t in multiset(term.term)]
    return [(1, term)]


@dataclass(frozen=True)
class TermFunction:
    """An inscription built from a term: a callable whose parameters are variables.

    The engine calls a guard or an output with the bound values of its parameters, in
    the order of ``params`` (see ``nets.model.parameters``); ``__signature__`` tells it
    their names. ``kind`` is ``"token"`` (build one token of ``colour``) or ``"guard"``.
    For a guard, ``equations`` bind the fresh variables that stand for computed fields
    of input arcs (``e0 == succ(x)``) and ``term`` is the transition's own condition.
    """

    kind: str
    term: Term | None
    params: tuple[str, ...]
    colour: type | None = None
    equations: tuple[tuple[str, Term], ...] = ()

    def __post_init__(self) -> None:
        sig = inspect.Signature(
            [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in self.params]
        )
        object.__setattr__(self, "__signature__", sig)

    def __call__(self, *values: object) -> Any:
        env = dict(zip(self.params, values, strict=True))
        if self.kind == "guard":
            for name, term in self.equations:
                if env[name] != evaluate(term, env):
                    return False
            return self.term is None or bool(evaluate(self.term, env))
        assert self.colour is not None
        assert self.term is not None
        value = evaluate(self.term, env)
        return self.colour(*value) if isinstance(value, tuple) else self.colour(value)


def token_of(colour: type, value: object) -> tuple[Any, ...]:
    """The token of ``colour`` for a sort value (a tuple for products)."""
    return typing.cast(
        tuple[Any, ...], colour(*value) if isinstance(value, tuple) else colour(value)
    )
