"""A net as a Graphviz DOT graph: places, transitions and arcs, as declared.

Theory of operation: :func:`to_dot` is pure; it walks the net in declaration order
(places, then transitions, each transition's arcs in binding order and then its
outputs) and returns the same text for the same net, whatever ``PYTHONHASHSEED``.
The conventions (docs/language.md, "Drawing a net: cpn draw"):

* a place is an ellipse labelled with its name, its colour set (class and fields),
  its partition (``key=field``, ``pool`` or ``fixed``), its capacity and initial
  token count when it has them, and ``work queue → results`` for a work queue;
* a transition is a box labelled with its name, its guard in square brackets (the
  guard's source text on one line when the source can be read, else its name) and
  its priority when it is not 0;
* a consume arc is a plain arrow, a read arc a dashed line without arrowheads, an
  inhibitor arc ends in a circle (``arrowhead=odot``); each is labelled with its
  pattern, ``var[field=value, ...]``, prefixed ``N of`` for a ``many`` arc;
* an output arc is a plain arrow labelled with its expression, ``all:`` before it
  for ``produce_all``, and ``@+delay`` (``@+250ms``, or the delay function's text) on a second line
  when it has a delay.

Every identifier and label is a double-quoted DOT string with backslashes, quotes and
line breaks escaped, so text from the net (a constant, a guard's source) cannot end
the string or the statement; line breaks inside a label are DOT's ``\\n`` escape.
Work-queue companion places added by shard/leases.py are not part of the declared
net, and are not drawn.
"""

from __future__ import annotations

import ast
import functools
import inspect
import linecache
import re
import types
from collections.abc import Callable, Iterator
from typing import Any

from nets.model import InhibitorArc, Net, OutputArc, Pattern, Place, ReadArc, Transition, Var

# A label's line is cut to this many characters (with "…"), so one long guard or
# output expression does not stretch the whole drawing.
LABEL_LINE_CHARS_MAX = 60

_WHITESPACE = re.compile(r"\s+")


def to_dot(net: Net) -> str:
    """The DOT text of ``net``, ending with a newline; deterministic for a given net."""
    lines = [
        f"digraph {quote(net.name)} {{",
        "  graph [rankdir=LR];",
        '  node [fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    lines += [
        f"  {place_id(p)} [shape=ellipse, label={label(place_lines(p))}];" for p in net.places
    ]
    lines += [
        f"  {transition_id(t)} [shape=box, label={label(transition_lines(t))}];"
        for t in net.transitions
    ]
    for transition in net.transitions:
        lines += [f"  {edge}" for edge in _edges(transition)]
    lines.append("}")
    return "\n".join(lines) + "\n"


def quote(text: str) -> str:
    """``text`` as a double-quoted DOT string that shows exactly ``text`` on one line.

    A backslash is doubled (so ``\\N`` or ``\\l`` in the text are not DOT's escapes), a
    quote is escaped and a line break becomes a space: labels are built line by line
    by :func:`label`, and text from the net never adds lines of its own.
    """
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + _WHITESPACE.sub(" ", escaped) + '"'


def label(lines: list[str]) -> str:
    """Lines of a label as one DOT string, joined by DOT's ``\\n`` (centred lines)."""
    inner = "\\n".join(quote(shorten(line))[1:-1] for line in lines)
    return f'"{inner}"'


def shorten(text: str, chars_max: int = LABEL_LINE_CHARS_MAX) -> str:
    """``text`` on one line, cut to ``chars_max`` characters with "…"."""
    one_line = _WHITESPACE.sub(" ", text).strip()
    if len(one_line) <= chars_max:
        return one_line
    return one_line[: chars_max - 1] + "…"


def place_id(place: Place) -> str:
    # A place and a transition may share a name; the prefixes keep their nodes apart.
    return quote(f"p:{place.name}")


def transition_id(transition: Transition) -> str:
    return quote(f"t:{transition.name}")


def place_lines(place: Place) -> list[str]:
    """The lines of a place's label (see the module docstring)."""
    colour = place.colour_set
    if place.key is not None:
        partition = f"key={place.key}"
    else:
        partition = "pool" if place.pool else "fixed"
    details = [partition]
    if place.capacity is not None:
        details.append(f"capacity={place.capacity}")
    if place.initial:
        details.append(f"{len(place.initial)} initial")
    lines = [place.name, f"{colour.name}({', '.join(colour.fields)})", ", ".join(details)]
    if place.work_queue:
        results = ", ".join(place.results or ()) or "(nothing)"
        lines.append(f"work queue → {results}")
        if place.failures is not None:
            lines.append(f"failures → {place.failures}")
    return lines


def transition_lines(transition: Transition) -> list[str]:
    """The lines of a transition's label (see the module docstring)."""
    lines = [transition.name]
    if transition.guard is not None:
        # Cut inside the brackets, so a long guard still reads as a guard.
        lines.append(f"[{shorten(inscription_text(transition.guard), LABEL_LINE_CHARS_MAX - 2)}]")
    if transition.priority != 0:
        lines.append(f"priority={transition.priority}")
    return lines


