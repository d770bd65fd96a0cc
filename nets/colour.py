"""Colour sets: typed record types whose values are tokens.

A colour set is a ``typing.NamedTuple`` class whose fields are annotated with
msgpack-able types: ``int``, ``float``, ``str``, ``bool``, ``bytes``, or tuples of
those (``tuple[int, ...]`` or fixed ``tuple[str, int]``). Tokens are instances: they
are immutable, hashable, compare by value and order by value (field by field), which
the engine relies on for its deterministic conflict resolution.

Theory of operation: the field types are checked once, when a net is defined
(:func:`describe`), and every token that enters a net from outside (initial marking,
a put, a decoded frame) is checked fully (:func:`check_token`). Tokens computed by
a transition's inscriptions are only checked for their class, because checking every
field on the hot path would cost more than the firing itself.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from nets.errors import NetDefinitionError, TokenError

_SCALARS: tuple[type, ...] = (int, float, str, bool, bytes)


@dataclass(frozen=True, slots=True)
class FieldType:
    """The declared type of one field: a scalar, a fixed tuple, or a variadic tuple."""

    scalar: type | None = None
    items: tuple[FieldType, ...] = ()
    variadic: bool = False

    def describe(self) -> str:
        if self.scalar is not None:
            return self.scalar.__name__
        inner = ", ".join(item.describe() for item in self.items)
        return f"tuple[{inner}, ...]" if self.variadic else f"tuple[{inner}]"

    def accepts(self, value: object) -> bool:
        """True when ``value`` is exactly of this type (``bool`` is not an ``int`` here)."""
        if self.scalar is not None:
            if type(value) is not self.scalar:
                return False
            return not (self.scalar is float and math.isnan(typing.cast(float, value)))
        if type(value) is not tuple:
            return False
        if self.variadic:
            return all(self.items[0].accepts(item) for item in value)
        return len(value) == len(self.items) and all(
            t.accepts(item) for t, item in zip(self.items, value, strict=True)
        )


@dataclass(frozen=True, slots=True)
class ColourSet:
    """What the engine knows of a colour set: its class, field names and field types."""

    cls: type[tuple[Any, ...]]
    fields: tuple[str, ...]
    types: tuple[FieldType, ...]
    # The field types when every field is an int, str, bool or bytes: then a tuple of
    # values fits exactly when ``tuple(map(type, values)) == exact_types`` (one C-level
    # comparison; floats need their NaN check and tuples their items checked).
    exact_types: tuple[type, ...] | None = None

    @property
    def name(self) -> str:
        return self.cls.__name__

    def field_index(self, name: str) -> int:
        return self.fields.index(name)


def _field_type(annotation: object, where: str) -> FieldType:
    if isinstance(annotation, type) and annotation in _SCALARS:
        return FieldType(scalar=annotation)
    origin = typing.get_origin(annotation)
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return FieldType(items=(_field_type(args[0], where),), variadic=True)
        if args:
            return FieldType(items=tuple(_field_type(a, where) for a in args))
    if isinstance(annotation, types.UnionType) or origin is typing.Union:
        raise NetDefinitionError(
            f"{where} is a union ({annotation!r}); tokens must order field by field, so each "
            "field has exactly one type (use a sentinel value instead of None)"
        )
    raise NetDefinitionError(
        f"{where} has type {annotation!r}; allowed: int, float, str, bool, bytes and tuples of them"
    )


_described: dict[type, ColourSet] = {}


def describe(cls: object) -> ColourSet:
    """Return the :class:`ColourSet` of a NamedTuple class, validating its field types.

    Raises:
        NetDefinitionError: ``cls`` is not a NamedTuple class or a field has a type
            that cannot be ordered or sent over the wire.
    """
    if not (isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")):
        raise NetDefinitionError(
            f"colour set {cls!r} is not a typing.NamedTuple class; declare it as "
            "`class Target(NamedTuple): domain: str; ...`"
        )
    cached = _described.get(cls)
    if cached is not None:
        return cached
    fields: tuple[str, ...] = cls._fields
    if not fields:
        raise NetDefinitionError(f"colour set {cls.__name__} has no fields")
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:  # a string annotation naming something not in scope
        raise NetDefinitionError(
            f"colour set {cls.__name__}: cannot resolve its field annotations "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    types_ = tuple(_field_type(hints.get(f), f"field {cls.__name__}.{f}") for f in fields)
    exact: tuple[type, ...] = tuple(
        t.scalar for t in types_ if t.scalar is not None and t.scalar is not float
    )
    colour = ColourSet(
        cls=cls,
        fields=fields,
        types=types_,
        exact_types=exact if len(exact) == len(fields) else None,
    )
    _described[cls] = colour
    return colour


def check_token(colour: ColourSet, token: object, *, where: str) -> None:
    """Check that ``token`` belongs to ``colour`` field by field.

    Raises:
        TokenError: naming ``where`` (e.g. the place), the expected colour and the
            first field that does not fit.
    """
    exact = colour.exact_types
    if exact is not None and type(token) is colour.cls and tuple(map(type, token)) == exact:
        return
    if type(token) is not colour.cls:
        got = type(token)
        expected, found = colour.name, got.__name__
        if expected == found:  # two classes of one name: say which module each is from
            expected = f"{colour.cls.__module__}.{colour.cls.__qualname__}"
            found = f"{got.__module__}.{got.__qualname__}"
        raise TokenError(f"{where}: expected a {expected} token, got {found} {token!r}")
    assert isinstance(token, tuple)
    for name, ftype, value in zip(colour.fields, colour.types, token, strict=True):
        if not ftype.accepts(value):
            raise TokenError(
                f"{where}: field {colour.name}.{name} must be {ftype.describe()}, "
                f"got {type(value).__name__} {value!r}"
            )
