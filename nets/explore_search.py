"""Generated binding enumerators: every binding of one transition, as straight-line code.

The generic enumerator of nets/explore_bindings.py walks the arcs recursively and
matches fields through a loop; this module generates, for a transition whose arcs take
one token each from distinct places, a function with one nested ``for`` loop per arc
(the same technique as the engine's compiled searches in nets/binding.py, here
enumerating every binding instead of stopping at the preferred one):

* each loop skips a token equal to the previous one (a place's tokens are sorted, so
  copies are adjacent: one binding per distinct value);
* a pattern field that is a constant or an already bound variable is an ``if ... :
  continue``; an unbound one is assigned to a local;
* the guard runs as soon as its variables are bound; an inhibitor arc, once its
  variables are, is a call of a small generated test over the inhibited place.

The result is the list of ``(values, taken)`` pairs that
:func:`nets.explore_bindings.bindings` yields, in the same order. Transitions with
``many`` arcs or two arcs on one place keep the generic walk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from nets.binding import InscriptionError
from nets.model import Pattern, Token, Transition, Var

Found = list[tuple[dict[str, Any], tuple[tuple[int, Token], ...]]]
Enumerator = Callable[[tuple[tuple[Token, ...], ...]], Found]


def _guard_failed(transition: str) -> Callable[[Exception], None]:
    def failed(exc: Exception) -> None:
        raise InscriptionError(
            f"guard of transition {transition!r} raised {type(exc).__name__}: {exc}"
        ) from exc

    return failed


def compile_enumerator(
    transition: Transition,
    takes: Sequence[tuple[int, Pattern]],
    consumes: int,
    inhibits: Sequence[tuple[int, Pattern]],
    guard_params: Sequence[str],
) -> Enumerator | None:
    """The generated enumerator of ``transition``, or ``None`` if its shape needs the
    generic walk (a ``many`` arc, or two consume/read arcs on one place)."""
    places = [p for p, _ in takes]
    if any(pattern.count != 1 for _, pattern in takes) or len(set(places)) != len(places):
        return None
    ns: dict[str, Any] = {"FAILED": _guard_failed(transition.name), "UNSET": object()}
    lines = ["def enumerate_bindings(M):", "    found = []"]
    bound: list[str] = []
    depth = 1
    guard_pending = transition.guard is not None
    pending_inhibitors = list(enumerate(inhibits))

    def pad() -> str:
        return "    " * depth

    def emit_tests() -> None:
        nonlocal guard_pending
        if guard_pending and set(guard_params) <= set(bound):
            ns["G"] = transition.guard
            args = ", ".join(f"v_{n}" for n in guard_params)
            lines.append(f"{pad()}try:")
            lines.append(f"{pad()}    ok = G({args})")
            lines.append(f"{pad()}except Exception as exc:")
            lines.append(f"{pad()}    FAILED(exc)")
            lines.append(f"{pad()}if not ok: continue")
            guard_pending = False
        for item in list(pending_inhibitors):
            k, (place, pattern) = item
            names = pattern.variables()
            if not names <= set(bound):
                continue
            colour = pattern.place.colour_set
            tests = []
            for j, (fname, value) in enumerate(pattern.fields):
                pos = colour.field_index(fname)
                if isinstance(value, Var):
                    tests.append(f"z[{pos}] == v_{value.name}")
                else:
                    ns[f"IK{k}_{j}"] = value
                    tests.append(f"z[{pos}] == IK{k}_{j}")
            condition = " and ".join(tests) or "True"
            lines.append(f"{pad()}for z in M[{place}]:")
            lines.append(f"{pad()}    if {condition}: break")
            lines.append(f"{pad()}else:")
            lines.append(f"{pad()}    z = UNSET")
            lines.append(f"{pad()}if z is not UNSET: continue")
            pending_inhibitors.remove(item)

    for i, (place, pattern) in enumerate(takes):
        colour = pattern.place.colour_set
        lines.append(f"{pad()}previous{i} = UNSET")
        lines.append(f"{pad()}for t{i} in M[{place}]:")
        depth += 1
        lines.append(f"{pad()}if t{i} == previous{i}: continue")
        lines.append(f"{pad()}previous{i} = t{i}")
        if pattern.var is not None:
            name = pattern.var.name
            if name in bound:
                lines.append(f"{pad()}if t{i} != v_{name}: continue")
            else:
                lines.append(f"{pad()}v_{name} = t{i}")
                bound.append(name)
        for j, (fname, value) in enumerate(pattern.fields):
            pos = colour.field_index(fname)
            if isinstance(value, Var):
                if value.name in bound:
                    lines.append(f"{pad()}if t{i}[{pos}] != v_{value.name}: continue")
                else:
                    lines.append(f"{pad()}v_{value.name} = t{i}[{pos}]")
                    bound.append(value.name)
            else:
                ns[f"K{i}_{j}"] = value
                lines.append(f"{pad()}if t{i}[{pos}] != K{i}_{j}: continue")
        emit_tests()
    if not takes:  # a transition needs a consume arc; kept for safety
        return None
    emit_tests()
    assert not guard_pending, "validation binds every guard variable"
    assert not pending_inhibitors, "validation binds every inhibitor variable"
    values = ", ".join(f"{n!r}: v_{n}" for n in bound)
    taken = "".join(f"({place}, t{i}), " for i, (place, _) in enumerate(takes[:consumes]))
    lines.append(f"{pad()}found.append(({{{values}}}, ({taken})))")
    lines.append("    return found")
    source = "\n".join(lines) + "\n"
    code = compile(source, f"<cpn explorer search for {transition.name!r}>", "exec")
    exec(code, ns)  # noqa: S102 - source built above from the net's structure only
    enumerator: Enumerator = ns["enumerate_bindings"]
    return enumerator