def pattern_text(pattern: Pattern) -> str:
    """``t[domain=d]``, ``3 of t[domain=d]``, ``[domain='a.example']`` or ``_`` (any token)."""
    var = "" if pattern.var is None else pattern.var.name
    fields = ", ".join(f"{name}={_value_text(value)}" for name, value in pattern.fields)
    text = var + (f"[{fields}]" if fields else "")
    text = text or "_"
    return f"{pattern.count} of {text}" if pattern.count != 1 else text


def output_lines(output: OutputArc) -> list[str]:
    """An output arc's label: its expression (``all:`` first for ``produce_all``), and
    ``@+delay`` on a line of its own, so a long expression cannot hide the delay."""
    text = _value_text(output.expr)
    lines = [f"all: {text}" if output.many else text]
    if output.delay != 0:
        delay = output.delay
        lines.append(f"@+{delay}ms" if type(delay) is int else f"@+{_value_text(delay)}")
    return lines


def inscription_text(fn: Callable[..., Any]) -> str:
    """A guard's or an output's function as text: a lambda's source, else its name.

    A lambda's source is found by parsing its module and picking the lambda at its
    line with its parameters; when the source cannot be read (a lambda typed at a
    prompt, a builtin, a ``functools.partial``) the text is the function's name.
    """
    source = _lambda_source(fn)
    if source is not None:
        return source
    name = getattr(fn, "__name__", None) or type(fn).__name__
    try:
        params = ", ".join(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return str(name)
    return f"{name}({params})"


def _value_text(value: object) -> str:
    if isinstance(value, Var):
        return value.name
    if isinstance(value, int | str | bytes | float | bool | tuple) or value is None:
        return repr(value)
    if callable(value):
        return inscription_text(value)
    return repr(value)


def _edges(transition: Transition) -> Iterator[str]:
    node = transition_id(transition)
    for arc in transition.arcs:
        place = place_id(arc.pattern.place)
        text = quote(shorten(pattern_text(arc.pattern)))
        if isinstance(arc, ReadArc):
            # A read arc tests a token without moving it: no direction to show.
            yield f"{place} -> {node} [label={text}, style=dashed, dir=none];"
        elif isinstance(arc, InhibitorArc):
            yield f"{place} -> {node} [label={text}, arrowhead=odot];"
        else:
            yield f"{place} -> {node} [label={text}];"
    for output in transition.produce:
        text = label(output_lines(output))
        yield f"{node} -> {place_id(output.place)} [label={text}];"


def _lambda_source(fn: Callable[..., Any]) -> str | None:
    code = getattr(fn, "__code__", None)
    if not isinstance(code, types.CodeType) or code.co_name != "<lambda>":
        return None
    try:
        filename = inspect.getsourcefile(fn)
    except TypeError:
        return None
    if filename is None:
        return None
    found = _lambdas(filename).get(code.co_firstlineno, ())
    params = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    candidates = [(node, text) for node, text in found if _params(node) == params]
    if len(candidates) > 1:
        # Two lambdas with the same parameters on one line: the one whose span holds
        # the first instruction with a position (Python 3.11 records columns).
        # (The first instruction, RESUME, has an empty span at column 0: skip it.)
        first = next(
            (
                (line, col)
                for line, _, col, end_col in code.co_positions()
                if col is not None and end_col is not None and end_col > col
            ),
            None,
        )
        if first is not None:
            candidates = [(n, t) for n, t in candidates if _holds(n, first)] or candidates
    return candidates[0][1] if candidates else None


def _params(node: ast.Lambda) -> tuple[str, ...]:
    args = node.args
    return tuple(a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs))


def _holds(node: ast.Lambda, position: tuple[int | None, int]) -> bool:
    line, col = position
    if line is None or node.end_lineno is None or node.end_col_offset is None:
        return False
    start, end = (node.lineno, node.col_offset), (node.end_lineno, node.end_col_offset)
    return start <= (line, col) <= end


@functools.lru_cache(maxsize=64)
def _lambdas(filename: str) -> dict[int, tuple[tuple[ast.Lambda, str], ...]]:
    """Each lambda in a module's source with its text, by first line (cached per file).

    The source comes through ``linecache``, as ``inspect.getsource`` reads it; a file
    that cannot be read or parsed has no lambdas to show.
    """
    source = "".join(linecache.getlines(filename))
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return {}
    by_line: dict[int, list[tuple[ast.Lambda, str]]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Lambda):
            text = ast.get_source_segment(source, node)
            if text is not None:
                by_line.setdefault(node.lineno, []).append((node, text))
    # ast.walk is breadth first; sort by column so the order is the reading order.
    return {
        line: tuple(sorted(found, key=lambda nt: nt[0].col_offset))
        for line, found in by_line.items()
    }
