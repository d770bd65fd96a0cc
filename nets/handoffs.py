"""Where a net's tokens live, and which transitions may send tokens to another partition.

Theory of operation. A keyed place's token lives in the slot of its key value, a fixed
place's in the one fixed slot, a pool token wherever it was last used
(router/slots.py). A transition fires in one partition (docs/language.md, "The partition
rule"): the slot of its key variable if it has keyed input arcs, else the fixed slot if
it reads a fixed place, else wherever its pool tokens are. An output stays in that
partition only when that can be shown from the net's structure:

* into a pool place: always (pool tokens have no home);
* into a fixed place: only from a transition that fires in the fixed slot;
* into a keyed place: only if the produced token's key field provably equals the key
  variable: the output is the token of an input arc that binds that field to the key
  variable (``targets(t, domain=d)`` then ``done.produce(t)``), that token with
  ``_replace`` of other fields, or a constructor call of the place's colour that passes
  the key variable as the key field.

Anything else (a constant token, a function the analysis cannot read, a transition with
no key variable, ``produce_all``) *may hand off*: the rule is conservative, it never
says "stays" for an output that can leave, but it may say "may hand off" for one that
happens to stay (two keys hashing to one slot, a function that computes the same key).
"""

from __future__ import annotations

import ast
import types
from dataclasses import dataclass
from typing import Any, cast

from nets.model import Net, OutputArc, Pattern, Place, Transition, Var
from nets.purity import function_source, unwrap


@dataclass(frozen=True, slots=True)
class Partitioning:
    """How one place is partitioned: ``"key <field>"``, ``"pool"`` or ``"fixed"``."""

    place: str
    kind: str


@dataclass(frozen=True, slots=True)
class Handoff:
    """An output arc that may put its token in another partition than the firing's."""

    transition: str
    place: str
    reason: str


def partitions(net: Net) -> tuple[Partitioning, ...]:
    """Each place's partitioning, in net order."""
    return tuple(Partitioning(p.name, _kind(p)) for p in net.places)


def _kind(place: Place) -> str:
    if place.key is not None:
        return f"key {place.key}"
    return "pool" if place.pool else "fixed"


def handoffs(net: Net) -> tuple[Handoff, ...]:
    """Every output arc that may hand off (see the module docstring), in net order."""
    found: list[Handoff] = []
    for transition in net.transitions:
        key_var = _key_variable(transition)
        fires_fixed = key_var is None and any(
            p.place.key is None and not p.place.pool
            for p in (*transition.consume, *transition.read)
        )
        for out in transition.produce:
            reason = _leaves(transition, out, key_var, fires_fixed=fires_fixed)
            if reason is not None:
                found.append(Handoff(transition.name, out.place.name, reason))
    return tuple(found)


def _key_variable(transition: Transition) -> str | None:
    """The variable every keyed input arc binds its key to (Net validated that it is one)."""
    for pattern in (*transition.consume, *transition.read):
        if pattern.place.key is not None:
            value = dict(pattern.fields)[pattern.place.key]
            assert isinstance(value, Var), "Net enforces the partition rule"
            return value.name
    return None


def _leaves(t: Transition, out: OutputArc, key_var: str | None, *, fires_fixed: bool) -> str | None:
    """Why ``out`` may leave the firing's partition, or ``None`` if it provably stays."""
    place = out.place
    if place.pool:
        return None
    if place.key is None:
        return None if fires_fixed else "produces into a fixed place from another partition"
    if key_var is None:
        return f"fires without a key variable and produces into keyed place {place.name!r}"
    if out.many:
        return "produce_all: the key of each produced token is not known before firing"
    if _keeps_key(t, out, key_var):
        return None
    return f"the produced token's {place.key} is not shown to equal {key_var!r}"


