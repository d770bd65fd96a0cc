"""Writing a :class:`Net` as PNML.

Theory of operation: a net is written as

* a ``ptnet`` when every place holds :data:`DOT` tokens and every arc only counts
  them (no guard, no function, no field variable): consume and read arcs become input
  arcs weighted by the tokens they take (a read arc also gets an output arc back, which
  keeps the untimed state space: the transition is enabled in the same markings and
  leads to the same marking), and outputs become output arcs weighted by the tokens
  they produce;
* a ``symmetricnet`` when every place's colour class carries a PNML sort (the classes
  ``nets.pnml_read`` builds) and every inscription is a term: patterns whose fields are
  variables or constants, outputs that are constant tokens or
  :class:`~nets.pnml_terms.TermFunction` objects, a guard that is one. A fresh variable
  that the reader introduced for a computed input field (``e0`` with ``e0 == x--1`` in
  the guard) is written back as that term;
* otherwise, with ``skeleton=True``, as the ``ptnet`` skeleton of the net: each place
  with as many black tokens as its initial marking has tokens, each arc weighted by the
  number of tokens it takes or produces; guards, inscriptions, inhibitor arcs,
  capacities, delays and priorities dropped, and a ``toolspecific`` note in the file
  saying so. Without ``skeleton=True`` such a net is refused with :class:`ExportError`
  naming the transition or place and the reason.

An output that produces a variable number of tokens (``produce_all``) has no arc weight,
so a net with one is refused in both modes.
"""

from __future__ import annotations

import typing
from collections import Counter
from collections.abc import Iterable
from xml.sax.saxutils import escape, quoteattr

from nets.errors import CpnError
from nets.model import Net, OutputArc, Pattern, Place, Transition, Var
from nets.pnml_terms import (
    DOT,
    Add,
    All,
    BaseSort,
    Bool,
    Compare,
    Const,
    Dot,
    DotSort,
    EnumSort,
    NumberOf,
    ProductSort,
    RangeSort,
    Sort,
    Succ,
    Term,
    TermFunction,
    Tuple,
    components,
    sort_of,
)
from nets.pnml_terms import Var as TermVar

PTNET_URI = "http://www.pnml.org/version-2009/grammar/ptnet"
SYMMETRICNET_URI = "http://www.pnml.org/version-2009/grammar/symmetricnet"
_COMPARISON_TAGS = {
    "==": "equality",
    "!=": "inequality",
    "<": "lessthan",
    "<=": "lessthanorequal",
    ">": "greaterthan",
    ">=": "greaterthanorequal",
}


class ExportError(CpnError):
    """A net cannot be written as PNML; the message names the transition or place."""


def is_place_transition(net: Net) -> bool:
    """True when ``net`` is a plain place-transition net (black tokens, counted arcs)."""
    return _pt_problem(net) is None


def _pt_pattern(pattern: Pattern) -> bool:
    return pattern.var is None and all(v == 0 and f == "dot" for f, v in pattern.fields)


def _pt_problem(net: Net) -> str | None:
    """Why ``net`` is not a place-transition net, or ``None`` when it is one."""
    for place in net.places:
        if place.colour is not Dot:
            return f"place {place.name!r} holds {place.colour.__name__} tokens, not black tokens"
    for t in net.transitions:
        if t.guard is not None:
            return f"transition {t.name!r} has a guard"
        for pattern in (*t.consume, *t.read, *t.inhibit):
            if not _pt_pattern(pattern):
                return f"transition {t.name!r}: arc {pattern.describe()} binds a variable"
        for out in t.produce:
            if out.many or out.expr != DOT:
                return f"transition {t.name!r}: an output to {out.place.name!r} is a function"
    return None


def _variable_output(net: Net) -> str | None:
    """An output with no fixed number of tokens, which no PNML arc can describe."""
    for t in net.transitions:
        for out in t.produce:
            if out.many:
                return (
                    f"transition {t.name!r}: the output to {out.place.name!r} produces a "
                    "variable number of tokens (produce_all), which has no PNML arc weight"
                )
    return None


def _unexpressed(net: Net) -> str | None:
    """The first capacity, inhibitor arc, delay or priority of ``net``, which PNML lacks."""
    for place in net.places:
        if place.capacity is not None:
            return f"place {place.name!r} has a capacity, which PNML cannot express"
    for t in net.transitions:
        if t.inhibit:
            return f"transition {t.name!r} has an inhibitor arc, which PNML cannot express"
        for out in t.produce:
            if out.delay != 0:
                return f"transition {t.name!r}: the output to {out.place.name!r} has a delay"
        if t.priority != net.transitions[0].priority:
            return f"transition {t.name!r} has a different priority, which PNML cannot express"
    return None


