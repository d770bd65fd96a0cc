"""Output inscriptions compiled into one function per transition.

A transition's output arcs are turned into a single generated function
``outputs(values, now) -> [(place, time, token), ...]`` that evaluates every arc's
expression and delay and checks each token's class, so that a firing costs one call
instead of one per arc. The source is generated from the net's structure only; the
user's inscriptions are passed in as objects (never as text). Any exception raised by
an inscription, and a token of the wrong class or a bad delay, becomes an
:class:`InscriptionError` naming the transition, before the marking is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from nets.binding import InscriptionError
from nets.model import OutputArc, Token, Var, parameters

OutputFn = Callable[[dict[str, Any], int], list[tuple[str, int, Token]]]


def _expression(expr: object, name: str, namespace: dict[str, Any]) -> str:
    """Python source evaluating ``expr`` from the ``v_*`` locals; objects go in ``namespace``."""
    if isinstance(expr, Var):
        return f"v_{expr.name}"
    if callable(expr):
        namespace[name] = expr
        args = ", ".join(f"v_{p}" for p in parameters(expr, "inscription"))
        return f"{name}({args})"
    namespace[name] = expr
    return name


def compile_outputs(transition_name: str, arcs: Sequence[OutputArc]) -> OutputFn:
    """Build the outputs function of a transition (see the module docstring)."""
    namespace: dict[str, Any] = {"bad_token": _bad_token, "bad_delay": _bad_delay}
    used: dict[str, None] = {}
    for arc in arcs:
        for name in sorted(arc.variables()):
            used[name] = None
    body: list[str] = [f"    v_{name} = values[{name!r}]" for name in used]
    body.append("    out = []")
    for i, arc in enumerate(arcs):
        namespace[f"K{i}"] = arc.place.colour_set.cls
        place = arc.place.name
        if type(arc.delay) is int:
            time = f"now + {arc.delay}"
        else:
            body.append(f"    d{i} = {_expression(arc.delay, f'D{i}', namespace)}")
            body.append(f"    if type(d{i}) is not int or d{i} < 0: bad_delay({place!r}, d{i})")
            time = f"now + d{i}"
        expr = _expression(arc.expr, f"E{i}", namespace)
        if arc.many:
            body.append(f"    for o in {expr}:")
            body.append(f"        if type(o) is not K{i}: bad_token({place!r}, o, K{i})")
            body.append(f"        out.append(({place!r}, {time}, o))")
        else:
            body.append(f"    o{i} = {expr}")
            body.append(f"    if type(o{i}) is not K{i}: bad_token({place!r}, o{i}, K{i})")
            body.append(f"    out.append(({place!r}, {time}, o{i}))")
    body.append("    return out")
    source = "def outputs(values, now):\n" + "\n".join(body) + "\n"
    code = compile(source, f"<cpn outputs of transition {transition_name!r}>", "exec")
    exec(code, namespace)  # noqa: S102 - source built above from the net's structure only
    generated: OutputFn = namespace["outputs"]

    def outputs(values: dict[str, Any], now: int) -> list[tuple[str, int, Token]]:
        try:
            return generated(values, now)
        except InscriptionError as exc:
            raise InscriptionError(f"transition {transition_name!r}: {exc}") from exc
        except Exception as exc:
            raise InscriptionError(
                f"an output inscription of transition {transition_name!r} raised "
                f"{type(exc).__name__}: {exc} (binding {dict(values)})"
            ) from exc

    return outputs


def _bad_token(place: str, token: object, cls: type) -> None:
    raise InscriptionError(
        f"produced {token!r} into place {place!r}, which holds {cls.__name__} tokens"
    )


def _bad_delay(place: str, delay: object) -> None:
    raise InscriptionError(
        f"the delay of the output to {place!r} must be a non-negative int, got {delay!r}"
    )