def _keeps_key(t: Transition, out: OutputArc, key_var: str) -> bool:
    if isinstance(out.expr, Var):
        return _token_keeps_key(t, out.place, out.expr.name, key_var)
    if not callable(out.expr):
        return False  # a constant token: its key is fixed, the firing's is not
    fn = unwrap(out.expr)
    if fn is None or fn is not cast(object, out.expr):
        return False  # a partial or wrapper may rename or fix parameters
    source = function_source(fn, {})
    if source is None or len(source.nodes) != 1:
        return False
    (node,) = source.nodes
    if isinstance(node, ast.Lambda):
        result: ast.expr | None = node.body
        rebound: set[str] = set()
    elif isinstance(node.body[-1], ast.Return):
        # Statements before the return may compute other fields; a name they rebind
        # no longer holds the binding's value, so it cannot carry the key.
        result = node.body[-1].value
        rebound = {
            n.id
            for stmt in node.body[:-1]
            for n in ast.walk(stmt)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
        }
    else:
        return False
    if result is None:
        return False
    return _expr_keeps_key(_Context(t, out.place, key_var, fn, rebound), result)


@dataclass(frozen=True, slots=True)
class _Context:
    transition: Transition
    place: Place
    key_var: str
    fn: types.FunctionType
    rebound: set[str]


def _expr_keeps_key(ctx: _Context, expr: ast.expr) -> bool:
    """``v``, ``v._replace(...)`` without the key, or ``Colour(key, ...)`` whose key
    argument is the key variable or a token's field bound to it."""
    place = ctx.place
    assert place.key is not None
    if isinstance(expr, ast.Name):
        return expr.id not in ctx.rebound and _token_keeps_key(
            ctx.transition, place, expr.id, ctx.key_var
        )
    if not isinstance(expr, ast.Call):
        return False
    func = expr.func
    if isinstance(func, ast.Attribute) and func.attr == "_replace":
        return (
            isinstance(func.value, ast.Name)
            and func.value.id not in ctx.rebound
            and all(k.arg is not None and k.arg != place.key for k in expr.keywords)
            and _token_keeps_key(ctx.transition, place, func.value.id, ctx.key_var)
        )
    if _resolves_to(func, ctx.fn) is not place.colour:
        return False
    index = place.colour_set.field_index(place.key)
    arg: ast.expr | None = None
    if index < len(expr.args) and not any(isinstance(a, ast.Starred) for a in expr.args):
        arg = expr.args[index]
    for keyword in expr.keywords:
        if keyword.arg == place.key:
            arg = keyword.value
    return arg is not None and _is_key_value(ctx, arg)


def _is_key_value(ctx: _Context, arg: ast.expr) -> bool:
    """``d`` (the key variable) or ``t.domain`` where ``t``'s arc binds ``domain=d``."""
    if isinstance(arg, ast.Name):
        return arg.id == ctx.key_var and arg.id not in ctx.rebound
    if isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name):
        var = arg.value.id
        if var in ctx.rebound:
            return False
        for pattern in (*ctx.transition.consume, *ctx.transition.read):
            if pattern.var is not None and pattern.var.name == var and pattern.count == 1:
                value = dict(pattern.fields).get(arg.attr)
                return isinstance(value, Var) and value.name == ctx.key_var
    return False


def _resolves_to(func: ast.expr, fn: types.FunctionType) -> Any:
    if not isinstance(func, ast.Name):
        return None
    closure = dict(
        zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__ or ()), strict=False)
    )
    return closure.get(func.id, fn.__globals__.get(func.id))


def _token_keeps_key(t: Transition, place: Place, var: str, key_var: str) -> bool:
    """Token variable ``var`` comes from an input arc that binds ``place``'s key field
    (at the same position) to ``key_var``."""
    assert place.key is not None
    for pattern in (*t.consume, *t.read):
        if pattern.var is None or pattern.var.name != var or pattern.count != 1:
            continue
        return _binds_key(pattern, place, key_var)
    return False


def _binds_key(pattern: Pattern, place: Place, key_var: str) -> bool:
    assert place.key is not None
    source = pattern.place.colour_set
    if place.key not in source.fields:
        return False
    if source.field_index(place.key) != place.colour_set.field_index(place.key):
        return False
    value = dict(pattern.fields).get(place.key)
    return isinstance(value, Var) and value.name == key_var