def dumps(net: Net, *, skeleton: bool = False) -> bytes:
    """The PNML document of ``net`` (UTF-8).

    Args:
        net: the net to write.
        skeleton: write the place-transition skeleton of a net that PNML cannot express
            exactly, with a note in the file saying what was left out, instead of
            refusing it.

    Raises:
        ExportError: naming the transition or place PNML cannot express, and why.
    """
    variable = _variable_output(net)
    if variable is not None:
        raise ExportError(f"cannot export net {net.name!r} as PNML: {variable}")
    reason = _unexpressed(net)
    if reason is None:
        if _pt_problem(net) is None:
            return _write_pt(net, note=None)
        reason = _symmetric_problem(net)
        if reason is None:
            return _SymmetricWriter(net).write()
    if not skeleton:
        raise ExportError(
            f"cannot export net {net.name!r} as PNML: {reason}; pass skeleton=True "
            "to write its place-transition skeleton instead"
        )
    return _write_pt(
        net,
        note=(
            f"P/T skeleton of the net {net.name!r}, written by cpn-cluster because "
            f"{reason}. Token values, guards, inscriptions, inhibitor arcs, capacities, "
            "delays and priorities are not represented; each arc is weighted by the "
            "number of tokens it takes or produces."
        ),
    )


# -- place-transition nets ----------------------------------------------------------------


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = ['<?xml version="1.0" encoding="utf-8"?>']
        self.depth = 0

    def open(self, tag: str, **attrs: str) -> None:
        self.lines.append("  " * self.depth + f"<{tag}{_attrs(attrs)}>")
        self.depth += 1

    def close(self, tag: str) -> None:
        self.depth -= 1
        self.lines.append("  " * self.depth + f"</{tag}>")

    def leaf(self, tag: str, text: str | None = None, **attrs: str) -> None:
        pad = "  " * self.depth
        if text is None:
            self.lines.append(f"{pad}<{tag}{_attrs(attrs)}/>")
        else:
            self.lines.append(f"{pad}<{tag}{_attrs(attrs)}>{escape(text)}</{tag}>")

    def text_label(self, tag: str, text: str) -> None:
        self.open(tag)
        self.leaf("text", text)
        self.close(tag)

    def bytes(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode()


class _ArcIds:
    """Arc ids ``arc1, arc2, ...`` that differ from every place and transition name."""

    def __init__(self, net: Net) -> None:
        self.taken = {p.name for p in net.places} | {t.name for t in net.transitions}
        self.n = 0

    def __call__(self) -> str:
        while True:
            self.n += 1
            ident = f"arc{self.n}"
            if ident not in self.taken:
                return ident


def _attrs(attrs: dict[str, str]) -> str:
    return "".join(f" {k.rstrip('_')}={quoteattr(v)}" for k, v in attrs.items())


def _arc_counts(t: Transition) -> tuple[Counter[str], Counter[str]]:
    """Tokens taken from and given to each place by one firing (read arcs: both)."""
    taken: Counter[str] = Counter()
    given: Counter[str] = Counter()
    for pattern in t.consume:
        taken[pattern.place.name] += pattern.count
    for pattern in t.read:
        taken[pattern.place.name] += pattern.count
        given[pattern.place.name] += pattern.count
    for out in t.produce:
        given[out.place.name] += 1
    return taken, given


def _write_pt(net: Net, *, note: str | None) -> bytes:
    w = _Lines()
    w.open("pnml", xmlns="http://www.pnml.org/version-2009/grammar/pnml")
    w.open("net", id=net.name, type=PTNET_URI)
    w.text_label("name", net.name)
    if note is not None:
        w.open("toolspecific", tool="cpn-cluster", version="1")
        w.leaf("note", note)
        w.close("toolspecific")
    w.open("page", id="page0")
    for place in net.places:
        w.open("place", id=place.name)
        if place.initial:
            w.text_label("initialMarking", str(len(place.initial)))
        w.close("place")
    for t in net.transitions:
        w.leaf("transition", id=t.name)
    arc_id = _ArcIds(net)
    for t in net.transitions:
        taken, given = _arc_counts(t)
        for pname, n in taken.items():
            _pt_arc(w, arc_id(), pname, t.name, n)
        for pname, n in given.items():
            _pt_arc(w, arc_id(), t.name, pname, n)
    w.close("page")
    w.close("net")
    w.close("pnml")
    return w.bytes()


def _pt_arc(w: _Lines, ident: str, source: str, target: str, weight: int) -> None:
    if weight == 1:
        w.leaf("arc", id=ident, source=source, target=target)
        return
    w.open("arc", id=ident, source=source, target=target)
    w.text_label("inscription", str(weight))
    w.close("arc")


# -- symmetric nets ------------------------------------------------------------------------


def _symmetric_problem(net: Net) -> str | None:
    """Why ``net`` cannot be written as a symmetric net, or ``None``."""
    for t in net.transitions:
        if t.guard is not None and not (
            isinstance(t.guard, TermFunction) and t.guard.kind == "guard"
        ):
            return f"transition {t.name!r} has a Python guard"
        for out in t.produce:
            expr = out.expr
            if isinstance(expr, TermFunction) and expr.kind == "token":
                continue
            if callable(expr) or isinstance(expr, Var):
                return (
                    f"transition {t.name!r}: the output to {out.place.name!r} is a Python function"
                )
        for pattern in (*t.consume, *t.read):
            if pattern.var is not None:
                return f"transition {t.name!r}: arc {pattern.describe()} binds a whole token"
    for place in net.places:
        if sort_of(place.colour) is None:
            return (
                f"place {place.name!r} holds {place.colour.__name__} tokens, a colour set "
                "without a PNML sort (only finite enumerations, ranges and their products, "
                "as built by the PNML reader, have one)"
            )
    return None


class _SymmetricWriter:
    def __init__(self, net: Net) -> None:
        self.net = net
        self.w = _Lines()
        self.sorts: dict[str, Sort] = {}
        self.variables: dict[tuple[str, BaseSort], str] = {}
        self.arc_id = _ArcIds(net)

    def sort(self, place: Place) -> Sort:
        sort = sort_of(place.colour)
        assert sort is not None
        return sort

    def write(self) -> bytes:
        net, w = self.net, self.w
        body = _Lines()
        body.depth = 3
        self.w = body
        for place in net.places:
            self.place(place)
        for t in net.transitions:
            self.transition(t)
        self.w = w
        w.open("pnml", xmlns="http://www.pnml.org/version-2009/grammar/pnml")
        w.open("net", id=net.name, type=SYMMETRICNET_URI)
        w.text_label("name", net.name)
        self.declarations()
        w.open("page", id="page0")
        w.lines += body.lines[1:]
        w.close("page")
        w.close("net")
        w.close("pnml")
        return w.bytes()

    def declarations(self) -> None:
        w = self.w
        w.open("declaration")
        w.open("structure")
        w.open("declarations")
        for sort in self.sorts.values():
            if isinstance(sort, DotSort):
                continue
            w.open("namedsort", id=sort.id, name=sort.name)
            if isinstance(sort, EnumSort):
                w.open("cyclicenumeration" if sort.cyclic else "finiteenumeration")
                for cid, cname in sort.constants:
                    w.leaf("feconstant", id=cid, name=cname)
                w.close("cyclicenumeration" if sort.cyclic else "finiteenumeration")
            elif isinstance(sort, RangeSort):
                w.leaf("finiteintrange", start=str(sort.start), end=str(sort.end))
            else:
                w.open("productsort")
                for part in sort.components:
                    self.sort_ref(part)
                w.close("productsort")
            w.close("namedsort")
        for (name, sort), ident in self.variables.items():
            w.open("variabledecl", id=ident, name=name)
            self.sort_ref(sort)
            w.close("variabledecl")
        w.close("declarations")
        w.close("structure")
        w.close("declaration")

    def use_sort(self, sort: Sort) -> None:
        if isinstance(sort, ProductSort):
            for part in sort.components:
                self.use_sort(part)
        if not isinstance(sort, DotSort):
            self.sorts.setdefault(sort.id, sort)

    def sort_ref(self, sort: Sort) -> None:
        if isinstance(sort, DotSort):
            self.w.leaf("dot")
        else:
            self.use_sort(sort)
            self.w.leaf("usersort", declaration=sort.id)

    def var_id(self, name: str, sort: BaseSort) -> str:
        key = (name, sort)
        if key not in self.variables:
            taken = set(self.variables.values()) | self.arc_id.taken
            ident = f"var_{name}"
            while ident in taken:
                ident += "_"
            self.arc_id.taken.add(ident)
            self.variables[key] = ident
        return self.variables[key]

    def place(self, place: Place) -> None:
        w, sort = self.w, self.sort(place)
        self.use_sort(sort)
        w.open("place", id=place.name)
        w.open("type")
        w.open("structure")
        self.sort_ref(sort)
        w.close("structure")
        w.close("type")
        if place.initial:
            counts = Counter(_token_term(sort, token) for token in place.initial)
            w.open("hlinitialMarking")
            self.structure(_sum(counts))
            w.close("hlinitialMarking")
        w.close("place")

    def transition(self, t: Transition) -> None:
        w = self.w
        guard = t.guard
        equations: dict[str, Term] = {}
        condition: Term | None = None
        if isinstance(guard, TermFunction):
            equations = dict(guard.equations)
            condition = guard.term
        w.open("transition", id=t.name)
        if condition is not None:
            w.open("condition")
            self.structure(condition)
            w.close("condition")
        w.close("transition")
        inputs: dict[str, Counter[Term]] = {}
        outputs: dict[str, Counter[Term]] = {}
        for pattern in (*t.consume, *t.read):
            term = self.pattern_term(pattern, equations)
            inputs.setdefault(pattern.place.name, Counter())[term] += pattern.count
        for pattern in t.read:  # a read arc is a loop: the token goes back
            term = self.pattern_term(pattern, equations)
            outputs.setdefault(pattern.place.name, Counter())[term] += pattern.count
        for out in t.produce:
            outputs.setdefault(out.place.name, Counter())[self.output_term(out)] += 1
        for place, counts in inputs.items():
            self.arc(self.arc_id(), place, t.name, counts)
        for place, counts in outputs.items():
            self.arc(self.arc_id(), t.name, place, counts)

    def arc(self, ident: str, source: str, target: str, counts: Counter[Term]) -> None:
        w = self.w
        w.open("arc", id=ident, source=source, target=target)
        w.open("hlinscription")
        self.structure(_sum(counts))
        w.close("hlinscription")
        w.close("arc")

    def pattern_term(self, pattern: Pattern, equations: dict[str, Term]) -> Term:
        sort = self.sort(pattern.place)
        fields = pattern.place.colour_set.fields
        given = dict(pattern.fields)
        items: list[Term] = []
        for fname, part in zip(fields, components(sort), strict=True):
            if fname not in given:
                raise ExportError(
                    f"cannot export net {self.net.name!r}: arc {pattern.describe()} leaves "
                    f"field {fname!r} unconstrained; PNML arcs name every component"
                )
            value = given[fname]
            if isinstance(value, Var):
                items.append(equations.get(value.name) or TermVar(value.name, value.name, part))
            else:
                items.append(Const(part, value))
        return items[0] if len(items) == 1 else Tuple(tuple(items))

    def output_term(self, out: OutputArc) -> Term:
        expr = out.expr
        if isinstance(expr, TermFunction):
            assert expr.term is not None
            return expr.term
        return _token_term(self.sort(out.place), typing.cast(tuple[object, ...], expr))

    # -- terms --------------------------------------------------------------------------

    def structure(self, term: Term) -> None:
        self.w.open("structure")
        self.term(term)
        self.w.close("structure")

    def subterms(self, items: Iterable[Term]) -> None:
        for item in items:
            self.w.open("subterm")
            self.term(item)
            self.w.close("subterm")

    def term(self, term: Term) -> None:
        w = self.w
        if isinstance(term, TermVar):
            w.leaf("variable", refvariable=self.var_id(term.name, term.sort))
        elif isinstance(term, Const):
            self.constant(term)
        elif isinstance(term, Succ):
            tag = "successor" if term.step == 1 else "predecessor"
            w.open(tag)
            self.subterms([term.term])
            w.close(tag)
        elif isinstance(term, Tuple | Add):
            tag = "tuple" if isinstance(term, Tuple) else "add"
            w.open(tag)
            self.subterms(term.items)
            w.close(tag)
        elif isinstance(term, All):
            w.open("all")
            self.sort_ref(term.sort)
            w.close("all")
        elif isinstance(term, NumberOf):
            w.open("numberof")
            w.open("subterm")
            w.open("numberconstant", value=str(term.count))
            w.leaf("positive")
            w.close("numberconstant")
            w.close("subterm")
            self.subterms([term.term])
            w.close("numberof")
        elif isinstance(term, Compare):
            tag = _COMPARISON_TAGS[term.op]
            w.open(tag)
            self.subterms([term.left, term.right])
            w.close(tag)
        else:
            assert isinstance(term, Bool)
            if term.op in ("true", "false"):
                w.leaf("booleanconstant", value=term.op)
            else:
                w.open(term.op)
                self.subterms(term.items)
                w.close(term.op)

    def constant(self, const: Const) -> None:
        sort = const.sort
        if isinstance(sort, DotSort):
            self.w.leaf("dotconstant")
        elif isinstance(sort, EnumSort):
            self.use_sort(sort)
            ident = sort.constants[sort.index(const.value)][0]
            self.w.leaf("useroperator", declaration=ident)
        else:
            self.w.open("finiteintrangeconstant", value=str(const.value))
            self.w.leaf("finiteintrange", start=str(sort.start), end=str(sort.end))
            self.w.close("finiteintrangeconstant")


def _token_term(sort: Sort, token: tuple[object, ...]) -> Term:
    parts = components(sort)
    items: list[Term] = [Const(p, v) for p, v in zip(parts, token, strict=True)]
    return items[0] if len(items) == 1 else Tuple(tuple(items))


def _sum(counts: Counter[Term]) -> Term:
    items: list[Term] = [NumberOf(n, term) for term, n in counts.items()]
    return items[0] if len(items) == 1 else Add(tuple(items))
